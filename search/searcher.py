"""Optuna behind Ray Tune: the sampler a space asks for, the study in its own database, and a
searcher that never spends a trial on a configuration the search already knows.

``Searcher`` is Ray Tune's ``OptunaSearch`` (define-by-run: ``Space.suggest``) with four changes:

- What the study is told is what happened. A trial ASHA stopped is PRUNED at the epoch it reached,
  with its intermediate values (Ray 2.60 tells COMPLETE with the low-budget value, which TPE then
  reads as a final one). A trial that diverged is FAIL with the epoch and the reason as user
  attributes: its last value is from before the divergence and says nothing about the configuration,
  and Optuna's samplers leave FAIL trials out (the configuration is not tried again: see below).
- A configuration is trained once. Every proposal is made canonical (``Space.canonical``: parameters
  the configuration does not use are dropped) and compared with every configuration the search has
  trained, is training, or took from an earlier search (``--warm-start``). A repeat is not trained:
  the study is told the recorded result at no cost, as Optuna's own FAQ does for repeated parameters
  (COMPLETE with the recorded value, PRUNED with its intermediate values; FAIL for a configuration
  that diverged or is still running, whose result is not known yet), the trial is tagged
  ``duplicate_of`` and the sampler asked again. After ``MAX_REPEATS`` repeats in a row the search
  gets a configuration it has not trained, drawn at random (seeded): from the list of the space's
  configurations, enqueued, where it can be listed; else proposed by Optuna's RandomSampler, up to
  ``MAX_DRAWS`` times. When none is left the searcher is finished (Tune then ends the search,
  however large ``num_samples`` was). Each Tune trial is therefore one distinct configuration.
- Each Optuna trial carries its Tune trial id and its configuration's key.
- A restored searcher (``resume``) reloads the study from its database, whatever the pickled copy
  held, and the configurations it knows with it. A study trial still running there that Tune never
  recorded (the driver died between asking Optuna and saving Tune's state) is closed as FAIL, marked
  ``orphan``, and its configuration left free to be proposed again.
"""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher as TuneSearcher
from ray.tune.search.optuna import OptunaSearch

from search.space import Space
from search.tracking import RESUMING, TRIAL_TAG

STUDY_FILE = "optuna.db"
KEY_ATTR = "config_key"  # the configuration's identity (Space.config_key), on every Optuna trial
DUPLICATE_ATTR = "duplicate_of"  # a repeated proposal: the Tune trial (or earlier run) it repeats
WARM_ATTR = "warm_start_from"  # a trial taken from an earlier search: its MLflow run id
DIVERGED_ATTR = "diverged_at_epoch"
ORPHAN_ATTR = "orphan"  # asked by a driver that died before Tune recorded the trial: never trained
MAX_REPEATS = 5  # repeated proposals in a row before a configuration not yet trained is drawn
# Random draws after that, in a space that cannot be listed, before the searcher takes the space for
# exhausted: a draw that lands on a range (a float without a step) is new, so this many draws all
# repeating known configurations means the ranges are nearly never reached.
MAX_DRAWS = 50


def startup_trials(space: Space) -> int:
    """TPE's random trials before it models: Optuna's default (10) on a space without an end; on a
    space of N distinct configurations a tenth of them, at least 2. Optuna's 10 suits searches of
    hundreds of trials; on the 24 points of the replay recording it spends 42% of the space at random
    and reached the grid's pick later (bench-replay, three seeds, grace 3, noise_z 1: 0.34 of the grid's
    trial-epochs with 10, 0.29 with 2; ``--startup``)."""
    points = space.distinct_points()
    return 10 if points is None else min(10, max(2, len(points) // 10))


def make_sampler(space: Space, seed: int, num_samples: int, constant_liar: bool = True, startup: int | None = None):
    """The Optuna sampler of ``space.sampler``. ``startup``: TPE's random trials, instead of
    :func:`startup_trials` (bench-replay's comparison)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if space.sampler == "tpe":
        # group: the median filter's size exists only in some trials (define-by-run, conditional);
        # constant_liar: concurrent trials do not all propose the same point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=constant_liar,
                                          n_startup_trials=startup if startup is not None else startup_trials(space))
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))
    if space.sampler == "points":
        return optuna.samplers.GridSampler({"point": [pid for pid, _ in space.points]}, seed=seed)
    # The grid over the space as it is sampled (define-by-run): a median filter's size only with the
    # median filter, so no two grid points train the same configuration (a product grid would).
    return optuna.samplers.BruteForceSampler(seed=seed)


def study_storage(search_dir: Path):
    return optuna.storages.RDBStorage(f"sqlite:///{(search_dir / STUDY_FILE).resolve()}")


# The searcher of the search this driver runs (Tune uses this very object; a restored search its
# unpickled copy, which registers itself in restore): the end-of-search report reads its counts.
ACTIVE: dict = {}


class Searcher(OptunaSearch):
    """See the module docstring. ``space`` is the search's :class:`Space`; ``seed`` seeds the draw of
    configurations not yet trained."""

    def __init__(self, *args, seed: int = 0, dedup: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.dedup = dedup  # False: every proposal is trained, repeats included (bench-replay's comparison)
        distinct = self._space.distinct_points()
        self._distinct = None if distinct is None else [(self._space.config_key(p), p) for p in distinct]
        self._known: dict[str, dict] = {}  # config key -> {"trial", "state", "value", "intermediate"}
        self._keys: dict[str, str] = {}  # Tune trial id -> config key
        self._reported: dict[str, int] = {}
        self.repeats = 0  # proposals that repeated a known configuration
        self.drawn = 0  # configurations drawn because the sampler kept repeating
        self.finished = False  # no configuration left to train (or the sampler only repeats)
        self.orphans = 0  # study trials a dead driver asked and Tune never recorded (closed on restore)
        self._rng = random.Random(seed)
        ACTIVE["searcher"] = self

    @property
    def space(self) -> Space:
        return self._space

    # ---- proposals --------------------------------------------------------------------------------
    def suggest(self, trial_id):
        if trial_id in self._keys:  # asked again for a trial it proposed: the same configuration
            return self._known[self._keys[trial_id]]["params"]
        if not self.dedup:
            params = self.space.canonical(super().suggest(trial_id))
            self._keys[trial_id] = key = self.space.config_key(params)
            self._known.setdefault(key, {"trial": trial_id, "state": "running", "params": params})
            self._ot_trials[trial_id].set_user_attr(TRIAL_TAG, trial_id)
            return params
        distinct = self._distinct
        for attempt in range(MAX_REPEATS + MAX_DRAWS):
            unseen = None if distinct is None else [p for key, p in distinct if key not in self._known]
            if unseen == []:
                self.finished = True  # every configuration of the space is trained or training
                return TuneSearcher.FINISHED
            drawing = attempt >= MAX_REPEATS  # the sampler kept repeating: a configuration drawn at random
            if drawing and unseen is not None:  # one not trained, from the list (always new)
                self._ot_study.enqueue_trial(self.space.optuna_params(self._rng.choice(unseen)))
            params = self.space.canonical(self._suggest_at_random(trial_id) if drawing and unseen is None
                                          else super().suggest(trial_id))
            key = self.space.config_key(params)
            ot_trial = self._ot_trials[trial_id]
            if key not in self._known:
                self.drawn += drawing
                ot_trial.set_user_attr(TRIAL_TAG, trial_id)
                ot_trial.set_user_attr(KEY_ATTR, key)
                ot_trial.set_user_attr("params", params)
                self._keys[trial_id] = key
                self._known[key] = {"trial": trial_id, "state": "running", "params": params}
                return params
            self._tell_repeat(self._ot_trials.pop(trial_id), self._known[key])
        self.finished = True  # random draws repeat known configurations too: the space is (nearly) all trained
        return TuneSearcher.FINISHED

    def _suggest_at_random(self, trial_id):
        """One proposal from Optuna's RandomSampler (seeded by the searcher's seed) in place of the
        study's sampler: how a space that cannot be listed (a range without a step) gets a
        configuration the sampler would not propose."""
        sampler = self._ot_study.sampler
        self._ot_study.sampler = optuna.samplers.RandomSampler(seed=self._rng.randrange(2 ** 32))
        try:
            return super().suggest(trial_id)
        finally:
            self._ot_study.sampler = sampler

    def _tell_repeat(self, ot_trial, known: dict) -> None:
        """The study hears the recorded result of a repeated proposal, at no cost."""
        self.repeats += 1
        ot_trial.set_user_attr(DUPLICATE_ATTR, known["trial"])
        state, value = TrialState.FAIL, None
        if known["state"] == "complete":
            state, value = TrialState.COMPLETE, known["value"]
        elif known["state"] == "pruned":
            for step, v in sorted(known.get("intermediate", {}).items()):
                ot_trial.report(v, int(step))
            state = TrialState.PRUNED
        self._tell(ot_trial, value, state)

    def _orphan(self, frozen) -> None:
        """Close a study trial that no Tune trial will ever report (the driver that asked it died
        before Tune saved its state): FAIL, marked ``ORPHAN_ATTR``, so that the sampler no longer
        counts it as running and its configuration is neither trained nor refused for its sake."""
        self.orphans += 1
        self._ot_study._storage.set_trial_user_attr(frozen._trial_id, ORPHAN_ATTR, True)
        self._tell(frozen.number, None, TrialState.FAIL)

    def _tell(self, ot_trial, value, state) -> None:
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except RuntimeError:  # a grid sampler stops the study after its last point: told all the same
            pass

    # ---- results ----------------------------------------------------------------------------------
    def on_trial_result(self, trial_id, result):
        if isinstance(self.metric, list) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, step = result.get(self.metric), int(result["epoch"])
        if isinstance(value, float) and math.isfinite(value) and step > self._reported.get(trial_id, 0):
            self._ot_trials[trial_id].report(value, step)
            self._reported[trial_id] = step
            known = self._known.get(self._keys.get(trial_id, ""))
            if known is not None:
                known.setdefault("intermediate", {})[step] = value

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        known = self._known.get(self._keys.get(trial_id, ""), {})
        ot_trial = self._ot_trials[trial_id]
        if result and result.get("diverged"):
            ot_trial.set_user_attr(DIVERGED_ATTR, int(result["diverged"]))
            ot_trial.set_user_attr("diverged_reason", str(result.get("diverged_reason", ""))[:500])
            self._completed_trials.add(trial_id)
            known["state"] = "diverged"
            self._tell(ot_trial, None, TrialState.FAIL)
            return
        if result and not error:  # a trial the scheduler stopped: Tune hands its last result only here
            self.on_trial_result(trial_id, result)
        if not error and result and int(result.get("epoch", 0)) < int(result.get("epochs", 0)):
            self._completed_trials.add(trial_id)
            known["state"] = "pruned"
            self._tell(ot_trial, None, TrialState.PRUNED)
            return
        if error:
            known["state"] = "failed"
        elif result and not isinstance(self.metric, list):
            known.update(state="complete", value=result.get(self.metric))
        else:
            known["state"] = "complete"
            known["value"] = [result.get(m) for m in self.metric] if result else None
        super().on_trial_complete(trial_id, result, error)

    # ---- what an earlier search knew --------------------------------------------------------------
    def know(self, key: str, entry: dict) -> None:
        """Record a configuration trained elsewhere (``--warm-start``) or by an earlier driver."""
        self._known.setdefault(key, entry)

    def restore(self, checkpoint_path):
        super().restore(checkpoint_path)
        ACTIVE["searcher"] = self
        # The trials Tune resumes: those of the experiment state it restores (`resume` reads them; it is
        # saved together with this pickle, just before it), else those the pickle had proposed. A study
        # trial still RUNNING that Tune does not hold was asked by a driver that died before Tune saved
        # again: no trial will ever train or report it.
        tune_ids = RESUMING.get("tune_trials")
        if tune_ids is None:
            tune_ids = set(self.__dict__.get("_keys", ()))
        self.orphans = 0
        # The study's database holds every trial it had, also those asked after the pickle was saved;
        # `resume` names where it is now (the folder may have moved, or be mounted elsewhere).
        if RESUMING.get("study_dir") is not None:
            self._storage = study_storage(RESUMING["study_dir"])
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        self._ot_trials, self._completed_trials, self._reported = {}, set(), {}
        self._known, self._keys = {}, {}
        for frozen in self._ot_study.get_trials(deepcopy=False):
            key = frozen.user_attrs.get(KEY_ATTR)
            tune_id = frozen.user_attrs.get(TRIAL_TAG) or frozen.user_attrs.get(WARM_ATTR)
            if frozen.state == TrialState.RUNNING and tune_id not in tune_ids:
                self._orphan(frozen)  # its configuration is not known: it may be proposed again
                continue
            if key is None or frozen.user_attrs.get(DUPLICATE_ATTR) is not None:
                continue
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                     TrialState.RUNNING: "running"}.get(frozen.state, "failed")
            if frozen.user_attrs.get(DIVERGED_ATTR) is not None:
                state = "diverged"
            self._known[key] = {"trial": tune_id, "state": state, "value": frozen.value,
                                "intermediate": dict(frozen.intermediate_values),
                                "params": frozen.user_attrs.get("params")}
            if frozen.user_attrs.get(TRIAL_TAG) is None:
                continue
            self._keys[tune_id] = key
            if frozen.state == TrialState.RUNNING:
                self._ot_trials[tune_id] = optuna.Trial(self._ot_study, frozen._trial_id)
                self._reported[tune_id] = max(frozen.intermediate_values, default=0)
            else:
                self._completed_trials.add(tune_id)
