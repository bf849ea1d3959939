"""Serving exporters (tuner/export): real files in tmp_path, read back the way the servers read them."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cotune.tuner.errors import SpecError
from cotune.tuner.export.autotune import AutotuneExporter
from cotune.tuner.export.cotune_json import CotuneJsonExporter
from cotune.tuner.export.formats import EXPORTERS, OWNERS_FILE, Exporter, get_exporter, write_files
from cotune.tuner.export.serving import ConfigTable
from cotune.tuner.export.vllm import (
    SglangExporter,
    VllmExporter,
    VllmLegacyExporter,
    config_file_name,
    nearest_config,
    sglang_version_dir,
)

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"
TOOLCHAIN = {"triton": "3.4.0", "torch": "2.8.0", "cuda": "12.8"}
# Mixtral 8x7B at tensor parallelism 2: 8 experts, hidden 4096, intermediate 14336 / 2 per rank. vLLM names its
# file by w2.shape[2], the intermediate size per rank, so this is E=8,N=7168 on disk.
MIXTRAL = {"E": 8, "H": 4096, "I": 7168, "topk": 2}
MOE_BF16 = {
    1: (16, 64, 128, 1, 4, 4),
    16: (16, 128, 128, 1, 4, 3),
    64: (32, 128, 64, 8, 4, 4),
    256: (64, 128, 64, 16, 8, 4),
    1024: (128, 256, 64, 16, 8, 3),
}
MOE_FP8 = {
    1: (16, 128, 128, 1, 4, 5),
    64: (64, 128, 128, 1, 4, 4),
    512: (128, 256, 128, 32, 8, 4),
}
MATMUL = {  # (M, N, K) -> BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, num_warps, num_stages
    (16, 4096, 4096): (16, 64, 128, 8, 4, 4, 4),
    (128, 4096, 4096): (64, 128, 64, 8, 1, 4, 4),
    (128, 14336, 4096): (64, 128, 64, 8, 1, 4, 4),  # the same winner as the shape above: deduplicated
    (1024, 4096, 4096): (128, 128, 64, 8, 1, 8, 3),
    (4096, 4096, 4096): (128, 256, 64, 8, 1, 8, 3),
}
MOE_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
MATMUL_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "SPLIT_K", "num_warps", "num_stages")


def entry(kernel: str, shape: dict[str, int], dtype: str, config: dict[str, int], trial: int, **kw: Any) -> dict:
    return {
        "kernel": kernel,
        "shape": shape,
        "dtype": dtype,
        "batch_dim": "M",
        "device": {"name": kw.get("device", H100), "kind": kw.get("kind", "cuda")},
        "config": config,
        "metrics": {"time_s": 1e-5 * (1 + trial), "gflops": 100.0 + trial, "max_rel_error": 1e-3},
        "toolchain": kw.get("toolchain", TOOLCHAIN),
        "provenance": {
            "study": f"mixtral-{kernel}-{dtype}-m{shape['M']}",
            "trial": trial,
            "mlflow_run_id": f"run{trial:04d}",
            "source_hash": "abc123",
        },
    }


def moe_entries(
    table: dict[int, tuple[int, ...]], dtype: str, kernel: str = "fused_moe", shape: dict | None = None, **kw: Any
) -> list[dict]:
    dims = shape or (MIXTRAL if kernel == "fused_moe" else W1_MIXTRAL)
    return [
        entry(kernel, {"M": m, **dims}, dtype, dict(zip(MOE_KEYS, c, strict=True)), trial=10 + i, **kw)
        for i, (m, c) in enumerate(table.items())
    ]


# triton_moe (the w1 GEMM alone) is exported only as @triton.autotune modules, never as server files
W1_MIXTRAL = {"E": 8, "N": 28672, "K": 4096, "topk": 2}


def write(exporter: Exporter, export: dict[str, Any], folder: Path, **kw: Any) -> list[Path]:
    """What ``cotune export --format`` does after its checks: render, then write the files."""
    return write_files(folder, exporter.render(export), export["job"], **kw)


def matmul_entries() -> list[dict]:
    return [
        entry("triton_matmul", dict(zip("MNK", s, strict=True)), "bf16", dict(zip(MATMUL_KEYS, c, strict=True)), i)
        for i, (s, c) in enumerate(MATMUL.items())
    ]


def make_export(entries: list[dict]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "generator": "cotune 0.1.0",
        "created": "2025-06-01T12:00:00+00:00",
        "job": "mixtral",
        "entries": entries,
    }


@pytest.fixture
def export() -> dict[str, Any]:
    cpu = entry("c_matmul", {"M": 64, "N": 64, "K": 64}, "fp32", {"TILE": 32}, 0, device="Intel Xeon", kind="cpu")
    w1 = moe_entries(MOE_BF16, "bf16", kernel="triton_moe") + moe_entries(MOE_FP8, "fp8", kernel="triton_moe")
    return make_export([*moe_entries(MOE_BF16, "bf16"), *moe_entries(MOE_FP8, "fp8"), *w1, *matmul_entries(), cpu])


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- registry -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cotune", "vllm", "vllm-legacy", "sglang", "autotune", "triton-server"])
def test_get_exporter_builds_each_format(name: str) -> None:
    exporter = get_exporter(name)
    assert exporter.name == name
    assert isinstance(exporter, Exporter)


def test_triton_server_slot_is_registered() -> None:
    assert EXPORTERS["triton-server"] == "cotune.tuner.export.triton_server:TritonServerExporter"


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(SpecError) as err:
        get_exporter("tensorrt")
    for known in EXPORTERS:
        assert known in str(err.value)


# --- cotune JSON ----------------------------------------------------------------------------------------------


def test_cotune_json_is_the_export_and_serving_reads_it(export: dict, tmp_path: Path) -> None:
    [path] = write(CotuneJsonExporter(), export, tmp_path)
    assert path == tmp_path / "mixtral.json"
    assert json.loads(path.read_text()) == export
    table = ConfigTable.load(path)
    found = table.lookup("fused_moe", {"M": 40, **MIXTRAL}, "bf16", H100)
    assert found is not None and found.shape["M"] == 16


# --- vLLM -----------------------------------------------------------------------------------------------------

BF16_FILE = "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"
FP8_FILE = "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json"


def test_vllm_writes_exactly_the_files_of_the_tuned_model(export: dict, tmp_path: Path) -> None:
    """Mixtral-8x7B at TP2 is E=8,N=7168 and nothing else: no file for another model's name (vLLM ships
    E=8,N=2048 for Mixtral-8x22B at TP8, and E=8,N=14336 is Mixtral-8x7B at TP1); the triton_moe (w1-only)
    results of the same export become no file at all."""
    written = write(VllmExporter(), export, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [BF16_FILE, BF16_FILE + ".cotune.json", FP8_FILE, FP8_FILE + ".cotune.json"]
    )
    assert {p.parent for p in written} == {tmp_path}
    on_disk = sorted(p.name for p in tmp_path.iterdir())
    assert on_disk == sorted([OWNERS_FILE, *(p.name for p in written)])  # no temp files left


def test_vllm_file_content(export: dict, tmp_path: Path) -> None:
    write(VllmExporter(), export, tmp_path)
    for name, table in ((BF16_FILE, MOE_BF16), (FP8_FILE, MOE_FP8)):
        data = json.loads((tmp_path / name).read_text())
        assert list(data) == ["triton_version"] + [str(m) for m in sorted(table)]  # numeric, not string order
        assert data["triton_version"] == "3.4.0"
        for m, values in table.items():
            assert data[str(m)] == dict(zip(MOE_KEYS, values, strict=True))
            assert all(type(v) is int for v in data[str(m)].values())


def test_vllm_nearest_config_follows_vllm_rule(export: dict, tmp_path: Path) -> None:
    write(VllmExporter(), export, tmp_path)
    path = tmp_path / BF16_FILE
    tuned = sorted(MOE_BF16)
    for m in range(1, 4097):
        # Independently: the nearest tuned M; on a tie vLLM's min() keeps the first key, the smaller one.
        best = min(tuned, key=lambda t: (abs(t - m), t))
        assert nearest_config(path, m) == dict(zip(MOE_KEYS, MOE_BF16[best], strict=True)), m

    def tuned_for(m: int) -> dict[str, int]:
        return dict(zip(MOE_KEYS, MOE_BF16[m], strict=True))

    assert nearest_config(path, 40) == tuned_for(16)  # 24 from 16 and from 64: the first key wins
    assert nearest_config(path, 41) == tuned_for(64)
    assert nearest_config(path, 160) == tuned_for(64)  # 96 from 64 and from 256
    assert nearest_config(path, 5000) == tuned_for(1024)
    assert nearest_config(tmp_path / FP8_FILE, 300) == dict(zip(MOE_KEYS, MOE_FP8[512], strict=True))


def test_vllm_triton_version_is_optional_for_older_loaders(export: dict, tmp_path: Path) -> None:
    """vLLM before PR #24769 and SGLang int() every key: the flag writes a file they can read."""

    def old_loader(path: Path) -> dict[int, Any]:
        return {int(key): val for key, val in json.loads(path.read_text()).items()}

    write(VllmExporter(), export, tmp_path / "new")
    with pytest.raises(ValueError):
        old_loader(tmp_path / "new" / BF16_FILE)
    write(VllmLegacyExporter(), export, tmp_path / "old")
    assert sorted(old_loader(tmp_path / "old" / BF16_FILE)) == sorted(MOE_BF16)


def test_vllm_sidecar_keeps_provenance(export: dict, tmp_path: Path) -> None:
    write(VllmExporter(), export, tmp_path)
    side = json.loads((tmp_path / (BF16_FILE + ".cotune.json")).read_text())
    assert side["job"] == "mixtral" and side["file"] == BF16_FILE
    assert (side["E"], side["N"], side["H"], side["topk"], side["dtype"]) == (8, 7168, 4096, 2, "bf16")
    assert side["toolchain"] == TOOLCHAIN
    assert list(side["configs"]) == [str(m) for m in sorted(MOE_BF16)]
    for i, m in enumerate(MOE_BF16):
        got = side["configs"][str(m)]
        assert got["trial"] == 10 + i
        assert got["study"] == f"mixtral-fused_moe-bf16-m{m}"
        assert got["mlflow_run_id"] == f"run{10 + i:04d}"
        assert got["metrics"]["time_s"] == pytest.approx(1e-5 * (11 + i))
        assert got["shape"] == {"M": m, **MIXTRAL}


def test_vllm_renames_h200_variants_like_vllm(tmp_path: Path) -> None:
    data = make_export(moe_entries({1: MOE_BF16[1]}, "bf16", device="NVIDIA H200 NVL"))
    assert write(VllmExporter(), data, tmp_path / "v")[0].name == "E=8,N=7168,device_name=NVIDIA_H200.json"
    sglang = write(SglangExporter(), data, tmp_path / "s")[0]
    assert sglang.name == "E=8,N=7168,device_name=NVIDIA_H200_NVL.json"


def test_block_quantised_fp8_is_named_as_each_server_names_it() -> None:
    """vLLM: ``str([128, 128]).replace(" ", "")``; SGLang: ``str([128, 128])`` (their get_config_file_name)."""
    assert config_file_name(256, 256, "fp8_block128", H100) == (
        "E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json"
    )
    assert config_file_name(256, 256, "fp8_block128", H100, "sglang") == (
        "E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128, 128].json"
    )


def test_vllm_without_fused_moe_results_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no fused_moe results to export for vllm"):
        VllmExporter().render(make_export(matmul_entries()))
    w1_only = make_export(moe_entries(MOE_BF16, "bf16", kernel="triton_moe"))
    with pytest.raises(SpecError, match="triton_moe times the w1 GEMM alone"):
        VllmExporter().entries(w1_only)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_vllm_refuses_two_models_under_one_file_name(tmp_path: Path) -> None:
    """Same E, I, dtype, device but another hidden size: one vLLM file cannot hold both models."""
    other = moe_entries({16: MOE_BF16[1]}, "bf16", shape={**MIXTRAL, "H": 6144})
    with pytest.raises(SpecError, match="two results for M=16"):
        VllmExporter().render(make_export([*moe_entries(MOE_BF16, "bf16"), *other]))


def test_an_export_never_replaces_another_tunings_file(export: dict, tmp_path: Path) -> None:
    """A folder that holds a file of the same name from another job (or a server's shipped file) is refused
    as a whole, before anything is written; the same job may refresh its own files; --force replaces."""
    shipped = tmp_path / BF16_FILE
    tmp_path.mkdir(exist_ok=True)
    shipped.write_text('{"1": {"BLOCK_SIZE_M": 16}}\n')
    with pytest.raises(SpecError, match="a file cotune did not write"):
        write(VllmExporter(), export, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [BF16_FILE]  # not even the fp8 file was written
    assert shipped.read_text() == '{"1": {"BLOCK_SIZE_M": 16}}\n'
    write(VllmExporter(), export, tmp_path, force=True)
    assert json.loads(shipped.read_text())["1"]["BLOCK_SIZE_M"] == MOE_BF16[1][0]
    write(VllmExporter(), export, tmp_path)  # the same job again: its own files
    other = {**export, "job": "another-job"}
    with pytest.raises(SpecError, match="written by job 'mixtral'"):
        write(VllmExporter(), other, tmp_path)


# --- SGLang ---------------------------------------------------------------------------------------------------


def test_sglang_layout_and_loader(export: dict, tmp_path: Path) -> None:
    written = write(SglangExporter(), export, tmp_path)
    folder = tmp_path / "configs" / "triton_3_4_0"
    assert sorted(written) == sorted(
        folder / n for n in (BF16_FILE, BF16_FILE + ".cotune.json", FP8_FILE, FP8_FILE + ".cotune.json")
    )
    # SGLang's get_moe_configs: {int(key): val for key, val in json.load(f).items()}, no triton_version key.
    loaded = {int(key): val for key, val in json.loads((folder / BF16_FILE).read_text()).items()}
    assert loaded == {m: dict(zip(MOE_KEYS, c, strict=True)) for m, c in MOE_BF16.items()}
    assert nearest_config(folder / FP8_FILE, 1) == dict(zip(MOE_KEYS, MOE_FP8[1], strict=True))


def test_sglang_needs_the_triton_version(tmp_path: Path) -> None:
    data = make_export(moe_entries(MOE_BF16, "bf16", toolchain={"torch": "2.8.0"}))
    with pytest.raises(SpecError, match="no Triton version"):
        SglangExporter().render(data)


def test_sglang_version_folder_survives_its_fallback_scan(tmp_path: Path) -> None:
    """A local build's version (3.4.0+git...) makes no folder SGLang's scan of version folders chokes on."""
    data = make_export(moe_entries(MOE_BF16, "bf16", toolchain={"triton": "3.4.0+git1a2b3c4"}))
    write(SglangExporter(), data, tmp_path)
    assert sglang_version_dir("3.5.0rc1") == "triton_3_5_0"
    configs_root = tmp_path / "configs"
    # SGLang's get_moe_configs fallback, as written in its fused_moe_triton_config.py:
    versions = sorted(
        (d.removeprefix("triton_").replace("_", ".") for d in (p.name for p in configs_root.iterdir())),
        key=lambda v: tuple(int(x) for x in v.split(".")),
        reverse=True,
    )
    assert versions == ["3.4.0"]
    assert (configs_root / "triton_3_4_0" / BF16_FILE).is_file()


# --- @triton.autotune module ----------------------------------------------------------------------------------


def test_autotune_matmul_module(export: dict, tmp_path: Path) -> None:
    import triton

    written = write(AutotuneExporter(), export, tmp_path)
    assert sorted(p.name for p in written) == [
        "triton_matmul_tuned_configs.py",
        "triton_moe_bf16_tuned_configs.py",
        "triton_moe_fp8_tuned_configs.py",
    ]
    mod = load_module(tmp_path / "triton_matmul_tuned_configs.py")
    assert mod.KEY == ["M", "N", "K"]
    assert mod.SHAPE_DIMS == ("M", "N", "K")
    distinct = list(dict.fromkeys(MATMUL[s] for s in sorted(MATMUL)))  # batch order, first appearance
    assert len(mod.TUNED_CONFIGS) == len(distinct) == 4
    for config, values in zip(mod.TUNED_CONFIGS, distinct, strict=True):
        want = dict(zip(MATMUL_KEYS, values, strict=True))
        assert isinstance(config, triton.Config)
        assert config.kwargs == {k: want[k] for k in MATMUL_KEYS[:5]}
        assert (config.num_warps, config.num_stages) == (want["num_warps"], want["num_stages"])
    assert set(mod.BY_SHAPE) == set(MATMUL)
    for shape, values in MATMUL.items():
        config = mod.TUNED_CONFIGS[mod.BY_SHAPE[shape]]
        assert {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages} == dict(
            zip(MATMUL_KEYS, values, strict=True)
        )
    for text in ("job:     mixtral", H100, "triton:  3.4.0", "2025-06-01", "@triton.autotune", "SPLIT_K"):
        assert text in mod.__doc__


def test_autotune_module_keys_are_kernel_arguments(export: dict, tmp_path: Path) -> None:
    """Triton rejects a key that is no argument of the jitted function; decorating is the check."""
    import triton
    from cotune.kernels.triton_jit.matmul import matmul_kernel
    from cotune.kernels.triton_jit.moe import fused_moe_kernel

    write(AutotuneExporter(), export, tmp_path)
    for name, fn in (("triton_matmul", matmul_kernel), ("triton_moe_bf16", fused_moe_kernel)):
        mod = load_module(tmp_path / f"{name}_tuned_configs.py")
        triton.autotune(configs=mod.TUNED_CONFIGS, key=mod.KEY)(fn)
        for config in mod.TUNED_CONFIGS:
            assert set(config.kwargs) <= set(fn.arg_names)


def test_autotune_moe_module(export: dict, tmp_path: Path) -> None:
    write(AutotuneExporter(), export, tmp_path)
    mod = load_module(tmp_path / "triton_moe_fp8_tuned_configs.py")
    assert mod.SHAPE_DIMS == ("M", "E", "N", "K", "topk")
    assert len(mod.TUNED_CONFIGS) == len(MOE_FP8)
    for m, values in MOE_FP8.items():
        config = mod.TUNED_CONFIGS[mod.BY_SHAPE[(m, 8, 28672, 4096, 2)]]
        want = dict(zip(MOE_KEYS, values, strict=True))
        assert config.kwargs == {k: want[k] for k in MOE_KEYS[:4]}
        assert (config.num_warps, config.num_stages) == (want["num_warps"], want["num_stages"])


def test_autotune_module_imports_only_triton_and_is_ruff_clean(export: dict, tmp_path: Path) -> None:
    for path in write(AutotuneExporter(), export, tmp_path):
        tree = ast.parse(path.read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        assert [alias.name for n in imports for alias in n.names] == ["triton"]
        for args in (
            ["check", "--no-cache", "--config", str(REPO / "pyproject.toml")],
            ["check", "--no-cache", "--isolated"],
            ["format", "--check", "--no-cache", "--config", str(REPO / "pyproject.toml")],
            ["format", "--check", "--no-cache", "--isolated"],
        ):
            run = subprocess.run([sys.executable, "-m", "ruff", *args, str(path)], capture_output=True, text=True)
            assert run.returncode == 0, f"ruff {args[0]} {path.name}:\n{run.stdout}{run.stderr}"


def test_autotune_without_triton_results_is_an_error(tmp_path: Path) -> None:
    cpu = entry("c_matmul", {"M": 64, "N": 64, "K": 64}, "fp32", {"TILE": 32}, 0, device="Intel Xeon", kind="cpu")
    with pytest.raises(SpecError, match="no triton_matmul or triton_moe results"):
        AutotuneExporter().render(make_export([cpu]))


def test_rest_api_returns_the_same_files_as_the_cli(export: dict, tmp_path: Path) -> None:
    from cotune.tuner.service.api import _serving_files

    served = _serving_files(export, "vllm")
    written = write(get_exporter("vllm"), export, tmp_path)
    assert served["format"] == "vllm"
    assert served["files"] == {str(p.relative_to(tmp_path)): p.read_text() for p in written}
