"""cotune's core: from a job spec to measured, tracked and exported kernel configs.

The sub-packages follow the flow, each importing only from those before it (tests/test_layout.py keeps it so):

- core modules here: ``errors``, ``types`` (problems, configs, measurements), ``yaml_lines``
- ``device/``: what a study runs on; ``space/``: search spaces; ``store/``: the Optuna storage and job records
- ``measure/``: the kernel contract and registry, the isolated candidate process, the objective
- ``spec/``: job specs and settings; ``track/``: MLflow
- ``search/``: samplers, warm starts, early stop, replay; ``codesign/``: plans, precision choice, reports
- ``driver``: the study loop, shared by ``cotune tune`` and the service's workers
- ``export/``: serving files and revalidation; ``service/``: the REST API; ``cli/``: the ``cotune`` command

Nothing here imports torch, triton, celery or mlflow at import time; those load where used.
"""

from __future__ import annotations

__version__ = "0.1.0"
