"""Exporters: turn cotune's generic export (:func:`cotune.tuner.export.build.build_export`) into what a serving
stack reads.

An exporter only renders: it picks the entries its consumer can use and returns the files, as relative path
to content, without touching the disk. So ``cotune export`` can refuse a format the job cannot feed before it
re-measures anything, the REST API can return the same files without a scratch folder, and one writer
(:func:`write_files`) decides what may be overwritten.

Every format is one class in its own module, registered below as ``"module:Class"`` and imported only when it
is asked for, so listing the formats costs nothing and one format's imports never burden another.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cotune.tuner.errors import SpecError

Files = dict[str, str | bytes]  # relative path -> content


@runtime_checkable
class Exporter(Protocol):
    """One serving format over the generic export dict.

    ``entries`` returns the export's entries this format serves, and raises :class:`SpecError` naming what the
    format needs when there are none. ``render`` returns the files, relative path to text (or bytes for a
    binary file), and raises :class:`SpecError` when the entries cannot make a valid file.
    """

    name: str

    def entries(self, export: dict[str, Any]) -> list[dict[str, Any]]: ...

    def render(self, export: dict[str, Any]) -> Files: ...


EXPORTERS: dict[str, str] = {
    "cotune": "cotune.tuner.export.cotune_json:CotuneJsonExporter",
    "vllm": "cotune.tuner.export.vllm:VllmExporter",
    "vllm-legacy": "cotune.tuner.export.vllm:VllmLegacyExporter",
    "sglang": "cotune.tuner.export.vllm:SglangExporter",
    "autotune": "cotune.tuner.export.autotune:AutotuneExporter",
    "triton-server": "cotune.tuner.export.triton_server:TritonServerExporter",
}

# Which job wrote each file of an export folder, so a later export never replaces another tuning's file.
OWNERS_FILE = ".cotune-export.json"


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


def foreign_files(out_dir: Path, files: Files, job: str) -> list[tuple[Path, str]]:
    """Files of ``files`` that already exist in ``out_dir`` and were not written by ``job``, with who wrote them
    (another job, or something cotune did not write, such as a server's shipped config)."""
    owners = _owners(out_dir)
    out = []
    for rel in files:
        path = out_dir / rel
        if path.exists() and owners.get(rel) != job:
            out.append((path, f"job {owners[rel]!r}" if rel in owners else "a file cotune did not write"))
    return out


def check_targets(out_dir: Path, files: Files, job: str, *, force: bool) -> None:
    """Refuse, before anything is written, to replace a file another tuning (or another tool) wrote there."""
    if force:
        return
    foreign = foreign_files(out_dir, files, job)
    if foreign:
        path, owner = foreign[0]
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise SpecError(
            f"{path} exists, written by {owner}{more}; nothing was written. Export into another folder, "
            "or pass --force to replace it"
        )


def write_files(out_dir: Path, files: Files, job: str, *, force: bool = False) -> list[Path]:
    """Write an exporter's files under ``out_dir``: every conflict is checked before the first write, and each
    file is replaced atomically, so a serving process reading the folder sees whole files only."""
    check_targets(out_dir, files, job, force=force)
    owners = _owners(out_dir)
    paths = []
    for rel, content in files.items():
        path = out_dir / rel
        write_atomic(path, content)
        owners[rel] = job
        paths.append(path)
    write_atomic(out_dir / OWNERS_FILE, json.dumps(owners, indent=2, sort_keys=True) + "\n")
    return paths


def _owners(out_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((out_dir / OWNERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file in the same folder and a rename.

    Serving processes read config folders while they are being refreshed; a rename means they see the old
    file or the new one, never half of one. The file is made world-readable, as a serving container may run
    as another user.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
