"""The Tune trainable: a thin adapter that runs ``asc.train.train`` for one trial's parameters.

It turns the sampled parameters into a ``TrainConfig`` (``Space.train_config``) on the store they
need, resumes from ``tune.get_checkpoint()`` when Tune restarts the trial (a killed worker, a resumed
search), and reports every epoch to Tune with the epoch's checkpoint folder (``last.pt`` to resume,
``best.pt`` and ``best_probs.npz`` of the selected epoch for MLflow and fusion).

What it reports, per epoch: the epoch's own metrics on the selection clips (``acc_a`` ... ``loss``),
the selected epoch's (``sel_*``, on the selection clips, which the objective is computed from) and
the same epoch's figures on the evaluation split (``eval_*``, reported beside, never used to choose).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from pathlib import Path

import ray
from ray import tune

from asc.errors import write_atomic
from asc.faults import fault_point, set_fault_context
from asc.metrics import mean_sem
from asc.parallel import limit_cpus
from asc.train import CheckpointMismatch, Diverged, train, train_seeds
from search.console import say
from search.objectives import Objective
from search.space import Space

TRACKED = ("acc_bc", "metric_a", "metric_b", "device_gap", "unseen_gap", "loss")  # besides every acc_<device>


def flatten_report(metrics: dict, epochs: int, objective: Objective) -> dict:
    """One Tune result from what ``train`` (or ``train_seeds``) reports for an epoch (floats only:
    Tune, Optuna and MLflow all take them as they are).

    Several seeds: every figure is the mean over the seeds, with its standard error beside it
    (``metric_b_sem``, ``sel_metric_b_sem``, ...), and each seed's own figures follow under
    ``seed<seed>/`` (``seed1/metric_b``). The objective is the mean of the seeds' objectives (what
    ASHA prunes on and Optuna learns from), ``objective_sem`` its standard error."""
    def tracked(key: str) -> bool:
        key = key[:-4] if key.endswith(("_sem", "_cse")) else key
        return key.startswith(("acc_", "n_")) or key in TRACKED + ("n",)

    def pick(m: dict) -> dict:
        return {k: float(v) for k, v in m.items() if isinstance(v, float) and tracked(k)}

    selected, evaluation = metrics.get("best_metrics", {}), metrics.get("best_test", {})
    result = {"epoch": int(metrics["epoch"]), "epochs": int(epochs), "best_epoch": int(metrics["best_epoch"]),
              **pick(metrics), "train_loss": float(metrics["train_loss"]), "lr": float(metrics["lr"]),
              "epoch_seconds": float(metrics["seconds"]),
              **{f"sel_{k}": v for k, v in pick(selected).items()},
              **{f"eval_{k}": v for k, v in pick(evaluation).items()},
              **objective.values(selected)}
    if not objective.multi:
        result["epoch_objective"] = objective.values(metrics)["objective"]
        result["objective_cse"] = objective.clip_se(selected)  # from the selection clips (asc.metrics)
    per_seed = metrics.get("per_seed")
    if per_seed:
        seeds = {seed: flatten_report(m, epochs, objective) for seed, m in per_seed.items()}
        for name in objective.metrics + ([] if objective.multi else ["epoch_objective"]):
            result[name], result[name + "_sem"] = mean_sem([r[name] for r in seeds.values()])
        for seed, r in seeds.items():
            result.update({f"seed{seed}/{k}": v for k, v in r.items() if k not in ("epoch", "epochs")})
    return result


RESULT_FILE = "tune_result.json"  # in a trial's checkpoint: the result reported with it


def run_trial(config: dict, space: Space, stores: dict[str, str]) -> None:
    """Tune function trainable. ``config``: the trial's parameters; ``stores``: feature-config key ->
    store folder, resolved by the driver before any trial starts.

    A restarted trial (its worker or node was lost, or the search resumed) continues from the Tune
    checkpoint of its last reported epoch: every seed's model, optimiser, scheduler, random states and
    history are in it, so the trial ends exactly where an uninterrupted one ends. That also needs the
    same number of torch threads (it decides the order of floating-point sums): the trial uses the
    CPUs Ray assigned it, wherever it runs. A checkpoint that cannot resume it (truncated, another
    version, configuration or seed count) is named in one line and the trial starts again from its
    first epoch, which computes the same result where the checkpoint was only truncated (``resume``
    refuses a whole search under other code: ``search.tuner.check_code_unchanged``)."""
    params = dict(config)
    store = stores[space.feature_config(params).key()]
    trial_dir = Path(tune.get_context().get_trial_dir())
    label = trial_dir.name.split("_")[0]  # t007 (search.tuner.trial_dirname)
    set_fault_context(f"trial={label}")  # a test's fault points name the trial (asc.faults)
    fault_point("start")
    cpus = limit_cpus(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    work = trial_dir / "work"
    shutil.rmtree(work, ignore_errors=True)  # a retried trial starts from Tune's checkpoint only
    work.mkdir(parents=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, work, dirs_exist_ok=True)
    train_config = space.train_config(params, store, checkpoint_dir=str(work))
    if train_config.num_workers > cpus - 1:  # loader processes beside the training one, within the trial's CPUs
        # (the batches are the same with any number of workers: the order and the draws are made in the trainer)
        say(f"{label}: num_workers {train_config.num_workers} -> {cpus - 1}: the trial has {cpus} CPU(s)")
        train_config = dataclasses.replace(train_config, num_workers=cpus - 1)

    # The last result reported, kept in the checkpoint too: a trial that diverges at the first epoch
    # after a retry restored it ends on the figures of the epoch it was restored at.
    last: dict = {}
    with contextlib.suppress(OSError, ValueError):
        last.update(json.loads((work / RESULT_FILE).read_text()))

    def report(epoch: int, metrics: dict, ckpt_dir: str | None) -> None:
        result = flatten_report(metrics, train_config.epochs, space.objective)
        last.clear()
        last.update(result)
        write_atomic(Path(ckpt_dir) / RESULT_FILE, json.dumps(result))
        # Tune copies the folder into the trial's storage now, so the next epoch may overwrite it.
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
        fault_point("reported", epoch=epoch)

    def fit() -> None:
        if space.seeds > 1:  # in lockstep, each in work/seed<seed>: the trial's checkpoint holds them all
            train_seeds(train_config, [train_config.seed + k for k in range(space.seeds)], report,
                        evaluate_best=train_config.protocol == "validation")
        else:
            train(train_config, report, evaluate_best=train_config.protocol == "validation")

    try:
        try:
            fit()
        except CheckpointMismatch as exc:
            shown = Path(exc.path)  # named where it is kept (Tune's checkpoint), not in the work copy deleted below
            if checkpoint is not None and shown.is_relative_to(work):
                shown = Path(checkpoint.path) / shown.relative_to(work)
            say(f"{label}: its checkpoint {shown}: {exc.reason}; the trial starts again from its first epoch")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            last.clear()
            fit()
    except Diverged as exc:
        # The trial ends at its last reported epoch, marked diverged: one more result without a
        # checkpoint, which the driver reads (its state, MLflow's run, Optuna's FAIL). A retry from the
        # checkpoint would draw the same batches and diverge again.
        # A trial that diverged before reporting in this process (at its first epoch, or at the first
        # after a retry restored its checkpoint) has no last result here: Tune refuses a result without
        # the objective (its strict metric check, an error in the driver), so the objective is NaN,
        # which nothing records (MLflow has that epoch or none, Optuna hears only finite values, ASHA
        # skips a diverged result).
        reason = str(exc) if space.seeds == 1 else f"seed {exc.seed}: {exc}"
        ended = last or {"epoch": exc.epoch - 1, "epochs": train_config.epochs,
                         **{name: math.nan for name in space.objective.metrics}}
        tune.report({**ended, "diverged": exc.epoch, "diverged_reason": reason})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fault_point("end")
