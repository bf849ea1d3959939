"""The package layout: one ``cotune`` import namespace, and tuner/'s sub-packages importing only downward.

The layers, lowest first. A module may import from its own component and from lower layers, never from a
component of its own layer or above, so the folder names read as the flow spec -> space -> sampler ->
objective -> store -> tracker -> export, and no two sub-packages can form a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),  # tuner/__init__, errors, types, yaml_lines
    ("device", "space", "store"),
    ("measure",),
    ("kernels",),  # cotune.kernels: the kernel implementations
    ("spec", "track"),
    ("search", "codesign"),
    ("driver",),
    ("export", "worker"),  # cotune.worker: the Celery service's workers
    ("service",),
    ("cli",),
)
LAYER = {component: i for i, names in enumerate(LAYERS) for component in names}
CORE = {"errors", "types", "yaml_lines"}
FOLDERS = ("tuner", "kernels", "worker")


def component(module: str) -> str | None:
    """The layer component of a ``cotune.*`` module name; None for anything outside cotune."""
    parts = module.split(".")
    if parts[0] != "cotune" or len(parts) < 2:
        return None
    if parts[1] in ("kernels", "worker"):
        return parts[1]
    if len(parts) == 2 or parts[2] in CORE or parts[2] == "__version__":
        return "core"
    return parts[2]


def sources() -> list[tuple[str, Path]]:
    out = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append(("cotune." + ".".join(parts), path))
    return out


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module == "cotune.tuner":  # `from cotune.tuner import x`: x may be a sub-package
                found += [(node.lineno, f"cotune.tuner.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def test_tuner_sub_packages_import_only_downward() -> None:
    bad = []
    for module, path in sources():
        here = component(module)
        assert here in LAYER, f"{module}: component {here!r} has no layer in tests/test_layout.py"
        for line, name in imported(path):
            there = component(name)
            if there is None or there == here:
                continue
            assert there in LAYER, f"{path}:{line}: {name}: component {there!r} has no layer"
            if LAYER[there] >= LAYER[here]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {here} imports {name} ({there}, not below it)")
    assert not bad, "\n".join(bad)


def test_every_import_of_the_project_goes_through_the_cotune_namespace() -> None:
    bad = []
    for _, path in sources():
        for line, name in imported(path):
            if name.startswith(".") or name.split(".")[0] in FOLDERS:
                bad.append(f"{path.relative_to(REPO)}:{line}: import {name}")
    assert not bad, "\n".join(bad)


def test_tuner_root_holds_few_modules_and_each_sub_package_says_what_it_owns() -> None:
    root = [p.name for p in (REPO / "tuner").glob("*.py")]
    assert len(root) <= 10, root
    for init in (REPO / "tuner").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Imports" in doc or "imports" in doc, f"{init}: the docstring says what it owns and may import"


def test_hugging_face_kernels_installs_beside_cotune_without_a_clash(tmp_path: Path) -> None:
    """transformers 5 brings Hugging Face's ``kernels`` package (top-level name ``kernels``); cotune's kernels
    are ``cotune.kernels``, so both import in one process, from another folder and from the checkout itself:
    kernels/ has no ``__init__.py``, so with the checkout on the path (``python -m`` from its root) the folder
    is at most a namespace portion, and an installed regular package of that name wins over it."""
    pytest.importorskip("kernels", reason="Hugging Face's kernels package is installed with the test extras")
    import kernels

    assert "site-packages" in kernels.__file__ and not (REPO / "kernels" / "__init__.py").exists()
    code = (
        "import kernels, cotune.kernels, cotune.tuner.measure.registry as r\n"
        "assert 'site-packages' in kernels.__file__, kernels.__file__\n"
        "assert cotune.kernels.__file__ != kernels.__file__\n"
        "print(r.get_kernel('c_matmul').name, hasattr(kernels, 'get_kernel'))\n"
    )
    for cwd in (tmp_path, REPO):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["c_matmul", "True"]
