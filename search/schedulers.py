"""ASHA whose rungs survive the driver, and that can give a noisy trial the benefit of the doubt.

Ray Tune's ``ASHAScheduler`` keeps its rungs (the results recorded at each milestone, from which the
cutoffs are computed) in the driver's memory only, and ``Tuner.restore`` rebuilds the scheduler from
the pickle made when the search started (ray-project/ray#30838, open): a resumed search compares its
trials against the results reported after the restore only, and so stops different trials than an
uninterrupted one would. :class:`PersistentASHA` is Ray's class with its state (every rung's recorded
results, and the trials it decided to stop) written to ``asha_state.json`` beside the search's Optuna
study (the driver's own state: the search's folder, or ``--study-dir``) after every decision, and read
back the first time a restored search uses it; given the same results it stops the same trials,
interrupted or not.

``noise_z``: with several seeds per trial, a trial's objective is a mean with a standard error. ASHA
stops a trial whose result is below a rung's cutoff; with ``noise_z`` > 0 it stops it only when the
optimistic bound ``mean + noise_z * standard error`` is below the cutoff (the cutoffs themselves are
computed from the recorded means, as Ray's). ``noise_z = 0`` is Ray's rule exactly. The rung logic
below mirrors ``ray.tune.schedulers.async_hyperband._Bracket.on_result`` (Ray 2.60) with that one
change; it is written out because Ray's bracket records and decides with one number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from asc.errors import write_atomic
from search.tracking import RESUMING  # `resume` names where the study's folder is now

STATE_FILE = "asha_state.json"


class PersistentASHA(ASHAScheduler):
    def __init__(self, *args, state_file: str | None = None, noise_z: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_file, self.noise_z = state_file, float(noise_z)
        self._stopped: dict[str, float] = {}  # trial id -> the time it was stopped at
        self._loaded = False

    # ---- decisions --------------------------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial):
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        if self._time_attr not in result or self._metric not in result or result.get("diverged"):
            return TrialScheduler.CONTINUE
        t = result[self._time_attr]
        if trial.trial_id in self._stopped and t >= self._stopped[trial.trial_id]:
            return TrialScheduler.STOP  # decided before the driver was restarted
        if t >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP  # its last epoch: it ends, it is not pruned
        action = self._on_result(trial.trial_id, t, result)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
            self._stopped[trial.trial_id] = t
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        if self._time_attr in result and self._metric in result and not result.get("diverged"):
            self._on_result(trial.trial_id, result[self._time_attr], result)
        self._trial_info.pop(trial.trial_id, None)
        self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._trial_info.pop(trial.trial_id, None)

    def _on_result(self, trial_id: str, cur_iter, result: dict) -> str:
        """Record the trial's value at the first rung it reached and has no value in; STOP when its
        optimistic bound is below that rung's cutoff."""
        bracket = self._trial_info.get(trial_id)
        if bracket is None:  # a trial Tune restored without adding it again
            bracket = self._trial_info[trial_id] = self._brackets[0]
        value = self._metric_op * result[self._metric]
        sem = result.get(f"{self._metric}_sem")
        bound = value + (self.noise_z * sem if isinstance(sem, float) and math.isfinite(sem) else 0.0)
        for milestone, recorded in bracket._rungs:
            if cur_iter < milestone or trial_id in recorded:
                continue
            cutoff = bracket.cutoff(recorded)
            recorded[trial_id] = value
            return TrialScheduler.STOP if cutoff is not None and bound < cutoff else TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    # ---- state ------------------------------------------------------------------------------------
    def _path(self) -> Path | None:
        if not self.state_file:
            return None
        if RESUMING.get("study_dir") is not None:
            return Path(RESUMING["study_dir"]) / STATE_FILE
        return Path(self.state_file)

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        state = {"rungs": [[[m, {k: float(v) for k, v in rec.items()}] for m, rec in b._rungs] for b in self._brackets],
                 "stopped": self._stopped, "num_stopped": self._num_stopped}
        write_atomic(path, json.dumps(state))

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self._path()
        if path is None or not path.is_file():
            return
        state = json.loads(path.read_text())
        for bracket, rungs in zip(self._brackets, state["rungs"]):
            for (_, recorded), (_, saved) in zip(bracket._rungs, rungs):
                recorded.clear()
                recorded.update(saved)
        self._stopped = {k: float(v) for k, v in state["stopped"].items()}
        self._num_stopped = int(state["num_stopped"])
