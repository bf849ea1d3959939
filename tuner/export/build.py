"""The versioned JSON of best configs that ``cotune export`` writes and :mod:`cotune.tuner.export.serving` reads."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from cotune.tuner import __version__
from cotune.tuner.codesign.precision_choice import choose
from cotune.tuner.errors import NotFoundError
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.store.studies import job_studies
from cotune.tuner.types import Measurement, Objective, Problem

SCHEMA_VERSION = 1


def build_export(storage_url: str, job: str) -> dict[str, Any]:
    entries = []
    winners: list[tuple[Problem, Measurement]] = []
    studies = job_studies(storage_url, job)
    for s in studies:
        attrs = s.user_attrs
        best = attrs.get("best")
        if not best:
            continue
        problem = attrs["problem"]
        remeasured = best["remeasured"]
        m = Measurement.from_json(remeasured)
        winners.append((Problem.from_json(problem), m))
        optional = {
            key: value
            for key, value in (("baselines", _baselines(attrs.get("baselines"))), ("search", attrs.get("search")))
            if value
        }
        entries.append(
            {
                "kernel": problem["kernel"],
                "shape": problem["shape"],
                "dtype": problem["dtype"],
                "batch_dim": get_kernel(problem["kernel"]).batch_dim,
                "device": {"name": attrs["device"]["name"], "kind": attrs["device"]["kind"]},
                "config": best["config"],
                "metrics": m.metrics(),
                "toolchain": attrs.get("toolchain", {}),
                "provenance": {
                    "study": s.study_name,
                    "trial": best["trial"],
                    "mlflow_run_id": attrs.get("mlflow_run_id"),
                    "source_hash": attrs.get("source_hash"),
                },
                **optional,
            }
        )
    if not entries:
        raise NotFoundError(f"job {job!r} has no finished study with a best config yet")
    data = {
        "schema_version": SCHEMA_VERSION,
        "generator": f"cotune {__version__}",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "job": job,
        "entries": entries,
    }
    bounds = {s.user_attrs.get("accuracy_bound") for s in studies} - {None}
    if bounds:  # one job has one bound; max() only guards a study re-labelled by hand
        objective = Objective(studies[0].user_attrs.get("objective", Objective.MIN_TIME.value))
        data["precision_choice"] = [c.to_json() for c in choose(winners, max(bounds), objective)]
    return data


def _baselines(stored: dict[str, Any] | None) -> dict[str, Any]:
    """A study's re-measured baselines (``Kernel.baselines``) as the export shows them: config and metrics,
    or config and why it failed."""
    out = {}
    for name, b in (stored or {}).items():
        shown: dict[str, Any] = {"config": b["config"]}
        if "measurement" in b:
            shown["metrics"] = Measurement.from_json(b["measurement"]).metrics()
        else:
            shown["failure"] = b.get("failure")
        if b.get("is_winner"):
            shown["is_winner"] = True
        out[name] = shown
    return out


def write_export(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
