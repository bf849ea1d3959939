"""cotune: hardware/software co-optimisation autotuner.

The core package. It imports no torch, triton, celery or mlflow at import time; those load where used.
"""

from __future__ import annotations

__version__ = "0.1.0"
