"""Kernel registry: the only way a job spec reaches code. Names map to classes in the ``kernels`` package,
imported on first use so that ``import tuner`` stays light and no spec can name arbitrary code."""

from __future__ import annotations

import importlib
from functools import cache

from cotune.tuner.errors import UnknownKernelError
from cotune.tuner.measure.kernel import Kernel

# name -> "module:ClassName"; kernels that need a GPU stack import it inside their own methods.
KERNELS: dict[str, str] = {
    "c_matmul": "cotune.kernels.c_matmul.kernel:CMatmul",
    "triton_matmul": "cotune.kernels.triton_matmul:TritonMatmul",
    "cuda_gemm": "cotune.kernels.cuda_gemm.kernel:CudaGemm",
    "triton_moe": "cotune.kernels.triton_moe:TritonMoE",
    "fused_moe": "cotune.kernels.fused_moe:FusedMoE",
    "triton_attention": "cotune.kernels.triton_attention:TritonAttention",
    "torch_decoder": "cotune.kernels.torch_decoder:TorchDecoder",
    "torch_linear": "cotune.kernels.torch_linear:TorchLinear",
    "noop": "cotune.kernels.noop:Noop",
}


def kernel_names() -> list[str]:
    return sorted(KERNELS)


@cache
def get_kernel(name: str) -> Kernel:
    try:
        target = KERNELS[name]
    except KeyError:
        raise UnknownKernelError(f"unknown kernel {name!r}; known kernels: {', '.join(kernel_names())}") from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls()
