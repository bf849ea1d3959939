"""Where users review: the tracker contract and MLflow tracking (an experiment per job, a parent run per study,
a child run per trial), with the backfill that writes what an outage missed.

Imports the core modules, store/ and measure/ (trial records)."""
