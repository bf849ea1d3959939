"""Exporters: turn cotune's generic export (:func:`cotune.tuner.export.build.build_export`) into what a serving
stack reads.

Every format is one class in its own module, registered below as ``"module:Class"`` and imported only when it
is asked for, so listing the formats costs nothing and one format's imports never burden another.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cotune.tuner.errors import SpecError


@runtime_checkable
class Exporter(Protocol):
    """One serving format. ``export`` is the generic export dict; ``write`` returns the files it wrote."""

    name: str

    def write(self, export: dict[str, Any], out_dir: Path) -> list[Path]: ...


EXPORTERS: dict[str, str] = {
    "cotune": "cotune.tuner.export.cotune_json:CotuneJsonExporter",
    "vllm": "cotune.tuner.export.vllm:VllmExporter",
    "sglang": "cotune.tuner.export.vllm:SglangExporter",
    "autotune": "cotune.tuner.export.autotune:AutotuneExporter",
    # Triton Inference Server model repository: tuner/export/triton_server.py (maintained separately).
    "triton-server": "cotune.tuner.export.triton_server:TritonServerExporter",
}


def get_exporter(name: str) -> Exporter:
    """The exporter of format ``name``; an unknown name is a user error that lists the known ones."""
    target = EXPORTERS.get(name)
    if target is None:
        raise SpecError(f"unknown export format {name!r}; known formats: {', '.join(sorted(EXPORTERS))}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise SpecError(f"export format {name!r} is registered but {module_name} is not installed") from None
    exporter: Exporter = getattr(module, class_name)()
    return exporter


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Serving processes read config folders while they are being refreshed; a rename means they see the old
    file or the new one, never half of one. The file is made world-readable, as a serving container may run
    as another user.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
