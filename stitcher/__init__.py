"""Everything about people: identity rules, the SQL store, the contacts API, the stitch and its worker."""
