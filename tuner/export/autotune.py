"""``@triton.autotune`` config modules: the winners of a job as a Python module a Triton kernel imports.

A hand-written autotune list is a guess; this one is the set of configs that actually won on the job's
shapes, deduplicated, so Triton's own autotuner only has to choose among known-good candidates (or, with
``BY_SHAPE``, need not run at all for a tuned shape). One module per kernel, and per dtype/device when an
export holds several, since a config's speed belongs to those. The module imports nothing but triton.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cotune.tuner.errors import SpecError
from cotune.tuner.export.formats import Files

# triton.Config keyword arguments: launch options, not meta-parameters of the kernel.
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _matmul_notes(metas: Sequence[Mapping[str, Any]]) -> str:
    largest = max(int(m.get("SPLIT_K", 1)) for m in metas)
    return (
        "SPLIT_K stays a meta-parameter in each Config's kwargs, but a split needs the\n"
        "launcher's help: a grid of (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), SPLIT_K) programs\n"
        "(a grid lambda reading META['SPLIT_K']), an fp32 output of [SPLIT_K, M, N] partial\n"
        f"products and a sum over the first dim. Largest SPLIT_K here: {largest}. A launcher\n"
        "without that reduction must drop configs with SPLIT_K > 1 (prune_configs_by)."
    )


def _moe_notes(metas: Sequence[Mapping[str, Any]]) -> str:
    block_m = ", ".join(str(b) for b in sorted({int(m["BLOCK_SIZE_M"]) for m in metas}))
    return (
        "KEY names the kernel's arguments: num_valid_tokens is M * topk; E is no argument.\n"
        "The token alignment (moe_align_block_size) is computed for one BLOCK_SIZE_M before\n"
        "the launch, so @triton.autotune is only safe over configs sharing BLOCK_SIZE_M\n"
        f"(here: {block_m}). Otherwise pick the config first, as vLLM does:\n"
        "TUNED_CONFIGS[BY_SHAPE[(M, E, N, K, topk)]], then align and launch with it."
    )


@dataclass(frozen=True)
class Binding:
    """How one cotune kernel maps onto its ``@triton.jit`` function.

    ``key`` must name arguments of ``jit_function`` (Triton rejects other names); ``shape_dims`` orders the
    cotune shape in ``BY_SHAPE``'s tuples; ``notes`` says, from the configs' meta-parameters, what a
    launcher must do for them to be valid under ``@triton.autotune``.
    """

    jit_function: str
    shape_dims: tuple[str, ...]
    key: tuple[str, ...]
    notes: Callable[[Sequence[Mapping[str, Any]]], str]


BINDINGS: dict[str, Binding] = {
    "triton_matmul": Binding(
        jit_function="cotune.kernels.triton_jit.matmul.matmul_kernel",
        shape_dims=("M", "N", "K"),
        key=("M", "N", "K"),
        notes=_matmul_notes,
    ),
    "triton_moe": Binding(
        jit_function="cotune.kernels.triton_jit.moe.fused_moe_kernel",
        shape_dims=("M", "E", "N", "K", "topk"),
        key=("num_valid_tokens", "N", "K", "top_k"),
        notes=_moe_notes,
    ),
}


@dataclass(frozen=True)
class Winner:
    shape: tuple[int, ...]
    meta: dict[str, Any]  # Config kwargs: the kernel's meta-parameters
    launch: dict[str, Any]  # num_warps, num_stages, ...
    entry: Mapping[str, Any]

    @property
    def identity(self) -> tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, Any], ...]]:
        return tuple(sorted(self.meta.items())), tuple(sorted(self.launch.items()))


class AutotuneExporter:
    name = "autotune"

    def entries(self, export: dict[str, Any]) -> list[dict[str, Any]]:
        found = [e for e in export.get("entries", []) if e.get("kernel") in BINDINGS]
        if not found:
            raise SpecError(
                f"export {export.get('job')!r} has no {' or '.join(sorted(BINDINGS))} results to export "
                "as @triton.autotune modules"
            )
        return found

    def render(self, export: dict[str, Any]) -> Files:
        """``<kernel>_tuned_configs.py`` per supported kernel (``_<dtype>[_<device>]`` if it has several)."""
        groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
        for entry in self.entries(export):
            groups.setdefault((entry["kernel"], entry["dtype"], entry["device"]["name"]), []).append(entry)
        files: Files = {}
        for kernel, dtype, device in sorted(groups):
            siblings = [k for k in groups if k[0] == kernel]
            module = module_name(
                kernel,
                dtype if len({k[1] for k in siblings}) > 1 else None,
                device if len({k[2] for k in siblings}) > 1 else None,
            )
            files[f"{module}.py"] = render_module(export, kernel, dtype, device, groups[kernel, dtype, device], module)
        return files


def module_name(kernel: str, dtype: str | None, device: str | None) -> str:
    """An importable module name: the kernel, then dtype and device only where they tell modules apart."""
    parts = [kernel, dtype, re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_") if device else None]
    return "_".join(p for p in parts if p) + "_tuned_configs"


def winners(kernel: str, entries: Sequence[Mapping[str, Any]]) -> list[Winner]:
    """The entries as (shape, config) in batch order: by the batch dim, then the other dims."""
    binding = BINDINGS[kernel]
    out = []
    for entry in entries:
        shape = entry["shape"]
        if set(shape) != set(binding.shape_dims):
            raise SpecError(f"{kernel} entry has shape dims {sorted(shape)}, expected {list(binding.shape_dims)}")
        config = dict(entry["config"])
        # triton_matmul's persistent variants are other jit functions, with other arguments (see its KERNEL)
        if config.pop("KERNEL", "tutorial") != "tutorial":
            raise SpecError(
                f"{kernel} winner for {shape} runs the {entry['config']['KERNEL']} kernel, which "
                f"{binding.jit_function} cannot launch; export it with --format cotune"
            )
        launch = {k: config.pop(k) for k in LAUNCH_OPTIONS if k in config}
        out.append(Winner(tuple(int(shape[d]) for d in binding.shape_dims), config, launch, entry))
    batch = binding.shape_dims.index(str(entries[0].get("batch_dim", "M")))
    out.sort(key=lambda w: (w.shape[batch], w.shape))
    for a, b in zip(out, out[1:], strict=False):
        if a.shape == b.shape:
            raise SpecError(f"{kernel}: two results for shape {dict(zip(binding.shape_dims, a.shape, strict=True))}")
    return out


def _literal(value: Any) -> str:
    """A Python literal that ruff's formatter leaves alone (double-quoted strings)."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise SpecError(f"config value {value!r} cannot be written into a triton.Config")


def _docstring_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def render_module(
    export: Mapping[str, Any],
    kernel: str,
    dtype: str,
    device: str,
    entries: Sequence[Mapping[str, Any]],
    module: str,
) -> str:
    """The module's source. Every literal is exploded with a trailing comma, so ``ruff format`` keeps it as
    written under any line length, and the header lines stay well under 100 columns."""
    binding = BINDINGS[kernel]
    ordered = winners(kernel, entries)
    configs: list[Winner] = []
    index: dict[Any, int] = {}
    for w in ordered:
        if w.identity not in index:
            index[w.identity] = len(configs)
            configs.append(w)
    triton_versions = sorted({str(e.get("toolchain", {}).get("triton")) for e in entries} - {"None"})
    notes = binding.notes([w.meta for w in configs])
    key_tuple = "(" + ", ".join(binding.shape_dims) + ")"
    jit_name = binding.jit_function.rsplit(".", 1)[1]
    header = f"""Tuned configs of cotune kernel {kernel} ({dtype}) on {device}.

job:     {export.get("job")}
device:  {device}
dtype:   {dtype}
triton:  {", ".join(triton_versions) or "unknown"} (the version the configs were tuned and timed with)
created: {export.get("created")} by {export.get("generator")}
shapes:  {len(ordered)} tuned, {len(configs)} distinct winning configs
kernel:  {binding.jit_function}

Usage, letting Triton choose among the winners once per distinct KEY value::

    from {module} import KEY, TUNED_CONFIGS

    @triton.autotune(configs=TUNED_CONFIGS, key=KEY)
    @triton.jit
    def {jit_name}(...): ...

or, for a tuned shape, without benchmarking: TUNED_CONFIGS[BY_SHAPE[{key_tuple}]],
launched with config.all_kwargs().

{notes}
"""
    lines = ['"""' + _docstring_text(header) + '"""', "", "import triton", ""]
    lines.append("TUNED_CONFIGS = [")
    for w in configs:
        lines.append("    triton.Config(")
        lines.append("        {")
        lines += [f"            {json.dumps(k)}: {_literal(v)}," for k, v in w.meta.items()]
        lines.append("        },")
        lines += [f"        {k}={_literal(v)}," for k, v in w.launch.items()]
        lines.append("    ),")
    lines.append("]")
    lines.append("")
    lines.append("# Arguments of the @triton.jit function that the autotuner keys its cache on.")
    lines.append("KEY = [" + ", ".join(json.dumps(k) for k in binding.key) + "]")
    lines.append("")
    lines.append("# The order of BY_SHAPE's tuples.")
    lines.append("SHAPE_DIMS = (" + ", ".join(json.dumps(d) for d in binding.shape_dims) + ")")
    lines.append("")
    lines.append("# Tuned shape -> index of its winner in TUNED_CONFIGS.")
    lines.append("BY_SHAPE = {")
    for w in ordered:
        comment = _measured(w.entry)
        lines.append(f"    ({', '.join(str(d) for d in w.shape)}): {index[w.identity]},{comment}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _measured(entry: Mapping[str, Any]) -> str:
    """``  # 12.3 us, trial 17``: enough to see why a config won without opening the export."""
    time_s = entry.get("metrics", {}).get("time_s")
    trial = entry.get("provenance", {}).get("trial")
    parts = [f"{time_s * 1e6:.1f} us" if isinstance(time_s, int | float) else None]
    parts.append(f"trial {trial}" if trial is not None else None)
    text = ", ".join(p for p in parts if p)
    return f"  # {text}" if text else ""
