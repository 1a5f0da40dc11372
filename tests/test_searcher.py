"""The search's decisions, driven directly (no Ray, no training): canonical configurations, no
configuration trained twice (also when the sampler insists, and with concurrent proposals), a
diverged trial told as such, ASHA's state across a restart, one protocol per search."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher as TuneSearcher

from asc.errors import AscError
from search.schedulers import PersistentASHA
from search.searcher import DIVERGED_ATTR, DUPLICATE_ATTR, Searcher, make_sampler
from search.space import parse_space


def space_of(params: dict, sampler: str = "tpe", **top):
    return parse_space({"sampler": sampler, "objective": "metric_a", "scheduler": "none",
                        "params": {"model": "cnn", "epochs": 3, **params}, **top}, "s.yaml")


def searcher_for(space, seed: int = 0):
    return Searcher(space=space, metric="objective", mode="max", sampler=make_sampler(space, seed, 8),
                    storage=optuna.storages.InMemoryStorage(), study_name="s", seed=seed)


def finish(searcher, trial_id: str, value: float, epochs: int = 3) -> None:
    for epoch in range(1, epochs + 1):
        searcher.on_trial_result(trial_id, {"objective": value, "epoch": epoch, "epochs": epochs})
    searcher.on_trial_complete(trial_id, {"objective": value, "epoch": epochs, "epochs": epochs})


def run_sequentially(searcher, n: int, value=lambda params: 0.5, prefix: str = "t") -> list[dict]:
    trained = []
    for i in range(n):
        params = searcher.suggest(f"{prefix}{i}")
        if params == TuneSearcher.FINISHED:
            break
        trained.append(params)
        finish(searcher, f"{prefix}{i}", value(params))
    return trained


MEDIAN_GRID = {"enhancement": {"choice": ["none", "mean_subtraction", "median_filter"]},
               "median_filter_bands": {"choice": [3, 5, 7]}}


def test_a_grid_over_a_parameter_a_configuration_does_not_use_has_no_duplicates():
    space = space_of(MEDIAN_GRID, sampler="grid")
    distinct = space.distinct_points()
    assert len(distinct) == 5  # none, mean_subtraction, and the median filter at 3 heights: not 3 x 3
    assert all("median_filter_bands" not in p for p in distinct if p["enhancement"] != "median_filter")
    searcher = searcher_for(space)
    trained = run_sequentially(searcher, 9)
    assert len(trained) == 5 and len({space.config_key(p) for p in trained}) == 5
    assert searcher.finished and not searcher.repeats  # the grid itself proposes each once
    for p in trained:  # canonical everywhere: Tune's config and the Optuna trial
        assert ("median_filter_bands" in p) == (p["enhancement"] == "median_filter")
    for t in searcher._ot_study.get_trials():
        assert ("median_filter_bands" in t.params) == (t.params["enhancement"] == "median_filter")
    # the same configuration written two ways is one configuration
    a = {"enhancement": "none", "median_filter_bands": 3}
    assert space.config_key(a) == space.config_key({"enhancement": "none"}) and "median_filter_bands" not in space.canonical(a)


def test_normalization_auto_and_the_settings_a_model_ignores_do_not_tell_configurations_apart():
    """``auto`` trains GMS with mean subtraction and GMSVN without: a grid over {auto, gms, gmsvn} x
    {none, mean_subtraction} trains four things, not six; the cnn ignores ImageNet weights."""
    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]},
                      "normalization": {"choice": ["auto", "gms", "gmsvn"]},
                      "pretrained": {"choice": [True, False]}}, sampler="grid")
    distinct = space.distinct_points()
    assert len(distinct) == 4 and {p["normalization"] for p in distinct} == {"gms", "gmsvn"}
    assert space.canonical({"enhancement": "mean_subtraction", "normalization": "auto"})["normalization"] == "gms"
    assert space.canonical({"enhancement": "none", "normalization": "auto"})["normalization"] == "gmsvn"
    assert all(p["pretrained"] is False for p in distinct)  # the cnn: no ImageNet weights, whatever is asked
    searcher = searcher_for(space)
    trained = run_sequentially(searcher, 6)
    assert len(trained) == 4 and len({space.config_key(p) for p in trained}) == 4
    # Optuna is never asked for what the cnn ignores, so TPE does not model it
    assert all("pretrained" not in t.params for t in searcher._ot_study.get_trials())
    both = space_of({"model": {"choice": ["cnn", "msxception"]}, "pretrained": {"choice": [True, False]},
                     "width": {"choice": [8, 16]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(12):
        trial = study.ask()
        both.suggest(trial)
        model = trial.params["model"]
        assert ("pretrained" in trial.params) == (model == "msxception") and ("width" in trial.params) == (model == "cnn")
    # what a warm start or an enqueued point tells Optuna holds what suggest asks, and fits its distributions
    wide = space_of({"model": {"choice": ["cnn", "msxception"]}, "pretrained": {"choice": [True, False]},
                     "width": {"choice": [8, 32]}})
    assert wide.optuna_params({"model": "msxception", "pretrained": True}) == {"model": "msxception", "pretrained": True}
    assert wide.optuna_params({"model": "cnn", "width": 32}) == {"model": "cnn", "width": 32}
    for params in ({"model": "msxception", "pretrained": False}, {"model": "cnn", "width": 8}):
        optuna.trial.create_trial(params=wide.optuna_params(params), distributions=wide.optuna_distributions(params),
                                  value=0.5)
    msx = space_of({"model": "msxception", "width": {"choice": [8, 16]}})
    assert msx.config_key({"width": 8}) == msx.config_key({"width": 16})  # MSXception has no width
    # a choice of auto without one of the values it becomes: Optuna is told the choice that trains it
    partial = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]},
                        "normalization": {"choice": ["auto", "gmsvn"]}}, sampler="grid")
    for params, told in (({"enhancement": "mean_subtraction", "normalization": "gms"}, "auto"),
                         ({"enhancement": "mean_subtraction", "normalization": "auto"}, "auto"),
                         ({"enhancement": "none", "normalization": "gmsvn"}, "gmsvn"),
                         ({"enhancement": "none", "normalization": "auto"}, "gmsvn")):
        assert partial.optuna_params(params)["normalization"] == told, params
        optuna.trial.create_trial(params=partial.optuna_params(params),
                                  distributions=partial.optuna_distributions(params), value=0.5)
    searcher = searcher_for(partial)
    for point in partial.distinct_points():  # as the searcher enqueues a configuration drawn at random
        searcher._ot_study.enqueue_trial(partial.optuna_params(point))
    trained = run_sequentially(searcher, 4)
    assert sorted((p["enhancement"], p["normalization"]) for p in trained) == [
        ("mean_subtraction", "gms"), ("mean_subtraction", "gmsvn"), ("none", "gmsvn")]


def test_tpe_with_eight_samples_over_four_configurations_trains_four():
    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]}, "mixup_alpha": {"choice": [0.0, 0.3]}})
    searcher = searcher_for(space)
    trained = run_sequentially(searcher, 8, value=lambda p: 0.9 if p["enhancement"] == "none" else 0.1)
    assert len(trained) == 4 and len({space.config_key(p) for p in trained}) == 4
    assert searcher.finished
    repeats = [t for t in searcher._ot_study.get_trials() if DUPLICATE_ATTR in t.user_attrs]
    assert len(repeats) == searcher.repeats > 0  # TPE did repeat itself here (seeded): each repeat checked below
    by_tune = {t.user_attrs.get("tune_trial_id"): t for t in searcher._ot_study.get_trials()}
    for t in repeats:  # told the recorded result of the trial it repeats, at no cost
        original = by_tune[t.user_attrs[DUPLICATE_ATTR]]
        assert t.state == TrialState.COMPLETE and t.value == original.value and t.params == original.params


def test_a_sampler_that_keeps_repeating_is_given_a_configuration_it_has_not_tried():
    # A large discrete space, and a best configuration TPE keeps coming back to.
    space = space_of({"lr": {"choice": [0.0001 * k for k in range(1, 13)]}, "mixup_alpha": {"choice": [0.0, 0.3]}})
    searcher = searcher_for(space)
    trained = run_sequentially(searcher, 20, value=lambda p: 1.0 - abs(p["lr"] - 0.0006) * 100)
    assert len(trained) == 20 and len({space.config_key(p) for p in trained}) == 20


def test_a_space_that_cannot_be_listed_is_given_random_configurations_when_the_sampler_repeats():
    """A range without a step exists only under one enhancement: the discrete rest is soon trained,
    TPE keeps proposing it, and random draws (which reach the range) keep the search going."""
    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction", "freq_mixstyle"]},
                      "freq_mixstyle_p": {"float": [0.2, 0.8]}, "mixup_alpha": {"choice": [0.0, 0.3]}})
    assert space.distinct_points() is None
    searcher = searcher_for(space)
    trained = run_sequentially(searcher, 30, value=lambda p: 0.9 if p["enhancement"] == "none" else 0.1)
    assert len(trained) == 30 and len({space.config_key(p) for p in trained}) == 30
    assert searcher.drawn > 0 and not searcher.finished
    assert sum(p["enhancement"] == "freq_mixstyle" for p in trained) == 30 - 4  # the 4 discrete ones, once each
    assert isinstance(searcher._ot_study.sampler, optuna.samplers.TPESampler)  # the space's sampler again
    again = run_sequentially(searcher_for(space), 30, value=lambda p: 0.9 if p["enhancement"] == "none" else 0.1)
    assert again == trained  # the draws are seeded: the same seed, the same search


def test_concurrent_proposals_are_distinct_configurations():
    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]}, "mixup_alpha": {"choice": [0.0, 0.3]}})
    searcher = searcher_for(space)
    running = [searcher.suggest(f"t{i}") for i in range(4)]  # four at once, none finished
    assert len({space.config_key(p) for p in running}) == 4
    assert searcher.suggest("t4") == TuneSearcher.FINISHED  # nothing left that is not running
    told = [t for t in searcher._ot_study.get_trials() if DUPLICATE_ATTR in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in told)  # a repeat of a running one: its result is not known yet


def test_a_diverged_trial_is_fail_with_its_epoch_and_never_trained_again():
    space = space_of({"lr": {"choice": [0.001, 1e6]}})
    searcher = searcher_for(space)
    first = searcher.suggest("t0")
    searcher.on_trial_result("t0", {"objective": 0.2, "epoch": 1, "epochs": 3})
    searcher.on_trial_complete("t0", {"objective": 0.2, "epoch": 1, "epochs": 3, "diverged": 2,
                                      "diverged_reason": "epoch 2, step 1: the training loss is nan"})
    trial = next(t for t in searcher._ot_study.get_trials() if t.user_attrs.get("tune_trial_id") == "t0")
    assert trial.state == TrialState.FAIL and trial.user_attrs[DIVERGED_ATTR] == 2
    second = searcher.suggest("t1")
    assert space.config_key(second) != space.config_key(first)
    finish(searcher, "t1", 0.5)
    assert searcher.suggest("t2") == TuneSearcher.FINISHED


def test_a_restored_searcher_knows_every_configuration_of_the_study(tmp_path):
    from search.searcher import RESUMING, study_storage

    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]}, "mixup_alpha": {"choice": [0.0, 0.3]}})
    searcher = Searcher(space=space, metric="objective", mode="max", sampler=make_sampler(space, 0, 8),
                        storage=study_storage(tmp_path), study_name="s", seed=0)
    trained = run_sequentially(searcher, 2)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = Searcher(space=space, metric="objective", mode="max", sampler=make_sampler(space, 0, 8),
                        storage=study_storage(tmp_path), study_name="s", seed=0)
    RESUMING["study_dir"] = tmp_path
    try:
        restored.restore(str(tmp_path / "searcher.pkl"))
    finally:
        RESUMING.clear()
    more = run_sequentially(restored, 8, prefix="r")
    assert len(more) == 2 and {space.config_key(p) for p in trained + more} == {space.config_key(p) for p in
                                                                              space.distinct_points()}


def test_a_configuration_asked_by_a_driver_that_died_before_tune_saved_is_trained_after_resume(tmp_path):
    """The driver asks Optuna for a trial, then dies before Tune saves its state (which it saves with
    the searcher's pickle): no trial will ever report that study trial. Resumed, the search closes it
    as an orphan and trains its configuration; every configuration of the space is trained once."""
    from search.searcher import ORPHAN_ATTR, RESUMING, study_storage

    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]}, "mixup_alpha": {"choice": [0.0, 0.3]}})

    def searcher(folder):
        return Searcher(space=space, metric="objective", mode="max", sampler=make_sampler(space, 0, 8),
                        storage=study_storage(folder), study_name="s", seed=0)

    def died_and_resumed(folder, tune_trials):
        folder.mkdir()
        first = searcher(folder)
        trained = run_sequentially(first, 2)
        first.save(str(folder / "searcher.pkl"))  # Tune's last save
        lost = first.suggest("t2")  # asked; the driver dies here
        restored = searcher(folder)
        RESUMING.update(study_dir=folder, tune_trials=tune_trials)  # as `resume` reads Tune's experiment state
        try:
            restored.restore(str(folder / "searcher.pkl"))
        finally:
            RESUMING.clear()
        return trained, lost, restored

    # Tune's experiment state was saved (just before the searcher's pickle) with t2 in it: Tune resumes
    # t2, so its study trial is kept running for it
    _, _, restored = died_and_resumed(tmp_path / "saved", {"t0", "t1", "t2"})
    assert restored.orphans == 0 and "t2" in restored._ot_trials

    trained, lost, restored = died_and_resumed(tmp_path / "lost", {"t0", "t1"})  # t2 never recorded by Tune
    assert restored.orphans == 1
    orphan = next(t for t in restored._ot_study.get_trials() if t.user_attrs.get("tune_trial_id") == "t2")
    assert orphan.state == TrialState.FAIL and orphan.user_attrs[ORPHAN_ATTR] is True
    more = run_sequentially(restored, 8, prefix="r")
    keys = [space.config_key(p) for p in trained + more]
    assert len(more) == 2 and space.config_key(lost) in keys
    assert sorted(keys) == sorted(space.config_key(p) for p in space.distinct_points())  # each once


def test_one_protocol_per_search():
    with pytest.raises(AscError, match=r"s.yaml: params.protocol: one protocol per search"):
        space_of({"protocol": {"choice": ["paper", "validation"]}})
    with pytest.raises(AscError, match=r"s.yaml: points: one protocol per search, not paper and validation"):
        parse_space({"sampler": "points", "params": {"model": "cnn"}, "points": [
            {"id": "a", "protocol": "paper"}, {"id": "b", "protocol": "validation"}]}, "s.yaml")
    assert parse_space({"sampler": "points", "params": {"model": "cnn", "epochs": 80}, "points": ["A1", "B2"]},
                       "s.yaml").protocol == "validation"


# --------------------------------------------------------------------------------------------------
# ASHA across a restart, and the benefit of the doubt
# --------------------------------------------------------------------------------------------------
def curves() -> dict[str, list[tuple[float, float]]]:
    """Deterministic (objective, standard error) per epoch for twelve trials: rising curves with
    noise, some crossing."""
    import numpy as np

    rng = np.random.default_rng(7)
    out = {}
    for i in range(12):
        level, rate = rng.uniform(0.2, 0.5), rng.uniform(0.0, 0.05)
        out[f"t{i}"] = [(float(level + rate * e + rng.normal(0, 0.03)), 0.03) for e in range(1, 10)]
    return out


def drive(scheduler: PersistentASHA, trials: list[str], decisions: dict, stop_after: int | None = None) -> int:
    """Trials one after the other, epoch by epoch, as Tune would with one trial at a time. Returns how
    many results were given (``stop_after``: give no more, as a driver killed at that moment)."""
    given = 0
    for tid in trials:
        trial = SimpleNamespace(trial_id=tid)
        if tid not in scheduler._trial_info:
            scheduler.on_trial_add(None, trial)
        if any(d == TrialScheduler.STOP for (t, _), d in decisions.items() if t == tid):
            continue  # ended before the driver was killed
        for epoch, (value, sem) in enumerate(curves()[tid], start=1):
            if (tid, epoch) in decisions:
                continue  # a result the killed driver had already acted on
            if stop_after is not None and given == stop_after:
                return given
            action = scheduler.on_trial_result(None, trial, {"epoch": epoch, "objective": value, "objective_sem": sem})
            decisions[(tid, epoch)] = action
            given += 1
            if action == TrialScheduler.STOP or epoch == 9:
                scheduler.on_trial_complete(None, trial, {"epoch": epoch, "objective": value, "objective_sem": sem})
                break
    return given


@pytest.mark.parametrize("noise_z", [0.0, 2.0])
def test_asha_state_survives_a_killed_driver_and_resume(tmp_path, noise_z):
    def asha(state):
        return PersistentASHA(time_attr="epoch", metric="objective", mode="max", max_t=9, grace_period=1,
                              reduction_factor=3, state_file=str(state), noise_z=noise_z)

    trials = list(curves())
    whole: dict = {}
    drive(asha(tmp_path / "whole.json"), trials, whole)
    assert TrialScheduler.STOP in whole.values()
    resumed: dict = {}
    drive(asha(tmp_path / "resumed.json"), trials, resumed, stop_after=13)  # the driver dies here
    drive(asha(tmp_path / "resumed.json"), trials, resumed)  # a new driver, a fresh scheduler, the same file
    assert resumed == whole
    # A trial stopped just before the driver died, and so not stopped by Tune, is stopped when it reports again.
    stopped = next((tid, e) for (tid, e), d in whole.items() if d == TrialScheduler.STOP and e < 9)
    again = asha(tmp_path / "resumed.json")
    again.on_trial_add(None, SimpleNamespace(trial_id=stopped[0]))
    value, sem = curves()[stopped[0]][stopped[1]]
    assert again.on_trial_result(None, SimpleNamespace(trial_id=stopped[0]), {
        "epoch": stopped[1] + 1, "objective": value, "objective_sem": sem}) == TrialScheduler.STOP
    forgetful: dict = {}  # Ray's ASHA after Tuner.restore: the rungs start empty
    drive(asha(tmp_path / "f.json"), trials, forgetful, stop_after=13)
    (tmp_path / "f.json").unlink()
    drive(asha(tmp_path / "f.json"), trials, forgetful)
    assert forgetful != whole  # what the persistence is for


def test_noise_z_zero_decides_as_rays_asha_and_larger_stops_fewer(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    stops = {}
    for name, scheduler in (("ray", ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=9,
                                                    grace_period=1, reduction_factor=3)),
                            ("z0", PersistentASHA(time_attr="epoch", metric="objective", mode="max", max_t=9,
                                                  grace_period=1, reduction_factor=3)),
                            ("z1", PersistentASHA(time_attr="epoch", metric="objective", mode="max", max_t=9,
                                                  grace_period=1, reduction_factor=3, noise_z=1.0))):
        decisions: dict = {}
        for tid, curve in curves().items():
            trial = SimpleNamespace(trial_id=tid)
            scheduler.on_trial_add(None, trial)
            for epoch, (value, sem) in enumerate(curve, start=1):
                action = scheduler.on_trial_result(None, trial, {"epoch": epoch, "objective": value,
                                                                 "objective_sem": sem})
                decisions[(tid, epoch)] = action
                if action == TrialScheduler.STOP:
                    break
        stops[name] = decisions
    assert stops["z0"] == stops["ray"]
    pruned = {name: sum(a == TrialScheduler.STOP and epoch < 9 for (_, epoch), a in d.items())
              for name, d in stops.items()}
    assert 0 < pruned["z1"] < pruned["ray"], pruned


def test_each_enhancement_is_searchable_on_and_off_by_its_own_switch():
    """An enhancement's name is its switch (``freq_mixstyle: {choice: [true, false]}``), on beside what
    ``enhancement`` names: TPE models each on its own, its settings are sampled only when it is on, and
    a switch and a composition that train the same thing are one configuration."""
    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]},
                      "freq_mixstyle": {"choice": [True, False]}, "dir": {"choice": [True, False]},
                      "freq_mixstyle_p": {"choice": [0.4, 0.6]}}, sampler="grid")
    distinct = space.distinct_points()
    # 2 x 2 x 2 compositions, Freq-MixStyle's p only where it is on: 4 without it, 4 x 2 with it
    assert len(distinct) == 12
    assert {p["enhancement"] for p in distinct} == {"none", "mean_subtraction", "dir", "dir+mean_subtraction",
                                                    "freq_mixstyle", "mean_subtraction+freq_mixstyle",
                                                    "dir+freq_mixstyle", "dir+mean_subtraction+freq_mixstyle"}
    assert all(p["freq_mixstyle"] == ("freq_mixstyle" in p["enhancement"]) and
               ("freq_mixstyle_p" in p) == p["freq_mixstyle"] for p in distinct)
    # the same training written two ways is one configuration
    assert space.config_key({"enhancement": "dir"}) == space.config_key({"dir": True})
    config = space.train_config({"enhancement": "mean_subtraction", "dir": True, "freq_mixstyle": True}, "store")
    assert config.enhancement.names == ("dir", "mean_subtraction", "freq_mixstyle")
    assert config.enhancement.normalization == "gms"  # auto, with mean subtraction
    # Optuna asks for p only with Freq-MixStyle on, and is told what a configuration holds
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(12):
        trial = study.ask()
        space.suggest(trial)
        assert ("freq_mixstyle_p" in trial.params) == trial.params["freq_mixstyle"]
    for params in distinct + [{"enhancement": "dir+freq_mixstyle"}]:
        told = space.optuna_params(params)
        assert told["dir"] == ("dir" in space.canonical(params)["enhancement"])
        optuna.trial.create_trial(params=told, distributions=space.optuna_distributions(params), value=0.5)
    trained = run_sequentially(searcher_for(space), 14)
    assert len({space.config_key(p) for p in trained}) == len(trained) == 12
    # a fixed switch beside a searched composition joins every trial's composition
    joined = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]}, "freq_mixstyle": True})
    trained = run_sequentially(searcher_for(joined), 3)
    assert sorted(p["enhancement"] for p in trained) == ["freq_mixstyle", "mean_subtraction+freq_mixstyle"]
    assert all(joined.train_config(p, "s").enhancement.freq_mixstyle for p in trained)
    # a switch searched off only, beside a composition that turns it on: Optuna is told the off it holds
    off = space_of({"enhancement": {"choice": ["none", "dir"]}, "dir": {"choice": [False]}}, sampler="grid")
    assert [off.optuna_params(p)["dir"] for p in off.distinct_points()] == [False, False]
    # a switch that may turn spectrum correction on asks for its stores too
    corrected = space_of({"spectrum_correction": {"choice": [True, False]}})
    assert sorted(c.spectrum_correction for c in corrected.feature_configs()) == [False, True]
    # a setting without a switch or composition that can turn its enhancement on is refused
    with pytest.raises(AscError, match="params.dir_p: set, but no enhancement here is dir"):
        space_of({"dir": False, "dir_p": 0.5})
    fixed = space_of({"dir": True, "dir_p": 0.5})
    assert fixed.canonical(fixed.fixed)["enhancement"] == "dir" and fixed.canonical(fixed.fixed)["dir_p"] == 0.5


def test_a_warm_start_takes_each_finished_configuration_once_and_counts_what_it_skips(tmp_path):
    """An earlier search's runs, read from a real MLflow store: a finished trial on the same store is
    taken; one on another store, one unfinished, one outside the new space and a repeat of a taken
    configuration are skipped, each counted under its reason."""
    from mlflow.tracking import MlflowClient

    from search.tracking import ROLE_TAG, STORE_TAG
    from search.warmstart import read_warm_start

    space = space_of({"enhancement": {"choice": ["none", "mean_subtraction"]}, "mixup_alpha": {"choice": [0.0, 0.3]}})
    store = {space.feature_config(space.resolve(space.fixed)).key(): "logmel128-0123456789abcdef"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment("earlier", artifact_location=(tmp_path / "artifacts").as_uri(), tags={
        "objective": space.objective.label(), "protocol": space.protocol, "seeds": str(space.seeds),
        "validation_share": f"{space.validation_share:g}", "store_names": json.dumps(store)})

    def trial(enhancement: str, alpha: float, store_name: str, status: str = "FINISHED") -> None:
        run = client.create_run(eid, tags={ROLE_TAG: "trial", STORE_TAG: store_name})
        config = space.resolve({**space.fixed, "enhancement": enhancement, "mixup_alpha": alpha})
        for key, value in config.items():  # every parameter of the trial's configuration, as a search logs them
            client.log_param(run.info.run_id, key, str(value))
        for epoch in (1, 2, 3):
            client.log_metric(run.info.run_id, "objective", 0.1 * epoch + alpha, step=epoch)
        client.set_terminated(run.info.run_id, status)

    name = store[next(iter(store))]
    trial("none", 0.3, name)  # taken
    trial("none", 0.3, name)  # the same configuration again
    trial("mean_subtraction", 0.0, "logmel128-another")  # read another store
    trial("mean_subtraction", 0.3, name, status="KILLED")  # its driver died
    trial("median_filter", 0.0, name)  # not in the new space
    taken, line = read_warm_start(uri, ["earlier"], space, store)
    assert [(w.params["enhancement"], w.params["mixup_alpha"], w.state, w.value) for w in taken] == [
        ("none", 0.3, "complete", pytest.approx(0.6))]
    assert taken[0].intermediate == {1: pytest.approx(0.4), 2: pytest.approx(0.5), 3: pytest.approx(0.6)}
    assert line == ("warm start from 'earlier': 1 trial(s) taken (1 complete); 4 skipped (1 a configuration taken "
                    "already, 1 another store, 1 unfinished or failed, 1 outside this space); none of them is "
                    "trained again")
