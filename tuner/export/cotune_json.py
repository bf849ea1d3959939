"""The generic cotune export JSON as an :class:`~cotune.tuner.export.formats.Exporter`, so ``cotune`` is one
format among the others rather than a special case; :mod:`cotune.tuner.export.serving` reads what this writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotune.tuner.errors import SpecError
from cotune.tuner.export.formats import Files


class CotuneJsonExporter:
    name = "cotune"

    def entries(self, export: dict[str, Any]) -> list[dict[str, Any]]:
        return list(export.get("entries", []))

    def render(self, export: dict[str, Any]) -> Files:
        """``<job>.json``, unchanged from :func:`cotune.tuner.export.build.build_export`."""
        job = str(export.get("job", ""))
        if not job or Path(job).name != job or job in (".", ".."):
            raise SpecError(f"export has no usable job name for a file name: {job!r}")
        return {f"{job}.json": json.dumps(export, indent=2, sort_keys=False) + "\n"}
