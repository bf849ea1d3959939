"""Compile Triton kernels for a GPU target in a subprocess (without the interpreter the tests run under)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compile_in_subprocess(code: str, timeout: float = 240) -> object:
    """Run ``code`` (which must print one JSON document last) with the Triton compiler, not the interpreter.

    ``code`` can import :func:`cotune.kernels.triton_jit.aot.compile_for` and the kernel modules.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
