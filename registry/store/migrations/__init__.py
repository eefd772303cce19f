"""Alembic's migration scripts for the registry's store, shipped in the package and applied by
registry/store/schema.py when the registry starts."""
