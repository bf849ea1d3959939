"""Serving-level tuning: the torch_decoder kernel behind a dynamic batcher, and its Triton config.pbtxt export."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cotune.kernels.torch_decoder as td
import pytest
from cotune.kernels.torch_decoder import REQUESTS, TOLERANCE, TorchDecoder, p99_s, requests_per_s, serve
from cotune.tuner.errors import SpecError
from cotune.tuner.export.formats import get_exporter, write_files
from cotune.tuner.export.triton_server import TritonServerExporter, model_name, preferred_batch_sizes
from cotune.tuner.measure.kernel import BenchSettings, CandidateError
from cotune.tuner.types import Config, FailureKind, Precision, Problem

SMALL = {"hidden": 64, "heads": 4, "intermediate": 128, "seq": 16}


def _problem(dtype: str = "fp32", p99_ms: int = 60_000, **dims: int) -> Problem:
    return Problem.make("torch_decoder", {**SMALL, "p99_ms": p99_ms, **dims}, dtype)


def _config(max_batch_size: int = 4, instances: int = 1, queue_delay_us: int = 500) -> Config:
    return Config.make({"max_batch_size": max_batch_size, "instances": instances, "queue_delay_us": queue_delay_us})


def test_measure_returns_request_latencies_and_served_throughput(cpu) -> None:
    problem = _problem()
    m = TorchDecoder().measure(problem, _config(instances=min(2, cpu.cores)), cpu, BenchSettings(warmup=1))
    assert len(m.times_s) == REQUESTS and all(t > 0 for t in m.times_s)
    assert p99_s(m.times_s) >= m.median_s
    # gflops is the served rate: requests/s x flops of one request, and every latency fits in the wall time.
    rate = requests_per_s(m, problem)
    assert rate > 0 and m.gflops == pytest.approx(rate * TorchDecoder().flops(problem) / 1e9)
    assert REQUESTS / rate >= max(m.times_s) * 0.999
    assert m.max_rel_error <= TOLERANCE[Precision.FP32]


def test_a_too_tight_budget_fails_naming_the_p99_and_the_budget(cpu) -> None:
    problem = _problem(p99_ms=1, hidden=256, heads=4, intermediate=704, seq=64)
    with pytest.raises(CandidateError) as info:
        TorchDecoder().measure(problem, _config(max_batch_size=2, queue_delay_us=0), cpu, BenchSettings())
    assert info.value.kind is FailureKind.INFEASIBLE
    message = str(info.value)
    assert "p99 latency" in message and "over the budget 1 ms" in message
    assert "stopped after" in message  # a hopeless config does not serve the whole load


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_batched_outputs_match_the_fp32_reference_of_each_request(dtype) -> None:
    import torch

    weights = td.make_weights(SMALL["hidden"], SMALL["heads"], SMALL["intermediate"])
    inputs = td.make_inputs(SMALL["seq"], SMALL["hidden"], count=3)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    with torch.inference_mode():
        out = td.decoder_layer(
            torch.stack(inputs).to(torch_dtype), {k: v.to(torch_dtype) for k, v in weights.items()}, SMALL["heads"]
        )
    ref = torch.stack([td.reference(x, weights, SMALL["heads"]) for x in inputs])
    err = td.check(out.float().numpy(), ref.numpy(), TOLERANCE[Precision(dtype)])
    if dtype == "bf16":  # checked against fp32, bf16 rounding shows, within its own tolerance
        assert err > TOLERANCE[Precision.FP32]


def test_measure_reports_the_error_and_rejects_a_wrong_layer(cpu, monkeypatch) -> None:
    m = TorchDecoder().measure(_problem("bf16"), _config(max_batch_size=2), cpu, BenchSettings())
    assert TOLERANCE[Precision.FP32] < m.max_rel_error <= TOLERANCE[Precision.BF16]
    real = td.reference
    monkeypatch.setattr(td, "reference", lambda x, w, heads: real(x, w, heads) * 1.1)
    with pytest.raises(CandidateError) as info:
        TorchDecoder().measure(_problem(), _config(), cpu, BenchSettings())
    assert info.value.kind is FailureKind.WRONG_RESULT


def test_batcher_caps_batches_and_holds_a_lone_request_for_the_queue_delay() -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    def instance(numbers: list[int]) -> None:
        with lock:
            sizes.append(len(numbers))
        time.sleep(0.002)

    # 16 requests wait before the model copies start, so the first batch is full whatever the timing
    result = serve([instance, instance], max_batch_size=4, queue_delay_s=0.0, clients=16, requests=48)
    assert len(result.latencies_s) == 48 and sum(sizes) == 48 and max(sizes) == 4
    assert not result.aborted and result.wall_s >= max(result.latencies_s)

    sizes.clear()  # one client: every batch is one request that waited the full delay first
    result = serve([instance], max_batch_size=4, queue_delay_s=0.02, clients=1, requests=3)
    assert sizes == [1, 1, 1] and min(result.latencies_s) >= 0.02


def test_batcher_stops_once_the_p99_is_certainly_over_budget() -> None:
    result = serve([lambda numbers: time.sleep(0.01)], max_batch_size=1, queue_delay_s=0.0, clients=2, requests=64,
                   budget_s=0.001)  # fmt: skip
    assert result.aborted and len(result.latencies_s) == td.over_budget_limit(64) == 2


def test_space_keeps_instances_within_the_cores(cpu) -> None:
    space = TorchDecoder().space()
    assert space.names == ["max_batch_size", "instances", "queue_delay_us"]
    problem = _problem()
    too_many = _config(instances=4)
    if cpu.cores < 4:
        assert "instances within cores violated" in (space.violation(too_many, problem, cpu) or "")
    assert space.violation(_config(instances=1), problem, cpu) is None
    assert td.threads_per_instance(_config(instances=2), cpu) == max(1, cpu.cores // 2)


def test_preferred_batch_sizes_are_the_winner_and_its_power_of_two_divisors() -> None:
    assert preferred_batch_sizes(1) == []
    assert preferred_batch_sizes(2) == [2]
    assert preferred_batch_sizes(16) == [2, 4, 8, 16]
    assert preferred_batch_sizes(12) == [2, 4, 12]


def _entry(dtype: str, kind: str, config: dict[str, int], metrics: dict[str, float]) -> dict:
    return {
        "kernel": "torch_decoder",
        "shape": {**SMALL, "p99_ms": 250},
        "dtype": dtype,
        "batch_dim": "seq",
        "device": {"name": "AMD EPYC" if kind == "cpu" else "NVIDIA H100 80GB HBM3", "kind": kind},
        "config": config,
        "metrics": metrics,
        "toolchain": {"torch": "2.13.0"},
        "provenance": {"study": f"cpu-serving:{dtype}", "trial": 7, "mlflow_run_id": None, "source_hash": "abc123"},
    }


def test_triton_config_pbtxt_parses_and_carries_the_winner(cpu, tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2  # test dependency: tritonclient[grpc]

    problem = _problem()
    config = {"max_batch_size": 8, "instances": min(2, cpu.cores), "queue_delay_us": 500}
    m = TorchDecoder().measure(problem, Config.make(config), cpu, BenchSettings())
    gpu_config = {"max_batch_size": 16, "instances": 4, "queue_delay_us": 2000}
    export = {
        "schema_version": 1,
        "generator": "cotune test",
        "created": "2026-01-01T00:00:00+00:00",
        "job": "cpu-serving",
        "entries": [
            _entry("fp32", "cpu", config, m.metrics()),
            _entry("bf16", "cuda", gpu_config, {"time_s": 0.004, "gflops": 900.0, "time_p99_s": 0.006}),
            {**_entry("fp32", "cpu", config, {}), "kernel": "torch_linear"},  # not served: skipped
        ],
    }
    exporter = get_exporter("triton-server")
    assert isinstance(exporter, TritonServerExporter) and exporter.name == "triton-server"
    written = write_files(tmp_path, exporter.render(export), export["job"])
    paths = [p for p in written if p.name == "config.pbtxt"]
    assert len(paths) == 2 and len(written) == 4  # and each model's 1/model.pt

    for path, entry, kind, dtype in (
        (paths[0], export["entries"][0], model_config_pb2.ModelInstanceGroup.KIND_CPU, model_config_pb2.TYPE_FP32),
        (paths[1], export["entries"][1], model_config_pb2.ModelInstanceGroup.KIND_GPU, model_config_pb2.TYPE_BF16),
    ):
        assert path == tmp_path / model_name(entry) / "config.pbtxt"
        parsed = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        winner = entry["config"]
        assert parsed.name == path.parent.name and parsed.platform == "pytorch_libtorch"
        assert parsed.max_batch_size == winner["max_batch_size"]
        assert parsed.dynamic_batching.max_queue_delay_microseconds == winner["queue_delay_us"]
        assert list(parsed.dynamic_batching.preferred_batch_size) == preferred_batch_sizes(winner["max_batch_size"])
        assert [(g.count, g.kind) for g in parsed.instance_group] == [(winner["instances"], kind)]
        for tensors, tensor_name in ((parsed.input, "INPUT__0"), (parsed.output, "OUTPUT__0")):
            assert [(t.name, t.data_type, list(t.dims)) for t in tensors] == [(tensor_name, dtype, [16, 64])]
        params = {k: v.string_value for k, v in parsed.parameters.items()}
        assert params["cotune.job"] == "cpu-serving" and params["cotune.trial"] == "7"
        assert params["cotune.p99_budget_ms"] == "250"
        assert float(params["cotune.throughput_gflops"]) == pytest.approx(entry["metrics"]["gflops"], rel=1e-5)
    first = {k: v.string_value for k, v in text_format.Parse(paths[0].read_text(), model_config_pb2.ModelConfig())
             .parameters.items()}  # fmt: skip
    assert float(first["cotune.throughput_requests_per_s"]) == pytest.approx(requests_per_s(m, problem), rel=1e-5)
    gpu = text_format.Parse(paths[1].read_text(), model_config_pb2.ModelConfig())
    assert gpu.parameters["cotune.p99_ms"].string_value == "6"


def test_triton_exporter_refuses_an_export_without_decoder_winners(tmp_path: Path) -> None:
    export = {"job": "j", "entries": [{**_entry("fp32", "cpu", {}, {}), "kernel": "torch_linear"}]}
    with pytest.raises(SpecError, match="torch_decoder"):
        TritonServerExporter().render(export)
    bad = {"job": "j", "entries": [_entry("fp32", "cpu", {"max_batch_size": 2}, {})]}
    with pytest.raises(SpecError, match="instances"):
        TritonServerExporter().render(bad)


def test_the_triton_server_repository_loads_as_the_pytorch_backend_loads_it(tmp_path: Path) -> None:
    """Triton's loading rules (STACK.md): the model folder is named as the config's ``name``, a version folder
    the default policy admits (``1/``) holds ``model.pt``, TorchScript the PyTorch backend opens with
    ``torch.jit.load``, whose ``INPUT__0``/``OUTPUT__0`` take ``[batch, *dims]`` in the config's data type;
    preferred batch sizes are at most ``max_batch_size``. A batch of the largest configured size runs and
    matches the layer it was tuned as."""
    import torch
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    export = {
        "job": "cpu-serving",
        "entries": [
            _entry("fp32", "cpu", {"max_batch_size": 4, "instances": 1, "queue_delay_us": 100}, {"time_s": 0.01}),
            _entry("bf16", "cuda", {"max_batch_size": 8, "instances": 2, "queue_delay_us": 0}, {"time_s": 0.01}),
        ],
    }
    write_files(tmp_path, TritonServerExporter().render(export), export["job"])
    models = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(models) == 2
    weights = td.make_weights(SMALL["hidden"], SMALL["heads"], SMALL["intermediate"])
    for folder in models:
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == folder.name and config.platform == "pytorch_libtorch"
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]
        assert max(config.dynamic_batching.preferred_batch_size, default=0) <= config.max_batch_size
        dtype = {model_config_pb2.TYPE_FP32: torch.float32, model_config_pb2.TYPE_BF16: torch.bfloat16}
        (inp,), (out,) = config.input, config.output
        assert (inp.name, out.name) == ("INPUT__0", "OUTPUT__0") and list(inp.dims) == list(out.dims)
        model = torch.jit.load(str(folder / "1" / "model.pt"))
        batch = torch.randn(config.max_batch_size, *inp.dims).to(dtype[inp.data_type])
        with torch.no_grad():
            result = model(batch)
        assert result.shape == batch.shape and result.dtype == dtype[out.data_type]
        expected = td.decoder_layer(batch.float(), weights, SMALL["heads"])
        tolerance = td.TOLERANCE[Precision.FP32 if inp.data_type == model_config_pb2.TYPE_FP32 else Precision.BF16]
        assert (result.float() - expected).abs().max() <= tolerance * expected.abs().max() * 4
