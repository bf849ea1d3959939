"""Model-derived workloads: from a Hugging Face ``config.json`` to the cotune job specs that tune every GEMM,
attention and fused-MoE problem of one forward pass on one rank, per batch size.

Why: a kernel tuned on shapes picked by hand says little about a model, and a decoder's shapes follow from a
handful of numbers in its config. Each kernel gets one spec holding all its shapes (so one ``cotune tune``
covers it), and ``plan.json`` keeps what the specs cannot: which layer operation each shape stands for, how
many layers run it, and what the plan leaves out, so a report can add the tuned times back up to a time per
token. The shapes themselves come from :mod:`cotune.tuner.codesign.forward` (which problems, how many layers)
and :mod:`cotune.tuner.codesign.sharding` (vLLM's per-rank sizes under ``--tp`` / ``--ep``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cotune.tuner.codesign.decoder import ModelConfig
from cotune.tuner.codesign.forward import (
    ATTENTION,
    FUSED_MOE,
    MATMUL,
    Phase,
    PlannedProblem,
    layer_counts,
    layer_problems,
    positive_ints,
)
from cotune.tuner.codesign.model_config import load_model_config
from cotune.tuner.codesign.sharding import SINGLE_GPU, Parallelism
from cotune.tuner.errors import CotuneError, SpecError
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.types import Precision

DEFAULT_SEQ_LEN = 2048
DEFAULT_TRIALS = 50
MANIFEST = "plan.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Precisions a plan may ask for before this tree's Precision enum names them: the fused-MoE kernel's
# block-quantised fp8 (fp8_w8a8 with block_shape [128, 128]). A kernel that lacks one just leaves it out.
PLAN_ONLY_PRECISIONS = ("fp8_block128",)


@dataclass(frozen=True)
class _KernelPlan:
    """How plan writes one kernel's spec: file suffix and the dim that carries the batch size."""

    suffix: str
    batch_dim: str


# Spec order in the output, and the batch dim of each kernel (fixed here: a plan must not depend on importing
# GPU kernels, and fused_moe may not be registered in this tree).
KERNEL_PLANS: dict[str, _KernelPlan] = {
    MATMUL: _KernelPlan("matmul", "M"),
    ATTENTION: _KernelPlan("attention", "batch"),
    FUSED_MOE: _KernelPlan("moe", "M"),
}

NOTES = (
    "attention: heads are one rank's query heads; triton_attention is multi-head attention, so grouped-query "
    "attention's sharing of K/V heads is not modelled (the kernel reads heads/kv_heads times the K/V a GQA "
    "kernel would, so a memory-bound decode attention time is pessimistic)",
    "moe_experts: one fused_moe problem per MoE layer, as vLLM's fused_experts runs it with one config: "
    "routing to topk of E local experts, the w1 grouped GEMM [E, 2I, H], SiLU-and-mul, the w2 grouped GEMM "
    "[E, H, I], the weighted sum",
    "prefill: GEMMs run on batch*seq_len tokens, lm_head only on the last token of each sequence",
    "lm_head: vLLM pads the vocabulary to a multiple of 64 before splitting it over --tp ranks",
    "not planned in any model: embedding lookup, RMSNorms, rotary embedding, residual adds, the sampler, and "
    "the all-reduce / all-to-all between ranks",
)


@dataclass
class _Group:
    """One deduplicated spec entry: a shape without its batch dim, the batch values and who uses it."""

    fixed: dict[str, int]
    batch_values: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _group(problems: list[PlannedProblem], batch_dim: str, dims: Sequence[str]) -> list[_Group]:
    groups: dict[tuple[tuple[str, int], ...], _Group] = {}
    for p in problems:
        fixed = {d: p.shape[d] for d in dims if d != batch_dim}
        g = groups.setdefault(tuple(fixed.items()), _Group(fixed))
        if p.shape[batch_dim] not in g.batch_values:
            g.batch_values.append(p.shape[batch_dim])
        if p.name not in g.names:
            g.names.append(p.name)
    return list(groups.values())


def _flow(mapping: Mapping[str, object]) -> str:
    """A YAML flow mapping; values are ints or int lists, whose JSON form is valid YAML."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in mapping.items()) + "}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# Trials without a 1 % gain after which a batch size between two tuned neighbours that share a winner stops.
TABLE_PATIENCE = 8


def _spec_yaml(
    spec_name: str, kernel: str, groups: list[_Group], precisions: list[str], trials: int, header: list[str]
) -> str:
    plan = KERNEL_PLANS[kernel]
    lines = [f"# {h}" for h in header]
    lines += [f"name: {json.dumps(spec_name)}", f"kernel: {kernel}", "problems:"]
    for g in groups:
        dims = {plan.batch_dim: sorted(g.batch_values), **g.fixed}
        lines.append(f"  - {_flow(dims)}  # {', '.join(g.names)}")
    lines.append(f"precisions: [{', '.join(precisions)}]")
    if kernel == FUSED_MOE and any(len(g.batch_values) > 2 for g in groups):
        # a server's config file is a table over batch sizes: tune it as one (see budget.table_patience)
        lines.append(f"budget: {{trials: {trials}, table_patience: {TABLE_PATIENCE}}}")
    else:
        lines.append(f"budget: {{trials: {trials}}}")
    return "\n".join(lines) + "\n"


def known_precisions() -> list[str]:
    return list(dict.fromkeys([p.value for p in Precision] + list(PLAN_ONLY_PRECISIONS)))


def _precisions(values: Iterable[str | Precision]) -> list[str]:
    known = known_precisions()
    out = [str(getattr(v, "value", v)) for v in values]
    for v in out:
        if v not in known:
            raise SpecError(f"plan: unknown precision {v!r}; known: {', '.join(known)}")
    if not out:
        raise SpecError("plan: give at least one precision")
    return list(dict.fromkeys(out))


def plan_specs(
    model: ModelConfig,
    name: str,
    batches: Sequence[int] | None = None,
    precisions: Sequence[str | Precision] = (Precision.BF16,),
    hardware: Sequence[str] = (),
    trials: int = DEFAULT_TRIALS,
    seq_len: int = DEFAULT_SEQ_LEN,
    *,
    phase: Phase = "decode",
    source: str | None = None,
    serving_p99_ms: int | None = None,
    parallel: Parallelism = SINGLE_GPU,
) -> dict[str, str]:
    """``{file name: text}``: one job spec per kernel (``<name>-matmul.yaml``, ...) and the ``plan.json`` manifest.

    Each spec holds all of its kernel's shapes, identical ones merged across layer operations, with the batch
    dim as the list of batch values. ``batches=None`` plans batches 1, 16 and 64 and, for an MoE model, the
    fused-MoE problem at each of the servers' 18 batch sizes too. A precision a kernel does not support is
    left out of that kernel's spec. Every spec is checked with :func:`cotune.tuner.spec.job.parse_spec`; a
    kernel that is not registered, supports none of the precisions, or whose spec does not load is listed
    under ``skipped`` in the manifest with the reason, so one kernel cannot block planning the others. Only a
    plan with no spec at all is an error.
    """
    if not NAME_PATTERN.match(name):
        raise SpecError(f"plan: name {name!r} must match {NAME_PATTERN.pattern} (it names the specs)")
    (trials,) = positive_ints([trials], "trials")
    wanted = _precisions(precisions)
    gpus = list(dict.fromkeys(_one_line(h) for h in hardware))
    if any(not h for h in gpus):
        raise SpecError("plan: a hardware name is empty")
    problems = layer_problems(model, batches, seq_len, phase=phase, parallel=parallel)
    batch_list = list(dict.fromkeys(p.batch for p in problems if p.batch is not None))
    moe_list = sorted({p.tokens for p in problems if p.kernel == FUSED_MOE})
    header = [
        "Generated by cotune plan; re-run it rather than editing by hand.",
        f"model: {name} (source: {_one_line(source) if source else 'in memory'})",
        f"batches: {', '.join(map(str, batch_list))}; phase: {phase}; seq_len: {seq_len}; "
        f"per rank of tp {parallel.tp}, ep {parallel.ep}",
        f"{MANIFEST} maps each shape to its layer operation and the layers that run it.",
    ]
    files: dict[str, str] = {}
    spec_of: dict[str, str] = {}
    specs: dict[str, dict[str, object]] = {}
    skipped: list[dict[str, object]] = []
    for kernel, plan in KERNEL_PLANS.items():
        mine = [p for p in problems if p.kernel == kernel]
        if not mine:
            continue
        names = list(dict.fromkeys(p.name for p in mine))
        try:
            supported = {p.value for p in get_kernel(kernel).precisions}
        except CotuneError as exc:
            skipped.append({"kernel": kernel, "problems": names, "reason": str(exc)})
            continue
        usable = [p for p in wanted if p in supported]
        if not usable:
            reason = f"{kernel} supports {', '.join(sorted(supported))}, none of those asked for"
            skipped.append({"kernel": kernel, "problems": names, "reason": reason})
            continue
        filename = f"{name}-{plan.suffix}.yaml"
        groups = _group(mine, plan.batch_dim, list(mine[0].shape))
        text = _spec_yaml(f"{name}-{plan.suffix}", kernel, groups, usable, trials, header)
        try:
            parse_spec(text, source=filename)
        except SpecError as exc:  # e.g. a spec loader that rejects a dim value the kernel takes (causal: 0)
            skipped.append({"kernel": kernel, "problems": names, "reason": f"generated spec does not load: {exc}"})
            continue
        files[filename] = text
        specs[filename] = {"kernel": kernel, "precisions": usable, "problems": names}
        spec_of.update(dict.fromkeys(names, filename))
    if not files:
        raise SpecError("plan: no kernel can run this plan: " + "; ".join(str(s["reason"]) for s in skipped))
    if serving_p99_ms is not None:
        filename, text = _serving_spec(model, name, wanted, trials, seq_len, serving_p99_ms, header)
        files[filename] = text
    manifest = {
        "generated_by": "cotune plan",
        "model": name,
        "source": source,
        "config": model.to_json(),
        "parallel": parallel.to_json(),
        "layers": {scope.value: n for scope, n in layer_counts(model).items() if scope.value != "head"},
        "phase": phase,
        "seq_len": seq_len,
        "batches": batch_list,
        **({"moe_batches": moe_list} if moe_list else {}),
        "precisions": wanted,
        "hardware": gpus,
        "specs": specs,
        "problems": _problems_json(problems, spec_of),
        "skipped": skipped,
        "not_modelled": list(model.not_modelled),
        "notes": list(NOTES),
    }
    files[MANIFEST] = json.dumps(manifest, indent=2) + "\n"
    return files


def _serving_spec(
    model: ModelConfig,
    name: str,
    precisions: list[str],
    trials: int,
    seq_len: int,
    p99_ms: int,
    header: list[str],
) -> tuple[str, str]:
    """A serving-level job: the whole decoder layer behind a dynamic batcher (``torch_decoder``), for the
    batch size, instance count and queue delay of a Triton Inference Server config under a p99 budget.
    An MoE model is served as its dense equivalent here (one expert's MLP); the MoE kernels are tuned apart."""
    (p99_ms,) = positive_ints([p99_ms], "serving p99_ms")
    heads = model.attention.heads
    if model.hidden_size % heads.value:
        raise SpecError(
            f"plan: --serving-p99-ms: torch_decoder splits hidden_size {model.hidden_size} into {heads.key} "
            f"{heads.value} heads, which does not divide it"
        )
    supported = {p.value for p in get_kernel("torch_decoder").precisions}
    usable = [p for p in precisions if p in supported] or [Precision.FP32.value]
    width = model.experts.intermediate if model.experts is not None else model.mlp_intermediate
    assert width is not None
    dims = {"hidden": model.hidden_size, "heads": heads.value, "intermediate": width.value, "seq": seq_len}
    lines = [f"# {h}" for h in header] + [
        "# Serving level: export the winner with cotune export <job> --format triton-server",
        f"name: {json.dumps(name + '-serving')}",
        "kernel: torch_decoder",
        "problems:",
        f"  - {_flow({**dims, 'p99_ms': p99_ms})}",
        f"precisions: [{', '.join(usable)}]",
        "objective: max_throughput",
        f"budget: {{trials: {trials}}}",
    ]
    text = "\n".join(lines) + "\n"
    filename = f"{name}-serving.yaml"
    parse_spec(text, source=filename)
    return filename, text


def _problems_json(problems: list[PlannedProblem], spec_of: dict[str, str]) -> dict[str, dict[str, object]]:
    """Per layer operation: its kernel and spec, the layers that run it, and its shape at each batch."""
    by_name: dict[str, dict[str, object]] = {}
    for p in problems:
        entry = by_name.setdefault(
            p.name,
            {
                "kernel": p.kernel,
                "spec": spec_of.get(p.name),
                "scope": p.scope.value,
                "count_per_layer": p.count_per_layer,
                "layers": p.layers,
                "per_batch": [],
            },
        )
        entry["per_batch"].append(p.to_json())  # type: ignore[union-attr]
    return by_name


def default_name(config_path: Path) -> str:
    """A spec-safe name from the config file's stem (``models/llama-3-70b.json`` -> ``llama-3-70b``)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config_path).stem).strip("-._") or "model"
    return stem[:80]


def write_plan(
    config_path: Path,
    out_dir: Path,
    batches: Sequence[int] | None = None,
    precisions: Sequence[str | Precision] = (Precision.BF16,),
    hardware: Sequence[str] = (),
    trials: int = DEFAULT_TRIALS,
    seq_len: int = DEFAULT_SEQ_LEN,
    *,
    name: str | None = None,
    phase: Phase = "decode",
    serving_p99_ms: int | None = None,
    parallel: Parallelism = SINGLE_GPU,
) -> list[Path]:
    """Plan ``config_path`` and write the specs and ``plan.json`` into ``out_dir`` (created; files overwritten).

    Nothing is written unless every spec validated, so a failed plan leaves no half-written directory.
    """
    config_path = Path(config_path)
    model = load_model_config(config_path)
    files = plan_specs(
        model,
        name or default_name(config_path),
        batches,
        precisions,
        hardware,
        trials,
        seq_len,
        phase=phase,
        source=str(config_path),
        serving_p99_ms=serving_p99_ms,
        parallel=parallel,
    )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for filename, text in files.items():
            path = out_dir / filename
            path.write_text(text)
            paths.append(path)
    except OSError as exc:
        raise CotuneError(f"{out_dir}: cannot write the plan: {exc.strerror}") from None
    return paths
