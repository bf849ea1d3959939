"""YAML loading that remembers where each value came from, so validation errors can name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cotune.tuner.errors import SpecError
from pydantic import ValidationError

Path_ = tuple[str | int, ...]


def load_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML text; return the data and a map from key path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpecError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    _walk(node, (), lines)
    return yaml.safe_load(text), lines


def load_yaml_file(path: Path) -> tuple[Any, dict[Path_, int]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    return load_yaml(text, str(path))


def _walk(node: yaml.Node, here: Path_, lines: dict[Path_, int]) -> None:
    lines[here] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*here, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*here, key), lines)
            lines[(*here, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*here, i), lines)


def line_of(loc: Path_, lines: dict[Path_, int]) -> int | None:
    """Line of the longest prefix of ``loc`` that the source map knows."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def describe(error: ValidationError, source: str, lines: dict[Path_, int]) -> SpecError:
    """Turn a pydantic error into one SpecError naming file, line, field and problem (first error first)."""
    parts = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = line_of(loc, lines)
        where = f"{source}:{line}" if line else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {field}: {msg}")
    return SpecError("; ".join(parts))
