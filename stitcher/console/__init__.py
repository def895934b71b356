"""The console (SPEC §4a): one person's story at a glance, and an overview of the service, for support and
marketing engineers. ``handlers.setup`` mounts it on the service."""
