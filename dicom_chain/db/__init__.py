"""The database layer: engines, pool limits, pragmas, migrations, and one translation of
SQLAlchemy's errors into ours. The ledger, the outbox and the query index sit on top of it."""
