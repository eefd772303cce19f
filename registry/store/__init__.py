"""The registry's store: typed tables (tables.py), their Alembic migrations (migrations/), applied at start, and
units of work under optimistic row versions (database.py). SQLite in the state directory by default, PostgreSQL
by URL."""
