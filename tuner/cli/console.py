"""Console output and error handling shared by the CLI's command modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from cotune.tuner.errors import CotuneError
from cotune.tuner.spec.redact import Redactor
from rich.console import Console

# soft_wrap: a line is not broken at 80 columns when the output is a pipe or a log file; the terminal wraps
out = Console(soft_wrap=True)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CotuneError as exc:
            # a URL in the message keeps its host but not its password (a broker or tracking-server URL)
            err.print(f"[red]error:[/red] {Redactor()(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.3f} s"
