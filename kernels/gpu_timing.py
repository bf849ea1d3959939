"""GPU stopwatch: CUDA events around each call, L2 flushed before every timed call, repeats sized to a time
budget, optional CUDA-graph replay for tiny kernels, and energy per call from NVML's energy counter.

Follows Triton's ``do_bench`` (a flush buffer zeroed before each call, one event pair per call) with the
repeat count adapted between ``repeats`` and ``max_repeats`` so that about ``target_s`` of kernel time
is sampled; the caller takes the median. Graph mode follows vLLM's MoE tuner (several calls captured in
one graph, replayed, no flush): it measures what a decode step sees, where weights stay hot in L2.

Unlike ``do_bench``, the GPU is held back by a busy-wait before each batch of timed calls, so the host has
queued the whole batch before the GPU reaches it. Without that, a kernel shorter than its host-side launch
(a Triton launch with many arguments takes tens of microseconds of Python, more on a loaded CPU) is timed
from its start event to its end *including the wait for the host to launch it*. On an H100, M=16 matmuls
of 40-60 us then read a median 1.16-2.16x slow (up to 3.4x), and configs that run the same program
disagreed by a median 22-69 %; with the head start, by 0.2-0.8 % (bench/experiments/results/launch_bound_h100.json).

Screening: with ``bench.screen_cutoff_s`` set, a short timing (``screen_target_s`` of kernel time, at least
``repeats`` calls) comes first, and only a candidate whose median is within the cutoff is timed to
``target_s``; the rest return the short timing. Most candidates of a search are far from the best, so most
cost a few milliseconds of calls instead of ``target_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import cache

from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import DeviceProfile, FailureKind

CALLS_PER_GRAPH = 10
CALLS_PER_BATCH = 100  # a batch's launches stay well inside the driver's queue, so queuing them never blocks
HEAD_START_MARGIN = 2.0  # busy-wait this many times the host's measured time to queue a batch
MAX_HEAD_START_S = 0.25  # bounds the idle GPU time a batch can cost when the host estimate is far off
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
    host_s = queue_seconds(fn, flush, 3) / 3
    times, _ = event_times(fn, flush, 3, head_start_s=HEAD_START_MARGIN * 3 * host_s)
    per_call = max(sorted(times)[1], 1e-7)
    if bench.screen_cutoff_s is not None and bench.screen_target_s > 0:
        short = _timed_calls(fn, flush, calls(bench.screen_target_s, per_call, bench), host_s)
        if sorted(short)[len(short) // 2] > bench.screen_cutoff_s:
            return short
    return _timed_calls(fn, flush, calls(bench.target_s, per_call, bench), host_s)


def calls(budget_s: float, per_call_s: float, bench: BenchSettings) -> int:
    """Timed calls for about ``budget_s`` of kernel time, between ``repeats`` and ``max_repeats``."""
    return min(max(bench.repeats, math.ceil(budget_s / per_call_s)), bench.max_repeats)


def _timed_calls(fn: Callable[[], object], flush, n: int, host_s: float) -> tuple[float, ...]:  # noqa: ANN001
    head_start = HEAD_START_MARGIN * min(n, CALLS_PER_BATCH) * host_s
    times, starved = event_times(fn, flush, n, head_start_s=head_start)
    if starved:  # the host was slower than measured (a loaded CPU): once more with a longer head start
        times, _ = event_times(fn, flush, n, head_start_s=4 * head_start)
    return times


def queue_seconds(fn: Callable[[], object], flush, n: int) -> float:  # noqa: ANN001
    """Host seconds to queue ``n`` flushed, event-timed calls (the GPU's time is not in it)."""
    import torch

    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2 * n)]
    start = time.perf_counter()
    for i in range(n):
        flush.zero_()
        events[2 * i].record()
        fn()
        events[2 * i + 1].record()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed


def event_times(fn: Callable[[], object], flush, n: int, *, head_start_s: float) -> tuple[tuple[float, ...], bool]:  # noqa: ANN001
    """(seconds of each of ``n`` calls, whether the GPU may have waited for the host inside a timed call).

    Each batch of calls is queued behind a busy-wait of ``head_start_s`` (0: none, as ``do_bench``); the
    wait lies between timed calls, never inside one. A batch whose busy-wait was already over when the
    host finished queuing it may have let the GPU catch up with the host: that is the second value.
    """
    import torch

    cycles_per_s = _sleep_cycles_per_second()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    starved = False
    for first in range(0, n, CALLS_PER_BATCH):
        waited = None
        if head_start_s > 0:
            torch.cuda._sleep(int(min(head_start_s, MAX_HEAD_START_S) * cycles_per_s))
            waited = torch.cuda.Event()
            waited.record()
        for i in range(first, min(first + CALLS_PER_BATCH, n)):
            flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        starved = starved or (waited is not None and waited.query())
    torch.cuda.synchronize()
    return tuple(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)), starved


@cache
def _sleep_cycles_per_second() -> float:
    """GPU clock cycles per second of ``torch.cuda._sleep``, measured once per process at the clock the busy
    GPU runs at (a lower clock later only makes a head start longer, never shorter)."""
    import torch

    cycles, rates = 10_000_000, []
    for _ in range(3):  # the fastest of three: the first may start at an idle clock
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        rates.append(cycles / max(start.elapsed_time(end) / 1e3, 1e-6))
    return max(rates)


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
    n = calls(bench.target_s, per_replay, bench)
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
