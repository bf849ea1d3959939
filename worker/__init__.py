"""Celery workers for the distributed service (one per GPU). Not built yet: see the service issue.

Local tuning (`cotune tune`) does not need this package; it isolates candidates with
:mod:`tuner.isolation`.
"""
