"""The events API (SPEC §3): ``POST /api/v2/event`` and ``POST /api/v1/event`` — server-side events onto
contacts' timelines, held for people not yet known."""
