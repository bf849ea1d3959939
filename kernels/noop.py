"""``noop``: does nothing for ``sleep_ms`` milliseconds. Measures the tuner's own per-trial overhead."""

from __future__ import annotations

import time
from pathlib import Path

from cotune.kernels.timing import time_calls
from cotune.tuner.measure.kernel import BenchSettings, Kernel
from cotune.tuner.types import Config, DeviceProfile, Measurement, Precision, Problem


class Noop(Kernel):
    name = "noop"
    description = "sleeps sleep_ms per call; measures the loop's own overhead"
    shape_dims = ("sleep_ms",)
    batch_dim = "sleep_ms"
    precisions = (Precision.FP32,)

    def flops(self, problem: Problem) -> float:
        return 0.0

    def bytes_moved(self, problem: Problem) -> float:
        return 0.0

    def source_files(self) -> tuple[Path, ...]:
        return (Path(__file__),)

    def toolchain(self) -> dict[str, str]:
        return {}

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        seconds = problem.dims["sleep_ms"] / 1000.0
        return Measurement(time_calls(lambda: time.sleep(seconds), warmup=bench.warmup, repeats=bench.repeats))
