"""Orders (SPEC §3): POST /api/v1/orders and a contact's orders."""
