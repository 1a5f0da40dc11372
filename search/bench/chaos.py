"""``python -m search bench-chaos``: a search while a process kills its trial workers at random.

A grid search (``--trials`` points: enhancement x mixup x learning rate, the smoke space's CNN, every
trial its full ``--epochs``, two trials at once) runs three times or more on one small synthetic set:
once undisturbed, then once per ``--every N`` with a thread in this process that, every N seconds,
SIGKILLs one of the search's trial workers chosen at random (as Ray's own release tests kill nodes).
Each search is a real one (``search.tuner.run_search``: Ray Tune, Optuna, MLflow), with the default
``--max-failures`` (3) unless told otherwise.

Reported per N, beside the undisturbed search: kills; retries (Tune's failures per trial); trials
finished and lost for good (``--max-failures`` counts failures in a row without a new epoch), and
how many finished trials were retried more often in all than that (Tune's own count would have lost
them); trial-epochs trained (each result Tune received, re-trained epochs included) and how many of
them were recomputed; the work the kills threw away (from each killed
worker's last report to the kill, in seconds and in undisturbed epochs; kills that came before a
worker's first report lost its start and restore too, counted apart); and how many configurations
ended with results identical to the undisturbed search's (every epoch's figures, exactly), and
whether the best-trials tables are the same text. Nothing lost and everything identical is the goal.

The set, its store and the runs go under ``--workdir`` (default: a temporary folder, removed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from asc.cli import ArgumentParser, COUNT, SEED, integer, number
from asc.errors import AscError
from search.bench import SCALES, add_report_options, build_data, feature_config, json_rows, log, machine_line, \
    mlflow_trials, run_benchmark, search_env_defaults, synth_for, table_lines, write_yaml

# The search (Ray, MLflow, Optuna, torch) is imported late, where a search runs: `--help` starts without it.
MARK = "ASC_BENCH_CHAOS"  # in this process's environment, so in its Ray workers': whose workers to kill
# What differs between two runs of one trial without changing what it computed.
VOLATILE = {"timestamp", "time_this_iter_s", "time_total_s", "time_since_restore", "pid", "hostname", "node_ip",
            "date", "iterations_since_restore", "training_iteration", "checkpoint_dir_name", "done", "trial_id",
            "config", "experiment_tag", "epoch_seconds"}
GRID = {"enhancement": ["none", "mean_subtraction"], "mixup_alpha": [0.0, 0.3],
        "lr": [0.001, 0.003, 0.01, 0.0003, 0.03]}


def marked_processes(key: str, value: str, titles: tuple[str, ...] = ()) -> list[int]:
    """Pids of the processes whose environment holds ``key=value`` (Ray's processes inherit the
    environment of the driver or `ray start` that made them), optionally only those whose command
    line starts with one of ``titles`` (a Ray actor's is ``ray::<Class>...``). Linux's /proc."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if titles:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if not cmdline.startswith(titles):
                    continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{key}={value}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def trial_workers(mark: str) -> list[int]:
    """Pids of this process's Ray actor processes that run trials."""
    return marked_processes(MARK, mark, ("ray::ImplicitFunc", "ray::run_trial"))


class Killer(threading.Thread):
    """Every ``every`` seconds, SIGKILL one trial worker of ours at random (none running: skip)."""

    def __init__(self, every: float, mark: str, seed: int):
        super().__init__(daemon=True, name="chaos")
        self.every, self.mark, self.rng = every, mark, random.Random(seed)
        self.halt = threading.Event()
        self.kills: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.halt.wait(self.every):
            pids = sorted(trial_workers(self.mark))
            if pids:
                pid = self.rng.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append((time.time(), pid))


def grid_space(scale, trials: int, epochs: int) -> dict:
    """The first ``trials`` points of enhancement x mixup x lr, as a points space (fixed order)."""
    points = []
    for lr in GRID["lr"]:
        for enhancement in GRID["enhancement"]:
            for alpha in GRID["mixup_alpha"]:
                points.append({"id": f"p{len(points):02d}", "enhancement": enhancement, "mixup_alpha": alpha, "lr": lr})
    if trials > len(points):
        raise AscError(f"--trials {trials}: at most {len(points)} points")
    doc = {"description": "bench-chaos: a grid of smoke-sized trials, every trial its full epochs",
           "sampler": "points", "objective": "metric_b", "num_samples": trials, "max_concurrent": 2, "seed": 0,
           "scheduler": "none",
           "params": {"model": "cnn", "width": scale.width, "epochs": epochs, "protocol": "validation",
                      "selection": "metric_b", "n_mels": scale.n_mels, "batch_size": scale.batch_size},
           "points": points[:trials]}
    if scale.features:
        doc["features"] = dict(scale.features)
    return doc


def trial_records(search_dir: Path) -> dict[str, dict]:
    """point id -> {"rows": the last result of every epoch, "raw": results received, "reports": (worker
    pid, Tune's whole-second timestamp) of each}. Read from each trial's ``progress.csv``, where Tune
    appends every result: its ``result.json`` can lose the lines before a restore (seen once in a
    search with 19 kills: a trial's file held its last epoch alone, its ``progress.csv`` all six)."""
    from search.tracking import progress_rows  # late, as noted at the top

    out = {}
    for folder in search_dir.glob("t*_*"):
        params = folder / "params.json"
        raw = progress_rows(folder / "progress.csv") if params.is_file() else []
        if not raw:
            continue
        rows = sorted({r["epoch"]: r for r in raw}.values(), key=lambda r: r["epoch"])
        out[json.loads(params.read_text())["point"]] = {"rows": rows, "raw": len(raw),
                                                        "reports": [(r.get("pid"), r.get("timestamp")) for r in raw]}
    return out


def kill_costs(kills: list[tuple[float, int]], records: dict[str, dict]) -> tuple[float, int]:
    """The seconds of training the kills threw away, and the kills that landed before the killed
    worker's first report. A kill of a worker that had reported costs the time since its last report
    (the epoch under way; Tune's timestamps are whole seconds, so each is counted up to a second
    long); a kill before a worker's first report cost its start, its restore and part of an epoch,
    which the results do not time (no report names that worker): those are counted, not timed."""
    reported: dict[int, list[int]] = {}
    for record in records.values():
        for pid, stamp in record["reports"]:
            reported.setdefault(pid, []).append(stamp)
    lost, early = 0.0, 0
    for when, pid in kills:
        before = [stamp for stamp in reported.get(pid, []) if stamp is not None and stamp <= when]
        if before:
            lost += when - max(before)
        else:
            early += 1
    return lost, early


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Every figure of every epoch equal, exactly (Ray's own bookkeeping and timings aside)."""
    if [r["epoch"] for r in a] != [r["epoch"] for r in b]:
        return False
    for x, y in zip(a, b):
        keys = (set(x) | set(y)) - VOLATILE
        if any(x.get(k) != y.get(k) and not (x.get(k) != x.get(k) and y.get(k) != y.get(k)) for k in keys):
            return False
    return True


def run_chaos_search(settings, every: float | None, mark: str, seed: int) -> dict:
    """One search, with a killer every ``every`` seconds (None: undisturbed)."""
    # late, as noted at the top
    from search.report import format_trials  # the table as the search printed it, for comparison
    from search.space import load_space
    from search.stores import store_devices
    from search.tuner import run_search

    killer = Killer(every, mark, seed) if every else None
    start = time.perf_counter()
    if killer:
        killer.start()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = run_search(settings, command=f"python -m search bench-chaos ({settings.name})")
    finally:
        if killer:
            killer.halt.set()
            killer.join()
    seconds = time.perf_counter() - start
    search_dir = Path(settings.storage) / settings.name
    info = json.loads((search_dir / "search.json").read_text())
    space = load_space(search_dir / "space.yaml")
    table = format_trials(result["trials"], space, store_devices(info["stores"]), len(result["trials"]))
    runs = mlflow_trials(info["mlflow_uri"], settings.name)
    retries = sum(int(r.data.tags.get("retries", 0)) for r in runs)
    # finished after more failures in all than --max-failures allows in a row: Tune's own count of a
    # trial's failures (in its whole life) would have ended them
    kept = sum(r.info.status == "FINISHED" and int(r.data.tags.get("retries", 0)) > settings.max_failures >= 0
               for r in runs)
    return {"seconds": seconds, "kills": killer.kills if killer else [], "retries": retries, "kept_going": kept,
            "finished": sum(t["state"] != "failed" for t in result["trials"]), "failed": len(result["failed"]),
            "trials": len(result["trials"]), "records": trial_records(search_dir), "table": table,
            "mlflow_runs": len(runs), "running": sum(r.info.status == "RUNNING" for r in runs)}


def rows(calm: dict, chaos: dict[float, dict]) -> list[dict]:
    table = []

    def row(measure, ours, ref, goal="", ok=""):
        ratio = ours / ref if isinstance(ours, (int, float)) and ref else float("nan")
        table.append({"measure": measure, "this_project": ours, "reference": ref, "ratio": ratio, "goal": goal,
                      "met": ok, "fmt": "{:.0f}" if isinstance(ours, int) else "{:.1f}", "ratio_fmt": "{:.2f}"})

    calm_epochs = sum(r["raw"] for r in calm["records"].values())
    seconds = [r["time_this_iter_s"] for c in calm["records"].values() for r in c["rows"] if "time_this_iter_s" in r]
    epoch_seconds = sum(seconds) / len(seconds) if seconds else float("nan")
    for every, c in chaos.items():
        epochs = sum(r["raw"] for r in c["records"].values())
        recomputed = sum(r["raw"] - len(r["rows"]) for r in c["records"].values())
        same = sum(1 for p, r in c["records"].items() if p in calm["records"] and same_rows(r["rows"], calm["records"][p]["rows"]))
        tag = f"kill every {every:g} s | undisturbed"
        lost, early = kill_costs(c["kills"], c["records"])
        row(f"kills, {tag}", len(c["kills"]), 0)
        row(f"retries, {tag}", c["retries"], calm["retries"])
        row(f"trials finished, {tag}", c["finished"], calm["finished"], f"= {calm['trials']}",
            "yes" if c["finished"] == calm["trials"] else "NO")
        row(f"trials lost for good, {tag}", c["failed"], calm["failed"], "0", "yes" if c["failed"] == 0 else "NO")
        row(f"of those finished, retried more often in all than --max-failures (Tune's own count would have lost "
            f"them), {tag}", c["kept_going"], calm["kept_going"])
        row(f"trial-epochs trained, {tag}", epochs, calm_epochs)
        row(f"trial-epochs reported twice (recomputed after a kill), {tag}", recomputed, 0)
        row(f"seconds of training the kills threw away (each up to 1 s over), {tag}", lost, 0.0)
        row(f"the same in undisturbed trial-epochs ({epoch_seconds:.1f} s each), {tag}", lost / epoch_seconds, 0.0)
        row(f"kills before the worker's first report (start and restore lost: not timed), {tag}", early, 0)
        row(f"configurations with identical results, {tag}", same, len(calm["records"]), f"= {len(calm['records'])}",
            "yes" if same == len(calm["records"]) else "NO")
        row(f"best-trials table identical (1 = yes), {tag}", int(c["table"] == calm["table"]), 1, "= 1",
            "yes" if c["table"] == calm["table"] else "NO")
        row(f"MLflow trial runs (RUNNING: {c['running']}), {tag}", c["mlflow_runs"], calm["mlflow_runs"],
            f"= {calm['trials']}, none RUNNING",
            "yes" if c["mlflow_runs"] == calm["trials"] and not c["running"] else "NO")
        row(f"search seconds, {tag}", c["seconds"], calm["seconds"])
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-chaos", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=integer(12, 20), default=12, help="grid points (default %(default)s)")
    parser.add_argument("--epochs", type=COUNT, default=6, help="epochs of every trial (default %(default)s)")
    parser.add_argument("--every", type=number(above=0), nargs="+", default=[8.0, 20.0],
                        help="seconds between kills, one chaotic search per value (default %(default)s)")
    parser.add_argument("--max-failures", type=integer(-1), default=3, help="as `run` (default %(default)s)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny",
                        help="tiny: the tests' 1 s clips; full: 10 s, 44.1 kHz clips (default %(default)s)")
    parser.add_argument("--seed", type=SEED, default=0, help="which workers the killer picks (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept (default: a temporary folder, removed)")
    add_report_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    search_env_defaults()
    mark = str(os.getpid())
    os.environ[MARK] = mark  # before Ray starts: its workers inherit it
    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="asc-bench-chaos-")) if temporary else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs", ignore_errors=True)
    return run_benchmark(lambda: _measure(args, work, mark),
                         lambda: shutil.rmtree(work, ignore_errors=True) if temporary else log(f"kept {work}"))


def _measure(args, work: Path, mark: str) -> None:
    """The undisturbed search, one search per ``--every``, then the table (and the ``--json`` file)."""
    from search.tuner import SearchSettings  # late, as noted at the top

    scale = SCALES[args.scale]
    runs = work / "runs"
    synth, count = synth_for(240, {**scale.synth, "seed": 3})
    log(f"[1/{2 + len(args.every)}] data: {count} synthetic clips and their store in {work}")
    data = build_data(work, synth, feature_config(scale))
    space = write_yaml(work / "spaces" / "chaos.yaml", grid_space(scale, args.trials, args.epochs))
    searches: dict = {}
    for k, every in enumerate([None, *args.every]):
        name = "undisturbed" if every is None else f"kill-every-{every:g}s"
        log(f"[{2 + k}/{2 + len(args.every)}] search {name}: {args.trials} trials x {args.epochs} epochs, "
             "two at once" + ("" if every is None else f", a random trial worker killed every {every:g} s"))
        settings = SearchSettings(space=str(space), store=str(data.store_root), name=name, storage=str(runs),
                                  max_failures=args.max_failures, top=args.trials)
        searches[every] = run_chaos_search(settings, every, mark, args.seed)
    calm = searches.pop(None)
    table = rows(calm, searches)
    lines = [machine_line(), f"data: {count} synthetic clips ({synth.seconds:g} s, {synth.sample_rate} Hz); "
             f"space {space} ({args.trials} points x {args.epochs} epochs, 2 trials at once, "
             f"--max-failures {args.max_failures})", ""]
    lines += table_lines(table)
    lines += ["", "'this project | reference': the search with kills | the undisturbed one."]
    print("\n".join(lines), flush=True)
    if args.json:
        out = {"calm": {k: v for k, v in calm.items() if k != "records"},
               "chaos": {str(e): {k: v for k, v in c.items() if k != "records"} for e, c in searches.items()},
               "table": json_rows(table)}
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
