"""A minimal progress protocol so library code reports progress without knowing about rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Progress:
    """Default: silent. The CLI passes a rich-backed one."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


class RichProgress(Progress):
    def __init__(self, console, enabled: bool = True):
        self.console = console
        self.enabled = enabled

    @contextmanager
    def task(self, description: str, total: int | None):
        if not self.enabled:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as _P

        with _P(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)
