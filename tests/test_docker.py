"""Docker cannot run on the development machines; these check the compose file's structure and that it
agrees with the images and the service's settings."""

from __future__ import annotations

import re

import yaml
from cotune.tuner.spec.settings import ServiceSettings

from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_stack_has_every_part():
    assert {"redis", "postgres", "mlflow", "api", "worker-cpu"} <= set(services())
    assert [n for n in services() if n.startswith("worker-gpu")], "no GPU worker"


def test_one_worker_per_gpu_with_a_device_reservation():
    seen = set()
    for name, svc in services().items():
        if not name.startswith("worker-gpu"):
            continue
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        (gpu,) = device["device_ids"]
        assert gpu not in seen, f"GPU {gpu} reserved twice"
        seen.add(gpu)
        assert svc["environment"]["COTUNE_GPU"] == "0"  # the container sees its one GPU as index 0
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.worker"


def test_every_component_points_at_the_same_stack():
    for name, svc in services().items():
        if name.startswith("worker") or name == "api":
            env = svc["environment"]
            settings = ServiceSettings.from_env(env)
            assert settings.broker_url.startswith("redis://redis:6379")
            assert "@postgres:5432/" in settings.storage
            assert settings.mlflow_tracking_uri == "http://mlflow:5000"
            assert {"redis", "postgres"} <= set(svc["depends_on"])
    assert "COTUNE_API_TOKEN" in services()["api"]["environment"]


def test_images_build_from_files_that_exist():
    for svc in services().values():
        if "build" in svc:
            dockerfile = REPO / svc["build"]["dockerfile"]
            assert dockerfile.exists(), dockerfile
            text = dockerfile.read_text()
            for src in re.findall(r"^COPY (\S+)", text, flags=re.M):
                assert (REPO / src).exists(), f"{dockerfile.name} copies missing {src}"
    worker = (REPO / "docker" / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-runtime", worker, flags=re.M)
    assert "cotune worker --gpu" in worker
