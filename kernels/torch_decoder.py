"""``torch_decoder``: serving-level tuning of one transformer decoder layer behind a dynamic batcher.

The layer is plain torch with seeded weights: RMSNorm, attention (q/k/v/o projections, causal
``scaled_dot_product_attention``), RMSNorm, SwiGLU MLP, each block with its residual. A problem is the model's
dims plus the request: ``seq`` tokens per request (a prefill-style request) and ``p99_ms``, the latency budget.
What is tuned is how the layer is served, the three knobs of a Triton Inference Server model config:
``max_batch_size``, ``instances`` (model copies served concurrently, each from its own thread; on the CPU each
copy gets :func:`threads_per_instance` torch threads, on CUDA its own stream) and ``queue_delay_us`` (how long
the batcher holds the oldest waiting request for a batch to fill). :mod:`cotune.tuner.export.triton_server` turns
the winner into a ``config.pbtxt``.

How a measurement reads. :meth:`TorchDecoder.measure` runs a closed loop of ``2 * max_batch_size * instances``
clients, each sending its next request as soon as its last one is answered, until :data:`REQUESTS` requests
are served (the same inputs and order every time; ``BenchSettings.repeats`` does not apply, ``warmup`` is
batches per model copy before the load). Then:

* ``Measurement.times_s`` are the per-request latencies, queueing included, in completion order: median and
  spread are latency statistics, and :func:`p99_s` of them is the p99 latency. A ``min_time`` objective thus
  minimises the median latency.
* The objective this kernel is meant for is ``max_throughput``, and ``Measurement.gflops`` is the served
  throughput: total flops of the requests served / wall time. ``gflops`` is ``flops / median_s``, so
  ``Measurement.flops`` is the work in flight over one median latency (Little's law: the flops of one request
  x requests/s x median latency), not the flops of one request, which :meth:`TorchDecoder.flops` gives;
  :func:`requests_per_s` recovers the request rate. ``bytes_moved`` is scaled alike, so ``gbytes_per_s`` is
  the served weight and activation traffic.
* A config whose p99 latency is over ``p99_ms`` fails with an ``infeasible`` reason naming both numbers: it
  breaks the latency constraint, found by measuring rather than before it. Once enough requests are over the
  budget that the p99 of all :data:`REQUESTS` is certain to be, the run stops early, so a hopeless config
  costs a few batches rather than the full load.

Before the load, a batch of up to two requests through a model copy is checked against an fp32 computation
(in float64) of the same layer on each request alone: the tolerance is relative to the reference's largest
magnitude, per precision.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cotune.kernels.verify import check
from cotune.tuner.measure.kernel import BenchSettings, CandidateError, Kernel
from cotune.tuner.types import Config, DeviceProfile, FailureKind, Measurement, Precision, Problem

if TYPE_CHECKING:
    import torch

REQUESTS = 64  # requests served per measurement
INPUT_POOL = 4  # distinct request inputs; request r carries input r % INPUT_POOL
EPS = 1e-6
# Relative to the reference's largest magnitude. bf16 keeps 8 mantissa bits and the layer rounds its
# activations between seven matmuls; fp32 differs from the float64 reference by summation order only.
TOLERANCE = {Precision.FP32: 1e-4, Precision.BF16: 3e-2}
WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def request_flops(dims: dict[str, int]) -> float:
    """Flops of one request: four ``hidden x hidden`` projections, three ``hidden x intermediate`` MLP matmuls,
    and the two attention matmuls, of which causal masking keeps half. Norms and softmax are left out."""
    s, h, i = dims["seq"], dims["hidden"], dims["intermediate"]
    return 8.0 * s * h * h + 6.0 * s * h * i + 2.0 * s * s * h


def threads_per_instance(config: Config, device: DeviceProfile) -> int:
    """Torch threads each model copy gets on the CPU: the cores shared evenly between the copies."""
    return max(1, device.cores // int(config["instances"]))


def p99_s(times_s: Sequence[float]) -> float:
    """The 99th percentile of request latencies (linear interpolation between the closest ranks)."""
    if len(times_s) < 2:
        return float(times_s[0])
    return statistics.quantiles(times_s, n=100, method="inclusive")[98]


def requests_per_s(measurement: Measurement, problem: Problem) -> float:
    """The served request rate of a :class:`TorchDecoder` measurement (its ``gflops`` is the flop rate)."""
    return measurement.gflops * 1e9 / request_flops(problem.dims)


def make_weights(hidden: int, heads: int, intermediate: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 weights of one layer, seeded; matmul weights scaled by 1/sqrt(fan-in) to keep activations O(1)."""
    import torch

    if hidden % heads:
        raise CandidateError(FailureKind.INFEASIBLE, f"heads {heads} does not divide hidden {hidden}")
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "wq": (hidden, hidden),
        "wk": (hidden, hidden),
        "wv": (hidden, hidden),
        "wo": (hidden, hidden),
        "w_gate": (intermediate, hidden),
        "w_up": (intermediate, hidden),
        "w_down": (hidden, intermediate),
    }
    weights = {name: torch.randn(*shape, generator=gen) / shape[1] ** 0.5 for name, shape in shapes.items()}
    weights["norm_attn"] = 1.0 + 0.1 * torch.randn(hidden, generator=gen)
    weights["norm_mlp"] = 1.0 + 0.1 * torch.randn(hidden, generator=gen)
    return weights


def make_inputs(seq: int, hidden: int, count: int = INPUT_POOL, seed: int = 1) -> list[torch.Tensor]:
    """``count`` fp32 request inputs ``[seq, hidden]`` (hidden states), seeded."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(seq, hidden, generator=gen) for _ in range(count)]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def decoder_layer(x: torch.Tensor, w: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
    """One pre-norm decoder layer on hidden states ``x`` ``[batch, seq, hidden]``; computes in ``x``'s dtype."""
    import torch.nn.functional as F

    b, s, h = x.shape
    y = _rms_norm(x, w["norm_attn"])
    q, k, v = (F.linear(y, w[name]).view(b, s, heads, h // heads).transpose(1, 2) for name in ("wq", "wk", "wv"))
    attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, h)
    x = x + F.linear(attn, w["wo"])
    y = _rms_norm(x, w["norm_mlp"])
    return x + F.linear(F.silu(F.linear(y, w["w_gate"])) * F.linear(y, w["w_up"]), w["w_down"])


def reference(x: torch.Tensor, weights: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
    """The layer on one request ``[seq, hidden]`` alone, in float64 on the CPU from the fp32 weights."""
    import torch

    with torch.inference_mode():
        w64 = {k: v.double() for k, v in weights.items()}
        return decoder_layer(x.double().unsqueeze(0), w64, heads)[0]


def torchscript_layer(dims: dict[str, int], precision: Precision) -> bytes:
    """The served layer as TorchScript (``torch.jit.save``), for a Triton Inference Server model repository's
    ``1/model.pt``: the seeded weights the layer was tuned with, in the precision's dtype, taking hidden states
    ``[batch, seq, hidden]`` and returning the same shape; the batch dim stays free (traced, not fixed)."""
    import io

    import torch

    dtype = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}[precision]
    weights = {k: v.to(dtype) for k, v in make_weights(dims["hidden"], dims["heads"], dims["intermediate"]).items()}

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, tensor in weights.items():
                self.register_buffer(name, tensor)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return decoder_layer(x, {name: getattr(self, name) for name in weights}, dims["heads"])

    example = torch.stack(make_inputs(dims["seq"], dims["hidden"], count=2)).to(dtype)
    buffer = io.BytesIO()
    # torch deprecates TorchScript in favour of torch.export, but TorchScript is what Triton's PyTorch
    # (libtorch) backend loads.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(Layer().eval(), example), buffer)
    return buffer.getvalue()


@dataclass
class ServeResult:
    """What a simulated load measured: latencies in completion order, and the wall time they took."""

    latencies_s: list[float]
    wall_s: float
    aborted: bool = False  # stopped early: enough latencies over the budget to put the p99 over it


@dataclass
class _LoadState:
    queue: deque[tuple[int, float]] = field(default_factory=deque)  # (request number, arrival time)
    issued: int = 0
    latencies: list[float] = field(default_factory=list)
    over_budget: int = 0
    stop: bool = False
    aborted: bool = False
    end: float = 0.0
    errors: list[BaseException] = field(default_factory=list)


def over_budget_limit(requests: int) -> int:
    """How many latencies over the budget make the p99 of ``requests`` latencies certainly over it."""
    return requests - math.floor(0.99 * (requests - 1))


def serve(
    instances: Sequence[Callable[[list[int]], object]],
    *,
    max_batch_size: int,
    queue_delay_s: float,
    clients: int,
    requests: int,
    budget_s: float | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ServeResult:
    """Serve ``requests`` requests from ``clients`` closed-loop clients through a dynamic batcher.

    ``instances[i](request_numbers)`` runs model copy ``i`` on one batch and returns when its outputs are
    ready; each copy runs in a thread of its own (``on_start(i)`` first, in that thread). A free copy takes
    the waiting requests, up to ``max_batch_size``, once there are that many or the oldest has waited
    ``queue_delay_s``. A client sends its next request the moment its last one is answered. With a
    ``budget_s``, the load stops once the p99 latency is certain to be over it.
    """
    st = _LoadState()
    cond = threading.Condition()
    limit = over_budget_limit(requests)
    start = time.perf_counter()
    for _ in range(min(clients, requests)):
        st.queue.append((st.issued, start))
        st.issued += 1

    def take_batch() -> list[tuple[int, float]] | None:
        """Under the lock: wait for a batch to form; None once the load is over."""
        while not st.stop:
            if not st.queue:
                cond.wait()
                continue
            if len(st.queue) >= max_batch_size:
                break
            remaining = st.queue[0][1] + queue_delay_s - time.perf_counter()
            if remaining <= 0:
                break
            cond.wait(remaining)
        if st.stop:
            return None
        return [st.queue.popleft() for _ in range(min(max_batch_size, len(st.queue)))]

    def worker(index: int) -> None:
        try:
            if on_start is not None:
                on_start(index)
            while True:
                with cond:
                    batch = take_batch()
                if batch is None:
                    return
                instances[index]([number for number, _ in batch])
                done = time.perf_counter()
                with cond:
                    if st.stop:
                        return
                    for _, arrival in batch:
                        latency = done - arrival
                        st.latencies.append(latency)
                        st.over_budget += budget_s is not None and latency > budget_s
                        if st.issued < requests:
                            st.queue.append((st.issued, done))
                            st.issued += 1
                    st.aborted = st.over_budget >= limit
                    if len(st.latencies) >= requests or st.aborted:
                        st.stop, st.end = True, done
                    cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            with cond:
                st.errors.append(exc)
                st.stop, st.end = True, time.perf_counter()
                cond.notify_all()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(instances))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if st.errors:
        raise st.errors[0]
    return ServeResult(st.latencies, st.end - start, st.aborted)


class TorchDecoder(Kernel):
    name = "torch_decoder"
    description = "decoder layer served through a dynamic batcher (max batch, instances, queue delay)"
    shape_dims = ("hidden", "heads", "intermediate", "seq", "p99_ms")
    batch_dim = "seq"
    precisions = (Precision.FP32, Precision.BF16)
    device_kinds = ("cpu", "cuda")

    def flops(self, problem: Problem) -> float:
        """Flops of one request (see :func:`request_flops`)."""
        return request_flops(problem.dims)

    def bytes_moved(self, problem: Problem) -> float:
        """Traffic of one request served alone: the layer's weights read once, its hidden states in and out."""
        d = problem.dims
        size = 4 if problem.dtype is Precision.FP32 else 2
        h, i = d["hidden"], d["intermediate"]
        return float(size * (4 * h * h + 3 * h * i + 2 * h + 2 * d["seq"] * h))

    def source_files(self) -> tuple[Path, ...]:
        return (Path(__file__),)

    def toolchain(self) -> dict[str, str]:
        import torch

        out = {"torch": torch.__version__}
        if torch.version.cuda:
            out["cuda"] = torch.version.cuda
        return out

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        import torch

        d = problem.dims
        heads, budget_ms = d["heads"], d["p99_ms"]
        max_batch, copies = int(config["max_batch_size"]), int(config["instances"])
        on_cuda = device.kind == "cuda"
        if on_cuda and not torch.cuda.is_available():
            raise CandidateError(FailureKind.RUNTIME, "the device is CUDA but torch sees no GPU")
        dev = torch.device("cuda" if on_cuda else "cpu")
        dtype = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}[problem.dtype]
        threads = threads_per_instance(config, device)
        if not on_cuda:
            torch.set_num_threads(threads)

        weights32 = make_weights(d["hidden"], heads, d["intermediate"])
        inputs32 = make_inputs(d["seq"], d["hidden"])
        pool = [x.to(dev, dtype) for x in inputs32]
        models = [{k: v.to(dev, dtype).clone() for k, v in weights32.items()} for _ in range(copies)]
        streams = [torch.cuda.Stream() for _ in range(copies)] if on_cuda else []
        if on_cuda:  # the copies above ran on the default stream; the instances read them on their own
            torch.cuda.synchronize()

        def run(index: int, numbers: list[int]) -> torch.Tensor:
            with torch.inference_mode():
                if on_cuda:
                    with torch.cuda.stream(streams[index]):
                        out = decoder_layer(torch.stack([pool[n % INPUT_POOL] for n in numbers]), models[index], heads)
                    streams[index].synchronize()
                    return out
                return decoder_layer(torch.stack([pool[n % INPUT_POOL] for n in numbers]), models[index], heads)

        # Verify a batch through a model copy against each request computed alone in fp32 (float64).
        verify = list(range(min(max_batch, 2)))
        out = run(0, verify).float().cpu()
        ref = torch.stack([reference(inputs32[n], weights32, heads) for n in verify])
        err = check(out.numpy(), ref.numpy(), TOLERANCE[problem.dtype])
        for index in range(copies):  # warm every copy (the first already ran the check)
            for _ in range(bench.warmup if index else max(bench.warmup - 1, 0)):
                run(index, verify)

        def on_start(index: int) -> None:
            if not on_cuda:
                torch.set_num_threads(threads)  # intra-op threads are per calling thread

        budget_s = budget_ms / 1e3
        result = serve(
            [lambda numbers, i=i: run(i, numbers) for i in range(copies)],
            max_batch_size=max_batch,
            queue_delay_s=int(config["queue_delay_us"]) / 1e6,
            clients=2 * max_batch * copies,
            requests=REQUESTS,
            budget_s=budget_s,
            on_start=on_start,
        )
        p99 = p99_s(result.latencies_s)
        if result.aborted or p99 > budget_s:
            served = len(result.latencies_s)
            bound = sorted(result.latencies_s)[-over_budget_limit(REQUESTS)] if result.aborted else p99
            detail = f" (stopped after {served} of {REQUESTS} requests)" if result.aborted else ""
            raise CandidateError(
                FailureKind.INFEASIBLE,
                f"p99 latency {'>= ' if result.aborted else ''}{bound * 1e3:.1f} ms is over the budget "
                f"{budget_ms} ms{detail}",
            )
        times = tuple(result.latencies_s)
        in_flight = REQUESTS / result.wall_s * statistics.median(times)  # Little's law, at the median latency
        return Measurement(
            times,
            flops=self.flops(problem) * in_flight,
            bytes_moved=self.bytes_moved(problem) * in_flight,
            max_rel_error=err,
        )
