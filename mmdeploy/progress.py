"""A minimal progress protocol so library code reports progress without knowing about rich.

``task(description, total, unit)`` yields ``advance(n)``. The CLI passes :class:`RichProgress` (a bar) on a
terminal and :class:`LineProgress` (a plain line every few seconds) when output goes to a pipe or a CI log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Progress:
    """Default: silent. The CLI passes a rich-backed one."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "steps") -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


class RichProgress(Progress):
    def __init__(self, console, enabled: bool = True):
        self.console = console
        self.enabled = enabled

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "steps"):
        if not self.enabled:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as _P

        with _P(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)


class LineProgress(Progress):
    """One plain line every ``interval`` seconds: done/total, rate and ETA, for logs that are not terminals.

    A task shorter than ``interval`` prints nothing; one that printed gets a closing line with its totals.
    ``write`` takes one line; ``clock`` (seconds, monotonic) is injectable for tests."""

    def __init__(self, write: Callable[[str], None], interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.write, self.interval, self.clock = write, interval, clock

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "steps"):
        start = self.clock()
        state = {"done": 0, "next": start + self.interval, "printed": False}

        def advance(n: int = 1) -> None:
            state["done"] += n
            now = self.clock()
            if now >= state["next"]:
                self.write(self._line(description, state["done"], total, unit, now - start))
                state["printed"] = True
                state["next"] = now + self.interval

        try:
            yield advance
        finally:
            if state["printed"]:
                self.write(self._line(description, state["done"], total, unit, self.clock() - start, final=True))

    @staticmethod
    def _line(description: str, done: int, total: int | None, unit: str, elapsed: float, final: bool = False) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        of = f"/{total}" if total else ""
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        text = f"{description}: {done}{of} {unit}{pct}, {rate:.1f} {unit}/s, elapsed {_clock_text(elapsed)}"
        if final:
            return text + ", done"
        if total and rate > 0 and done < total:
            text += f", ETA {_clock_text((total - done) / rate)}"
        return text


def _clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
