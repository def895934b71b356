"""Pure domain code: identifier normalisation and identity decisions (no I/O)."""
