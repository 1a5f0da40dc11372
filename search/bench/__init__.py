"""The benchmarks: each a ``python -m search bench-*`` command that prints this project's figures beside
a reference measured in the same run (README.md in this folder says what each measures and lists the
figures measured so far). This module holds what they share: the contention meter, the synthetic
set of a size and its store (the scales), the table, the machine's line, the report options, the
end of a run."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from asc.cli import number, output_file
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
    parser.add_argument("--json", type=output_file(".json"), default=None,
                        help="also write the figures to this JSON file")


# --------------------------------------------------------------------------------------------------
# The synthetic sets and stores of the scales, the records, the machine
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Sizes of the synthetic data and of the trials for one ``--scale``."""

    synth: dict  # SynthConfig fields of the overhead / memory set (clip count from --clips)
    default_clips: int
    features: dict  # FeatureConfig fields besides n_mels (empty: the paper's)
    n_mels: int
    batch_size: int
    width: int
    smoke_epochs: int
    efficiency_synth: dict  # SynthConfig fields of the efficiency set
    grid: dict = field(default_factory=dict)  # the efficiency space: param -> values
    efficiency_epochs: int = 12
    reduction_factor: float = 3.0
    grace_period: int = 1


SCALES = {
    # 10 s, 44.1 kHz clips and the paper's 128 x 430 log-Mel features; the smoke space's CNN. The
    # efficiency set is the demo's (SynthConfig's defaults, 1480 clips of 3 s: the set spaces/smoke.yaml is for).
    "full": Scale(synth={"seconds": 10.0, "sample_rate": 44100, "seed": 0}, default_clips=260, features={},
                  n_mels=128, batch_size=32, width=8, smoke_epochs=3,
                  efficiency_synth={"seed": 0},
                  grid={"enhancement": ["none", "mean_subtraction"], "mixup_alpha": [0.0, 0.3],
                        "lr": [0.0003, 0.001, 0.003]}, efficiency_epochs=12),
    # The tests' sizes: 1 s clips at 22.05 kHz, 32 Mel bands; minutes in all on 2 cores.
    "tiny": Scale(synth={"seconds": 1.0, "sample_rate": 22050, "seed": 3}, default_clips=100,
                  features={"sample_rate": 22050, "n_fft": 1024, "hop_length": 256, "fmax": 11025.0},
                  n_mels=32, batch_size=8, width=8, smoke_epochs=3,
                  efficiency_synth={"segments_per_scene": 6, "parallel_per_scene": 2, "seconds": 1.0,
                                    "sample_rate": 22050, "seed": 3},
                  grid={"enhancement": ["none", "mean_subtraction"], "lr": [0.001, 0.003, 0.01]},
                  efficiency_epochs=4),
}


def log(message: str) -> None:
    """A benchmark's progress line, on stderr (stdout holds its table)."""
    print(message, file=sys.stderr, flush=True)


def feature_config(scale: Scale):
    from asc.features import FeatureConfig  # late: the benchmarks' --help starts without it

    return FeatureConfig(n_mels=scale.n_mels, **scale.features)


@dataclass
class Data:
    data: Path
    store_root: Path
    store: str  # the store folder
    clips: int
    seconds: float  # to synthesize and extract (0 when reused)


def build_data(work: Path, synth, features) -> Data:
    """The synthetic set and its store, in folders named after the set (reused when they exist)."""
    from asc.dataset import read_development  # late: the benchmarks' --help starts without it
    from asc.parallel import process_map
    from asc.store import build_stores
    from asc.synth import write_dataset

    tag = (f"{synth.segments_per_scene}x{synth.parallel_per_scene}-{synth.seconds:g}s-{synth.sample_rate}Hz"
           f"-seed{synth.seed}")
    data, root = work / f"data-{tag}", work / f"store-{tag}"
    start = time.perf_counter()
    if (data / "meta.csv").is_file():
        dataset = read_development(data)
        log(f"      reusing {data} ({len(dataset)} clips)")
    else:
        shutil.rmtree(data, ignore_errors=True)
        dataset = write_dataset(data, synth, progress=True)
        log(f"      wrote {len(dataset)} clips into {data} in {time.perf_counter() - start:.0f} s")
    mid = time.perf_counter()
    report = build_stores(dataset, [features], root, map_fn=process_map, shard_size=32)
    store = (report.built + report.up_to_date)[0]
    if report.built:
        log(f"      built {store} in {time.perf_counter() - mid:.0f} s")
    return Data(data, root, str(store), len(dataset), time.perf_counter() - start)


def write_yaml(path: Path, doc: dict) -> Path:
    import yaml  # late: the benchmarks' --help starts without it

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def mlflow_trials(uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient  # late: the benchmarks' --help starts without it

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise AscError(f"{uri}: no MLflow experiment {name!r}")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'trial'", max_results=10000)
    return sorted(runs, key=lambda r: r.info.start_time)


def machine_line() -> str:
    import mlflow  # late: the benchmarks' --help starts without it
    import optuna
    import ray
    import torch

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {cpu}, {os.cpu_count()} cores, {gpu}; python {sys.version.split()[0]}, torch "
            f"{torch.__version__}, ray {ray.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}")
