"""What vLLM launches a fused-MoE layer with when cotune's tuned file is not there: its default config, and
the entry of the config file it ships for the same name (a few of those files are vendored here).

Both are baselines of the ``fused_moe`` kernel (:meth:`cotune.kernels.fused_moe.FusedMoE.baselines`): the
driver measures them beside the tuned winner, so a report can say what tuning gained over each.

The vendored files are vLLM's, unchanged (Apache-2.0; SOURCES.md names repository, path and commit). Each
is listed in :data:`SHIPPED` by what it is for; its file name is the one ``tuner/export/vllm.py``'s
``config_file_name`` computes for that entry (tests/test_fused_moe_baselines.py holds the two together,
so the naming is written once, there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cotune.tuner.types import Config, Precision, Problem

HERE = Path(__file__).resolve().parent
KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
# Triton's CUDA launch defaults (triton/backends/nvidia/compiler.py, CUDAOptions): what a vLLM default config
# that names no num_warps / num_stages runs with.
TRITON_NUM_WARPS, TRITON_NUM_STAGES = 4, 3


def vllm_default(problem: Problem) -> Config:
    """vLLM's ``get_default_config`` for this shape and dtype, with Triton's launch defaults made explicit.

    Written from ``get_default_config`` in vllm-project/vllm ``vllm/model_executor/layers/fused_moe/
    fused_moe.py`` at commit 13cb3e44373beb1c8b9d2c017f565af6f7a1b601 (the same rule in the other versions
    read, back to commit 000d1458098ebf47491dad470d164d443ab18a9c), for the dtypes cotune tunes:

    - fp8 with block_shape [128, 128]: BLOCK_SIZE_M 64, BLOCK_SIZE_N 128, BLOCK_SIZE_K 128, GROUP_SIZE_M 32,
      num_warps 4, num_stages 3 (2 on ROCm, which cotune does not target);
    - otherwise (fp16, bf16, per-tensor fp8), when M <= E (E = local experts, ``w2.shape[0]``):
      16, 32, 64, GROUP_SIZE_M 1;
    - otherwise: 64, 64, 32, GROUP_SIZE_M 8.

    The last two name no num_warps or num_stages, so Triton's defaults apply (4 and 3). Their
    BLOCK_SIZE_K 32 and GROUP_SIZE_M 8 are outside benchmark_moe's grid, which the kernel accepts.
    vLLM's batch-invariant mode (its own fixed config) is not modelled.
    """
    d = problem.dims
    if problem.dtype is Precision.FP8_BLOCK128:
        return _config(64, 128, 128, 32, 4, 3)
    if d["M"] <= d["E"]:
        return _config(16, 32, 64, 1, TRITON_NUM_WARPS, TRITON_NUM_STAGES)
    return _config(64, 64, 32, 8, TRITON_NUM_WARPS, TRITON_NUM_STAGES)


def _config(*values: int) -> Config:
    return Config.make(dict(zip(KEYS, values, strict=True)))


@dataclass(frozen=True)
class ShippedTable:
    """A vendored vLLM config file: the layer shape it is for (E local experts, I per rank, as in vLLM's
    ``E=..,N=..`` name), the device name CUDA reports for the GPU it was tuned on, and the precision."""

    E: int
    I: int  # noqa: E741 - the issue's and vLLM's name for the per-rank intermediate size
    device: str
    precision: Precision
    file: str
    model: str  # what it serves, for people

    def table(self) -> dict[int, dict[str, Any]]:
        return _load(self.file)


SHIPPED: tuple[ShippedTable, ...] = (
    ShippedTable(
        8,
        7168,
        "NVIDIA H100 80GB HBM3",
        Precision.BF16,
        "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json",
        "Mixtral-8x7B at tensor parallel 2 (bf16)",
    ),  # fmt: skip
    ShippedTable(
        32,
        2048,
        "NVIDIA H100 80GB HBM3",
        Precision.FP8_BLOCK128,
        "E=32,N=2048,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json",
        "DeepSeek-V3 at expert parallel 8 (fp8, 128 x 128 weight blocks)",
    ),  # fmt: skip
)


@cache
def _load(file: str) -> dict[int, dict[str, Any]]:
    """The file as vLLM's ``get_moe_configs`` reads it: ``triton_version`` dropped, keys turned into ints,
    in file order (which decides ties in :func:`nearest`)."""
    data = json.loads((HERE / file).read_text())
    data.pop("triton_version", None)
    return {int(key): value for key, value in data.items()}


def shipped_for(problem: Problem, device_name: str) -> ShippedTable | None:
    d = problem.dims
    for shipped in SHIPPED:
        if (shipped.E, shipped.I, shipped.device, shipped.precision) == (d["E"], d["I"], device_name, problem.dtype):
            return shipped
    return None


def nearest(table: dict[int, dict[str, Any]], m: int) -> dict[str, Any]:
    """vLLM's pick for a batch of ``m`` tokens: ``configs[min(configs.keys(), key=lambda x: abs(x - M))]``, the
    nearest tuned M, a tie going to the key met first."""
    return table[min(table, key=lambda key: abs(key - m))]


def vllm_shipped(problem: Problem, device_name: str) -> Config | None:
    """The config vLLM loads for this problem from the file it ships for it, when that file is vendored."""
    shipped = shipped_for(problem, device_name)
    if shipped is None:
        return None
    entry = nearest(shipped.table(), problem.dims["M"])
    return Config.make({key: int(entry[key]) for key in KEYS})
