"""``torch_linear``: ``y = x @ W^T`` through torch on the CPU, over thread count, weight layout and batch
splitting, in fp32 or bf16, verified against an fp32 reference."""

from __future__ import annotations

from pathlib import Path

from cotune.kernels.gemm import GemmKernel
from cotune.kernels.timing import time_calls
from cotune.kernels.verify import check
from cotune.tuner.measure.kernel import BenchSettings
from cotune.tuner.types import Config, DeviceProfile, Measurement, Precision, Problem

# Relative to the reference's largest magnitude; bf16 keeps 8 mantissa bits (2^-8 ~ 4e-3 per element).
TOLERANCE = {Precision.FP32: 1e-4, Precision.BF16: 3e-2}


class TorchLinear(GemmKernel):
    name = "torch_linear"
    description = "torch linear layer on CPU (threads, weight layout, batch split)"
    precisions = (Precision.FP32, Precision.BF16)

    def source_files(self) -> tuple[Path, ...]:
        return (Path(__file__),)

    def toolchain(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__}

    def measure(self, problem: Problem, config: Config, device: DeviceProfile, bench: BenchSettings) -> Measurement:
        import torch

        torch.set_num_threads(int(config["threads"]))
        dtype = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}[problem.dtype]
        d = problem.dims
        gen = torch.Generator().manual_seed(0)
        x32 = torch.randn(d["M"], d["K"], generator=gen)
        w32 = torch.randn(d["N"], d["K"], generator=gen) / d["K"] ** 0.5
        x = x32.to(dtype)
        weight = w32.to(dtype)
        if config["weight_layout"] == "kn":  # pre-transposed, contiguous [K, N]
            weight = weight.t().contiguous()
        splits = int(config["batch_splits"])

        def call() -> torch.Tensor:
            with torch.inference_mode():
                chunks = x.chunk(splits) if splits > 1 else (x,)
                if config["weight_layout"] == "kn":
                    return torch.cat([c @ weight for c in chunks])
                return torch.cat([torch.nn.functional.linear(c, weight) for c in chunks])

        out = call().float().numpy()
        err = check(out, (x32.double() @ w32.double().t()).numpy(), TOLERANCE[problem.dtype])
        times = time_calls(call, warmup=bench.warmup, repeats=bench.repeats)
        return Measurement(times, self.flops(problem), self.bytes_moved(problem), err)
