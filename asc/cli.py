"""What every command line of the project shares: a parser whose errors are one line, and option
types that refuse impossible numbers before any work starts.

argparse prints its usage and then the error; a user who typed ``--epochs 0`` needs the error, and
the project promises one line on stderr for every bad input (``python -m asc``, ``python -m search``
and the benchmarks all build their parsers from :class:`ArgumentParser`). Every numeric option takes
its type from :func:`integer` or :func:`number` (a test checks that no parser uses bare int or float).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from asc.errors import AscError, writable_file

MAX_SEED = 2**32 - 1  # NumPy's legacy seeding takes 0 .. 2**32 - 1; torch and Python take those too


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the error as one line: ``error: PROG: argument --x: why (see PROG --help)``.

    Sub-command parsers are made with the parent's class, so they inherit this. A description taken
    from a module's docstring loses its reStructuredText literal quotes (``x``), which a terminal
    would show as they are."""

    def __init__(self, *args, description: str | None = None, **kwargs):
        super().__init__(*args, description=description.replace("``", "") if description else description,
                         **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def integer(minimum: int | None = None, maximum: int | None = None):
    """An option type: a whole number within ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text} is out of range ({_range(minimum, maximum)})")
        return value

    parse.__name__ = "integer"
    return parse


def number(minimum: float | None = None, above: float | None = None, maximum: float | None = None):
    """An option type: a finite number, at least ``minimum`` or greater than ``above``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
        if ((minimum is not None and value < minimum) or (above is not None and value <= above)
                or (maximum is not None and value > maximum)):
            bounds = [f">= {minimum:g}" if minimum is not None else None, f"> {above:g}" if above is not None else None,
                      f"<= {maximum:g}" if maximum is not None else None]
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {' and '.join(b for b in bounds if b)})")
        return value

    parse.__name__ = "number"
    return parse


def output_file(*suffixes: str):
    """An option type: a file to write at the end of a long command (a figure, a JSON report), checked
    when the command starts: its folder exists, it is not a folder, it can be written, and it ends in
    one of ``suffixes`` (any, when none are given). Nothing is created."""

    def parse(text: str) -> Path:
        path = Path(text)
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: expected a file ending in {' or '.join(suffixes)}")
        try:
            return writable_file(path, "").resolve()
        except AscError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None

    parse.__name__ = "output file"
    return parse


def _range(minimum, maximum) -> str:
    if maximum is None:
        return f"must be at least {minimum}"
    if minimum is None:
        return f"must be at most {maximum}"
    return f"must be {minimum} to {maximum}"


MAX_FUSION_SIZE = 100  # picks of a greedy fusion (with repeats, a member's weight): each is a pass over the candidates
MAX_FUSION_BAGS = 1000  # resamples (or bagged repeats) a fusion may ask for: each is a greedy selection
MAX_COUNT = 2**31 - 1  # beyond any real count; larger values overflow the C libraries underneath
COUNT = integer(1, MAX_COUNT)  # clips, epochs, trials, bands, shards: at least one
NON_NEGATIVE = integer(0, MAX_COUNT)  # workers (0 = in this process), retries, bags
SEED = integer(0, MAX_SEED)
PROCESSES = integer(0, 1024)  # worker processes (0: none, or all cores where the help says so)
SAMPLE_RATE = integer(1, 768_000)  # Hz: the highest rate audio interfaces record
SEGMENTS = integer(1, 100_000)  # synthetic segments per scene (1e5 x 10 scenes is a 3 TB set at 44.1 kHz, 3 s)
SECONDS = number(above=0)


def add_synth_arguments(parser, defaults) -> None:
    """The synthetic set's size, clip length and seed, as ``asc synth`` and ``search demo`` take them
    (``defaults``: a :class:`asc.synth.SynthConfig`)."""
    parser.add_argument("--segments-per-scene", type=SEGMENTS, default=defaults.segments_per_scene,
                        help="device-A segments per scene (default %(default)s)")
    parser.add_argument("--parallel-per-scene", type=integer(0, 100_000), default=defaults.parallel_per_scene,
                        help="of those, segments also recorded by every other device (default %(default)s)")
    parser.add_argument("--seconds", type=SECONDS, default=defaults.seconds, help="clip length (default %(default)s)")
    parser.add_argument("--seed", type=SEED, default=defaults.seed, help="the set's seed (default %(default)s)")
