"""Baselines of the fused-MoE kernel: vLLM's default config (checked against the values in vLLM's
``get_default_config``) and the entry vLLM's nearest-M rule picks from the file it ships, for the vendored
files, whose names are the ones cotune's vLLM exporter computes and whose bytes are the ones SOURCES.md names."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from cotune.kernels.fused_moe import FusedMoE
from cotune.kernels.fused_moe_configs import HERE, SHIPPED, nearest, vllm_default
from cotune.tuner.device.profiles import cpu_profile, recorded_profile
from cotune.tuner.export.vllm import config_file_name, nearest_config
from cotune.tuner.types import Config, Problem

H100 = recorded_profile("NVIDIA H100 80GB HBM3")
A100 = recorded_profile("NVIDIA A100-SXM4-80GB")
KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
MIXTRAL_TP2 = {"E": 8, "H": 4096, "I": 7168, "topk": 2}
DEEPSEEK_V3_EP8 = {"E": 32, "H": 7168, "I": 2048, "topk": 8}


def _config(*values: int) -> Config:
    return Config.make(dict(zip(KEYS, values, strict=True)))


# vLLM get_default_config (fused_moe.py, commit 13cb3e44): block fp8 -> 64/128/128/32, warps 4, stages 3;
# else M <= E -> 16/32/64/1; else 64/64/32/8; the last two leave num_warps / num_stages to Triton (4, 3).
@pytest.mark.parametrize(
    ("dims", "precision", "expected"),
    [
        ({**MIXTRAL_TP2, "M": 1}, "bf16", _config(16, 32, 64, 1, 4, 3)),
        ({**MIXTRAL_TP2, "M": 8}, "fp16", _config(16, 32, 64, 1, 4, 3)),  # M == E: still the small config
        ({**MIXTRAL_TP2, "M": 9}, "bf16", _config(64, 64, 32, 8, 4, 3)),
        ({**MIXTRAL_TP2, "M": 4096}, "fp8", _config(64, 64, 32, 8, 4, 3)),  # per-tensor fp8: no block rule
        ({**DEEPSEEK_V3_EP8, "M": 32}, "fp8", _config(16, 32, 64, 1, 4, 3)),  # E = 32 local experts
        ({**DEEPSEEK_V3_EP8, "M": 1}, "fp8_block128", _config(64, 128, 128, 32, 4, 3)),
        ({**DEEPSEEK_V3_EP8, "M": 4096}, "fp8_block128", _config(64, 128, 128, 32, 4, 3)),
    ],
)
def test_vllm_default_follows_vllms_rule(dims: dict, precision: str, expected: Config) -> None:
    problem = Problem.make("fused_moe", dims, precision)
    assert vllm_default(problem) == expected
    assert FusedMoE().baselines(problem, A100)["vllm_default"] == expected


def test_defaults_off_the_grid_are_still_feasible_configs() -> None:
    """BLOCK_SIZE_K 32 and GROUP_SIZE_M 8 are outside benchmark_moe's grid but inside every device rule."""
    kernel, space = FusedMoE(), FusedMoE().space()
    problem = Problem.make("fused_moe", {**MIXTRAL_TP2, "M": 64}, "bf16")
    default = kernel.baselines(problem, H100)["vllm_default"]
    assert default["BLOCK_SIZE_K"] not in next(p.values for p in space.params if p.name == "BLOCK_SIZE_K")
    assert space.violation(default, problem, H100) is None


@pytest.mark.parametrize(
    ("dims", "m", "key"),
    [
        (MIXTRAL_TP2, 1, 1),
        (MIXTRAL_TP2, 20, 16),  # 16 and 24 are as near: the key met first in the file wins, as in vLLM
        (MIXTRAL_TP2, 700, 512),
        (MIXTRAL_TP2, 5000, 4096),
        (DEEPSEEK_V3_EP8, 64, 64),
        (DEEPSEEK_V3_EP8, 2000, 2048),
    ],
)
def test_vllm_shipped_is_the_nearest_m_entry_of_the_vendored_file(dims: dict, m: int, key: int) -> None:
    precision = "bf16" if dims is MIXTRAL_TP2 else "fp8_block128"
    problem = Problem.make("fused_moe", {**dims, "M": m}, precision)
    [shipped] = [s for s in SHIPPED if s.E == dims["E"] and s.I == dims["I"]]
    entry = json.loads((HERE / shipped.file).read_text())[str(key)]
    assert FusedMoE().baselines(problem, H100)["vllm_shipped"] == Config.make(entry)


def test_values_read_in_vllms_files() -> None:
    """Two entries as they read in vLLM's repository (commits in SOURCES.md), not through our loader."""
    mixtral = Problem.make("fused_moe", {**MIXTRAL_TP2, "M": 1024}, "bf16")
    assert FusedMoE().baselines(mixtral, H100)["vllm_shipped"] == _config(128, 256, 64, 16, 8, 4)
    deepseek = Problem.make("fused_moe", {**DEEPSEEK_V3_EP8, "M": 48}, "fp8_block128")
    assert FusedMoE().baselines(deepseek, H100)["vllm_shipped"] == _config(64, 128, 256, 1, 4, 4)


def test_no_shipped_baseline_without_a_vendored_file_for_that_name() -> None:
    kernel = FusedMoE()
    for problem, device in (
        (Problem.make("fused_moe", {**MIXTRAL_TP2, "M": 16}, "bf16"), A100),  # another GPU
        (Problem.make("fused_moe", {**MIXTRAL_TP2, "M": 16}, "fp8"), H100),  # another dtype
        (Problem.make("fused_moe", {**MIXTRAL_TP2, "I": 3584, "M": 16}, "bf16"), H100),  # TP4: another N
        (Problem.make("fused_moe", {"M": 4, "E": 4, "H": 64, "I": 32, "topk": 2}, "bf16"), cpu_profile()),
    ):
        assert set(kernel.baselines(problem, device)) == {"vllm_default"}


def test_nearest_m_agrees_with_the_exporters_rule_for_every_m() -> None:
    for shipped in SHIPPED:
        table = shipped.table()
        for m in range(1, 4097):
            assert nearest(table, m) == nearest_config(HERE / shipped.file, m), (shipped.file, m)


def test_vendored_files_are_named_as_vllm_looks_them_up_and_match_their_sources() -> None:
    sources = (HERE / "SOURCES.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+\.json)` \|.*\| `([0-9a-f]{64})` \|$", sources, flags=re.M))
    assert {s.file for s in SHIPPED} == set(rows) == {p.name for p in HERE.glob("*.json")}
    for shipped in SHIPPED:
        assert shipped.file == config_file_name(shipped.E, shipped.I, shipped.precision.value, shipped.device)
        assert hashlib.sha256((HERE / shipped.file).read_bytes()).hexdigest() == rows[shipped.file]
        table = shipped.table()
        assert len(table) == 18 and all(set(entry) == set(KEYS) for entry in table.values())
    assert "Apache License 2.0" in sources and "vllm-project/vllm" in sources
