"""Progress of long work as a person sees it: a tqdm bar on stderr when stderr is a terminal; in a log
(stderr redirected: ``nohup``, a cluster job, CI) a plain line on stderr every :data:`LOG_EVERY`
seconds and one at the end, where a bar would pile its carriage returns into one line and silence
for minutes looks like a hang. Work shorter than :data:`LOG_EVERY` prints nothing in a log. stdout
is left to what a command answers (tables, ``--json``).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_EVERY = 30.0  # seconds between a log's progress lines


class _LogLines:
    """tqdm's ``update`` / ``close`` (and context manager), as lines for a log."""

    def __init__(self, total: int, desc: str, unit: str, every: float):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.shown = 0, None  # shown: the count of the last line printed
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {now - self.start:.0f} s", file=sys.stderr, flush=True)
        self.shown, self.last = self.n, now

    def close(self) -> None:
        if self.shown is not None and self.shown != self.n:  # the end of work long enough to be shown
            self._line(time.perf_counter())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def each(items, desc: str, unit: str, show: bool = True, every: float = LOG_EVERY):
    """``items`` one by one, counted as each one's work is done (when the loop asks for the next),
    closed at the end of the loop or when it is left."""
    with progress(len(items), desc, unit, show, every) as bar:
        for item in items:
            yield item
            bar.update()


def progress(total: int, desc: str, unit: str, show: bool = True, every: float = LOG_EVERY):
    """An object with ``update(n)`` and ``close()``, usable as a context manager: a bar on a terminal,
    lines in a log (see the module docstring), or nothing when ``show`` is False."""
    if not show:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
    return _LogLines(total, desc, unit, every)
