"""The distributed service's workers: a Celery app on Redis, one worker process per GPU.

Importing this package configures the Celery app and connects to nothing. Local tuning (``cotune tune``)
does not use it.
"""
