"""``python -m search bench-search``: what the search machinery costs beside plain training, in one run.

    python -m search bench-search [--clips 260] [--trials 4] [--concurrent 2] [--workdir DIR]
    python -m search bench-search --efficiency [--scale tiny] [--seeds K]  # also the ~40 min search-efficiency part
    python -m search bench-search --only memory --scale tiny       # one part, on test-sized clips

It writes its own synthetic set (``asc.synth.write_dataset``) and feature store (``asc.store.build_stores``)
into the work folder, then measures, in this order, and prints one table (this project | reference |
ratio | goal | met?) like ``bench-features``. Progress goes to stderr, the table to stdout.

1. Memory (runs first: no Ray, and this process has not opened the store yet). K reader processes
   (``--concurrent``, default 2: the trials that fit this machine at once) each open the store the way a
   trial does (``asc.train.FeatureView``, GMSVN) and read every row in shuffled batches of 32, then wait,
   all alive, while this process reads their ``/proc/PID/smaps_rollup`` and ``/proc/PID/smaps``. Each
   reader's "before" snapshot is taken after every reader has imported its libraries and run the batch
   code on two rows of zeros (a barrier) and before any opens the store, so that library pages do not
   move between the snapshots. Rows, against the store's size on disk (its Arrow shard files):
   - the sum over the readers of their growth in Private_Clean + Private_Dirty (memory that is one
     reader's alone: a copy of the features would land here); goal at most a tenth of the store;
   - the sum of the Pss of the store files' own mappings (each resident page divided among the processes
     mapping it: one shared copy sums to ~1 x the store, K private copies of the file pages would sum to
     K x); goal at most 1.1;
   - the sum of the whole processes' Pss growth (the same plus private growth and library pages), and
     the mean Rss of the store mappings (each reader does map all of it: ~1 x the store each).
   The notes add each reader's growth and the processes that map the store (the readers only).
2. Per-trial overhead of Tune + MLflow. The same ``--trials`` smoke-sized trials (the small CNN of
   ``spaces/smoke.yaml``: width 8, 3 epochs, validation protocol, Metric B; enhancement none / mean
   subtraction x mixup 0 / 0.3, lr 1e-3, written as a ``points`` space into the work folder, no ASHA so
   that every trial runs all its epochs) run
   (a) by plain ``asc.train.train`` in this process, serially, with the trainable's checkpoint folder and
       ``evaluate_best``, torch limited to the threads Ray gives a trial (``--cpus-per-trial``), after one
       untimed 1-epoch warm-up; each trial's wall clock around ``train``, summed;
   (b) through ``search.tuner.run_search`` (``SearchSettings``, ``max_concurrent`` 1, local Ray started
       before it and not timed), once with ``reuse_actors`` True, once False. A trial's start is its MLflow
       run's ``start_time`` (the driver's tracking callback creates the run in ``on_trial_start``, right
       after Tune started or reset the trial's actor) and its end the run's ``end_time`` (set in
       ``on_trial_complete`` after the driver logged the trial's model, predictions and confusion plots).
       The search's span = last end - first start: it leaves out Ray's start-up, the first actor's
       start-up (before its ``on_trial_start``) and the end-of-search report.
   Overhead per trial = (span - sum of (a)) / trials, in seconds and as a share of a smoke trial's
   training time (the mean of (a)). Goal: at most 1.5 s and at most 5%. Then the same for the trials
   after the first (the steady state of a longer search: each with the gap before it). Breakdown rows,
   means over the trials (the notes list each trial; the first pays a fresh actor's imports even with reuse): trial start
   to its last result (the driver's MLflow timestamp of the last epoch) against plain ``train`` up to its
   last report (Tune's reports and checkpoint copies, imports on a fresh actor); last result to the run's
   end against plain ``train``'s final evaluation after its last report (the trial's completion and the
   driver's trial-end logging); and between trials (a run's end to the next one's start: actor reset or
   a new actor, the next suggestion). The notes also give the worker pids Tune's ``result.json`` recorded
   (one pid for every trial = the actor was reused) and the mean epoch seconds in both, which show
   whether the trials trained at the reference's speed (a busy machine slows one and not the other).
3. Search efficiency (``--efficiency``; at ``--scale full`` about 40 minutes on 2 cores, about 2 minutes
   at ``tiny``). A small discrete space (enhancement x mixup x lr at full scale, enhancement x lr at tiny)
   is searched twice, K trials at once: the full-budget grid (``sampler: grid``, no scheduler: every point
   for all its epochs) and TPE + ASHA (as many trials as grid points, grace period 1, reduction factor 3).
   Both YAML spaces are written into ``WORKDIR/efficiency/``. Each trial-epoch is one result the driver
   received (MLflow's ``objective`` history, ordered by its timestamps); best-so-far is the running
   maximum of the objective (Metric B on the selection clips at the trial's selected epoch). Figure: the
   trial-epochs TPE + ASHA needed to come within 1 point of the grid's best Metric B, against the grid's
   total trial-epochs; goal at most a third. Both curves are plotted into ``WORKDIR/efficiency/
   efficiency.png`` (kept even when the work folder is a temporary one).

A figure measured while other processes used >= 0.1 core is marked ``*`` (``search.bench.CpuMeter``);
the machine's speed varies from run to run, so compare only ratios from one run. With ``--workdir`` the
synthetic sets and stores are kept and reused by the next run; ``WORKDIR/runs`` (Tune, Optuna, MLflow)
is replaced by each run. Any Ray instance the benchmark starts is shut down at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asc.cli import ArgumentParser, COUNT, number
from asc.errors import AscError
from search.bench import SCALES, CpuMeter, Data, Scale, add_report_options, build_data, feature_config, json_rows, log, \
    machine_line, mlflow_trials, run_benchmark, search_env_defaults, synth_for, table_lines, write_yaml

# The rest (asc's synthetic set, features, store and training, torch, Ray, MLflow, Optuna, YAML,
# matplotlib) is imported late, by the part that uses it: `--help` starts without it, and a memory
# reader (a child process) imports what a trial's reading does.

REPO = Path(__file__).resolve().parents[2]
BATCH = 32  # rows per read in the memory readers (the paper's and the trials' batch size)
OVERHEAD_GOAL_S = 1.5
OVERHEAD_GOAL_SHARE = 0.05
MEMORY_PRIVATE_GOAL = 0.10  # the K readers' private growth, as a share of the store
MEMORY_PSS_GOAL = 1.10  # the K readers' Pss of the store files: one copy (~1.0), not K
EFFICIENCY_GOAL = 1 / 3
WITHIN = 0.01  # "within 1 point" of Metric B
SMOKE_COMBOS = (("none", 0.0), ("mean_subtraction", 0.0), ("none", 0.3), ("mean_subtraction", 0.3))



# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def store_bytes(store: str) -> int:
    """The store's size on disk: its Arrow shard files (not the derived caches)."""
    from asc.store import MANIFEST, read_manifest  # late, as noted at the top

    manifest = read_manifest(Path(store) / MANIFEST)
    return sum((Path(store) / s["file"]).stat().st_size for s in manifest["shards"])



# --------------------------------------------------------------------------------------------------
# 1. Memory: K readers of one store
# --------------------------------------------------------------------------------------------------
_RANGE = re.compile(r"^[0-9a-f]+-[0-9a-f]+\s")


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in bytes."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def file_mappings(pid: int, folder: str) -> dict[str, int]:
    """The ``/proc/PID/smaps`` figures (bytes) summed over the mappings of files under ``folder``."""
    out: dict[str, int] = {}
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if _RANGE.match(line):
                parts = line.split(None, 5)
                inside = len(parts) == 6 and parts[5].strip().startswith(folder)
            elif inside:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = out.get(parts[0].rstrip(":"), 0) + int(parts[1]) * 1024
    return out


def mapping_processes(folder: str) -> list[int]:
    """Every process on the machine that maps a file under ``folder`` (that this user may read)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                if folder in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _reader(store: str) -> None:
    """A memory reader (a child process): import, wait for "go", read every row as a trial does, report,
    wait for the line that lets it exit (the store stays mapped until then)."""
    import torch  # late, as noted at the top

    from asc.enhance import Enhancement
    from asc.store import MANIFEST, read_manifest
    from asc.train import FeatureView

    # Run the batch code on two rows of zeros first (the manifest is read, the store not mapped), so
    # that library code pages first touched by that code are in the "before" snapshot too.
    manifest = read_manifest(Path(store) / MANIFEST)
    mean, std = (np.asarray(manifest[k], dtype=np.float32) for k in ("train_mean", "train_std"))
    torch.from_numpy(np.ascontiguousarray(Enhancement("gmsvn")(np.zeros((2, *manifest["shape"]), np.float32), mean, std)))
    gc.collect()
    print("imported", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    view = FeatureView(store, Enhancement("gmsvn"))
    order = np.random.default_rng(os.getpid()).permutation(len(view.clips))
    rows = 0
    for i in range(0, len(order), BATCH):
        x, _ = view.batch(order[i:i + BATCH])
        rows += len(x)
    del x
    gc.collect()
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start}), flush=True)
    sys.stdin.readline()
    del view


def memory_part(store: str, k: int, meter) -> dict:
    folder = os.path.realpath(store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    code = "import sys; from search.bench.search import _reader; _reader(sys.argv[1])"
    procs, logs = [], []
    fig: dict = {"k": k, "store": store, "store_bytes": store_bytes(store)}

    def line_of(i: int) -> str:
        text = procs[i].stdout.readline()
        if not text:
            procs[i].wait(timeout=30)
            logs[i].seek(0)
            raise AscError(f"memory reader {i} stopped (exit {procs[i].returncode}): "
                           f"{logs[i].read().strip().splitlines()[-1:] or 'no output'}")
        return text.strip()

    try:
        with meter.measure("memory"):
            for _ in range(k):
                logs.append(tempfile.TemporaryFile("w+"))
                procs.append(subprocess.Popen([sys.executable, "-c", code, folder], cwd=REPO, env=env, text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1]))
            for i in range(k):
                if line_of(i) != "imported":
                    raise AscError(f"memory reader {i}: unexpected output")
            before = [smaps_rollup(p.pid) for p in procs]  # all imported, none has opened the store
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            reports = [json.loads(line_of(i)) for i in range(k)]
            after = [smaps_rollup(p.pid) for p in procs]  # all alive, all have read every row
            stores = [file_mappings(p.pid, folder) for p in procs]
            mappers = mapping_processes(folder)
    finally:
        for p in procs:
            with contextlib.suppress(OSError, ValueError):
                p.stdin.write("\n")
                p.stdin.flush()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for reader_log in logs:
            reader_log.close()

    def delta(key_fn):
        return [key_fn(a) - key_fn(b) for a, b in zip(after, before)]

    fig["readers"] = [{"pid": p.pid, **r, "before": b, "after": a, "store_mappings": s}
                      for p, r, b, a, s in zip(procs, reports, before, after, stores)]
    fig["private_growth"] = delta(lambda m: m.get("Private_Clean", 0) + m.get("Private_Dirty", 0))
    fig["pss_growth"] = delta(lambda m: m.get("Pss", 0))
    fig["rss_growth"] = delta(lambda m: m.get("Rss", 0))
    fig["shared_growth"] = delta(lambda m: m.get("Shared_Clean", 0) + m.get("Shared_Dirty", 0))
    fig["anon_growth"] = delta(lambda m: m.get("Anonymous", 0))
    fig["store_pss"] = [s.get("Pss", 0) for s in stores]
    fig["store_rss"] = [s.get("Rss", 0) for s in stores]
    fig["store_private"] = [s.get("Private_Clean", 0) + s.get("Private_Dirty", 0) for s in stores]
    fig["mappers"] = len(mappers)
    fig["mappers_are_readers"] = sorted(mappers) == sorted(p.pid for p in procs)
    fig["rows"] = reports[0]["rows"]
    return fig


# --------------------------------------------------------------------------------------------------
# 2. Per-trial overhead of Tune + MLflow
# --------------------------------------------------------------------------------------------------
def smoke_params(scale: Scale, epochs: int) -> dict:
    params = {"model": "cnn", "width": scale.width, "epochs": epochs, "protocol": "validation",
              "selection": "metric_b", "n_mels": scale.n_mels, "batch_size": scale.batch_size}
    return params


def overhead_space(scale: Scale, trials: int) -> dict:
    points = [{"id": f"p{i}", "enhancement": SMOKE_COMBOS[i % 4][0], "mixup_alpha": SMOKE_COMBOS[i % 4][1],
               "seed": i // 4} for i in range(trials)]
    doc = {"description": "bench-search: smoke-sized trials (spaces/smoke.yaml's CNN) as fixed points, every "
                          "trial its full epochs, for the per-trial overhead of Tune + MLflow",
           "sampler": "points", "objective": "metric_b", "num_samples": trials, "max_concurrent": 1, "seed": 0,
           "scheduler": "none"}
    if scale.features:
        doc["features"] = dict(scale.features)
    doc["params"] = {**smoke_params(scale, scale.smoke_epochs), "lr": 0.001}
    doc["points"] = points
    return doc


def tune_pids(search_dir: Path) -> dict[str, set]:
    """trial id -> the worker pids in Tune's result.json rows."""
    out = {}
    for f in search_dir.glob("t*_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = {r.get("pid") for r in rows}
    return out


def run_one_search(settings, label: str) -> dict:
    """``run_search`` with its console output sent to stderr (progress) so that stdout holds the table."""
    from search.tuner import run_search  # late, as noted at the top

    with contextlib.redirect_stdout(sys.stderr):
        return run_search(settings, command=f"python -m search bench-search ({label})")


def overhead_part(work: Path, data: Data, scale: Scale, trials: int, cpus_per_trial: float, gpus_per_trial: float,
                  runs: Path, meter) -> dict:
    """The smoke trials by (a) plain ``train`` and (b) the search, with reuse_actors True and False."""
    from search.prepare import init_ray  # late, as noted at the top
    from search.space import load_space

    space_path = write_yaml(work / "spaces" / "overhead.yaml", overhead_space(scale, trials))
    space = load_space(space_path)
    device = "cpu" if gpus_per_trial == 0 else "auto"  # a trial without a GPU share sees no GPU under Ray
    fig: dict = {"trials": trials, "space": str(space_path), "cpus_per_trial": cpus_per_trial}
    plain, plain_tail, plain_epochs = _plain_trials(work, data, space, device, cpus_per_trial, meter)
    fig["plain"] = plain
    fig["plain_tail"] = plain_tail
    fig["plain_sum"] = sum(plain.values())
    fig["plain_mean"] = fig["plain_sum"] / trials
    fig["plain_epoch_seconds"] = float(np.mean(plain_epochs))

    start = time.perf_counter()
    init_ray(None)
    fig["ray_start_seconds"] = time.perf_counter() - start
    for reuse in (True, False):
        key = "reuse" if reuse else "fresh"
        fig[key] = _search_trials(space_path, data, runs, trials, cpus_per_trial, gpus_per_trial, reuse, fig, meter)
        log(f"      overhead-{key}: span {fig[key]['span']:.1f} s for {trials} trials; overhead "
             f"{fig[key]['overhead']:.2f} s/trial")
    return fig


def _plain_trials(work: Path, data: Data, space, device: str, cpus_per_trial: float, meter):
    """(a) The points by plain ``train()``, serially, in this process, after an untimed 1-epoch warm-up:
    ({point: seconds}, {point: seconds after its last report}, every epoch's seconds)."""
    import torch  # late, as noted at the top

    from asc.train import train
    from search.trainable import flatten_report

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, math.floor(cpus_per_trial)))  # Ray sets OMP_NUM_THREADS so for a trial
    checkpoints = work / "plain-checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    plain, plain_tail, plain_epochs = {}, {}, []
    try:
        first = space.resolve({**space.fixed, **space.points[0][1]})
        log("      warm-up: one untimed epoch of the first point")
        train(space.train_config({**first, "epochs": 1}, data.store, checkpoint_dir=str(checkpoints / "warmup"),
                                 device=device), evaluate_best=True)
        with meter.measure("plain"):
            for pid, point in space.points:
                params = space.resolve({**space.fixed, **point})
                config = space.train_config(params, data.store, checkpoint_dir=str(checkpoints / pid), device=device)

                last = [0.0]

                def report(epoch, metrics, ckpt, config=config, last=last):  # the trainable's work, without Tune
                    flatten_report(metrics, config.epochs, space.objective)
                    last[0] = time.perf_counter()

                start = time.perf_counter()
                result = train(config, report, evaluate_best=config.protocol == "validation")
                plain[pid] = time.perf_counter() - start
                plain_tail[pid] = start + plain[pid] - last[0]  # after the last report: the final evaluation
                plain_epochs += [h["seconds"] for h in result["history"]]
                log(f"      plain {pid} {space.describe(params)}: {plain[pid]:.1f} s")
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(checkpoints, ignore_errors=True)
    return plain, plain_tail, plain_epochs


def _search_trials(space_path: Path, data: Data, runs: Path, trials: int, cpus_per_trial: float,
                   gpus_per_trial: float, reuse: bool, fig: dict, meter) -> dict:
    """(b) The same points through the search, one at a time, timed from its MLflow runs against
    ``fig``'s plain trials (:func:`_plain_trials`)."""
    from mlflow.tracking import MlflowClient  # late, as noted at the top

    from search.tuner import SearchSettings

    key = "reuse" if reuse else "fresh"
    name = f"overhead-{key}"
    plain, plain_tail = fig["plain"], fig["plain_tail"]
    log(f"      search {name}: {trials} trials, max_concurrent 1, reuse_actors={reuse}")
    settings = SearchSettings(space=str(space_path), store=str(data.store_root), name=name, storage=str(runs),
                              num_samples=trials, max_concurrent=1, cpus_per_trial=cpus_per_trial,
                              gpus_per_trial=gpus_per_trial, seed=0, reuse_actors=reuse, top=trials)
    with meter.measure(f"search {key}"):
        run_one_search(settings, f"overhead, reuse_actors={reuse}")
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    mruns = mlflow_trials(uri, name)
    bad = [r.info.run_name for r in mruns if r.info.status != "FINISHED" or not r.info.end_time]
    if len(mruns) != trials or bad:
        raise AscError(f"search {name}: {len(mruns)} MLflow trial runs of {trials}, unfinished: {bad}")
    starts = [r.info.start_time / 1000 for r in mruns]
    ends = [r.info.end_time / 1000 for r in mruns]
    points = [r.data.params.get("point") for r in mruns]
    if sorted(points) != sorted(plain):
        raise AscError(f"search {name}: trials ran points {points}, expected {sorted(plain)}")
    span = max(ends) - min(starts)
    client = MlflowClient(uri)
    epoch_seconds, last_result = [], []
    for r in mruns:
        history = client.get_metric_history(r.info.run_id, "epoch_seconds")
        epoch_seconds += [m.value for m in history]
        last_result.append(max(m.timestamp for m in history) / 1000)  # the driver got the last epoch
    # start -> last result: the trainable in the actor (imports on a fresh actor, Tune's reports and
    # checkpoint copies) against plain train() up to its last report; last result -> run closed: the
    # trial's completion and the driver's trial-end logging against plain train()'s final evaluation.
    to_last = [lr - s - (plain[p] - plain_tail[p]) for s, lr, p in zip(starts, last_result, points)]
    closing = [e - lr - plain_tail[p] for lr, e, p in zip(last_result, ends, points)]
    gaps = [starts[i + 1] - ends[i] for i in range(trials - 1)]
    pids = tune_pids(runs / name)
    later = [to_last[i] + closing[i] + gaps[i - 1] for i in range(1, trials)]  # each with the gap before it
    return {"span": span, "per_trial": span / trials, "overhead": (span - fig["plain_sum"]) / trials,
            "later": float(np.mean(later)) if later else math.nan,
            "to_last": float(np.mean(to_last)), "to_last_each": to_last,
            "closing": float(np.mean(closing)), "closing_each": closing,
            "gap": float(np.mean(gaps)) if gaps else math.nan, "gaps": gaps,
            "worker_pids": len(set().union(*pids.values())) if pids else 0,
            "epoch_seconds": float(np.mean(epoch_seconds)) if epoch_seconds else math.nan,
            "order": points}


# --------------------------------------------------------------------------------------------------
# 3. Search efficiency: TPE + ASHA against the full-budget grid
# --------------------------------------------------------------------------------------------------
def efficiency_spaces(scale: Scale, concurrent: int) -> tuple[dict, dict]:
    grid_size = math.prod(len(v) for v in scale.grid.values())
    params = {**smoke_params(scale, scale.efficiency_epochs), **{k: {"choice": list(v)} for k, v in scale.grid.items()}}
    common = {"objective": "metric_b", "num_samples": grid_size, "max_concurrent": concurrent, "seed": 0}
    features = {"features": dict(scale.features)} if scale.features else {}
    grid = {"description": "bench-search: the full-budget grid (every point, every epoch)", "sampler": "grid",
            **common, "scheduler": "none", **features, "params": params}
    asha = {"description": "bench-search: TPE + ASHA over the grid's space, as many trials as grid points",
            "sampler": "tpe", **common,
            "scheduler": {"name": "asha", "grace_period": scale.grace_period,
                          "reduction_factor": scale.reduction_factor}, **features, "params": params}
    return grid, asha


def best_so_far(uri: str, name: str) -> tuple[list[tuple[int, float]], float, float]:
    """(cumulative trial-epochs, best objective so far) per result the driver received, in its order;
    the search's wall span (first run start to last run end, s)."""
    from mlflow.tracking import MlflowClient  # late, as noted at the top

    client = MlflowClient(uri)
    runs = mlflow_trials(uri, name)
    events = []
    for r in runs:
        events += [(m.timestamp, r.info.run_id, m.step, m.value) for m in client.get_metric_history(r.info.run_id, "objective")]
    events.sort()
    curve, best = [], -math.inf
    for i, (_, _, _, value) in enumerate(events):
        best = max(best, value)
        curve.append((i + 1, best))
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    return curve, best, span


def plot_curves(path: Path, grid: list, asha: list, grid_best: float, need: float, title: str) -> None:
    import matplotlib  # late, as noted at the top; pyplot only after choosing the Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"):  # not whatever style an earlier plot of the process left set
        fig, ax = plt.subplots(figsize=(9, 5.5))
    for curve, label, color in ((grid, f"full-budget grid ({len(grid)} trial-epochs)", "tab:blue"),
                                (asha, f"TPE + ASHA ({len(asha)} trial-epochs)", "tab:orange")):
        ax.step([c[0] for c in curve], [100 * c[1] for c in curve], where="post", label=label, color=color)
    ax.axhline(100 * grid_best, ls=":", color="gray", label=f"grid's best {100 * grid_best:.1f}%")
    ax.axhline(100 * (grid_best - WITHIN), ls="--", color="gray", label="grid's best - 1 point")
    if math.isfinite(need):
        ax.axvline(need, ls="--", color="tab:orange", alpha=0.6,
                   label=f"TPE + ASHA within 1 point after {need:.0f} trial-epochs")
    ax.set_xlabel("trial-epochs, cumulative (results in the order the driver received them)")
    ax.set_ylabel("best Metric B so far, % (selection clips, selected epoch)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def efficiency_part(work: Path, scale: Scale, scale_name: str, concurrent: int, cpus_per_trial: float,
                    gpus_per_trial: float, runs: Path, meter, seeds: int = 1) -> dict:
    from asc.synth import SynthConfig  # late, as noted at the top
    from search.prepare import init_ray
    from search.tuner import SearchSettings

    out = work / "efficiency"
    out.mkdir(parents=True, exist_ok=True)
    synth = SynthConfig(**scale.efficiency_synth)
    data = build_data(work, synth, feature_config(scale))
    grid_doc, asha_doc = efficiency_spaces(scale, concurrent)
    if seeds > 1:  # every trial trains `seeds` models in lockstep: both compare means over seeds
        grid_doc["seeds"] = asha_doc["seeds"] = seeds
    paths = {"grid": write_yaml(out / "grid.yaml", grid_doc), "asha": write_yaml(out / "asha.yaml", asha_doc)}
    init_ray(None)
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    fig: dict = {"clips": data.clips, "grid_points": grid_doc["num_samples"], "epochs": scale.efficiency_epochs,
                 "seeds": seeds,
                 "spaces": {k: str(v) for k, v in paths.items()}}
    for key in ("grid", "asha"):
        name = f"efficiency-{key}"
        log(f"      search {name}: {grid_doc['num_samples']} trials, {concurrent} at once ({paths[key]})")
        settings = SearchSettings(space=str(paths[key]), store=str(data.store_root), name=name, storage=str(runs),
                                  max_concurrent=concurrent, cpus_per_trial=cpus_per_trial,
                                  gpus_per_trial=gpus_per_trial, seed=0, top=5)
        with meter.measure(f"efficiency {key}"):
            result = run_one_search(settings, f"efficiency, {key}")
        curve, best, span = best_so_far(uri, name)
        ranked = sorted(result["trials"], key=lambda t: -(t.get("objective") if isinstance(t.get("objective"), float) else -1))
        fig[key] = {"curve": curve, "best": best, "trial_epochs": len(curve), "span": span,
                    "best_trial": ranked[0]["describe"] if ranked else "",
                    "stopped": sum(t["state"] == "stopped" for t in result["trials"])}
    grid_best = fig["grid"]["best"]
    reach = [n for n, b in fig["asha"]["curve"] if b >= grid_best - WITHIN - 1e-12]
    fig["asha_need"] = reach[0] if reach else math.inf
    grid_reach = [n for n, b in fig["grid"]["curve"] if b >= grid_best - WITHIN - 1e-12]
    fig["grid_need"] = grid_reach[0] if grid_reach else math.inf
    plot = out / "efficiency.png"
    plot_curves(plot, fig["grid"]["curve"], fig["asha"]["curve"], grid_best, fig["asha_need"],
                f"bench-search --scale {scale_name}: {fig['grid_points']}-point grid x {scale.efficiency_epochs} epochs "
                f"vs TPE + ASHA (grace {scale.grace_period}, reduction {scale.reduction_factor:g}), "
                f"{data.clips} clips, {concurrent} trials at once"
                + (f", Metric B the mean over {seeds} seeds" if seeds > 1 else ""))
    fig["plot"] = str(plot)
    (out / "curves.json").write_text(json.dumps(fig, indent=1, default=str))
    return fig


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def _contended(meter, sections) -> list[str]:
    return [s for s in sections if meter.sections.get(s, 0.0) >= CpuMeter.QUIET]


def rows(fig: dict, meter) -> list[dict]:
    out = []

    def row(measure, ours, ref, goal=None, check=None, fmt="{:.2f}", ratio_fmt="{:.3f}", sections=()):
        ratio = ours / ref if ref else math.nan
        met = "-" if check is None else ("yes" if check(ours, ratio) else "NO")
        if _contended(meter, sections):
            met += "*"
        out.append({"measure": measure, "this_project": ours, "reference": ref, "ratio": ratio, "goal": goal or "-",
                    "met": met, "fmt": fmt, "ratio_fmt": ratio_fmt})

    mem = fig.get("memory")
    if mem:
        mb, k = 1e6, mem["k"]
        store = mem["store_bytes"] / mb
        row(f"memory, K={k} readers of one store, MB: sum of private growth (Private_Clean+Dirty) | store on disk",
            sum(mem["private_growth"]) / mb, store, f"<= {MEMORY_PRIVATE_GOAL:g}",
            lambda o, r: r <= MEMORY_PRIVATE_GOAL, fmt="{:.1f}", sections=("memory",))
        row(f"memory, K={k} readers, MB: sum of Pss of the store's file mappings (one copy ~1, {k} ~{k}) | store on disk",
            sum(mem["store_pss"]) / mb, store, f"<= {MEMORY_PSS_GOAL:g}",
            lambda o, r: r <= MEMORY_PSS_GOAL, fmt="{:.1f}", sections=("memory",))
        row(f"memory, K={k} readers, MB: sum of Pss growth, whole processes | store on disk",
            sum(mem["pss_growth"]) / mb, store, fmt="{:.1f}", sections=("memory",))
        row("memory, each reader maps the whole store, MB: mean Rss of the store's file mappings | store on disk",
            sum(mem["store_rss"]) / k / mb, store, fmt="{:.1f}", sections=("memory",))
    ov = fig.get("overhead")
    if ov:
        for key, label in (("reuse", "True"), ("fresh", "False")):
            o = ov[key]
            row(f"overhead per trial, s, reuse_actors={label}: (search span - sum plain) / trials | plain smoke trial",
                o["overhead"], ov["plain_mean"], f"<= {OVERHEAD_GOAL_S:g} s, <= {OVERHEAD_GOAL_SHARE:g}",
                lambda v, r: v <= OVERHEAD_GOAL_S and r <= OVERHEAD_GOAL_SHARE,
                sections=("plain", f"search {key}"))
            row("  trials after the first, s, mean: gap before + start to closed - plain | plain smoke trial",
                o["later"], ov["plain_mean"], sections=("plain", f"search {key}"))
            row("  trial start to its last result, s, mean: search - plain | plain smoke trial",
                o["to_last"], ov["plain_mean"], sections=("plain", f"search {key}"))
            row("  last result to run closed (trial-end logging), s, mean: search - plain | plain smoke trial",
                o["closing"], ov["plain_mean"], sections=("plain", f"search {key}"))
            row("  between trials (actor reset or new actor), s, mean: next start - end | plain smoke trial",
                o["gap"], ov["plain_mean"], sections=(f"search {key}",))
        row("search span per trial, s: reuse_actors=True | reuse_actors=False", ov["reuse"]["per_trial"],
            ov["fresh"]["per_trial"], sections=("search reuse", "search fresh"))
    ef = fig.get("efficiency")
    if ef:
        row("efficiency, trial-epochs to within 1 pt of the grid's best Metric B: TPE + ASHA | full grid's total",
            ef["asha_need"], ef["grid"]["trial_epochs"], f"<= {EFFICIENCY_GOAL:.3f}",
            lambda v, r: r <= EFFICIENCY_GOAL + 1e-9, fmt="{:.0f}")
        row("efficiency, best Metric B on the selection clips, %: TPE + ASHA | full grid",
            100 * ef["asha"]["best"], 100 * ef["grid"]["best"], fmt="{:.1f}")
        row("efficiency, trial-epochs run in all: TPE + ASHA | full grid", ef["asha"]["trial_epochs"],
            ef["grid"]["trial_epochs"], fmt="{:.0f}")
        row("efficiency, wall time first trial start to last end, s: TPE + ASHA | full grid", ef["asha"]["span"],
            ef["grid"]["span"], fmt="{:.0f}", sections=("efficiency asha", "efficiency grid"))
    return out


def format_table(fig: dict, table: list[dict], meter) -> str:
    lines = [machine_line()]
    if fig.get("data"):
        d = fig["data"]
        lines.append(f"data: {d['clips']} synthetic clips ({d['clip']}), store {d['store']} "
                     f"({d['store_mb']:.1f} MB on disk, features {d['shape']})")
    lines.append("")
    lines += table_lines(table)
    lines += ["", "'this project | reference' in a measure names the two columns; ratio = this project / reference."]
    if fig.get("memory"):
        lines += _memory_notes(fig["memory"])
    if fig.get("overhead"):
        lines += _overhead_notes(fig["overhead"])
    if fig.get("efficiency"):
        lines += _efficiency_notes(fig["efficiency"])
    others = meter.sections
    if others:
        text = "other processes' CPU while measured, cores: " + ", ".join(f"{k} {v:.2f}" for k, v in others.items())
        if any(v >= 0.1 for v in others.values()):
            text = "* = other processes used >= 0.1 core while that figure was measured: it is contended. " + text
        if meter.waited:
            text += f"; waited {meter.waited:.0f} s in all for a quiet machine"
        lines.append(text)
    return "\n".join(lines)


def _series(values, spec: str, sep: str = ", ") -> str:
    """``values`` formatted with ``spec``, joined with ``sep``."""
    return sep.join(format(v, spec) for v in values)


def _memory_notes(mem: dict) -> list[str]:
    mb = 1e6
    per = "; ".join(f"pid {r['pid']}: private {g / mb:+.1f}, anonymous {a / mb:+.1f}, Pss {p / mb:+.1f}, "
                    f"Rss {s / mb:+.1f}, shared {h / mb:+.1f}"
                    for r, g, a, p, s, h in zip(mem["readers"], mem["private_growth"], mem["anon_growth"],
                                                mem["pss_growth"], mem["rss_growth"], mem["shared_growth"]))
    return [f"memory: {mem['k']} reader processes, each FeatureView(store, GMSVN) reading all {mem['rows']} "
            f"rows in shuffled batches of {BATCH}; growth per reader, MB: {per}.",
            f"memory: the store files' own mappings (smaps), MB: Pss "
            f"{_series((x / mb for x in mem['store_pss']), '.1f', ' + ')} = {sum(mem['store_pss']) / mb:.1f} (one copy: "
            f"{mem['store_bytes'] / mb:.1f}); Rss {_series((x / mb for x in mem['store_rss']), '.1f', ' + ')}; private "
            f"{_series((x / mb for x in mem['store_private']), '.1f', ' + ')}; processes mapping the store: "
            f"{mem['mappers']}{' (the readers only)' if mem['mappers_are_readers'] else ' (not only the readers!)'}."]


def _overhead_notes(ov: dict) -> list[str]:
    lines = [f"overhead: {ov['trials']} trials ({Path(ov['space']).name}: points, no scheduler), "
             f"{ov['cpus_per_trial']:g} cpu per trial, one at a time. plain = asc.train.train in this process, "
             f"torch threads = cpus per trial, after an untimed 1-epoch warm-up: "
             + ", ".join(f"{k} {v:.1f} s" for k, v in ov["plain"].items()) + ".",
             "overhead: search span = last MLflow trial run end_time - first start_time (driver callback: "
             "run created at on_trial_start, closed after the trial-end logging), Ray start-up "
             f"({ov['ray_start_seconds']:.1f} s) and the end-of-search report left out."]
    for key, label in (("reuse", "True"), ("fresh", "False")):
        o = ov[key]
        lines.append(f"overhead, reuse_actors={label}: span {o['span']:.1f} s; per trial in run order, start to "
                     f"last result {_series(o['to_last_each'], '+.2f')} s, last result to closed "
                     f"{_series(o['closing_each'], '+.2f')} s; gaps {_series(o['gaps'], '.2f')} s; {o['worker_pids']} "
                     f"worker pid(s) in result.json; epoch {o['epoch_seconds']:.2f} s (plain "
                     f"{ov['plain_epoch_seconds']:.2f} s).")
    return lines


def _efficiency_notes(ef: dict) -> list[str]:
    return [f"efficiency: {ef['clips']} clips; grid {ef['grid_points']} points x {ef['epochs']} epochs, best "
            f"{ef['grid']['best_trial']} ({100 * ef['grid']['best']:.1f}%; the grid itself got within 1 point "
            f"after {ef['grid_need']:.0f} trial-epochs in its order); TPE + ASHA best {ef['asha']['best_trial']} "
            f"({100 * ef['asha']['best']:.1f}%), {ef['asha']['stopped']} of {ef['grid_points']} trials stopped by ASHA.",
            f"efficiency: spaces {ef['spaces']['grid']}, {ef['spaces']['asha']}; plot {ef['plot']}"]


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
PARTS = ("memory", "overhead", "efficiency")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-search", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=COUNT, default=None,
                        help="about this many clips in the overhead / memory set (default: 260 at --scale full, "
                             "100 at tiny)")
    parser.add_argument("--trials", type=COUNT, default=4, help="smoke trials in the overhead part (default %(default)s)")
    parser.add_argument("--concurrent", type=COUNT, default=2,
                        help="K: memory readers, and trials at once in the efficiency part (default %(default)s)")
    parser.add_argument("--cpus-per-trial", type=number(minimum=0), default=1.0, help="(default %(default)s, as `run`)")
    parser.add_argument("--gpus-per-trial", type=number(minimum=0), default=0.0, help="(default %(default)s)")
    parser.add_argument("--seeds", type=COUNT, default=1,
                        help="efficiency part: models per trial in lockstep; both searches compared on the mean "
                             "over them (default %(default)s)")
    parser.add_argument("--efficiency", action="store_true",
                        help="also the search-efficiency part (about 40 min on 2 cores at --scale full; 2 min at tiny)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None,
                        help="run only these parts (default: memory and overhead, and efficiency with --efficiency)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full",
                        help="full: 10 s, 44.1 kHz clips; tiny: the tests' 1 s clips, minutes in all (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where data, stores and runs go; kept, and reused by the next run (default: a temporary "
                             "folder, removed at the end but for its efficiency/ outputs)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    add_report_options(parser, quiet_wait=30.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = args.only or (["memory", "overhead"] + (["efficiency"] if args.efficiency else []))
    parts = [p for p in PARTS if p in parts]  # memory first: before Ray, before this process maps the store
    scale = SCALES[args.scale]
    clips = args.clips or scale.default_clips
    if clips < 20 or args.trials < 1 or args.concurrent < 1 or args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        print("error: --clips >= 20, --trials and --concurrent >= 1, --cpus-per-trial > 0, --gpus-per-trial >= 0",
              file=sys.stderr)
        return 2
    search_env_defaults()
    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="asc-bench-search-")) if temporary else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs", ignore_errors=True)  # Tune, Optuna and MLflow of the previous run
    return run_benchmark(lambda: _measure(args, parts, scale, clips, work),
                         lambda: _clean_up(work, temporary and not args.keep))


def _measure(args, parts: list[str], scale: Scale, clips: int, work: Path) -> None:
    """The parts in their order, then the table (and the ``--json`` file)."""
    runs = work / "runs"
    meter = CpuMeter(wait_budget=args.quiet_wait)
    fig: dict = {"parts": parts, "scale": args.scale, "workdir": str(work)}
    steps = len(parts) + (1 if {"memory", "overhead"} & set(parts) else 0)
    step = 0

    def stage(text: str) -> None:
        nonlocal step
        step += 1
        log(f"[{step}/{steps}] {text}")

    if {"memory", "overhead"} & set(parts):
        data = data_part(work, clips, scale, fig, stage)
    if "memory" in parts:
        stage(f"memory: {args.concurrent} processes memory-map {Path(data.store).name} and read every row")
        fig["memory"] = memory_part(data.store, args.concurrent, meter)
    if "overhead" in parts:
        stage(f"overhead: {args.trials} smoke trials by plain train(), then through the search with "
              "reuse_actors True and False")
        fig["overhead"] = overhead_part(work, data, scale, args.trials, args.cpus_per_trial, args.gpus_per_trial,
                                        runs, meter)
    if "efficiency" in parts:
        stage(f"efficiency: the full-budget grid, then TPE + ASHA, over the same space (--scale {args.scale})")
        fig["efficiency"] = efficiency_part(work, scale, args.scale, args.concurrent, args.cpus_per_trial,
                                            args.gpus_per_trial, runs, meter, seeds=args.seeds)
    table = rows(fig, meter)
    print(format_table(fig, table, meter), flush=True)
    if args.json:
        fig["table"] = json_rows(table)
        fig["other_processes_cores"] = meter.sections
        args.json.write_text(json.dumps(fig, indent=1, default=str))


def data_part(work: Path, clips: int, scale: Scale, fig: dict, stage) -> Data:
    """The synthetic set of the memory and overhead parts and its store (``fig["data"]``)."""
    from asc.store import MANIFEST, read_manifest  # late, as noted at the top

    synth, count = synth_for(clips, scale.synth)
    stage(f"data: {count} synthetic clips ({synth.seconds:g} s, {synth.sample_rate} Hz; segments_per_scene="
          f"{synth.segments_per_scene}, parallel_per_scene={synth.parallel_per_scene}) and their store in {work}")
    data = build_data(work, synth, feature_config(scale))
    shape = read_manifest(Path(data.store) / MANIFEST)["shape"]
    fig["data"] = {"clips": data.clips, "clip": f"{synth.seconds:g} s, {synth.sample_rate} Hz",
                   "store": Path(data.store).name, "store_mb": store_bytes(data.store) / 1e6,
                   "shape": "x".join(map(str, shape)), "seconds": data.seconds}
    return data


def _clean_up(work: Path, remove: bool) -> None:
    """The work folder: kept, or (a temporary one) removed but for its efficiency/ outputs."""
    if remove:
        for child in work.iterdir():
            if child.name != "efficiency":
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        if not any(work.iterdir()):
            work.rmdir()
        else:
            log(f"kept {work / 'efficiency'}")
    else:
        log(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
