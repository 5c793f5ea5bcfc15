"""Alembic migrations of the server's schema (``server.db.tables.metadata``).

Driven programmatically by ``server.db.migrate``; no ``alembic.ini`` is needed.
"""
