"""CPU stopwatch: warm-up calls, then timed repeats, each timed on its own with a monotonic clock."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int) -> tuple[float, ...]:
    """Seconds per call for ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return tuple(times)
