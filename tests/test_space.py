"""Search spaces: every mistake is one line naming the file and the key; the shipped spaces load;
define-by-run sampling is conditional; a space builds the configs its trials run. No Ray."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import optuna
import pytest
import yaml

from asc.enhance import ENHANCEMENTS
from asc.errors import AscError
from asc.features import FeatureConfig
from asc.systems import PAPER_SYSTEMS, SYSTEMS, selection_metric, system_config
from search.space import CONDITIONAL, MEDIAN_KEYS, PARAMS, load_space, parse_space

SPACES = Path(__file__).resolve().parent.parent / "spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# The smallest valid space: the small CNN, a searched learning rate, no pruning.
BASE = {"sampler": "tpe", "objective": "metric_b", "scheduler": "none",
        "params": {"model": "cnn", "epochs": 3, "lr": {"float": [0.0005, 0.003], "log": True}}}


def space_file(tmp_path: Path, doc: dict | str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def with_(base: dict | None = None, params: dict | None = None, drop: tuple = (), **top) -> dict:
    """BASE (or ``base``) with top-level keys and params changed; ``drop``: params keys to remove."""
    doc = copy.deepcopy(base or BASE)
    doc.update(top)
    doc["params"] = {k: v for k, v in {**doc.get("params", {}), **(params or {})}.items() if k not in drop}
    return doc


def refused(tmp_path: Path, doc: dict | str, key: str, overrides: tuple = (), match: str | None = None) -> str:
    """Load the space, expect one AscError line ``<file>: <key>: ...``, return it."""
    path = space_file(tmp_path, doc)
    with pytest.raises(AscError) as info:
        load_space(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    if match is not None:
        assert match in message, message
    return message


MEDIAN = {"enhancement": "median_filter"}
ENH_CHOICE = {"enhancement": {"choice": ["none", "mean_subtraction", "median_filter"]}}


# --------------------------------------------------------------------------------------------------
# Bad spaces: one line naming the file and the key
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc, key, match", [
    # unknown keys
    (with_(samplr="tpe"), "samplr", "unknown key"),
    (with_(params={"learning_rate": 0.001}), "params.learning_rate", "unknown parameter"),
    (with_(params={"lr": {"float": [0.001, 0.01], "steps": 2}}), "params.lr.steps", "unknown key"),
    (with_(params={"lr": {"choice": [0.001], "float": [0.001, 0.01]}}), "params.lr", "exactly one of"),
    (with_(params={"lr": {"log": True}}), "params.lr", "exactly one of"),
    (with_(features={"n_mels": 64}), "features.n_mels", "n_mels and spectrum correction are params"),
    (with_(features={"sample_rate": 22050}), "features", "Nyquist"),
    (with_(features=[1, 2]), "features", "mapping"),
    (with_(params=None) | {"params": [1, 2]}, "params", "mapping"),
    # unknown values
    (with_(params={"enhancement": "median"}), "params.enhancement", "'median' is not one of"),
    (with_(params={"enhancement": {"choice": ["none", "spectral_subtraction"]}}), "params.enhancement.choice",
     "'spectral_subtraction' is not one of"),
    (with_(params={"normalization": "zscore"}), "params.normalization", "not one of"),
    (with_(params={"model": "resnet"}), "params.model", "not one of"),
    (with_(params={"selection": "metric_c"}), "params.selection", "not one of"),
    (with_(params={"protocol": "test"}), "params.protocol", "not one of"),
    (with_(sampler="bayes"), "sampler", "'bayes' is not one of"),
    (with_(objective="accuracy"), "objective", "'accuracy' is not one of"),
    # bad ranges
    (with_(params={"lr": {"float": [0.01, 0.001]}}), "params.lr.float", "must be below high"),
    (with_(params={"lr": {"float": [0.01, 0.01]}}), "params.lr.float", "must be below high"),
    (with_(params={"mixup_alpha": {"float": [0.0, 1.0], "log": True}}), "params.mixup_alpha.log", "low > 0"),
    (with_(params={"lr": {"float": [0.0, 0.01], "log": True}}), "params.lr.float", "must be > 0"),
    (with_(params={"n_mels": {"float": [32, 128]}}), "params.n_mels", "cannot take a float range (use int)"),
    (with_(params={"model": {"int": [1, 2]}}), "params.model", "cannot take an int range (use choice)"),
    (with_(params={"n_mels": {"int": [64.5, 128]}}), "params.n_mels.int", "two integers"),
    (with_(params={"lr": {"float": ["a", "b"]}}), "params.lr.float", "two numbers"),
    (with_(params={"lr": {"float": 0.001}}), "params.lr.float", "two numbers"),
    (with_(params={"lr": {"float": [0.001, 0.002, 0.003]}}), "params.lr.float", "two numbers"),
    (with_(params={"lr": {"float": [0.001, 0.01], "log": "yes please"}}), "params.lr.log", "true or false"),
    (with_(params={"lr": {"float": [0.001, 0.01], "log": True, "step": 0.001}}), "params.lr.step", "no step"),
    (with_(params={"epochs": {"int": [1, 10], "step": 1.5}}), "params.epochs.step", "positive integer"),
    (with_(params={"lr": {"float": [0.001, 0.01], "step": -0.001}}), "params.lr.step", "positive number"),
    (with_(params={"lr": {"choice": []}}), "params.lr.choice", "non-empty list"),
    (with_(params={"lr": {"choice": [0.001, 0.001]}}), "params.lr.choice", "twice"),
    (with_(params={"lr": -0.001}), "params.lr", "must be > 0"),
    (with_(params={"lr": 0}), "params.lr", "must be > 0"),
    (with_(params={"lr": {"choice": [0.001, -0.001]}}), "params.lr.choice", "must be > 0"),
    (with_(params={"dropout": 1.0}), "params.dropout", "must be < 1"),
    (with_(params={"dropout": {"float": [0.0, 1.0]}}), "params.dropout.float", "must be < 1"),
    (with_(params={"mixup_alpha": -0.3}), "params.mixup_alpha", "must be >= 0"),
    (with_(params={"lr_factor": 1.0}), "params.lr_factor", "must be < 1"),
    (with_(params={"epochs": 0}), "params.epochs", "must be >= 1"),
    (with_(params={"lr": float("nan")}), "params.lr", "not a finite number"),
    # wrong types
    (with_(params={"epochs": "ten"}), "params.epochs", "expected an integer, not 'ten'"),
    (with_(params={"epochs": 3.0}), "params.epochs", "expected an integer"),
    (with_(params={"n_mels": True}), "params.n_mels", "expected an integer"),
    (with_(params={"lr": "fast"}), "params.lr", "expected a number"),
    (with_(params={"pretrained": 1}), "params.pretrained", "true or false"),
    (with_(params={"model": 3}), "params.model", "expected a string"),
    # a step that does not divide the range: Optuna would lower high unasked (0.5 -> 0.3)
    (with_(params={"mixup_alpha": {"float": [0.0, 0.5], "step": 0.3}}), "params.mixup_alpha.step",
     "0.3 does not divide the range [0, 0.5], whose bounds are both values to try: make high 0.3 or 0.6"),
    (with_(params={"width": {"int": [8, 18], "step": 4}}), "params.width.step", "make high 16 or 20"),
    (with_(num_samples=0), "num_samples", "integer >= 1"),
    (with_(max_concurrent="two"), "max_concurrent", "integer >= 1"),
    (with_(seed=-1), "seed", "integer >= 0"),
])
def test_bad_space_names_file_and_key(tmp_path, doc, key, match):
    refused(tmp_path, doc, key, match=match)


@pytest.mark.parametrize("params, key, match", [
    # even sizes: fixed, in a choice, an int range with an odd (or no) step, an even bound
    ({**MEDIAN, "median_filter_bands": 6}, "params.median_filter_bands", "even"),
    ({**MEDIAN, "median_filter_frames": 20}, "params.median_filter_frames", "even"),
    ({**MEDIAN, "median_filter_bands": {"choice": [3, 4, 5]}}, "params.median_filter_bands.choice", "even"),
    ({**MEDIAN, "median_filter_frames": {"int": [11, 41], "step": 1}}, "params.median_filter_frames.step",
     "even step"),
    ({**MEDIAN, "median_filter_frames": {"int": [11, 41], "step": 3}}, "params.median_filter_frames.step",
     "even step"),
    ({**MEDIAN, "median_filter_bands": {"int": [3, 11]}}, "params.median_filter_bands.step", "even step"),
    ({**MEDIAN, "median_filter_bands": {"int": [4, 10], "step": 2}}, "params.median_filter_bands.int", "even"),
    ({**MEDIAN, "median_filter_bands": 0}, "params.median_filter_bands", ">= 1"),
    # taller than the smallest Mel-band count: fixed, searched, and the default height (7)
    ({**ENH_CHOICE, "n_mels": {"choice": [8, 128]}, "median_filter_bands": 9}, "params.median_filter_bands",
     "9 is taller than the spectrogram (8 Mel bands)"),
    ({**MEDIAN, "n_mels": {"int": [16, 128], "step": 16}, "median_filter_bands": {"int": [3, 17], "step": 2}},
     "params.median_filter_bands", "17 is taller than the spectrogram (16 Mel bands)"),
    ({**MEDIAN, "n_mels": 5}, "params.median_filter_bands", "7 is taller than the spectrogram (5 Mel bands)"),
    # sizes given while no enhancement is the median filter
    ({"median_filter_bands": 5}, "params.median_filter_bands", "no enhancement here is median_filter"),
    ({"enhancement": "mean_subtraction", "median_filter_frames": 21}, "params.median_filter_frames",
     "no enhancement here is median_filter"),
    ({"enhancement": {"choice": ["none", "mean_subtraction"]}, "median_filter_frames": {"int": [11, 41], "step": 2}},
     "params.median_filter_frames", "no enhancement here is median_filter"),
])
def test_bad_median_filter(tmp_path, params, key, match):
    refused(tmp_path, with_(params=params), key, match=match)


def test_median_filter_width_against_the_spectrogram(tmp_path):
    """check_frames (the frame count is known once the stores are): the width, given or default."""
    fixed = load_space(space_file(tmp_path, with_(params={**MEDIAN, "median_filter_frames": 21})))
    fixed.check_frames(21)  # as wide as the spectrogram: fine
    with pytest.raises(AscError) as info:
        fixed.check_frames(20)
    assert str(info.value) == (f"{tmp_path / 'space.yaml'}: params.median_filter_frames: 21 is wider than the "
                               "spectrogram (20 frames)")

    searched = load_space(space_file(tmp_path, with_(params={**ENH_CHOICE, "median_filter_frames": {
        "int": [11, 41], "step": 2}}), "searched.yaml"))
    searched.check_frames(41)
    with pytest.raises(AscError, match=r"searched\.yaml: params\.median_filter_frames: 41 is wider"):
        searched.check_frames(30)

    default = load_space(space_file(tmp_path, with_(params=ENH_CHOICE), "default.yaml"))  # 7 x 21 by default
    with pytest.raises(AscError, match=r"default\.yaml: params\.median_filter_frames: 21 is wider"):
        default.check_frames(15)

    load_space(space_file(tmp_path, with_(params={"enhancement": "mean_subtraction"}), "none.yaml")).check_frames(5)

    paper = load_space(SPACES / "paper.yaml")  # A4 (the 4th point) is the first with the 7 x 21 filter
    paper.check_frames(430)
    with pytest.raises(AscError, match=r"paper\.yaml: points\[3\]\.median_filter_frames: 21 is wider"):
        paper.check_frames(20)


def test_objective_mistakes(tmp_path):
    refused(tmp_path, with_(objective="gap_penalized"), "lambda", match="needs lambda")
    refused(tmp_path, with_(objective="gap_penalized", **{"lambda": -0.5}), "lambda", match="needs lambda")
    refused(tmp_path, with_(objective="gap_penalized", **{"lambda": "half"}), "lambda", match="needs lambda")
    refused(tmp_path, with_(objective="gap_penalized", **{"lambda": float("inf")}), "lambda", match="needs lambda")
    refused(tmp_path, with_(objective="metric_b", **{"lambda": 0.5}), "lambda",
            match="only the gap_penalized objective uses lambda, not metric_b")
    refused(tmp_path, with_(objective="pareto", **{"lambda": 0.5}), "lambda", match="only the gap_penalized")
    # ASHA stops trials on one number; a Pareto pair has two
    refused(tmp_path, with_(objective="pareto", scheduler="asha"), "scheduler", match="single-objective")
    refused(tmp_path, with_(objective="pareto", scheduler={"name": "asha", "grace_period": 1}), "scheduler",
            match="single-objective")


def test_sampler_mistakes(tmp_path):
    refused(tmp_path, with_(sampler="grid"), "params.lr", match="grid sampler needs a choice or an int range")
    points = with_(sampler="points", points=["A1", "B1"], params={"model": "cnn", "epochs": 3}, drop=("lr",))
    load_space(space_file(tmp_path, points))
    refused(tmp_path, with_(points, params={"lr": {"float": [0.001, 0.01]}}), "params.lr",
            match="params must be fixed values")
    refused(tmp_path, with_(points, points=["A1", "C9"]), "points[1]", match="unknown system 'C9'")
    refused(tmp_path, with_(points, points="A1"), "points", match="non-empty list")
    refused(tmp_path, with_(points, points=[]), "points", match="non-empty list")
    refused(tmp_path, with_(points, points=["A1", 7]), "points[1]", match="a paper system id or a mapping")
    refused(tmp_path, with_(points, points=[{"id": "x", "learning_rate": 0.1}]), "points[0].learning_rate",
            match="unknown parameter")
    refused(tmp_path, with_(points, points=[{"id": "x", "lr": -1.0}]), "points[0].lr", match="must be > 0")
    refused(tmp_path, with_(points, points=["A1", "a1"]), "points", match="share an id")
    refused(tmp_path, with_(points, points=[{"id": "x", "enhancement": "none", "median_filter_bands": 5}]),
            "points[0].median_filter_bands", match="this point's enhancement is not median_filter")
    refused(tmp_path, with_(points, points=[{"id": "x", "enhancement": "median_filter", "n_mels": 8,
                                             "median_filter_bands": 9}]),
            "points[0].median_filter_bands", match="9 is taller than the spectrogram (8 Mel bands)")
    refused(tmp_path, with_(points=["A1"]), "points", match="only the 'points' sampler")


@pytest.mark.parametrize("scheduler, key, match", [
    ({"name": "asha", "patience": 3}, "scheduler.patience", "unknown key"),
    ({"name": "hyperband"}, "scheduler.name", "'hyperband' is not one of"),
    ("median", "scheduler.name", "'median' is not one of"),
    ({"name": "none", "max_t": 3}, "scheduler.max_t", "only ASHA takes settings"),
    ({"name": "asha", "grace_period": 0}, "scheduler.grace_period", "integer >= 1"),
    ({"name": "asha", "max_t": 2.5}, "scheduler.max_t", "integer >= 1"),
    ({"name": "asha", "reduction_factor": 1}, "scheduler.reduction_factor", "a number > 1"),
    ({"name": "asha", "reduction_factor": True}, "scheduler.reduction_factor", "a number > 1"),
    ({"name": "asha", "max_t": 2}, "scheduler.max_t", "2 is below the space's largest epochs (3)"),
    ({"name": "asha", "max_t": 3, "grace_period": 4}, "scheduler.grace_period", "above max_t"),
    (3, "scheduler", "asha, none, or a mapping"),
])
def test_scheduler_mistakes(tmp_path, scheduler, key, match):
    refused(tmp_path, with_(scheduler=scheduler), key, match=match)


def test_max_t_against_searched_epochs(tmp_path):
    doc = with_(scheduler={"name": "asha", "max_t": 8}, params={"epochs": {"int": [2, 10], "step": 2}})
    refused(tmp_path, doc, "scheduler.max_t", match="8 is below the space's largest epochs (10)")
    assert load_space(space_file(tmp_path, with_(doc, scheduler="asha"))).scheduler.max_t == 10  # default: largest


def test_invalid_yaml_names_the_line(tmp_path):
    path = space_file(tmp_path, "sampler: tpe\nparams:\n  lr: 0.001\n  model: cnn: x\n")
    with pytest.raises(AscError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}:4: not valid YAML")
    path = space_file(tmp_path, "params:\n  lr: [0.001, 0.01\n  model: cnn\n", "unclosed.yaml")
    with pytest.raises(AscError, match=rf"^{re.escape(str(path))}:\d+: not valid YAML"):
        load_space(path)
    # a key given twice: YAML 1.2 refuses it, PyYAML would keep the last without a word
    path = space_file(tmp_path, "params:\n  model: cnn\n  epochs: 3\n  epochs: 4\n", "twice.yaml")
    twice = r":4: not valid YAML \(the key 'epochs' is given twice\)$"
    with pytest.raises(AscError, match=rf"^{re.escape(str(path))}{twice}"):
        load_space(path)


@pytest.mark.parametrize("text", ["- sampler: tpe\n- params: {}\n", "just words\n", ""])
def test_a_space_is_a_mapping(tmp_path, text):
    path = space_file(tmp_path, text)
    with pytest.raises(AscError, match=rf"^{re.escape(str(path))}: a space is a YAML mapping"):
        load_space(path)


def test_missing_file(tmp_path):
    with pytest.raises(AscError, match=rf"^{re.escape(str(tmp_path / 'nope.yaml'))}: cannot read"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, key, match", [
    ("lr", "--set 'lr'", "expected KEY=VALUE"),
    ("=0.1", "--set '=0.1'", "expected KEY=VALUE"),
    ("scheduler..max_t=3", "--set 'scheduler..max_t=3'", "expected KEY=VALUE"),
    ("lr=[0.1", "--set 'lr=[0.1'", "not valid YAML"),
    ("params.lr.log=true", "--set 'params.lr.log=true'", "params.lr is 0.001, not a mapping"),
    ("learning_rate=0.1", "--set 'learning_rate=0.1'", "'learning_rate' is an unknown parameter"),
    ("bogus.x=3", "--set 'bogus.x=3'", "and no key of a space"),
    ("epochs.x=3", "--set 'epochs.x=3'", "params.epochs is 3, not a mapping"),
    ("epochs=0", "params.epochs", "must be >= 1"),
    ("enhancement=median", "params.enhancement", "not one of"),
    ("scheduler.patience=3", "scheduler.patience", "unknown key"),
])
def test_bad_override(tmp_path, override, key, match):
    refused(tmp_path, with_(params={"lr": 0.001}), key, overrides=(override,), match=match)


# --------------------------------------------------------------------------------------------------
# The shipped spaces
# --------------------------------------------------------------------------------------------------
def test_six_spaces_are_shipped():
    assert [p.name for p in SHIPPED] == ["demo.yaml", "device_robust.yaml", "median_cost.yaml", "paper.yaml",
                                         "pareto.yaml", "smoke.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_loads(path):
    space = load_space(path)
    assert space.name == path.stem and space.description and space.text == path.read_text()
    assert space.feature_configs()
    space.check_frames(430)  # the paper's 10 s clips: 430 frames
    if space.objective.multi:
        assert space.scheduler.name == "none"
    if space.scheduler.name == "asha":
        assert space.scheduler.max_t >= space.max_epochs()


def test_asha_defaults_are_what_the_replay_benchmark_found():
    """Unset, the first rung is at 40% of max_t and noise_z is 0.5 with several seeds (0 with one)."""
    one = parse_space({"params": {"model": "cnn", "epochs": 10}}, "s.yaml")
    assert (one.scheduler.grace_period, one.scheduler.max_t, one.scheduler.noise_z) == (4, 10, 0.0)
    three = parse_space({"seeds": 3, "params": {"model": "cnn", "epochs": 2}}, "s.yaml")
    assert (three.scheduler.grace_period, three.scheduler.noise_z) == (1, 0.5)
    kept = parse_space({"seeds": 3, "scheduler": {"name": "asha", "grace_period": 1, "noise_z": 0},
                        "params": {"model": "cnn", "epochs": 10}}, "s.yaml")
    assert (kept.scheduler.grace_period, kept.scheduler.noise_z) == (1, 0.0)


def test_shipped_space_settings():
    robust = load_space(SPACES / "device_robust.yaml")
    assert (robust.objective.name, robust.objective.gap_lambda) == ("gap_penalized", 0.5)
    assert (robust.scheduler.name, robust.scheduler.max_t, robust.scheduler.grace_period) == ("asha", 40, 16)
    assert robust.seeds == 3 and robust.scheduler.noise_z == 0.5
    assert set(robust.searched) >= {"enhancement", *MEDIAN_KEYS, "normalization", "n_mels", "mixup_alpha", "lr",
                                    "dropout"}
    pareto = load_space(SPACES / "pareto.yaml")
    assert pareto.sampler == "nsga2" and pareto.objective.multi and pareto.scheduler.name == "none"
    paper = load_space(SPACES / "paper.yaml")
    assert paper.sampler == "points" and paper.num_samples == 14 and paper.scheduler.name == "none"
    smoke = load_space(SPACES / "smoke.yaml")
    assert smoke.fixed["model"] == "cnn" and smoke.scheduler.max_t == smoke.fixed["epochs"] == 3


def test_paper_points_are_the_14_systems():
    space = load_space(SPACES / "paper.yaml")
    assert [pid for pid, _ in space.points] == list(PAPER_SYSTEMS) and len(PAPER_SYSTEMS) == 14
    for pid, point in space.points:
        system = SYSTEMS[pid]
        params = space.resolve({**space.fixed, **point})
        want = ("mean_subtraction" if system.mean_subtraction else
                "median_filter" if system.median_filter else "none")
        assert params["enhancement"] == want, pid
        assert params["mixup_alpha"] == system.mixup_alpha, pid
        assert params["selection"] == selection_metric(pid) == ("metric_a" if pid[0] == "A" else "metric_b")
        assert params["pretrained"] == system.pretrained and params["normalization"] == system.normalization
        if system.median_filter:
            assert (params["median_filter_bands"], params["median_filter_frames"]) == system.median_filter == (7, 21)
        else:
            assert not set(MEDIAN_KEYS) & set(params)
        # The trial runs exactly what asc.systems runs for that system.
        assert space.train_config({**space.fixed, **point, "point": pid}, "store") == system_config(
            pid, "store", epochs=80, protocol="paper"), pid


def test_points_sampled_through_optuna():
    space = load_space(SPACES / "paper.yaml")
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"point": [p for p, _ in space.points]}, seed=0))
    seen = {}

    def objective(trial):  # optimize, not ask/tell: the grid sampler stops the study when it is done
        seen[trial.params["point"] if "point" in trial.params else None] = space(trial)
        return 0.0

    study.optimize(objective, n_trials=20)
    assert sorted(seen) == sorted(PAPER_SYSTEMS) and len(study.trials) == 14
    assert seen["B7"]["mixup_alpha"] == 0.3 and seen["B7"]["median_filter_bands"] == 7
    assert seen["A3"]["enhancement"] == "mean_subtraction" and seen["A3"]["selection"] == "metric_a"
    assert all(c["model"] == "msxception" and c["epochs"] == 80 for c in seen.values())


# --------------------------------------------------------------------------------------------------
# Define-by-run sampling
# --------------------------------------------------------------------------------------------------
def ask_configs(space, sampler, n: int, tell=None) -> list[dict]:
    """``n`` trials' full configs (Optuna's sampled params + the constants suggest returns)."""
    study = optuna.create_study(sampler=sampler, directions=[f"{m}imize" for m in space.objective.modes])
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)  # what OptunaSearch's define-by-run gets: constants, besides trial.params
        # a key Optuna holds comes back only as resolving changed it (an enhancement switched on joins
        # the composition; normalization auto)
        assert all(constants[k] != trial.params[k] for k in set(constants) & set(trial.params))
        config = {**trial.params, **constants}
        configs.append(config)
        if tell is not None:
            study.tell(trial, tell(config))
    return configs


def test_median_size_is_sampled_only_with_the_median_filter():
    space = load_space(SPACES / "device_robust.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7), direction="maximize")
    kinds = set()
    for _ in range(40):
        trial = study.ask()
        constants = space.suggest(trial)
        config = space.canonical({**trial.params, **constants})  # as the searcher gives it to Tune
        kinds.add(config["enhancement"])
        medfilt = "median_filter" in config["enhancement"]
        for key in MEDIAN_KEYS:
            assert (key in trial.params) is medfilt and (key in config) is medfilt, (key, trial.params)
        if medfilt:
            assert config["median_filter_bands"] in range(3, 12, 2)
            assert config["median_filter_frames"] in range(11, 42, 2)
        # every enhancement setting but those of the enhancement that is on is dropped
        on = config["enhancement"].split("+")
        # every parameter but the settings of enhancements that are off, and the switches the space
        # does not search (the composition in `enhancement` says which are on)
        assert set(config) == set(PARAMS) - {k for k, name in CONDITIONAL.items() if name not in on} - {
            n for n in ENHANCEMENTS if n not in space.searched}
        assert all(config[n] == (n in on) for n in ENHANCEMENTS if n in space.searched)
        assert config["model"] == "msxception" and config["epochs"] == 40  # fixed keys come back as constants
        assert 1e-4 <= config["lr"] <= 3e-3 and 0 <= config["dropout"] <= 0.5
        space.train_config(config, "store")  # every sampled config is one a trial can run
        study.tell(trial, 0.5)
    # every enhancement the space can turn on comes up, and compositions of the switches' with the rest
    for name in {*space.searched["enhancement"].values, "dir", "freq_mixstyle"} - {"none"}:
        assert any(name in k.split("+") for k in kinds), (name, kinds)
    assert "none" in kinds and any(k.count("+") >= 2 for k in kinds)


@pytest.mark.parametrize("make", [
    lambda: optuna.samplers.RandomSampler(seed=11),
    # as the search builds it (search.tuner.make_sampler)
    lambda: optuna.samplers.TPESampler(seed=11, multivariate=True, group=True, constant_liar=True,
                                       n_startup_trials=5),
], ids=["random", "tpe"])
def test_seeded_sampler_proposes_the_same_configs(make):
    space = load_space(SPACES / "device_robust.yaml")

    def score(c):  # something for TPE to model once its startup trials are done
        return -abs(c["mixup_alpha"] - 0.3) + c.get("median_filter_bands", 0) / 100

    first = ask_configs(space, make(), 12, tell=score)
    second = ask_configs(space, make(), 12, tell=score)
    assert first == second
    assert len({repr(sorted(c.items())) for c in first}) == 12


def test_nsga2_on_the_pareto_pair():
    space = load_space(SPACES / "pareto.yaml")
    configs = ask_configs(space, optuna.samplers.NSGAIISampler(seed=0, population_size=4), 8,
                          tell=lambda c: (c["mixup_alpha"], c["lr"]))
    assert all(c["n_mels"] in (64, 128) for c in configs)
    assert space.objective.modes == ["max", "min"]


def test_grid_sampler_space(tmp_path):
    doc = with_(sampler="grid", params={**ENH_CHOICE, "median_filter_bands": {"int": [3, 7], "step": 2},
                                        "n_mels": {"choice": [64, 128]}}, drop=("lr",))
    space = load_space(space_file(tmp_path, doc))
    assert space.grid() == {"enhancement": ["none", "mean_subtraction", "median_filter"],
                            "median_filter_bands": [3, 5, 7], "n_mels": [64, 128]}
    configs = ask_configs(space, optuna.samplers.GridSampler(space.grid(), seed=0), 6)
    assert all(("median_filter_bands" in c) is (c["enhancement"] == "median_filter") for c in configs)


# --------------------------------------------------------------------------------------------------
# What a trial runs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enhancement, norm, mean_sub, median", [
    ("none", "gmsvn", False, None),
    ("mean_subtraction", "gms", True, None),
    ("median_filter", "gms", False, (5, 11)),
    ("spectrum_correction", "gmsvn", False, None),
])
def test_train_config_auto_normalization(enhancement, norm, mean_sub, median):
    space = parse_space(with_(params=ENH_CHOICE))
    params = {"enhancement": enhancement, "median_filter_bands": 5, "median_filter_frames": 11, "lr": 0.002}
    config = space.train_config(params, "/stores/x", checkpoint_dir="/ckpt", device="cpu")
    assert (config.enhancement.normalization, config.enhancement.mean_subtraction) == (norm, mean_sub)
    assert config.enhancement.median_filter == median and (median is None or isinstance(median, tuple))
    assert (config.store, config.checkpoint_dir, config.device, config.lr) == ("/stores/x", "/ckpt", "cpu", 0.002)


def test_train_config_fields():
    space = parse_space(with_(params=ENH_CHOICE))
    base = {"enhancement": "median_filter", "model": "cnn", "pretrained": True}
    assert space.train_config({**base, "normalization": "gmsvn"}, "s").enhancement.normalization == "gmsvn"
    assert space.train_config({**base, "normalization": "none"}, "s").enhancement.normalization == "none"
    assert space.train_config(base, "s").enhancement.median_filter == (7, 21)  # the paper's default size
    assert space.train_config(base, "s").model.pretrained is False  # ignored by the cnn
    assert space.train_config({**base, "model": "msxception"}, "s").model.pretrained is True
    assert space.train_config({**base, "model": "msxception", "pretrained": False}, "s").model.pretrained is False
    config = space.train_config({"enhancement": "none", "n_mels": 64, "mixup_alpha": 0.3, "lr": 3e-4,
                                 "dropout": 0.1, "model": "cnn", "width": 8, "selection": "metric_b",
                                 "protocol": "paper", "epochs": 7, "batch_size": 16, "lr_factor": 0.3,
                                 "lr_patience": 2, "seed": 4, "bf16": True, "channels_last": True,
                                 "num_workers": 2, "weights": "/w.pth"}, "s")
    assert (config.mixup_alpha, config.lr, config.selection, config.protocol, config.epochs) == (
        0.3, 3e-4, "metric_b", "paper", 7)
    assert (config.batch_size, config.lr_factor, config.lr_patience, config.seed) == (16, 0.3, 2, 4)
    assert (config.bf16, config.channels_last, config.num_workers) == (True, True, 2)
    assert (config.model.name, config.model.dropout, config.model.width, config.model.weights) == (
        "cnn", 0.1, 8, None)  # ImageNet weights are the MSXception's: the cnn ignores them
    assert space.train_config({"model": "msxception", "weights": "/w.pth"}, "s").model.weights == "/w.pth"
    # defaults: the paper's
    default = space.train_config({}, "s")
    assert (default.lr, default.batch_size, default.epochs, default.model.name) == (1e-3, 32, 80, "msxception")


def test_feature_configs(tmp_path):
    robust = load_space(SPACES / "device_robust.yaml")
    assert [(c.n_mels, c.spectrum_correction) for c in robust.feature_configs()] == [
        (64, False), (128, False), (256, False), (64, True), (128, True), (256, True)]
    assert len({c.key() for c in robust.feature_configs()}) == 6
    # what a trial asks for is one of them
    keys = {c.key() for c in robust.feature_configs()}
    assert robust.feature_config({"n_mels": 256, "enhancement": "spectrum_correction"}).key() in keys
    assert robust.feature_config({"n_mels": 64, "enhancement": "median_filter"}) == FeatureConfig(n_mels=64)

    # without spectrum correction, enhancements share a store; the features section reaches every store
    doc = with_(params={**ENH_CHOICE, "n_mels": {"choice": [32, 64]}},
                features={"sample_rate": 22050, "fmax": 11025.0, "n_fft": 1024, "hop_length": 256})
    space = load_space(space_file(tmp_path, doc))
    assert space.feature_configs() == [FeatureConfig(sample_rate=22050, fmax=11025.0, n_fft=1024, hop_length=256,
                                                     n_mels=n) for n in (32, 64)]
    assert load_space(SPACES / "smoke.yaml").feature_configs() == [FeatureConfig(n_mels=128)]


# --------------------------------------------------------------------------------------------------
# Overrides and YAML details
# --------------------------------------------------------------------------------------------------
def test_set_overrides():
    smoke = SPACES / "smoke.yaml"
    space = load_space(smoke, ["epochs=2", "lr=3e-4", "params.mixup_alpha=0.3", "scheduler.grace_period=2",
                               "sampler=random", "num_samples=9", "enhancement={choice: [none, median_filter]}",
                               "median_filter_frames=11", "features.hop_length=512"])
    assert space.fixed["epochs"] == 2 and space.scheduler.max_t == 2  # max_t follows the epochs
    assert space.fixed["lr"] == 3e-4 and "lr" not in space.searched
    assert space.fixed["mixup_alpha"] == 0.3 and space.scheduler.grace_period == 2
    assert (space.sampler, space.num_samples) == ("random", 9)
    assert space.searched["enhancement"].values == ("none", "median_filter")
    assert space.fixed["median_filter_frames"] == 11 and space.features == {"hop_length": 512}
    # The text is the space as run (what the search logs and `resume` reads back): it reads as the same space.
    assert space.text.startswith(f"# {smoke} with --set ")
    again = parse_space(yaml.safe_load(space.text), "again.yaml")
    assert (again.fixed, again.searched, again.scheduler, again.features) == (
        space.fixed, space.searched, space.scheduler, space.features)
    assert load_space(smoke).fixed["epochs"] == 3  # the file is unchanged

    # a parameter name that is also a top-level key (seed) sets the training seed
    assert load_space(smoke, ["seed=5"]).fixed["seed"] == 5 and load_space(smoke, ["seed=5"]).seed == 0


def test_set_on_short_forms(tmp_path):
    """`scheduler: asha` and an empty params section take dotted overrides too."""
    path = space_file(tmp_path, "objective: metric_b\nscheduler: asha\nparams:\n")
    space = load_space(path, ["scheduler.grace_period=2", "params.epochs=4"])
    assert (space.scheduler.name, space.scheduler.grace_period, space.scheduler.max_t) == ("asha", 2, 4)
    assert space.fixed == {"epochs": 4}


def test_exponent_floats(tmp_path):
    """PyYAML reads 1e-3 as a string (YAML 1.1); a space reads it as the number everyone means."""
    path = space_file(tmp_path, "scheduler: none\nparams:\n  lr: {float: [1e-4, 3E-3], log: true}\n"
                                "  mixup_alpha: 3.0e-1\n  dropout: .5e-1\n")
    space = load_space(path)
    assert (space.searched["lr"].low, space.searched["lr"].high) == (1e-4, 3e-3)
    assert space.fixed["mixup_alpha"] == 0.3 and space.fixed["dropout"] == 0.05


def test_pareto_defaults_to_no_scheduler(tmp_path):
    doc = with_(objective="pareto")
    del doc["scheduler"]
    space = load_space(space_file(tmp_path, doc))
    assert space.scheduler.name == "none" and space.objective.metrics == ["objective_acc_bc", "objective_abs_gap"]
    doc = with_(objective="metric_b")
    del doc["scheduler"]
    assert load_space(space_file(tmp_path, doc)).scheduler.name == "asha"


def test_choice_of_booleans_models_and_strings(tmp_path):
    doc = with_(params={"model": {"choice": ["cnn", "msxception"]}, "pretrained": {"choice": [True, False]},
                        "selection": {"choice": ["metric_a", "metric_b"]}, "mixup_alpha": {"choice": [0, 0.3]},
                        "n_mels": {"int": [64, 256], "step": 64}})
    space = load_space(space_file(tmp_path, doc))
    assert space.searched["mixup_alpha"].values == (0.0, 0.3)  # ints read as floats for a float param
    assert space.searched["n_mels"].grid() == [64, 128, 192, 256]
    configs = ask_configs(space, optuna.samplers.RandomSampler(seed=0), 10)
    assert {c["model"] for c in configs} == {"cnn", "msxception"}
    assert all(isinstance(c["pretrained"], bool) and c["n_mels"] % 64 == 0 for c in configs)


def test_readme_examples_are_valid(tmp_path):
    """The YAML examples in spaces/README.md load, and it lists every shipped file."""
    text = (SPACES / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        load_space(space_file(tmp_path, block, f"readme_{i}.yaml")).check_frames(430)
    for path in SHIPPED:
        assert f"`{path.name}`" in text


def test_validation_share_is_one_per_search_and_reaches_every_trial():
    """More held-out locations give the selection more B and C clips: a setting of the search, not of a
    trial (trials chosen on different clips cannot be ranked together), and not beside spectrum
    correction, whose stores are fitted without the default share's locations."""
    space = parse_space({"params": {"model": "cnn", "validation_share": 0.4,
                                    "enhancement": {"choice": ["none", "mean_subtraction"]}}}, "s.yaml")
    assert space.validation_share == 0.4
    assert space.train_config({**space.fixed, "enhancement": "none"}, "/store").validation_share == 0.4
    assert parse_space({"params": {"model": "cnn"}}, "s.yaml").validation_share == 0.2
    with pytest.raises(AscError, match=r"s.yaml: params.validation_share: one validation_share per search"):
        parse_space({"params": {"model": "cnn", "validation_share": {"choice": [0.2, 0.4]}}}, "s.yaml")
    with pytest.raises(AscError, match=r"s.yaml: points: one validation_share per search, not 0.2 and 0.4"):
        parse_space({"sampler": "points", "params": {"model": "cnn"},
                     "points": [{"validation_share": 0.2}, {"validation_share": 0.4}]}, "s.yaml")
    with pytest.raises(AscError, match=r"params.validation_share: 0.4 with spectrum_correction: its stores are "
                                       r"fitted without the locations of validation_share 0.2"):
        parse_space({"params": {"model": "cnn", "validation_share": 0.4,
                                "enhancement": {"choice": ["none", "spectrum_correction"]}}}, "s.yaml")
    with pytest.raises(AscError, match=r"params.validation_share: 1.0 must be < 1"):
        parse_space({"params": {"model": "cnn", "validation_share": 1.0}}, "s.yaml")
