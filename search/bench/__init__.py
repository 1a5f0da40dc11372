"""The benchmarks: each a ``python -m search bench-*`` command that prints this project's figures beside
a reference measured in the same run (README.md in this folder says what each measures and lists the
figures measured so far). This module holds what they share: the contention meter, the synthetic
set of a size, the table, the report options, the end of a run."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

from asc.cli import number
from asc.errors import AscError


class CpuMeter:
    """CPU used by other processes on the machine while a section ran, in cores.

    The machine's busy time (/proc/stat) less that of this process and its descendants (Ray's
    processes included), over the section's wall clock: a benchmark on a shared machine says how
    quiet the machine was instead of silently reporting a contended figure.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    QUIET = 0.1  # cores: less than this used by others counts as a quiet machine

    def __init__(self, wait_budget: float = 0.0):
        self.sections: dict[str, float] = {}
        self.wait_budget = wait_budget  # seconds in all to wait for a quiet machine before sections
        self.waited = 0.0

    def others_now(self, seconds: float = 0.5) -> float:
        machine, tree = self._machine_busy(), self._tree_busy()
        time.sleep(seconds)
        return max((self._machine_busy() - machine) - (self._tree_busy() - tree), 0.0) / seconds

    def wait_quiet(self) -> None:
        """Wait, within what is left of the budget, until other processes leave the CPUs alone."""
        while self.waited < self.wait_budget:
            start = time.perf_counter()
            quiet = self.others_now() < self.QUIET
            self.waited += time.perf_counter() - start
            if quiet:
                return

    @classmethod
    def _machine_busy(cls) -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return math.nan
        return (sum(v) - v[3] - v[4]) / cls.TICK  # less idle and iowait

    @classmethod
    def _tree_busy(cls) -> float:
        parent, ticks = {}, {}
        try:
            pids = [d for d in os.listdir("/proc") if d.isdigit()]
        except OSError:
            return math.nan
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            rest = text[text.rindex(")") + 2:].split()
            parent[int(pid)] = int(rest[1])
            ticks[int(pid)] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += ticks.get(pid, 0)
            todo += children.get(pid, [])
        return total / cls.TICK

    def measure(self, name: str):
        @contextlib.contextmanager
        def section():
            self.wait_quiet()
            machine, tree, start = self._machine_busy(), self._tree_busy(), time.perf_counter()
            yield
            wall = time.perf_counter() - start
            others = (self._machine_busy() - machine) - (self._tree_busy() - tree)
            self.sections[name] = max(others, 0.0) / wall if wall > 0 else math.nan

        return section()


def search_env_defaults() -> None:
    """The environment of a benchmark that runs searches: no usage reports, Ray's workers at normal
    priority (set before Ray starts: its workers inherit it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's nice-15 workers crawl beside busy processes


def synth_for(clips: int, base: dict):
    """The smallest synthetic set with at least ``clips`` clips (SynthConfig's share of parallel
    A/B/C segments, 6 of 40) on ``base``'s clip length, rate and seed. Returns (config, clip count)."""
    from asc.synth import SynthConfig, plan  # late: scipy; every benchmark's --help imports this module

    segments = 2
    while True:
        config = SynthConfig(segments_per_scene=segments, parallel_per_scene=round(segments * 6 / 40), **base)
        count = sum(len(s.devices) for s in plan(config))
        if count >= clips:
            return config, count
        segments += 1


def table_lines(table: list[dict]) -> list[str]:
    """The benchmark table (measure | this project | reference | ratio | goal | met?) as aligned lines;
    every benchmark command prints its figures through this."""
    header = ["measure", "this project", "reference", "ratio", "goal", "met?"]
    cells = [[r["measure"], r["fmt"].format(r["this_project"]), r["fmt"].format(r["reference"]),
              r["ratio_fmt"].format(r["ratio"]), r["goal"], r["met"]] for r in table]
    widths = [max(len(x[i]) for x in [header, *cells]) for i in range(len(header))]
    align = ["<", ">", ">", ">", "<", "<"]

    def fmt_row(values):
        return " | ".join(f"{v:{a}{w}}" for v, a, w in zip(values, align, widths)).rstrip()

    return [fmt_row(header), "-+-".join("-" * w for w in widths), *[fmt_row(c) for c in cells]]


def json_rows(table: list[dict]) -> list[dict]:
    """The table's rows as ``--json`` writes them: the figures without their formats."""
    return [{k: v for k, v in r.items() if k not in ("fmt", "ratio_fmt")} for r in table]


def run_benchmark(body: Callable[[], None], clean_up: Callable[[], None]) -> int:
    """``body()`` (the measurements, their table, the ``--json`` file) as every benchmark runs it: exit
    status 0, or 2 with one ``error:`` line for bad input; then, however it ended, the Ray instance it
    started is stopped and ``clean_up()`` tidies its work folder."""
    try:
        body()
        return 0
    except AscError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if "ray" in sys.modules:
            import ray  # loaded already: by this run, which may have started Ray

            if ray.is_initialized():
                ray.shutdown()
        clean_up()


def add_report_options(parser: argparse.ArgumentParser, quiet_wait: float | None = None) -> None:
    """The options every benchmark shares: ``--json`` and, for those that wait for a quiet machine
    before timing, ``--quiet-wait``."""
    if quiet_wait is not None:
        parser.add_argument("--quiet-wait", type=number(minimum=0), default=quiet_wait,
                            help="seconds in all to wait for other processes to leave the CPUs before timed sections "
                                 "(default %(default)s; 0: never wait)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
