"""Where results live: the Optuna storage (Optuna's RDB storage: SQLite locally, PostgreSQL for the service), a
job's studies in it, and the service's job records, work tickets and program reservations beside them.

Imports only the core modules."""
