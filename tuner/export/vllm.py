"""vLLM and SGLang fused-MoE config files from cotune's ``triton_moe`` results.

Both servers find a tuned table by file name and, for a batch of M tokens, use the entry whose M key is
nearest (:func:`nearest_config`). The names and contents follow their loaders, read in vLLM's
``vllm/model_executor/layers/fused_moe`` (``get_config_file_name``, ``get_moe_configs``,
``try_get_optimal_moe_config``, and ``benchmarks/kernels/benchmark_moe.py``) and SGLang's
``python/sglang/srt/layers/moe/fused_moe_triton/fused_moe_triton_config.py``:

- ``N`` in the name is ``w2.shape[2]``, the intermediate size per rank *after* silu_and_mul: half the N of
  the w1 (gate_up) GEMM that ``triton_moe`` tunes (benchmark_moe names files ``shard_intermediate_size // 2``).
  cotune's N=28672 (Mixtral 8x7B w1, no tensor parallelism) is therefore ``N=14336`` in the file name.
- the dtype suffix is only for quantised kernels: fp16 and bf16 have none, cotune's fp8 (per-tensor scales)
  is ``,dtype=fp8_w8a8``. Both servers also know ``,block_shape=[bn,bk]`` for block-quantised fp8
  (DeepSeek-V3 style); cotune does not tune that kernel variant, so no file here carries it.
- vLLM (current main) renames every H200 variant to ``NVIDIA_H200`` before its look-up; SGLang does not.
- ``triton_version``: vLLM's benchmark_moe writes it as a top-level key since vLLM PR #24769 (Sep 2025), and
  ``get_moe_configs`` pops it before turning the keys into ints. vLLM without that PR (v0.10.1 and older
  for certain: the PR is newer) and SGLang (every version checked) call ``int(key)`` on every key and raise
  ValueError on it, hence ``include_triton_version``: on for vLLM (pass False for an older vLLM), off for
  SGLang, which keys its config tree by Triton version instead (``configs/triton_3_4_0/``).

The files have no room for provenance, so each gets a sidecar ``<file>.cotune.json``; both servers open only
the exact file name they compute, so the sidecar is never mistaken for a table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotune.tuner.errors import SpecError
from cotune.tuner.export.formats import write_text_atomic

MOE_KERNEL = "triton_moe"
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
SHAPE_DIMS = ("M", "E", "N", "K", "topk")
# cotune precision -> the servers' dtype selector; absent means no suffix (fp16, bf16).
QUANT_DTYPES = {"fp8": "fp8_w8a8", "fp8_block128": "fp8_w8a8"}
# cotune precision -> the weight quantisation block [block_n, block_k] the servers put in the file name
BLOCK_SHAPES = {"fp8_block128": (128, 128)}
TRITON_VERSION_KEY = "triton_version"


@dataclass
class MoeTable:
    """One config file: every tuned M of one (E, N, dtype, device)."""

    E: int
    N: int  # as in the file name: w2.shape[2], half of triton_moe's N
    dtype: str  # cotune precision
    device: str  # as the export names it, e.g. "NVIDIA H100 80GB HBM3"
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # M -> export entry

    def sorted_rows(self) -> list[tuple[int, dict[str, Any]]]:
        return sorted(self.rows.items())

    def triton_version(self) -> str | None:
        """The Triton the table was tuned with; a table mixing versions would be tuned for neither."""
        versions = {e.get("toolchain", {}).get("triton") for e in self.rows.values()} - {None}
        if len(versions) > 1:
            raise SpecError(f"{self.describe()}: results tuned under several Triton versions {sorted(versions)}")
        return next(iter(versions), None)

    def describe(self) -> str:
        return f"triton_moe E={self.E} N={2 * self.N} {self.dtype} on {self.device!r}"


def moe_tables(export: Mapping[str, Any], server: str) -> list[MoeTable]:
    """Group the export's triton_moe entries into one table per file; other kernels are not the servers'."""
    tables: dict[tuple[str, int, int, str], MoeTable] = {}
    for entry in export.get("entries", []):
        if entry.get("kernel") != MOE_KERNEL:
            continue
        shape = entry["shape"]
        missing = [d for d in SHAPE_DIMS if d not in shape]
        if missing:
            raise SpecError(f"triton_moe entry {shape} lacks shape dims {missing}")
        if shape["N"] % 2:
            raise SpecError(f"triton_moe N={shape['N']} is odd: the gate_up GEMM's N is 2 x intermediate size")
        key = (entry["device"]["name"], int(shape["E"]), int(shape["N"]) // 2, entry["dtype"])
        table = tables.setdefault(key, MoeTable(key[1], key[2], key[3], key[0]))
        m = int(shape["M"])
        if m in table.rows:
            other = table.rows[m]["shape"]
            raise SpecError(
                f"{table.describe()}: two results for M={m} (K={other['K']}, topk={other['topk']} and "
                f"K={shape['K']}, topk={shape['topk']}); a {server} config file holds one config per M"
            )
        table.rows[m] = entry
    if not tables:
        raise SpecError(f"export {export.get('job')!r} has no triton_moe results to export for {server}")
    return [tables[k] for k in sorted(tables)]


def config_file_name(E: int, N: int, dtype: str, device_name: str, server: str = "vllm") -> str:
    """The file name ``get_config_file_name`` computes on the serving GPU.

    The block shape is spelled as each server spells it: vLLM strips the spaces of ``str([128, 128])``
    (``block_shape=[128,128]``), SGLang keeps them (``block_shape=[128, 128]``).
    """
    device = device_name.replace(" ", "_")
    if server == "vllm" and "H200" in device.split("_"):
        device = "NVIDIA_H200"
    quant = QUANT_DTYPES.get(dtype)
    dtype_selector = f",dtype={quant}" if quant else ""
    block = BLOCK_SHAPES.get(dtype)
    block_selector = ""
    if block:
        block_selector = f",block_shape={list(block)}"
        if server == "vllm":
            block_selector = block_selector.replace(" ", "")
    return f"E={E},N={N},device_name={device}{dtype_selector}{block_selector}.json"


def table_json(table: MoeTable, include_triton_version: bool) -> dict[str, Any]:
    """The file's content: the Triton version first (as benchmark_moe writes it), then M ascending.

    The M order matters, not only for reading: ties in :func:`nearest_config` go to the key met first.
    """
    out: dict[str, Any] = {}
    version = table.triton_version()
    if include_triton_version and version:
        out[TRITON_VERSION_KEY] = version
    for m, entry in table.sorted_rows():
        config = entry["config"]
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise SpecError(f"{table.describe()} M={m}: config lacks {missing}")
        out[str(m)] = {k: int(config[k]) for k in CONFIG_KEYS}
    return out


def sidecar_json(export: Mapping[str, Any], table: MoeTable, file_name: str, server: str) -> dict[str, Any]:
    """What the config file cannot say: where each M's config came from and how fast it measured."""
    return {
        "generator": export.get("generator"),
        "created": export.get("created"),
        "job": export.get("job"),
        "format": server,
        "file": file_name,
        "kernel": MOE_KERNEL,
        "E": table.E,
        "N": table.N,
        "gate_up_N": 2 * table.N,
        "dtype": table.dtype,
        "device": table.device,
        "toolchain": next(iter(table.rows.values())).get("toolchain", {}),
        "configs": {
            str(m): {
                "shape": entry["shape"],
                "trial": entry.get("provenance", {}).get("trial"),
                "study": entry.get("provenance", {}).get("study"),
                "mlflow_run_id": entry.get("provenance", {}).get("mlflow_run_id"),
                "source_hash": entry.get("provenance", {}).get("source_hash"),
                "toolchain": entry.get("toolchain", {}),
                "metrics": entry.get("metrics", {}),
            }
            for m, entry in table.sorted_rows()
        },
    }


def nearest_config(path: str | Path, m: int) -> dict[str, Any]:
    """The config vLLM (and SGLang) launch for a batch of ``m`` tokens from the file at ``path``.

    Mirrors vLLM's ``get_moe_configs`` + ``try_get_optimal_moe_config``: drop ``triton_version``, int the keys
    in file order, then ``configs[min(configs.keys(), key=lambda x: abs(x - M))]``: the nearest tuned M, and
    on a tie the one met first in the file, i.e. the smaller for files written by :func:`table_json`.
    """
    with open(path) as f:
        tuned_config = json.load(f)
    tuned_config.pop(TRITON_VERSION_KEY, None)
    configs = {int(key): val for key, val in tuned_config.items()}
    return configs[min(configs.keys(), key=lambda x: abs(x - m))]


class VllmExporter:
    """``out_dir/E=..,N=..,device_name=..[,dtype=fp8_w8a8].json``: point ``VLLM_TUNED_CONFIG_FOLDER`` at
    ``out_dir`` (vLLM reads that folder before its bundled configs) or copy the files into
    ``vllm/model_executor/layers/fused_moe/configs/``."""

    name = "vllm"
    default_include_triton_version = True

    def __init__(self, include_triton_version: bool | None = None) -> None:
        if include_triton_version is None:
            include_triton_version = self.default_include_triton_version
        self.include_triton_version = include_triton_version

    def target_dir(self, table: MoeTable, out_dir: Path) -> Path:
        return out_dir

    def write(self, export: dict[str, Any], out_dir: Path) -> list[Path]:
        written: list[Path] = []
        for table in moe_tables(export, self.name):
            name = config_file_name(table.E, table.N, table.dtype, table.device, self.name)
            path = self.target_dir(table, out_dir) / name
            write_text_atomic(path, json.dumps(table_json(table, self.include_triton_version), indent=4) + "\n")
            sidecar = path.with_name(name + ".cotune.json")
            write_text_atomic(sidecar, json.dumps(sidecar_json(export, table, name, self.name), indent=2) + "\n")
            written += [path, sidecar]
        return written


class SglangExporter(VllmExporter):
    """``out_dir/configs/triton_<x_y_z>/<same file name>``, SGLang's fused_moe_triton tree: point
    ``SGLANG_MOE_CONFIG_DIR`` at ``out_dir`` or copy ``configs/`` over the bundled one. SGLang looks in the
    folder of the running Triton version first, so the folder is the version the configs were tuned with."""

    name = "sglang"
    default_include_triton_version = False

    def target_dir(self, table: MoeTable, out_dir: Path) -> Path:
        version = table.triton_version()
        if not version:
            raise SpecError(f"{table.describe()}: no Triton version recorded; SGLang's configs are per version")
        return out_dir / "configs" / f"triton_{version.replace('.', '_')}"
