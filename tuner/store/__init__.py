"""Where results live: the Optuna storage (SQLite locally, PostgreSQL for the service), a job's studies in it,
and the service's job records and work tickets beside them.

Imports only the core modules."""
