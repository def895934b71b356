"""The SQL store: SQLModel tables, the async engine, migrations and the queries the services need."""
