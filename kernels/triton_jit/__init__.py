"""``@triton.jit`` code, kept apart from the kernel classes so that importing a kernel class (the registry,
spec validation, the CPU-only tuner) never imports Triton, and so that tests can choose between the
interpreter (``TRITON_INTERPRET=1``, read when a module here is first imported) and the compiler."""

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 keeps its current default
