"""Serving-side lookup of exported configs. Depends on nothing but the standard library.

``lookup`` matches kernel, dtype and device exactly and every shape dim but the batch dim exactly; for the
batch dim it takes the tuned value nearest the runtime one, as vLLM does for M (ties go to the smaller).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_SCHEMA = 1


class ExportFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    kernel: str
    shape: dict[str, int]
    dtype: str
    device: str
    batch_dim: str
    config: dict[str, Any]
    metrics: dict[str, float]
    provenance: dict[str, Any]


class ConfigTable:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path) -> ConfigTable:
        data = json.loads(Path(path).read_text())
        version = data.get("schema_version")
        if version != SUPPORTED_SCHEMA:
            raise ExportFormatError(f"{path}: schema_version {version!r}, this reader supports {SUPPORTED_SCHEMA}")
        return cls(
            [
                Entry(
                    e["kernel"],
                    dict(e["shape"]),
                    e["dtype"],
                    e["device"]["name"],
                    e["batch_dim"],
                    dict(e["config"]),
                    dict(e.get("metrics", {})),
                    dict(e.get("provenance", {})),
                )
                for e in data["entries"]
            ]
        )

    def lookup(self, kernel: str, shape: Mapping[str, int], dtype: str, device: str) -> Entry | None:
        candidates = [
            e
            for e in self.entries
            if e.kernel == kernel
            and e.dtype == dtype
            and e.device == device
            and set(e.shape) == set(shape)
            and all(e.shape[k] == v for k, v in shape.items() if k != e.batch_dim)
        ]
        if not candidates:
            return None
        batch = candidates[0].batch_dim
        return min(candidates, key=lambda e: (abs(e.shape[batch] - shape[batch]), e.shape[batch]))
