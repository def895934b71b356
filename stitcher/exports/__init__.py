"""Exports of the service's data to a warehouse (SPEC §4): PostgreSQL and BigQuery files, incremental by
the change sequence the database's triggers stamp (migration 0009)."""
