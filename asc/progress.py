"""Progress of long work as a person sees it: a tqdm bar on stderr when stderr is a terminal; in a log
(stderr redirected: ``nohup``, a cluster job, CI) a plain line on stdout every :data:`LOG_EVERY`
seconds and one at the end. A bar written into a file is its carriage returns piled into one line,
and it would leave an error no longer the only line on stderr; silence for minutes looks like a
hang. Work shorter than :data:`LOG_EVERY` prints nothing in a log.
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
        self.n, self.printed = 0, False
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {now - self.start:.0f} s", flush=True)
        self.printed, self.last = True, now

    def close(self) -> None:
        if self.printed and self.n:  # the end of work that was long enough to be shown
            self._line(time.perf_counter())
            self.printed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, unit: str, show: bool = True, every: float = LOG_EVERY):
    """An object with ``update(n)`` and ``close()``, usable as a context manager: a bar on a terminal,
    lines in a log (see the module docstring), or nothing when ``show`` is False."""
    if not show:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
    return _LogLines(total, desc, unit, every)
