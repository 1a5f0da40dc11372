"""``python -m search bench-replay``: search strategies measured on recorded learning curves.

HPO research compares strategies on tabular benchmarks (HPOBench, LCBench, YAHPO Gym): every
configuration's full learning curve is recorded once, then many searches are replayed against the
record in seconds. This is that, for this project's own problem.

**The recording** (``search/bench/data/replay.parquet``, shipped; its Parquet metadata holds the command,
date, hardware and the space that made it): every configuration of a discrete space trained by the
project's own search (a grid with ``seeds: 3`` into MLflow, no pruning, every epoch of the full
budget), exported from MLflow with ``--export EXPERIMENT``: per configuration, seed and epoch, the
objective the search saw (Metric B of the epoch selected so far, on the selection clips) and the
evaluation split's Metric B of that epoch.

**A replay** runs a search with the same searcher and scheduler classes a real search uses
(``search.searcher.Searcher``, ``search.schedulers.PersistentASHA``, Ray's ``OptunaSearch``,
``ASHAScheduler``, ``TuneBOHB`` and ``HyperBandForBOHB``, Optuna's pruners), called as Ray Tune's
controller calls them (results, decisions, pauses, stops, trial completion), with the table standing in
for training: a simulated cluster of ``concurrency`` workers where every running trial produces one
epoch per tick. Cost is counted in trial-epochs. A trial trains with one seed (drawn per configuration
and replay: a repeat of a configuration gets the same seed, as in a real search); strategies that use
the seeds' noise (``noise_z``) train all three and pay three seed-epochs per trial-epoch. ``--check``
runs one replay through the real Tune loop (a trainable that reports the table's values) and shows it
makes the same decisions.

**Figures**, per strategy, over ``--replays`` searches with their own sampler seeds: the trial-epochs
until the search's current best trial (by what it saw on the selection clips) is a configuration
whose evaluation Metric B (the mean over the three seeds, at the epoch it reached) is within 1 point
of (a) the best configuration of the table and (b) the configuration the full grid picks by its
selection clips (mean over seeds), as median and interquartile range; the regret (points below (a))
at 10%, 25% and 50% of the grid's trial-epochs; and the distinct configurations trained. A plot of
regret against budget, median and interquartile band per strategy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from asc.cli import ArgumentParser, COUNT, SEED, output_file
from asc.errors import AscError
from asc.parallel import process_map
from search.bench import add_report_options
from search.space import parse_space

# Ray Tune, MLflow, matplotlib and the search's searcher and scheduler (which import Ray) are imported
# late, by the part that uses them: `--help` and a table check start without them.

TABLE = Path(__file__).resolve().parent / "data" / "replay.parquet"
COLUMNS = ("config", "seed", "epoch", "objective", "eval_metric_b")
WITHIN = 0.01  # "within 1 point" of Metric B
BUDGETS = (0.10, 0.25, 0.50)
RECOMMENDED = "3 seeds, noise_z 0.5"  # the variant of DEFAULT that spaces/device_robust.yaml searches with
GOAL_TO_PICK = 0.25  # reach the grid's pick (b) within this share of the grid's trial-epochs, at the median


# --------------------------------------------------------------------------------------------------
# The recording
# --------------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """Per configuration (canonical params), seed and epoch: the objective and the evaluation Metric B."""

    space_text: str  # the YAML of the recorded search (the replay's space)
    params: list[dict]  # canonical parameters, one per configuration
    objective: np.ndarray  # [config, seed, epoch]
    evaluation: np.ndarray  # [config, seed, epoch]
    meta: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return self.objective.shape[2]

    @property
    def seeds(self) -> int:
        return self.objective.shape[1]

    def space(self, where: str = "recorded space"):
        return parse_space(yaml.safe_load(self.space_text), where, self.space_text)

    def index(self, space) -> dict[str, int]:
        return {space.config_key(p): i for i, p in enumerate(self.params)}

    def targets(self) -> tuple[float, float, int, int]:
        """(a) the best evaluation Metric B at full budget and its configuration; (b) the evaluation
        Metric B of the configuration the full grid picks by its selection objective (means over seeds)."""
        final_eval = self.evaluation[:, :, -1].mean(axis=1)
        final_obj = self.objective[:, :, -1].mean(axis=1)
        best, pick = int(np.argmax(final_eval)), int(np.argmax(final_obj))
        return float(final_eval[best]), float(final_eval[pick]), best, pick


def load_recording(path: Path) -> Recording:
    """The table, checked: one line naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise AscError(f"{path}: no replay table here (record one with --export, or use the shipped {TABLE.name})")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise AscError(f"{path}: not a readable Parquet table ({str(exc).splitlines()[0]})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing or "space" not in meta or "params" not in meta:
        raise AscError(f"{path}: not a replay table (lacks {', '.join(missing) or 'its space in the metadata'})")
    try:
        params = json.loads(meta["params"])
        if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
            raise ValueError("not a list of configurations")
        if not isinstance(yaml.safe_load(meta["space"]), dict):
            raise ValueError("its space is not a YAML mapping")
    except (ValueError, yaml.YAMLError) as exc:
        raise AscError(f"{path}: its metadata is damaged ({str(exc).splitlines()[0]})") from None
    if table.num_rows == 0:
        raise AscError(f"{path}: a replay table without rows")
    for column in COLUMNS:
        kind = table.schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise AscError(f"{path}: column {column!r} holds {kind} values, not numbers (damaged)")
    df = table.to_pandas()
    n_configs, seeds, epochs = len(params), df["seed"].nunique(), int(df["epoch"].max())
    if len(df) != n_configs * seeds * epochs or set(df["config"]) != set(range(n_configs)):
        raise AscError(f"{path}: {len(df)} rows, not {n_configs} configurations x {seeds} seeds x {epochs} epochs "
                       "(truncated, or not from one full-budget grid)")
    repeated = df.duplicated(["config", "seed", "epoch"])
    if (repeated.any() or set(df["seed"]) != set(range(seeds)) or set(df["epoch"]) != set(range(1, epochs + 1))):
        where = df[repeated].iloc[0] if repeated.any() else None
        raise AscError(f"{path}: " + (f"configuration {int(where['config'])}, seed {int(where['seed'])}, epoch "
                                      f"{int(where['epoch'])} recorded twice" if where is not None else
                                      f"seeds {sorted(set(df['seed']))} or epochs not 0..{seeds - 1} and 1..{epochs}")
                       + " (damaged, or not from one full-budget grid)")
    if not np.isfinite(df[["objective", "eval_metric_b"]].to_numpy(float)).all():
        raise AscError(f"{path}: a figure that is not a finite number (damaged)")
    df = df.sort_values(["config", "seed", "epoch"])
    shape = (n_configs, seeds, epochs)
    recording = Recording(meta["space"], params, df["objective"].to_numpy(float).reshape(shape),
                          df["eval_metric_b"].to_numpy(float).reshape(shape), meta)
    space = recording.space(f"{path} (its recorded space)")
    distinct = space.distinct_points()
    if distinct is None or {space.config_key(p) for p in distinct} != set(recording.index(space)):
        raise AscError(f"{path}: its configurations are not those of its space (another space's table)")
    if epochs != space.max_epochs() or seeds != space.seeds:
        raise AscError(f"{path}: {seeds} seeds x {epochs} epochs, where its space trains {space.seeds} x "
                       f"{space.max_epochs()} (truncated, or not from one full-budget grid)")
    return recording


def export_recording(uri: str, experiment: str, out: Path, command: str) -> Recording:
    """The replay table from a recorded search in MLflow (a grid, every trial its full epochs)."""
    from mlflow.tracking import MlflowClient

    from search.bench import machine_line
    from search.tracking import artifact_text, check_tracking_uri
    from search.warmstart import _parse

    check_tracking_uri(uri, must_exist=True)  # a store that is not there is not made to find that out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AscError(f"MLflow at {uri}: no experiment {experiment!r}")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'search'")
    if not parents:
        raise AscError(f"experiment {experiment!r}: no search run")
    space_file = next(a.path for a in client.list_artifacts(parents[0].info.run_id) if a.path.endswith(".yaml"))
    with contextlib.redirect_stderr(io.StringIO()):
        text = artifact_text(client, parents[0].info.run_id, space_file)
    space = parse_space(yaml.safe_load(text), space_file, text)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial'", max_results=10000)
    rows, params = [], []
    for run in sorted(runs, key=lambda r: r.info.run_name):
        p = space.canonical({k: _parse(k, v) for k, v in run.data.params.items() if k in space.resolve({})})
        if run.info.status != "FINISHED" or run.data.tags.get("stopped_early") != "false":
            raise AscError(f"run {run.info.run_name}: not a full-budget trial; the recording needs every epoch")
        c = len(params)
        params.append(p)
        for s in range(space.seeds):
            obj = client.get_metric_history(run.info.run_id, f"seed{s}/objective")
            ev = client.get_metric_history(run.info.run_id, f"seed{s}/eval_metric_b")
            ev_by = {m.step: m.value for m in ev}
            for m in sorted(obj, key=lambda m: m.step):
                rows.append({"config": c, "seed": s, "epoch": m.step, "objective": m.value,
                             "eval_metric_b": ev_by[m.step]})
    table = pa.Table.from_pylist(rows)
    meta = {"space": text, "params": json.dumps(params), "experiment": experiment, "command": command,
            "made": time.strftime("%Y-%m-%d", time.gmtime()), "hardware": machine_line()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pq.write_table(table.replace_schema_metadata({k: str(v) for k, v in meta.items()}), tmp)
    try:  # checked before it replaces anything (the shipped recording is the default --table)
        load_recording(tmp)
    except AscError as exc:
        tmp.unlink()
        raise AscError(f"--export {experiment}: not a replay table, nothing written: {exc}") from None
    os.replace(tmp, out)
    return load_recording(out)


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: str = "tpe"  # tpe, random, grid (the project's Searcher); anchor (Ray's OptunaSearch); bohb
    scheduler: str = "fifo"  # fifo, asha (PersistentASHA), ray-asha, hyperband-bohb, optuna-hyperband
    grace: int = 1
    rf: float = 3.0
    noise_z: float = 0.0
    concurrency: int = 1
    constant_liar: bool = True
    dedup: bool = True
    seeds: int = 1  # seeds per trial (3: the mean over the recorded seeds, with its standard error)
    startup: int | None = None  # TPE's random trials (None: the project's rule, search.searcher.startup_trials)


def strategies(default: Strategy) -> list[Strategy]:
    out = [Strategy("random", sampler="random"), Strategy("grid (in order)", sampler="grid"),
           Strategy("TPE"), Strategy("TPE, no de-duplication", dedup=False)]
    for grace in (1, 2, 3):
        for rf in (2.0, 3.0):
            out.append(Strategy(f"TPE + ASHA g{grace} rf{rf:g}", scheduler="asha", grace=grace, rf=rf))
    out.append(Strategy("anchor: Ray OptunaSearch + ASHA g1 (stopped = COMPLETE)", sampler="anchor",
                        scheduler="ray-asha", grace=1, rf=3.0))
    out.append(Strategy("Optuna TPE + HyperbandPruner", sampler="tpe", scheduler="optuna-hyperband"))
    out.append(Strategy("BOHB (TuneBOHB + HyperBandForBOHB)", sampler="bohb", scheduler="hyperband-bohb", rf=3.0))
    for c in (2, 4, 8):
        out.append(replace(default, name=f"{default.name}, {c} at once", concurrency=c))
        out.append(replace(default, name=f"{default.name}, {c} at once, no constant liar", concurrency=c,
                           constant_liar=False))
    out.append(replace(default, name=f"{default.name}, 3 seeds, noise_z 0", seeds=3))
    out.append(replace(default, name=f"{default.name}, {RECOMMENDED}", seeds=3, noise_z=0.5))
    for c in (2, 4):  # as spaces/device_robust.yaml runs it: 4 trials at once
        out.append(replace(default, name=f"{default.name}, {RECOMMENDED}, {c} at once", seeds=3, noise_z=0.5,
                           concurrency=c))
    out.append(Strategy("random, 3 seeds", sampler="random", seeds=3))
    out.append(Strategy("grid (in order), 3 seeds", sampler="grid", seeds=3))
    return out


def sweep(default: Strategy) -> list[Strategy]:
    """The three-seed search at every grace period, reduction factor and noise_z of a small grid
    around the recommended variant (``--sweep``): does any setting reach the grid's pick sooner?"""
    return [replace(default, name=f"{default.name.split(' g')[0]} g{grace} rf{rf:g}, 3 seeds, noise_z {z:g}",
                    grace=grace, rf=rf, noise_z=z, seeds=3)
            for grace in (1, 2, 3, 4, 5) for rf in (2.0, 3.0) for z in (0.0, 0.5, 1.0, 2.0)]


# --------------------------------------------------------------------------------------------------
# The simulated cluster: Ray Tune's controller protocol, the table standing in for training
# --------------------------------------------------------------------------------------------------
class SimTrial:
    def __init__(self, trial_id: str, config: dict, order: int):
        from ray.tune.experiment import Trial

        self.trial_id, self.config, self.order = trial_id, config, order
        self.status = Trial.PENDING
        self.epoch = 0
        self.last_result: dict = {}
        self.is_saving = False  # Tune's Trial flags HyperBand reads: a simulated checkpoint is instant
        self.is_being_processed = False

    def __repr__(self) -> str:
        return f"SimTrial({self.trial_id})"


class SimController:
    """What Tune's schedulers call on the controller: ``get_trials``, ``stop_trial``, ``search_alg``."""

    def __init__(self, searcher, scheduler):
        self.searcher, self.scheduler = searcher, scheduler
        self.search_alg = SimpleNamespace(searcher=searcher)
        self.trials: list[SimTrial] = []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial: SimTrial) -> None:
        from ray.tune.experiment import Trial

        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.searcher.on_trial_complete(trial.trial_id)
        else:
            self.scheduler.on_trial_complete(self, trial, dict(trial.last_result))
            self.searcher.on_trial_complete(trial.trial_id, result=dict(trial.last_result))
        trial.status = Trial.TERMINATED


@dataclass
class Trace:
    """One replayed search: after each trial-epoch, the budget spent and what the search would pick."""

    budget: list = field(default_factory=list)  # trial-epochs spent (seed-epochs / seeds per trial)
    pick: list = field(default_factory=list)  # the table index of the configuration the search picks, or -1
    pick_epoch: list = field(default_factory=list)  # the epoch it reached
    decisions: list = field(default_factory=list)  # (config index, epoch reached, how it ended)
    distinct: int = 0


def _silence() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    logging.getLogger("hpbandster").setLevel(logging.ERROR)


def make_search(strategy: Strategy, space, seed: int, num_samples: int):
    """(searcher wrapped as Tune wraps it, scheduler) for one replay."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.schedulers import PersistentASHA
    from search.searcher import Searcher, make_sampler

    epochs = space.max_epochs()
    if strategy.sampler in ("tpe", "random", "grid"):
        s = replace(space, sampler=strategy.sampler)
        searcher = Searcher(space=s, metric="objective", mode="max", storage=optuna.storages.InMemoryStorage(),
                            sampler=make_sampler(s, seed, num_samples, constant_liar=strategy.constant_liar,
                                                 startup=strategy.startup),
                            study_name="replay", seed=seed, dedup=strategy.dedup)
    elif strategy.sampler == "anchor":
        dists = {k: optuna.distributions.CategoricalDistribution(list(d.values)) for k, d in space.searched.items()}
        searcher = OptunaSearch(space=dists, metric="objective", mode="max", seed=seed)
    elif strategy.sampler == "bohb":
        from ray import tune
        from ray.tune.search.bohb import TuneBOHB

        searcher = TuneBOHB(space={k: tune.choice(list(d.values)) for k, d in space.searched.items()},
                            metric="objective", mode="max", seed=seed)
    else:
        raise AscError(f"unknown sampler {strategy.sampler}")
    if strategy.scheduler == "asha":
        scheduler = PersistentASHA(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                                   grace_period=strategy.grace, reduction_factor=strategy.rf, noise_z=strategy.noise_z)
    elif strategy.scheduler == "ray-asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                                  grace_period=strategy.grace, reduction_factor=strategy.rf)
    elif strategy.scheduler == "hyperband-bohb":
        scheduler = HyperBandForBOHB(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                                     reduction_factor=strategy.rf)
    else:
        scheduler = FIFOScheduler()
    return ConcurrencyLimiter(searcher, max_concurrent=strategy.concurrency), scheduler


def replay(strategy: Strategy, recording: Recording, seed: int, num_samples: int | None = None) -> Trace:
    """One search of ``strategy`` against the recording (see the module docstring)."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher as TuneSearcher

    if strategy.scheduler == "optuna-hyperband":
        return replay_optuna(strategy, recording, seed, num_samples)
    space = recording.space()
    index = recording.index(space)
    epochs = recording.epochs
    num_samples = num_samples or len(recording.params)
    searcher, scheduler = make_search(strategy, space, seed, num_samples)
    ctrl = SimController(searcher, scheduler)
    rng = np.random.default_rng(seed)
    seed_of = {c: int(rng.integers(recording.seeds)) for c in range(len(recording.params))}
    trace, created, spent = Trace(), 0, 0
    seen: set = set()
    finished = False
    # the incumbent: (objective seen, trial, its configuration, its epoch). By trial, not by
    # configuration: a repeat of the picked configuration (a strategy without de-duplication) is
    # another trial, with its own checkpoints, and does not move the pick back to its first epoch.
    best = (-math.inf, None, -1, 0)

    def result_of(c: int, epoch: int) -> dict:
        return {**table_result(recording.objective, c, seed_of[c] if strategy.seeds == 1 else None, epoch, epochs),
                "training_iteration": epoch}

    def end(trial: SimTrial, how: str) -> None:
        trace.decisions.append((index_of[trial.trial_id], trial.epoch, how))

    index_of: dict[str, int] = {}
    while True:
        pending = [t for t in ctrl.trials if t.status == Trial.PENDING]
        while not finished and created < num_samples and len(pending) < strategy.concurrency:
            trial_id = f"r{created:04d}"
            config = searcher.suggest(trial_id)
            if config is None:
                break
            if config == TuneSearcher.FINISHED:
                finished = True
                break
            trial = SimTrial(trial_id, space.canonical({**space.fixed, **config}), created)
            index_of[trial_id] = index[space.config_key(trial.config)]
            seen.add(index_of[trial_id])
            created += 1
            ctrl.trials.append(trial)
            scheduler.on_trial_add(ctrl, trial)
            pending.append(trial)
        while sum(t.status == Trial.RUNNING for t in ctrl.trials) < strategy.concurrency:
            trial = scheduler.choose_trial_to_run(ctrl)
            if trial is None:
                break
            trial.status = Trial.RUNNING
        running = sorted((t for t in ctrl.trials if t.status == Trial.RUNNING), key=lambda t: t.order)
        if not running:
            break
        for trial in running:
            if trial.status != Trial.RUNNING:  # stopped by a bracket while others reported
                continue
            trial.epoch += 1
            c = index_of[trial.trial_id]
            result = result_of(c, trial.epoch)
            trial.last_result = result
            spent += 1
            if result["objective"] > best[0]:
                best = (result["objective"], trial.trial_id, c, trial.epoch)
            elif best[1] == trial.trial_id:  # the picked trial went on: its epoch advances with it
                best = (best[0], trial.trial_id, c, trial.epoch)
            trace.budget.append(spent)
            trace.pick.append(best[2])
            trace.pick_epoch.append(best[3])
            decision = scheduler.on_trial_result(ctrl, trial, dict(result))
            if decision != TrialScheduler.STOP:
                searcher.on_trial_result(trial.trial_id, dict(result))
            if decision == TrialScheduler.STOP:
                end(trial, "stopped" if trial.epoch < epochs else "finished")
                ctrl.stop_trial(trial)
            elif decision == TrialScheduler.PAUSE:
                trial.status = Trial.PAUSED
            elif trial.epoch >= epochs:  # the trainable returns: Tune stops it with its last result
                end(trial, "finished")
                ctrl.stop_trial(trial)
        for trial in ctrl.trials:  # a bracket may have stopped paused trials
            if trial.status == Trial.TERMINATED and not any(d[0] == index_of[trial.trial_id] and
                                                            d[1] == trial.epoch for d in trace.decisions):
                end(trial, "stopped")
    trace.distinct = len(seen)
    return trace


def replay_optuna(strategy: Strategy, recording: Recording, seed: int, num_samples: int | None = None) -> Trace:
    """Optuna alone, as its documentation runs it: TPE asks, each trial reports every epoch and asks
    ``should_prune()`` (HyperbandPruner), ``concurrency`` trials at a time through ask and tell."""

    space = recording.space()
    index = recording.index(space)
    epochs = recording.epochs
    num_samples = num_samples or len(recording.params)
    # HyperbandPruner puts a trial in a bracket by a hash of the study's name and the trial's number: a
    # name from the replay's seed, not Optuna's random default, makes a replay repeatable
    study = optuna.create_study(study_name=f"replay-{seed}", direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=strategy.constant_liar),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3))
    rng = np.random.default_rng(seed)
    seed_of = {c: int(rng.integers(recording.seeds)) for c in range(len(recording.params))}
    trace, spent, created = Trace(), 0, 0
    running: list = []
    seen: set = set()
    best = (-math.inf, None, -1, 0)  # as in replay(): the incumbent by trial
    while True:
        while created < num_samples and len(running) < strategy.concurrency:
            trial = study.ask()
            params = space.canonical({**space.suggest(trial), **trial.params})
            c = index[space.config_key(params)]
            running.append([trial, c, 0])
            seen.add(c)
            created += 1
        if not running:
            break
        for item in list(running):
            trial, c, e = item
            e = item[2] = e + 1
            value = float(recording.objective[c, seed_of[c], e - 1])
            spent += 1
            if value > best[0]:
                best = (value, trial.number, c, e)
            elif best[1] == trial.number:
                best = (best[0], trial.number, c, e)
            trace.budget.append(spent)
            trace.pick.append(best[2])
            trace.pick_epoch.append(best[3])
            trial.report(value, e)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                trace.decisions.append((c, e, "stopped"))
                running.remove(item)
            elif e >= epochs:
                study.tell(trial, value)
                trace.decisions.append((c, e, "finished"))
                running.remove(item)
    trace.distinct = len(seen)
    return trace


_RECORDINGS: dict = {}


def _replay_task(task) -> Trace:
    """One replay in a worker process (the recording read once per process)."""
    path, strategy, seed = task
    if path not in _RECORDINGS:
        _silence()
        _RECORDINGS[path] = load_recording(Path(path))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return replay(strategy, _RECORDINGS[path], seed)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def curve(trace: Trace, recording: Recording, grid_budget: int, points: int = 101) -> np.ndarray:
    """Regret (points of Metric B below target (a)) at each of ``points`` budget fractions 0..1 of
    the grid's trial-epochs (nan before the first result)."""
    target_a = recording.targets()[0]
    quality = recording.evaluation.mean(axis=1)  # [config, epoch]
    budgets = np.asarray(trace.budget, float)
    out = np.full(points, np.nan)
    for k, frac in enumerate(np.linspace(0, 1, points)):
        i = np.searchsorted(budgets, frac * grid_budget, side="right") - 1
        if i >= 0 and trace.pick[i] >= 0:
            out[k] = 100 * (target_a - quality[trace.pick[i], trace.pick_epoch[i] - 1])
    return out


def reach(trace: Trace, recording: Recording, target: float) -> float:
    """Trial-epochs until the pick's evaluation Metric B is within 1 point of ``target`` (inf: never)."""
    quality = recording.evaluation.mean(axis=1)
    for b, c, e in zip(trace.budget, trace.pick, trace.pick_epoch):
        if c >= 0 and quality[c, e - 1] >= target - WITHIN:
            return float(b)
    return math.inf


def summarize(name: str, strategy: Strategy, traces: list[Trace], recording: Recording) -> dict:
    target_a, target_b, _, _ = recording.targets()
    grid_budget = len(recording.params) * recording.epochs
    reach_a = np.array([reach(t, recording, target_a) for t in traces])
    reach_b = np.array([reach(t, recording, target_b) for t in traces])
    curves = np.array([curve(t, recording, grid_budget) for t in traces])
    fracs = np.linspace(0, 1, curves.shape[1])

    def q(x, p):  # "nearest": a replay that never got there is inf, not an interpolation with it
        return float(np.percentile(x, p, method="nearest")) if len(x) else math.nan

    out = {"name": name, "strategy": strategy, "replays": len(traces), "grid_budget": grid_budget,
           "reach_a": [q(reach_a, 25), q(reach_a, 50), q(reach_a, 75)],
           "reach_b": [q(reach_b, 25), q(reach_b, 50), q(reach_b, 75)],
           "never_a": int(np.isinf(reach_a).sum()), "never_b": int(np.isinf(reach_b).sum()),
           "distinct": float(np.median([t.distinct for t in traces])),
           "spent": float(np.median([t.budget[-1] if t.budget else 0 for t in traces])),
           "curve": curves, "fracs": fracs}
    for b in BUDGETS:
        k = int(round(b * (len(fracs) - 1)))
        col = curves[:, k]
        out[f"regret_{int(b * 100)}"] = [float(np.nanpercentile(col, p)) if np.isfinite(col).any() else math.nan
                                         for p in (25, 50, 75)]
    return out


def format_table(rows: list[dict], recording: Recording, default: str) -> str:
    target_a, target_b, best, pick = recording.targets()
    space = recording.space()
    grid_budget = rows[0]["grid_budget"] if rows else 0

    def fmt_q(v, budget=True):
        lo, mid, hi = v
        f = (lambda x: "never" if math.isinf(x) else f"{x:.0f}") if budget else (lambda x: f"{x:.1f}")
        return f"{f(mid)} [{f(lo)}-{f(hi)}]"

    lines = [f"recording: {recording.meta.get('experiment', '?')}, {len(recording.params)} configurations x "
             f"{recording.seeds} seeds x {recording.epochs} epochs; made {recording.meta.get('made', '?')} on "
             f"{recording.meta.get('hardware', '?')}",
             f"(a) best configuration: {space.describe(recording.params[best])}, evaluation Metric B "
             f"{100 * target_a:.1f}; (b) the grid's pick by its selection clips: "
             f"{space.describe(recording.params[pick])}, {100 * target_b:.1f} (means over the seeds)",
             f"grid: {grid_budget} trial-epochs; budgets below in trial-epochs (3-seed strategies: trial-epochs of "
             "3 seeds each, so 3x the compute), median [interquartile range] over the replays; regret in points "
             "of evaluation Metric B below (a)", ""]
    head = ["strategy", "to (a)", "to (b)", "b/grid", "regret@10%", "regret@25%", "regret@50%", "distinct", "never b"]
    cells = []
    for r in rows:
        b_frac = r["reach_b"][1] / r["grid_budget"] if math.isfinite(r["reach_b"][1]) else math.inf
        cells.append([("* " if r["name"] == default else "  ") + r["name"], fmt_q(r["reach_a"]), fmt_q(r["reach_b"]),
                      "never" if math.isinf(b_frac) else f"{b_frac:.2f}",
                      *[fmt_q(r[f"regret_{int(b * 100)}"], budget=False) for b in BUDGETS],
                      f"{r['distinct']:.0f}", f"{r['never_b']}/{r['replays']}"])
    widths = [max(len(x[i]) for x in [head, *cells]) for i in range(len(head))]
    lines.append(" | ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(head, widths))))
    lines.append("-+-".join("-" * w for w in widths))
    for c in cells:
        lines.append(" | ".join(f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(c, widths))))
    lines.append("* = the base strategy of the variants below (one seed); spaces/device_robust.yaml searches with its "
                 f"\"{RECOMMENDED}\" variant")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5))
    for k, r in enumerate(rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            med = np.nanmedian(r["curve"], axis=0)
            lo, hi = np.nanpercentile(r["curve"], 25, axis=0), np.nanpercentile(r["curve"], 75, axis=0)
        color = plt.cm.tab20(k % 20)
        ax.plot(r["fracs"], med, color=color, lw=2.2 if r.get("default") else 1.2, label=r["name"])
        ax.fill_between(r["fracs"], lo, hi, color=color, alpha=0.12)
    ax.set_xlabel("budget: share of the full grid's trial-epochs")
    ax.set_ylabel("regret: evaluation Metric B below the best configuration (points)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=6.5, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# One replay through the real Tune loop
# --------------------------------------------------------------------------------------------------
def table_result(objective: np.ndarray, c: int, seed: int | None, epoch: int, epochs: int) -> dict:
    """What a trial of configuration ``c`` reports at ``epoch``: one recorded seed's objective, or (seed
    None: a trial of every recorded seed) their mean with its standard error, as a several-seed trial
    reports it (``asc.train.train_seeds``)."""
    if seed is not None:
        return {"epoch": epoch, "epochs": epochs, "objective": float(objective[c, seed, epoch - 1])}
    values = objective[c, :, epoch - 1]
    return {"epoch": epoch, "epochs": epochs, "objective": float(values.mean()),
            "objective_sem": float(values.std(ddof=1) / math.sqrt(len(values)))}


def _replay_trainable(config: dict, table: list, seed_of: dict, epochs: int, keys: dict, space, several: bool) -> None:
    from ray import tune

    c, objective = keys[space.config_key({**space.fixed, **config})], np.asarray(table)
    for epoch in range(1, epochs + 1):
        tune.report(table_result(objective, c, None if several else seed_of[c], epoch, epochs))


def tune_check(strategy: Strategy, recording: Recording, seed: int, storage: Path) -> tuple[list, list]:
    """The decisions of one replay through ``ray.tune.Tuner`` (a trainable reporting the table) and
    through the simulation: (tune's, simulated) lists of (configuration, epoch reached)."""
    import ray
    from ray import tune

    from search.tuner import quiet_tune

    quiet_tune()  # the trials' progress is the table this command prints, not Tune's boxes
    space = recording.space()
    index = recording.index(space)
    searcher, scheduler = make_search(strategy, space, seed, len(recording.params))
    rng = np.random.default_rng(seed)
    seed_of = {c: int(rng.integers(recording.seeds)) for c in range(len(recording.params))}
    ray.init(address="local", num_cpus=max(1, strategy.concurrency), include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_parameters(_replay_trainable, table=recording.objective.tolist(), seed_of=seed_of,
                                 epochs=recording.epochs, keys=index, space=space, several=strategy.seeds > 1),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=len(recording.params),
                                        reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(storage), name="check", verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    tuned = []
    for r in results:
        tuned.append((r.metrics.get("trial_id"), index[space.config_key({**space.fixed, **r.config})],
                      int(r.metrics.get("epoch", 0))))
    tuned = [(c, e) for _, c, e in sorted(tuned)]
    simulated = sorted(((c, e) for c, e, _ in replay(strategy, recording, seed).decisions),
                       key=lambda x: x)
    return sorted(tuned), simulated


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
DEFAULT = Strategy("TPE + ASHA g4 rf3", scheduler="asha", grace=4, rf=3.0)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m search bench-replay", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=TABLE, help="the recording (default: the shipped one)")
    parser.add_argument("--replays", type=COUNT, default=100, help="searches per strategy (default %(default)s)")
    parser.add_argument("--seed", type=SEED, default=0, help="the first replay's sampler seed (default %(default)s)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="only the strategies whose names start with these")
    parser.add_argument("--plot", type=output_file(".png", ".pdf", ".svg"), default="replay.png",
                        help="the regret plot (default %(default)s)")
    parser.add_argument("--sweep", action="store_true",
                        help="also replay the three-seed search at grace 1-5, reduction factor 2-3, noise_z 0-2")
    parser.add_argument("--startup", type=COUNT, default=None, metavar="N",
                        help="TPE's random trials before it models, in every TPE strategy (default: a tenth of the "
                             "space's configurations, 2 to 10)")
    parser.add_argument("--check", action="store_true",
                        help="also run one replay of the default strategy, and one of its three-seed variant, "
                             "through the real Tune loop and compare (exit status 1 where they differ)")
    parser.add_argument("--mlflow-uri", default=None, help="log the table and the plot to this tracking URI")
    parser.add_argument("--export", metavar="EXPERIMENT", default=None,
                        help="make the table from a recorded search's MLflow experiment (with --mlflow-uri) into "
                             "--table, instead of replaying")
    add_report_options(parser)
    return parser


def regret_at(row: dict, budget: float) -> float:
    """The median regret of a row's replays after ``budget`` of the grid's trial-epochs; a search that
    has run the whole space stays where it ended."""
    k = int(round(min(budget, 1.0) * (len(row["fracs"]) - 1)))
    col = row["curve"][:, k]
    return float(np.nanmedian(col)) if np.isfinite(col).any() else math.nan


def goals(rows: list[dict]) -> list[tuple[str, bool]]:
    """The goals, for the default and its recommended variant where the rows hold them: the grid's pick
    (b) reached within GOAL_TO_PICK of the grid's trial-epochs at the median; a regret below random
    search's and below the documentation anchor's, and no worse than BOHB's, at every budget of BUDGETS,
    compared at equal compute: a K-seed strategy's trial-epoch is K seed-epochs, so a one-seed peer's
    regret is read at K times the budget (and random search with K seeds at the same budget)."""
    by = {r["name"]: r for r in rows}
    anchor = next((r for n, r in by.items() if n.startswith("anchor")), None)
    bohb = next((r for n, r in by.items() if n.startswith("BOHB")), None)
    out = []
    for name in (DEFAULT.name, f"{DEFAULT.name}, {RECOMMENDED}"):
        row = by.get(name)
        if row is None:
            continue
        k = row["strategy"].seeds
        reach_b = row["reach_b"][1] / row["grid_budget"]
        out.append((f"{name}: reaches (b) at {'never' if math.isinf(reach_b) else f'{reach_b:.2f}'} of the grid's "
                    f"trial-epochs (median) <= {GOAL_TO_PICK}", reach_b <= GOAL_TO_PICK))
        mine = [regret_at(row, b) for b in BUDGETS]
        peers = [(by.get("random"), k, "below", "random search's"),
                 (by.get(f"random, {k} seeds") if k > 1 else None, 1, "below", f"random search's with {k} seeds"),
                 (anchor, k, "below", "the anchor's"), (bohb, k, "no worse than", "BOHB's")]
        for peer, scale, relation, label in peers:
            if peer is None:
                continue
            theirs = [regret_at(peer, scale * b) for b in BUDGETS]

            def holds(m, t):
                return m < t if relation == "below" else m <= t

            # the goal is every budget from the first to the last of BUDGETS, not those three alone: every
            # point of the regret curves in between
            between = [f for f in row["fracs"] if BUDGETS[0] - 1e-9 <= f <= BUDGETS[-1] + 1e-9]
            fails = [f for f in between if not holds(regret_at(row, f), regret_at(peer, scale * f))]
            at = "" if scale == 1 else f" (at {', '.join(f'{int(100 * min(1, scale * b))}%' for b in BUDGETS)})"
            text = (f"{name}: regret at {', '.join(f'{int(100 * b)}%' for b in BUDGETS)} "
                    f"{' '.join(f'{m:.1f}' for m in mine)} {relation} {label}{at} "
                    f"{' '.join(f'{t:.1f}' for t in theirs)}")
            if fails:
                text += (f"; not at {len(fails)} of the {len(between)} budgets from {int(100 * BUDGETS[0])}% to "
                         f"{int(100 * BUDGETS[-1])}% ({_span(fails)} of the grid's)")
            out.append((text, not fails))
    return out


def _span(fractions: list[float]) -> str:
    """Budgets as percent ranges: ``11-13%, 40%``."""
    parts, run = [], [fractions[0]]
    step = min((b - a for a, b in zip(fractions, fractions[1:])), default=1.0)
    for f in fractions[1:]:
        if f - run[-1] <= step * 1.5:
            run.append(f)
        else:
            parts.append(run)
            run = [f]
    parts.append(run)
    return ", ".join(f"{100 * r[0]:.0f}%" if len(r) == 1 else f"{100 * r[0]:.0f}-{100 * r[-1]:.0f}%" for r in parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _silence()
    try:
        if args.export:
            if not args.mlflow_uri:
                raise AscError("--export needs --mlflow-uri (where the recorded search is)")
            rec = export_recording(args.mlflow_uri, args.export, args.table,
                                   "python -m search bench-replay " + " ".join(argv or sys.argv[1:]))
            print(f"wrote {args.table}: {len(rec.params)} configurations x {rec.seeds} seeds x {rec.epochs} epochs")
            return 0
        if args.mlflow_uri:  # where the table and plot go: checked now, not after the replays
            from search.tracking import check_tracking_uri  # late: mlflow (start-up time)

            check_tracking_uri(args.mlflow_uri)
        recording = load_recording(args.table)
        start = time.perf_counter()
        rows = _replay_all(args, _chosen(args), recording, start)
        table = format_table(rows, recording, DEFAULT.name)
        met = goals(rows)
        if met:
            table += ("\ngoals (a 3-seed trial-epoch is 3 seed-epochs: against one-seed peers the 3-seed search is "
                      "compared at equal compute, their regret at 3x its budget):\n"
                      + "\n".join(f"  {'met    ' if ok else 'NOT met'}  {line}" for line, ok in met))
        print(table)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.plot, f"{len(rows)} strategies x {args.replays} replays on {args.table.name}")
        print(f"\nplot: {args.plot}; {time.perf_counter() - start:.0f} s in all")
        mismatched = _check_with_tune(recording, args.seed) if args.check else 0
        if args.mlflow_uri:
            _log_to_mlflow(args.mlflow_uri, table, args.plot, args.table.name)
        if args.json:
            args.json.write_text(json.dumps([{k: (v.tolist() if isinstance(v, np.ndarray) else
                                                  v.__dict__ if isinstance(v, Strategy) else v)
                                              for k, v in r.items()} for r in rows], indent=1, default=str))
        if mismatched:
            print(f"error: --check: {mismatched} replay(s) through ray.tune.Tuner decided otherwise than the "
                  f"simulation (above)", file=sys.stderr)
            return 1
        return 0
    except AscError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _chosen(args) -> list[Strategy]:
    """The strategies ``--only``, ``--sweep`` and ``--startup`` ask for, the default first."""
    every = [DEFAULT] + [s for s in strategies(DEFAULT) if s.name != DEFAULT.name]
    if args.sweep:
        every += [s for s in sweep(DEFAULT) if s.name not in {t.name for t in every}]
    chosen = [s for s in every if not args.only or any(s.name.startswith(o) for o in args.only)]
    if not chosen:
        raise AscError(f"--only {' '.join(args.only)}: no strategy's name starts so (the strategies: "
                       f"{', '.join(s.name for s in every)})")
    if args.startup is not None:
        chosen = [replace(s, startup=args.startup) if s.sampler == "tpe" else s for s in chosen]
        print(f"TPE starts with {args.startup} random trial(s) in every TPE strategy (--startup)")
    return chosen


def _replay_all(args, chosen: list[Strategy], recording, start: float) -> list[dict]:
    """``--replays`` replays of each strategy, over the machine's cores; one summary row each."""
    tasks = [(str(args.table), strategy, args.seed + r) for strategy in chosen for r in range(args.replays)]
    done = [0]

    def progress(_):
        done[0] += 1
        if done[0] % args.replays == 0:
            print(f"  {done[0]} of {len(tasks)} replays, {time.perf_counter() - start:.0f} s", file=sys.stderr,
                  flush=True)

    traces = process_map(_replay_task, tasks, progress)
    rows = []
    for k, strategy in enumerate(chosen):
        row = summarize(strategy.name, strategy, traces[k * args.replays:(k + 1) * args.replays], recording)
        row["default"] = strategy.name == DEFAULT.name
        rows.append(row)
    return rows


def _check_with_tune(recording, seed: int) -> int:
    """One replay of the default, and of the spaces' three-seed variant (the scheduler's noise_z reads
    the seeds' error), through ray.tune.Tuner against the simulation; how many decided otherwise."""
    mismatched = 0
    for checked in (DEFAULT, replace(DEFAULT, name=f"{DEFAULT.name}, {RECOMMENDED}", seeds=3, noise_z=0.5)):
        with tempfile.TemporaryDirectory() as tmp:
            tuned, simulated = tune_check(replace(checked, concurrency=1), recording, seed, Path(tmp))
        same = tuned == simulated
        print(f"check: one replay of {checked.name} through ray.tune.Tuner made "
              f"{'the same' if same else 'OTHER'} decisions as the simulation ({len(tuned)} trials: "
              f"configuration and epoch reached)")
        if not same:
            print(f"  tune: {tuned}\n  simulated: {simulated}")
            mismatched += 1
    return mismatched


def _log_to_mlflow(uri: str, table: str, plot_path: Path, table_name: str) -> None:
    """The table and the plot as a run of the experiment ``bench-replay`` (a local database keeps its
    artifacts beside it, as a search's does)."""
    import mlflow  # late: start-up time

    from search.tracking import sqlite_file

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("bench-replay")
    if experiment is None:
        database = sqlite_file(uri)
        location = (database.resolve().parent / "mlartifacts" / "bench-replay").as_uri() if database else None
        experiment_id = mlflow.create_experiment("bench-replay", artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"bench-replay {table_name}"):
        mlflow.log_text(table, "replay.txt")
        mlflow.log_artifact(str(plot_path))


if __name__ == "__main__":
    sys.exit(main())
