"""Bulk import of contacts: ``POST /api/v1/contacts`` and its status."""
