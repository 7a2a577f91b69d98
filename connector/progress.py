"""Progress bars on a terminal (rich), and silence everywhere else."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterator


class _Bar:
    def __init__(self, progress, task_id, label: str):
        self._progress, self._task, self._label = progress, task_id, label
        self._statuses: Counter[str] = Counter()
        self._lock = threading.Lock()

    def advance(self, n: int = 1, status: str | None = None) -> None:
        with self._lock:
            if status:
                self._statuses[status] += n
            detail = ", ".join(f"{k} {v}" for k, v in sorted(self._statuses.items()))
        self._progress.update(self._task, advance=n, description=f"{self._label} {detail}".strip())


class _Silent:
    def advance(self, n: int = 1, status: str | None = None) -> None:
        return


_ACTIVE: dict[str, object] = {}


@contextmanager
def bar(label: str, total: int) -> Iterator[_Bar | _Silent]:
    """A bar for ``total`` steps while on a terminal; a silent stand-in otherwise."""
    if not sys.stderr.isatty() or total <= 0:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=Console(file=sys.stderr)) as progress:
        yield _Bar(progress, progress.add_task(label, total=total), label)
