"""The issue's user path on a CPU: a model config -> plan -> a tuned serving-level job -> a Triton Inference
Server config.pbtxt that Triton's own protobuf parses -> a report with plots. The GPU kernels' specs in the
same plan are only planned here (they need a GPU to tune)."""

from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.cli import cotune

TINY = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 128,
}


def test_plan_tune_export_report(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    proc = cotune(
        "plan", "tiny.json", "--batch", "1", "--batch", "4", "--precision", "fp32", "--seq-len", "32",
        "--trials", "3", "--serving-p99-ms", "5000", "-o", "plan",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "plan").iterdir()} == {
        "tiny-matmul.yaml", "tiny-attention.yaml", "tiny-serving.yaml", "plan.json"
    }  # fmt: skip

    proc = cotune("tune", "plan/tiny-serving.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    proc = cotune("export", "tiny-serving", "--format", "triton-server", "-o", "repo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [pbtxt] = list((tmp_path / "repo").glob("*/config.pbtxt"))
    config = text_format.Parse(pbtxt.read_text(), model_config_pb2.ModelConfig())
    best = json.loads(cotune("best", "tiny-serving", cwd=tmp_path).stdout)[0]["config"]
    assert config.max_batch_size == best["max_batch_size"]
    assert config.instance_group[0].count == best["instances"]
    assert config.dynamic_batching.max_queue_delay_microseconds == best["queue_delay_us"]

    proc = cotune("report", "tiny-serving", "--plan", "plan/plan.json", "-o", "report/report.md", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| torch_decoder " in report and list((tmp_path / "report").glob("*-problems.png"))


def test_a_moe_model_from_plan_to_vllm_files_on_the_cpu(tmp_path):
    """models/tiny-moe.json (Mixtral-shaped) at --tp 2: plan -> tune the fused-MoE spec under Triton's
    interpreter -> export for vLLM: exactly the tuned model's file (E=4, N = I per rank = 128), whose rows
    vLLM's nearest-M rule resolves for every M in 1..4096, with a sidecar naming the job."""
    from cotune.tuner.export.vllm import nearest_config

    from tests.conftest import REPO

    proc = cotune(
        "plan", str(REPO / "models" / "tiny-moe.json"), "--tp", "2", "--batch", "1", "--batch", "8",
        "--trials", "2", "-o", "plan", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    spec = (tmp_path / "plan" / "tiny-moe-moe.yaml").read_text()
    assert "kernel: fused_moe" in spec and "{M: [1, 8], E: 4, H: 128, I: 128, topk: 2}" in spec
    # fewer timed calls than the default: the interpreter takes a good part of a second per call
    (tmp_path / "plan" / "tiny-moe-moe.yaml").write_text(
        spec + "bench: {warmup: 0, repeats: 2, remeasure_repeats: 2}\n"
    )
    proc = cotune("tune", "plan/tiny-moe-moe.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = cotune("export", "tiny-moe-moe", "--format", "vllm", "--no-verify", "-o", "configs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "configs").iterdir() if not p.name.startswith("."))
    assert len(files) == 2 and files[0].startswith("E=4,N=128,device_name=") and files[1] == files[0] + ".cotune.json"
    table = json.loads((tmp_path / "configs" / files[0]).read_text())
    assert sorted(k for k in table if k != "triton_version") == ["1", "8"]
    for m in range(1, 4097):
        assert nearest_config(tmp_path / "configs" / files[0], m) == table["1" if m <= 4 else "8"]
    assert json.loads((tmp_path / "configs" / files[1]).read_text())["job"] == "tiny-moe-moe"
