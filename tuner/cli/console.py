"""Console output and error handling shared by the CLI's command modules."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from cotune.tuner.errors import CotuneError
from cotune.tuner.spec.redact import Redactor
from rich.console import Console
from rich.markup import escape

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
            # a URL in the message keeps its host but not its password (a broker or tracking-server URL); the
            # message is text, not markup (an extra's name, "cotune[gpu]", would vanish as a tag)
            err.print(f"[red]error:[/red] {escape(Redactor()(str(exc)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


SPREAD_LEGEND = "spread: interquartile range of the re-measured times over their median; a few % is a stable timing"


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.3f} s"


def fmt_value(value: float, objective: str) -> str:
    if objective == "max_throughput":
        return f"{value:.1f} GFLOP/s"
    return f"{value:.3g} J" if objective == "min_energy" else fmt_time(value)


@contextlib.contextmanager
def trial_progress(objective: str) -> Iterator[Callable[[Any], None]]:
    """A progress bar per problem (measured of budget, best so far, time), fed by the driver's on_progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=out,
    ) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(p: Any) -> None:
            key = p.problem.key
            if key not in tasks:
                tasks[key] = bar.add_task(key, total=p.budget, best="")
            best = "" if p.best_value is None else f"best {fmt_value(p.best_value, objective)}"
            bar.update(tasks[key], completed=p.measured, total=p.budget, best=best)

        yield on_progress
