"""vLLM and SGLang fused-MoE config files from cotune's ``fused_moe`` results.

Both servers run the whole fused-experts call (w1 grouped GEMM, activation, w2 grouped GEMM) with ONE config
looked up by file name, and for a batch of M tokens use the entry whose M key is nearest
(:func:`nearest_config`). The names and contents follow their loaders (vLLM 0.34's
``vllm/model_executor/layers/fused_moe/fused_moe.py`` ``get_config_file_name`` / ``get_moe_configs``, SGLang
0.5.23's ``moe_runner/triton_utils/fused_moe_triton_config.py``):

- ``N`` in the name is ``w2.shape[2]``, the intermediate size per rank: the ``I`` of a ``fused_moe`` problem.
  ``E`` is the number of local experts. One file holds every tuned M of one (E, N, device, dtype), so a file
  is written only for a model that was tuned: two results for one M (another hidden size or top-k under the
  same name) are refused rather than mixed.
- the dtype suffix is only for quantised kernels: fp16 and bf16 have none; ``fp8`` (per-tensor scales) is
  ``,dtype=fp8_w8a8``; ``fp8_block128`` adds the weight block shape, which vLLM spells without spaces
  (``block_shape=[128,128]``) and SGLang with (``block_shape=[128, 128]``).
- vLLM renames every H200 variant to ``NVIDIA_H200`` before its look-up; SGLang does not.
- ``triton_version``: vLLM's benchmark_moe writes it as a top-level key since vLLM PR #24769 (Sep 2025), and
  ``get_moe_configs`` pops it before turning the keys into ints. Older vLLM (v0.10.1 and before) and SGLang
  call ``int(key)`` on every key and raise ValueError on it: the ``vllm-legacy`` format leaves it out, and
  SGLang keys its config tree by Triton version instead (``configs/triton_3_4_0/``).

Results of ``triton_moe`` (the w1 GEMM alone) are never written: a server would run them for a different
thing than they were tuned for.

The files have no room for provenance, so each gets a sidecar ``<file>.cotune.json``; both servers open only
the exact file name they compute, so the sidecar is never mistaken for a table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotune.tuner.errors import SpecError
from cotune.tuner.export.formats import Files

MOE_KERNEL = "fused_moe"
W1_ONLY_KERNEL = "triton_moe"
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
SHAPE_DIMS = ("M", "E", "H", "I", "topk")
# cotune precision -> the servers' dtype selector; absent means no suffix (fp16, bf16).
QUANT_DTYPES = {"fp8": "fp8_w8a8", "fp8_block128": "fp8_w8a8"}
# cotune precision -> the weight quantisation block [block_n, block_k] the servers put in the file name
BLOCK_SHAPES = {"fp8_block128": (128, 128)}
TRITON_VERSION_KEY = "triton_version"


@dataclass
class MoeTable:
    """One config file: every tuned M of one (E, N, dtype, device)."""

    E: int
    N: int  # as in the file name: w2.shape[2], the fused_moe problem's I
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
        return f"fused_moe E={self.E} I={self.N} {self.dtype} on {self.device!r}"


def moe_entries(export: Mapping[str, Any], server: str) -> list[dict[str, Any]]:
    """The export's fused_moe entries; an export without any is refused with what to tune instead."""
    entries = [e for e in export.get("entries", []) if e.get("kernel") == MOE_KERNEL]
    if entries:
        return entries
    kernels = sorted({str(e.get("kernel")) for e in export.get("entries", [])})
    hint = (
        f"; {W1_ONLY_KERNEL} times the w1 GEMM alone, while {server} runs one config for the whole fused layer"
        if W1_ONLY_KERNEL in kernels
        else ""
    )
    raise SpecError(
        f"export {export.get('job')!r} has no {MOE_KERNEL} results to export for {server} "
        f"(it has {', '.join(kernels) or 'no entries'}{hint}); tune the {MOE_KERNEL} spec that `cotune plan` "
        "writes for a MoE model"
    )


def moe_tables(export: Mapping[str, Any], server: str) -> list[MoeTable]:
    """Group the export's fused_moe entries into one table per file name."""
    tables: dict[tuple[str, int, int, str], MoeTable] = {}
    for entry in moe_entries(export, server):
        shape = entry["shape"]
        missing = [d for d in SHAPE_DIMS if d not in shape]
        if missing:
            raise SpecError(f"{MOE_KERNEL} entry {shape} lacks shape dims {missing}")
        key = (entry["device"]["name"], int(shape["E"]), int(shape["I"]), entry["dtype"])
        table = tables.setdefault(key, MoeTable(key[1], key[2], key[3], key[0]))
        m = int(shape["M"])
        if m in table.rows:
            other = table.rows[m]["shape"]
            raise SpecError(
                f"{table.describe()}: two results for M={m} (H={other['H']}, topk={other['topk']} and "
                f"H={shape['H']}, topk={shape['topk']}), i.e. two models under one {server} file name; "
                "export their jobs into separate folders"
            )
        table.rows[m] = entry
    return [tables[k] for k in sorted(tables)]


def config_file_name(E: int, N: int, dtype: str, device_name: str, server: str = "vllm") -> str:
    """The file name ``get_config_file_name`` computes on the serving GPU.

    The block shape is spelled as each server spells it: vLLM strips the spaces of ``str([128, 128])``
    (``block_shape=[128,128]``), SGLang keeps them (``block_shape=[128, 128]``).
    """
    device = device_name.replace(" ", "_")
    if server.startswith("vllm") and "H200" in device.split("_"):
        device = "NVIDIA_H200"
    quant = QUANT_DTYPES.get(dtype)
    dtype_selector = f",dtype={quant}" if quant else ""
    block = BLOCK_SHAPES.get(dtype)
    block_selector = ""
    if block:
        block_selector = f",block_shape={list(block)}"
        if server.startswith("vllm"):
            block_selector = block_selector.replace(" ", "")
    return f"E={E},N={N},device_name={device}{dtype_selector}{block_selector}.json"


def sglang_version_dir(version: str) -> str:
    """SGLang's folder for a Triton version, release numbers only: ``3.4.0+git1a2b`` -> ``triton_3_4_0``.

    SGLang first opens ``triton_<version with dots as underscores>``; when that misses, it scans the other
    folders and parses each name back with ``int()`` per part, which a local suffix (``+git...``) or a
    pre-release tag would crash. A plain release folder is found by that scan, never breaks it.
    """
    match = re.match(r"\d+(\.\d+)*", version)
    if not match:
        raise SpecError(f"Triton version {version!r} has no release number for SGLang's config folder")
    return "triton_" + match.group(0).replace(".", "_")


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
    """What the config file cannot say: the model shape, where each M's config came from, how fast it ran."""
    first = next(iter(table.rows.values()))["shape"]
    return {
        "generator": export.get("generator"),
        "created": export.get("created"),
        "job": export.get("job"),
        "format": server,
        "file": file_name,
        "kernel": MOE_KERNEL,
        "E": table.E,
        "N": table.N,
        "H": int(first["H"]),
        "topk": int(first["topk"]),
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
                **({"baselines": entry["baselines"]} if entry.get("baselines") else {}),
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
    """``E=..,N=..,device_name=..[,dtype=fp8_w8a8][,block_shape=[128,128]].json``: point
    ``VLLM_TUNED_CONFIG_FOLDER`` at the folder (vLLM reads it before its bundled configs) or copy the files
    into ``vllm/model_executor/layers/fused_moe/configs/``."""

    name = "vllm"
    include_triton_version = True

    def entries(self, export: dict[str, Any]) -> list[dict[str, Any]]:
        return moe_entries(export, self.name)

    def folder(self, table: MoeTable) -> str:
        """The file's folder, relative to the export folder."""
        return ""

    def render(self, export: dict[str, Any]) -> Files:
        files: Files = {}
        for table in moe_tables(export, self.name):
            name = config_file_name(table.E, table.N, table.dtype, table.device, self.name)
            rel = f"{self.folder(table)}{name}"
            files[rel] = json.dumps(table_json(table, self.include_triton_version), indent=4) + "\n"
            files[rel + ".cotune.json"] = json.dumps(sidecar_json(export, table, name, self.name), indent=2) + "\n"
        return files


class VllmLegacyExporter(VllmExporter):
    """The vLLM files without the ``triton_version`` key, for vLLM releases (v0.10.1 and older) that ``int()``
    every key of the file."""

    name = "vllm-legacy"
    include_triton_version = False


class SglangExporter(VllmExporter):
    """``configs/triton_<x_y_z>/<file>``, SGLang's fused_moe_triton tree. Copy the files into the installed
    tree (``sglang/srt/layers/moe/moe_runner/triton_utils/configs/``), beside the shipped ones. Pointing
    ``SGLANG_MOE_CONFIG_DIR`` at this folder instead REPLACES the shipped tree: every model without a file
    here then runs SGLang's default config."""

    name = "sglang"
    include_triton_version = False

    def folder(self, table: MoeTable) -> str:
        version = table.triton_version()
        if not version:
            raise SpecError(f"{table.describe()}: no Triton version recorded; SGLang's configs are per version")
        return f"configs/{sglang_version_dir(version)}/"
