"""GPU stopwatch: CUDA events around each call, L2 flushed before every timed call, repeats sized to a time
budget, optional CUDA-graph replay for tiny kernels, and energy per call from NVML's energy counter.

Follows Triton's ``do_bench`` (a flush buffer zeroed before each call, one event pair per call) with the
repeat count adapted between ``repeats`` and ``max_repeats`` so that about ``target_s`` of kernel time
is sampled; the caller takes the median. Graph mode follows vLLM's MoE tuner (several calls captured in
one graph, replayed, no flush): it measures what a decode step sees, where weights stay hot in L2.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import cache

from tuner.kernel import BenchSettings, CandidateError
from tuner.types import DeviceProfile, FailureKind

CALLS_PER_GRAPH = 10
ENERGY_WINDOW_S = 1.0  # NVML's counter updates about every 100 ms: a 1 s window bounds the error near 10 %


@cache
def _flush_buffer(nbytes: int):  # noqa: ANN202 - torch is imported lazily
    import torch

    return torch.empty(nbytes // 4, dtype=torch.int32, device="cuda")


def flush_bytes(device: DeviceProfile) -> int:
    """Twice the L2 (so nothing of the previous call survives), at least 64 MiB when the L2 is unknown."""
    return max(2 * device.l2_bytes, 64 << 20)


def time_gpu(fn: Callable[[], object], device: DeviceProfile, bench: BenchSettings) -> tuple[float, ...]:
    """Seconds per call of ``fn`` (which launches work on the current stream), one entry per timed call."""
    import torch

    for _ in range(max(bench.warmup, 1)):
        fn()
    torch.cuda.synchronize()
    if bench.graph:
        return _time_graph(fn, bench)
    flush = _flush_buffer(flush_bytes(device))
    estimate = _event_times(fn, flush, 3)
    per_call = max(sorted(estimate)[1], 1e-7)
    n = min(max(bench.repeats, math.ceil(bench.target_s / per_call)), bench.max_repeats)
    return _event_times(fn, flush, n)


def _event_times(fn: Callable[[], object], flush, n: int) -> tuple[float, ...]:  # noqa: ANN001
    import torch

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return tuple(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True))


def _time_graph(fn: Callable[[], object], bench: BenchSettings) -> tuple[float, ...]:
    import torch

    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            for _ in range(CALLS_PER_GRAPH):
                fn()
    except RuntimeError as exc:
        raise CandidateError(FailureKind.RUNTIME, f"CUDA graph capture failed: {exc}") from None
    torch.cuda.synchronize()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    per_replay = max(start.elapsed_time(end) / 1e3, 1e-7)
    n = min(max(bench.repeats, math.ceil(bench.target_s / per_replay)), bench.max_repeats)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    return tuple(s.elapsed_time(e) / 1e3 / CALLS_PER_GRAPH for s, e in zip(starts, ends, strict=True))


def nvml_handle_for_current_device():  # noqa: ANN201 - pynvml handle
    """The NVML handle of torch's current CUDA device, matched by UUID (NVML and CUDA indices differ)."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")


def energy_per_call(fn: Callable[[], object], per_call_s: float, window_s: float = ENERGY_WINDOW_S) -> float:
    """Joules per call: NVML's total-energy counter (mJ) read around a loop of at least ``window_s``."""
    import pynvml
    import torch

    try:
        handle = nvml_handle_for_current_device()
        read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # noqa: E731
        read()
    except pynvml.NVMLError as exc:
        raise CandidateError(FailureKind.RUNTIME, f"NVML energy counter unavailable: {exc}") from None
    batch = max(1, math.ceil(0.05 / max(per_call_s, 1e-7)))  # sync every ~50 ms so the loop ends on time
    _run_for(fn, batch, 0.2)  # settle clocks and power before the window
    e0, t0, calls = read(), time.perf_counter(), 0
    while time.perf_counter() - t0 < window_s:
        calls += _run_for(fn, batch, 0.0)
    torch.cuda.synchronize()
    e1 = read()
    return (e1 - e0) / 1e3 / calls


def _run_for(fn: Callable[[], object], batch: int, seconds: float) -> int:
    import torch

    t0, calls = time.perf_counter(), 0
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        torch.cuda.synchronize()
        if time.perf_counter() - t0 >= seconds:
            return calls
