"""The generic cotune export JSON as an :class:`~cotune.tuner.export.formats.Exporter`, so ``cotune`` is one
format among the others rather than a special case; :mod:`cotune.tuner.export.serving` reads what this writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cotune.tuner.errors import SpecError


class CotuneJsonExporter:
    name = "cotune"

    def write(self, export: dict[str, Any], out_dir: Path) -> list[Path]:
        """Write ``out_dir/<job>.json``, unchanged from :func:`cotune.tuner.export.build.build_export`."""
        from cotune.tuner.export.build import (
            write_export,  # cotune.tuner.export.build pulls in the storage layer; only load it here
        )

        job = str(export.get("job", ""))
        if not job or Path(job).name != job or job in (".", ".."):
            raise SpecError(f"export has no usable job name for a file name: {job!r}")
        path = out_dir / f"{job}.json"
        write_export(export, path)
        return [path]
