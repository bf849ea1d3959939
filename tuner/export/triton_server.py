"""Triton Inference Server model configs from ``torch_decoder`` winners (:mod:`cotune.kernels.torch_decoder`).

Each entry becomes one model of a Triton model repository, ``<out_dir>/<model>/config.pbtxt``, in protobuf text
format: ``platform: "pytorch_libtorch"`` with the layer's hidden states as ``INPUT__0`` and ``OUTPUT__0``
(``[seq, hidden]`` per request, the batch dim implicit), the winner's ``max_batch_size``, a
``dynamic_batching`` block with its queue delay and its preferred batch sizes (the winner's max batch size and
its power-of-two divisors above 1), and an ``instance_group`` of the winner's ``instances`` on ``KIND_CPU`` or
``KIND_GPU`` after the device it was tuned on. Where the numbers came from (job, study, trial, source hash,
latency and throughput) goes into ``parameters`` under ``cotune.*`` keys, which Triton keeps but does not read,
and into a comment heading the file.

``seq`` and ``p99_ms`` are part of the model: each tuned problem has its own winner, and Triton's dynamic
batcher only batches along the batch dim, so one model serves one request length under one budget.

Beside the config, version 1 of the model: ``<model>/1/model.pt``, the TorchScript of the layer that was tuned
(its seeded weights, in the tuned precision; :func:`cotune.kernels.torch_decoder.torchscript_layer`), which
the PyTorch backend loads with ``torch.jit.load``. So the repository loads and serves as tuned; to serve a real
model under the tuned batching, put that model's TorchScript in its place (same tensor names and shapes).

The config is written as text, not through Triton's protobuf classes, so exporting needs no ``tritonclient``
(the tests parse the result with it).
"""

from __future__ import annotations

from typing import Any

from cotune.tuner.errors import SpecError
from cotune.tuner.export.formats import Files

KERNELS = ("torch_decoder",)
DIM_ORDER = ("hidden", "heads", "intermediate", "seq", "p99_ms")
DATA_TYPES = {"fp32": "TYPE_FP32", "bf16": "TYPE_BF16", "fp16": "TYPE_FP16"}
INSTANCE_KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}
CONFIG_KEYS = ("max_batch_size", "instances", "queue_delay_us")


def model_name(entry: dict[str, Any]) -> str:
    """``torch_decoder_hidden512_heads8_intermediate1408_seq128_p99ms250_fp32_cpu``: every dim, the dtype and
    the device kind, so the models of one export never share a folder."""
    shape = entry["shape"]
    dims = [d for d in DIM_ORDER if d in shape] + sorted(set(shape) - set(DIM_ORDER))
    parts = [entry["kernel"], *(f"{d.replace('_', '')}{shape[d]}" for d in dims), entry["dtype"]]
    return "_".join([*parts, entry["device"]["kind"]])


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """The max batch size and its power-of-two divisors above 1, ascending; none for a max batch of 1."""
    if max_batch_size <= 1:
        return []
    sizes = {max_batch_size}
    size = 2
    while max_batch_size % size == 0 and size < max_batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for c in text:
        if c in escapes:
            out.append(escapes[c])
        elif c.isprintable():
            out.append(c)
        else:  # octal escapes of its UTF-8 bytes
            out.extend(f"\\{b:03o}" for b in c.encode())
    return '"' + "".join(out) + '"'


def _number(value: float) -> str:
    return f"{value:.6g}"


def _provenance(entry: dict[str, Any], export: dict[str, Any]) -> dict[str, str]:
    from cotune.kernels.torch_decoder import (
        request_flops,  # the kernel's own flop count, to turn GFLOP/s into requests/s
    )

    metrics = entry.get("metrics", {})
    prov = entry.get("provenance", {})
    out = {
        "cotune.generator": str(export.get("generator", "cotune")),
        "cotune.job": str(export.get("job", "")),
        "cotune.created": str(export.get("created", "")),
        "cotune.study": str(prov.get("study", "")),
        "cotune.trial": str(prov.get("trial", "")),
        "cotune.source_hash": str(prov.get("source_hash", "")),
        "cotune.device": str(entry["device"].get("name", "")),
        "cotune.p99_budget_ms": str(entry["shape"].get("p99_ms", "")),
    }
    if prov.get("mlflow_run_id"):
        out["cotune.mlflow_run_id"] = str(prov["mlflow_run_id"])
    for key in ("time_p99_s", "p99_s"):  # a p99 is exported only where the metrics carry one
        if key in metrics:
            out["cotune.p99_ms"] = _number(metrics[key] * 1e3)
            break
    if "time_s" in metrics:
        out["cotune.median_latency_ms"] = _number(metrics["time_s"] * 1e3)
    if "gflops" in metrics:
        out["cotune.throughput_gflops"] = _number(metrics["gflops"])
        out["cotune.throughput_requests_per_s"] = _number(metrics["gflops"] * 1e9 / request_flops(entry["shape"]))
    for tool, version in sorted(entry.get("toolchain", {}).items()):
        out[f"cotune.toolchain.{tool}"] = str(version)
    return out


def render(entry: dict[str, Any], export: dict[str, Any]) -> str:
    """The ``config.pbtxt`` of one ``torch_decoder`` entry."""
    name = model_name(entry)
    config = entry["config"]
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise SpecError(f"{name}: config {config} lacks {', '.join(missing)}; is it a torch_decoder winner?")
    dtype = DATA_TYPES.get(entry["dtype"])
    kind = INSTANCE_KINDS.get(entry["device"]["kind"])
    if dtype is None or kind is None:
        raise SpecError(f"{name}: no Triton data type for {entry['dtype']} or instance kind for the device")
    max_batch, instances, delay = (int(config[k]) for k in CONFIG_KEYS)
    dims = f"[ {int(entry['shape']['seq'])}, {int(entry['shape']['hidden'])} ]"
    prov = _provenance(entry, export)
    stats = ", ".join(
        f"{label} {prov[key]}"
        for label, key in (
            ("median latency ms", "cotune.median_latency_ms"),
            ("p99 ms", "cotune.p99_ms"),
            ("GFLOP/s", "cotune.throughput_gflops"),
            ("requests/s", "cotune.throughput_requests_per_s"),
        )
        if key in prov
    )
    preferred = preferred_batch_sizes(max_batch)
    lines = [
        f"# Written by {prov['cotune.generator']} from job {prov['cotune.job']}, study {prov['cotune.study']}, "
        f"trial {prov['cotune.trial']}.",
        f"# Tuned on {prov['cotune.device']} for a p99 latency within {prov['cotune.p99_budget_ms']} ms: {stats}.",
        f"name: {_quote(name)}",
        'platform: "pytorch_libtorch"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        '    name: "INPUT__0"',
        f"    data_type: {dtype}",
        f"    dims: {dims}",
        "  }",
        "]",
        "output [",
        "  {",
        '    name: "OUTPUT__0"',
        f"    data_type: {dtype}",
        f"    dims: {dims}",
        "  }",
        "]",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {kind}",
        "  }",
        "]",
        "dynamic_batching {",
        *([f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"] if preferred else []),
        f"  max_queue_delay_microseconds: {delay}",
        "}",
    ]
    for key, value in prov.items():
        lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


class TritonServerExporter:
    name = "triton-server"

    def entries(self, export: dict[str, Any]) -> list[dict[str, Any]]:
        entries = [e for e in export.get("entries", []) if e.get("kernel") in KERNELS]
        if not entries:
            found = sorted({str(e.get("kernel")) for e in export.get("entries", [])})
            raise SpecError(
                f"the triton-server format serves {', '.join(KERNELS)} winners; this export has "
                f"{', '.join(found) or 'no entries'}"
            )
        return entries

    def render(self, export: dict[str, Any]) -> Files:
        """``<model>/config.pbtxt`` and ``<model>/1/model.pt`` for each ``torch_decoder`` entry; other kernels
        are skipped."""
        files: Files = {}
        for entry in self.entries(export):
            name = model_name(entry)
            if f"{name}/config.pbtxt" in files:
                raise SpecError(f"two entries of the export map to model {name} (tuned on two devices of one kind?)")
            files[f"{name}/config.pbtxt"] = render(entry, export)
            files[f"{name}/1/model.pt"] = _model_file(entry)
        return files


def _model_file(entry: dict[str, Any]) -> bytes:
    from cotune.kernels.torch_decoder import torchscript_layer  # torch only when this format is asked for
    from cotune.tuner.types import Precision

    return torchscript_layer({k: int(v) for k, v in entry["shape"].items()}, Precision(entry["dtype"]))
