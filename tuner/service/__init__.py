"""The REST API of the tuning service (FastAPI). It stores and queues jobs through cotune.worker.

Imports every tuner layer and cotune.worker."""
