"""Model-derived workloads: from a Hugging Face ``config.json`` to the cotune job specs that tune every GEMM,
attention and MoE problem of one decoder layer plus the LM head, per batch size.

Why: a kernel tuned on shapes picked by hand says little about a model, and a decoder's shapes follow from a
handful of numbers in its config. Each kernel gets one spec holding all its shapes (so one ``cotune tune``
covers it), and ``plan.json`` keeps what the specs cannot: which layer operation each shape stands for, how
often it runs per layer and in how many layers, so a report can add the tuned times back up to a time per
token.

Modelled: a Llama-style decoder layer (fused QKV projection, attention, output projection, gated MLP with a
fused gate_up GEMM) or, for Mixtral-style models (``num_local_experts``), a router GEMM and vLLM's fused-MoE
GEMMs in place of the MLP; then the LM head once. Not modelled: norms, rotary embedding, activations, the
sampler, shared experts (DeepSeek, Qwen-MoE) and tensor parallelism (shapes are for one unsharded GPU).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from cotune.tuner.codesign.model_config import ModelConfig, load_model_config
from cotune.tuner.errors import CotuneError, SpecError
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.spec.job import parse_spec
from cotune.tuner.types import Precision

Phase = Literal["decode", "prefill"]
PHASES: tuple[Phase, ...] = ("decode", "prefill")
DEFAULT_SEQ_LEN = 2048
DEFAULT_TRIALS = 50
MANIFEST = "plan.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

MATMUL, ATTENTION, MOE = "triton_matmul", "triton_attention", "triton_moe"


@dataclass(frozen=True)
class _KernelPlan:
    """How plan writes one kernel's spec: file suffix and the dim that carries the batch size."""

    suffix: str
    batch_dim: str


# Spec order in the output, and the batch dim of each kernel (fixed here: triton_attention may not be
# registered yet, and a plan must not depend on importing GPU kernels).
KERNEL_PLANS: dict[str, _KernelPlan] = {
    MATMUL: _KernelPlan("matmul", "M"),
    ATTENTION: _KernelPlan("attention", "batch"),
    MOE: _KernelPlan("moe", "M"),
}

NOTES = (
    "attention: heads are the query heads; triton_attention is multi-head attention, so grouped-query "
    "attention's sharing of K/V heads is not modelled (the kernel reads heads/kv_heads times the K/V a GQA "
    "kernel would, so a memory-bound decode attention time is pessimistic)",
    "moe_down: tuned as triton_moe (vLLM's w1 kernel) with N=hidden, K=expert intermediate; the flops match "
    "vLLM's w2 GEMM, which reads M*topk distinct rows where the w1 kernel re-reads M rows topk times",
    "prefill: GEMMs run on batch*seq_len tokens, lm_head only on the last token of each sequence",
    "not planned: norms, rotary embedding, activation, sampling, shared experts, tensor parallelism",
)


@dataclass(frozen=True)
class PlannedProblem:
    """One kernel call of the model at one batch size, and how often it runs per forward pass.

    Time per forward pass = sum of ``time(shape) * count_per_layer * layers``; divide by ``tokens`` for time
    per token.
    """

    name: str
    kernel: str
    shape: Mapping[str, int]
    batch: int
    tokens: int
    count_per_layer: int = 1
    layers: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "batch": self.batch,
            "tokens": self.tokens,
            "shape": dict(self.shape),
        }


def _positive_ints(values: Iterable[int], what: str) -> list[int]:
    out = list(dict.fromkeys(values))
    if not out:
        raise SpecError(f"plan: give at least one {what}")
    bad = [v for v in out if isinstance(v, bool) or not isinstance(v, int) or v <= 0]
    if bad:
        raise SpecError(f"plan: {what} must be positive integers, got {', '.join(map(str, bad))}")
    return out


def _check_phase(phase: str) -> Phase:
    if phase not in PHASES:
        raise SpecError(f"plan: phase must be one of {', '.join(PHASES)}, got {phase!r}")
    return cast(Phase, phase)


def _check_seq_len(model: ModelConfig, seq_len: int) -> int:
    (seq_len,) = _positive_ints([seq_len], "seq_len")
    limit = model.max_position_embeddings
    if limit is not None and seq_len > limit:
        raise SpecError(f"plan: seq_len {seq_len} exceeds the model's max_position_embeddings {limit}")
    return seq_len


def layer_problems(
    model: ModelConfig, batches: Sequence[int], seq_len: int, *, phase: Phase = "decode"
) -> list[PlannedProblem]:
    """Every kernel call of one decoder layer plus the LM head, per batch size, in execution order.

    ``decode``: each of ``batch`` sequences adds one token against a KV cache of ``seq_len``, so GEMMs have
    M = batch. ``prefill``: each of ``batch`` prompts of ``seq_len`` tokens, causal, so GEMMs have
    M = batch * seq_len and the LM head M = batch (only the last position's logits are sampled).
    """
    batches = _positive_ints(batches, "batch sizes")
    phase = _check_phase(phase)
    seq_len = _check_seq_len(model, seq_len)
    out: list[PlannedProblem] = []
    for batch in batches:
        tokens = batch if phase == "decode" else batch * seq_len
        for name, kernel, shape, layers in _forward_calls(model, batch, tokens, seq_len, phase):
            out.append(PlannedProblem(name, kernel, shape, batch, tokens, layers=layers))
    return out


def _forward_calls(
    model: ModelConfig, batch: int, tokens: int, seq_len: int, phase: Phase
) -> list[tuple[str, str, dict[str, int], int]]:
    """(name, kernel, shape, layers) of one forward pass; shapes list dims in the kernel's own order."""
    heads, kv, hd, hidden = model.num_attention_heads, model.kv_heads, model.head_size, model.hidden_size
    layers = model.num_hidden_layers
    seq_q, causal = (1, 0) if phase == "decode" else (seq_len, 1)
    attention = {"batch": batch, "heads": heads, "seq_q": seq_q, "seq_k": seq_len, "head_dim": hd, "causal": causal}
    calls = [
        ("qkv_proj", MATMUL, {"M": tokens, "N": (heads + 2 * kv) * hd, "K": hidden}, layers),
        (f"attention_{phase}", ATTENTION, attention, layers),
        ("o_proj", MATMUL, {"M": tokens, "N": hidden, "K": heads * hd}, layers),
    ]
    if model.num_local_experts is not None and model.num_experts_per_tok is not None:
        experts, topk, inter = model.num_local_experts, model.num_experts_per_tok, model.expert_intermediate
        calls += [
            ("moe_router", MATMUL, {"M": tokens, "N": experts, "K": hidden}, layers),
            ("moe_gate_up", MOE, {"M": tokens, "E": experts, "N": 2 * inter, "K": hidden, "topk": topk}, layers),
            ("moe_down", MOE, {"M": tokens, "E": experts, "N": hidden, "K": inter, "topk": topk}, layers),
        ]
    else:
        inter = model.intermediate_size
        calls += [
            ("gate_up_proj", MATMUL, {"M": tokens, "N": 2 * inter, "K": hidden}, layers),
            ("down_proj", MATMUL, {"M": tokens, "N": hidden, "K": inter}, layers),
        ]
    calls.append(("lm_head", MATMUL, {"M": batch, "N": model.vocab_size, "K": hidden}, 1))
    return calls


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


def _spec_yaml(
    spec_name: str, kernel: str, groups: list[_Group], precisions: list[Precision], trials: int, header: list[str]
) -> str:
    plan = KERNEL_PLANS[kernel]
    lines = [f"# {h}" for h in header]
    lines += [f"name: {json.dumps(spec_name)}", f"kernel: {kernel}", "problems:"]
    for g in groups:
        dims = {plan.batch_dim: g.batch_values, **g.fixed}
        lines.append(f"  - {_flow(dims)}  # {', '.join(g.names)}")
    lines.append(f"precisions: [{', '.join(p.value for p in precisions)}]")
    lines.append(f"budget: {{trials: {trials}}}")
    return "\n".join(lines) + "\n"


def _precisions(values: Iterable[str | Precision]) -> list[Precision]:
    out: list[Precision] = []
    for v in values:
        try:
            out.append(Precision(v))
        except ValueError:
            raise SpecError(f"plan: unknown precision {v!r}; known: {', '.join(p.value for p in Precision)}") from None
    if not out:
        raise SpecError("plan: give at least one precision")
    return list(dict.fromkeys(out))


def plan_specs(
    model: ModelConfig,
    name: str,
    batches: Sequence[int],
    precisions: Sequence[str | Precision] = (Precision.BF16,),
    hardware: Sequence[str] = (),
    trials: int = DEFAULT_TRIALS,
    seq_len: int = DEFAULT_SEQ_LEN,
    *,
    phase: Phase = "decode",
    source: str | None = None,
    serving_p99_ms: int | None = None,
) -> dict[str, str]:
    """``{file name: text}``: one job spec per kernel (``<name>-matmul.yaml``, ...) and the ``plan.json`` manifest.

    Each spec holds all of its kernel's shapes, identical ones merged across layer operations, with the batch
    dim as the list of batch values. A precision a kernel does not support is left out of that kernel's spec.
    Every spec is checked with :func:`cotune.tuner.spec.job.parse_spec`; a kernel that is not registered, supports none
    of the precisions, or whose spec does not load is listed under ``skipped`` in the manifest with the
    reason, so one kernel cannot block planning the others. Only a plan with no spec at all is an error.
    """
    if not NAME_PATTERN.match(name):
        raise SpecError(f"plan: name {name!r} must match {NAME_PATTERN.pattern} (it names the specs)")
    (trials,) = _positive_ints([trials], "trials")
    wanted = _precisions(precisions)
    gpus = list(dict.fromkeys(_one_line(h) for h in hardware))
    if any(not h for h in gpus):
        raise SpecError("plan: a hardware name is empty")
    problems = layer_problems(model, batches, seq_len, phase=phase)
    batch_list = list(dict.fromkeys(p.batch for p in problems))
    header = [
        "Generated by cotune plan; re-run it rather than editing by hand.",
        f"model: {name} (source: {_one_line(source) if source else 'in memory'})",
        f"batches: {', '.join(map(str, batch_list))}; phase: {phase}; seq_len: {seq_len}",
        f"{MANIFEST} maps each shape to its layer operation, count per layer and layers.",
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
            supported = get_kernel(kernel).precisions
        except CotuneError as exc:
            skipped.append({"kernel": kernel, "problems": names, "reason": str(exc)})
            continue
        usable = [p for p in wanted if p in supported]
        if not usable:
            reason = f"{kernel} supports {', '.join(p.value for p in supported)}, none of those asked for"
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
        specs[filename] = {"kernel": kernel, "precisions": [p.value for p in usable], "problems": names}
        spec_of.update(dict.fromkeys(names, filename))
    if not files:
        raise SpecError("plan: no kernel can run this plan: " + "; ".join(str(s["reason"]) for s in skipped))
    if serving_p99_ms is not None:
        filename, text = _serving_spec(model, name, wanted, trials, seq_len, serving_p99_ms, header)
        files[filename] = text
    manifest = _manifest(
        model, name, source, phase, seq_len, batch_list, wanted, gpus, problems, specs, spec_of, skipped
    )
    files[MANIFEST] = json.dumps(manifest, indent=2) + "\n"
    return files


def _serving_spec(
    model: ModelConfig,
    name: str,
    precisions: list[Precision],
    trials: int,
    seq_len: int,
    p99_ms: int,
    header: list[str],
) -> tuple[str, str]:
    """A serving-level job: the whole decoder layer behind a dynamic batcher (``torch_decoder``), for the
    batch size, instance count and queue delay of a Triton Inference Server config under a p99 budget.
    An MoE model is served as its dense equivalent here (one expert's MLP); the MoE kernels are tuned apart."""
    (p99_ms,) = _positive_ints([p99_ms], "serving p99_ms")
    supported = get_kernel("torch_decoder").precisions
    usable = [p for p in precisions if p in supported] or [Precision.FP32]
    dims = {
        "hidden": model.hidden_size,
        "heads": model.num_attention_heads,
        "intermediate": model.expert_intermediate if model.is_moe else model.intermediate_size,
        "seq": seq_len,
        "p99_ms": p99_ms,
    }
    lines = [f"# {h}" for h in header] + [
        "# Serving level: export the winner with cotune export <job> --format triton-server",
        f"name: {json.dumps(name + '-serving')}",
        "kernel: torch_decoder",
        "problems:",
        f"  - {_flow(dims)}",
        f"precisions: [{', '.join(p.value for p in usable)}]",
        "objective: max_throughput",
        f"budget: {{trials: {trials}}}",
    ]
    text = "\n".join(lines) + "\n"
    filename = f"{name}-serving.yaml"
    parse_spec(text, source=filename)
    return filename, text


def _manifest(
    model: ModelConfig,
    name: str,
    source: str | None,
    phase: Phase,
    seq_len: int,
    batches: list[int],
    precisions: list[Precision],
    hardware: list[str],
    problems: list[PlannedProblem],
    specs: dict[str, dict[str, object]],
    spec_of: dict[str, str],
    skipped: list[dict[str, object]],
) -> dict[str, object]:
    """What a report needs to rebuild a forward pass from per-shape tuned times."""
    by_name: dict[str, dict[str, object]] = {}
    for p in problems:
        if p.name not in by_name:
            by_name[p.name] = {
                "kernel": p.kernel,
                "spec": spec_of.get(p.name),
                "count_per_layer": p.count_per_layer,
                "layers": p.layers,
                "per_batch": [q.to_json() for q in problems if q.name == p.name],
            }
    return {
        "generated_by": "cotune plan",
        "model": name,
        "source": source,
        "config": model.model_dump(exclude_none=True) | {"head_dim": model.head_size, "kv_heads": model.kv_heads},
        "phase": phase,
        "seq_len": seq_len,
        "batches": batches,
        "precisions": [p.value for p in precisions],
        "hardware": hardware,
        "specs": specs,
        "problems": by_name,
        "skipped": skipped,
        "notes": list(NOTES),
    }


def default_name(config_path: Path) -> str:
    """A spec-safe name from the config file's stem (``models/llama-3-70b.json`` -> ``llama-3-70b``)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config_path).stem).strip("-._") or "model"
    return stem[:80]


def write_plan(
    config_path: Path,
    out_dir: Path,
    batches: Sequence[int],
    precisions: Sequence[str | Precision] = (Precision.BF16,),
    hardware: Sequence[str] = (),
    trials: int = DEFAULT_TRIALS,
    seq_len: int = DEFAULT_SEQ_LEN,
    *,
    name: str | None = None,
    phase: Phase = "decode",
    serving_p99_ms: int | None = None,
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
