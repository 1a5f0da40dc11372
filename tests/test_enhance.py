"""The enhancements as definitions: what every one of them must pass (its settings and label, served
equals trained), Freq-MixStyle against a reference written from its description, DIR's responses and
gains, the unseen devices, and the audio model's refusals."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from asc.dataset import read_development
from asc.enhance import (ENHANCEMENTS, STAGES, Enhancement, auto_normalization, composition, freq_mixstyle,
                         parse_composition)
from asc.errors import AscError
from asc.inference import Ensemble, clip_device, member_from_checkpoint
from asc.metrics import device_metrics
from asc.models import ModelConfig
from asc.responses import SHIPPED, mel_gains, read_responses
from asc.store import build_stores
from asc.train import TrainConfig, train
from search.serving import AudioSceneModel


# --------------------------------------------------------------------------------------------------
# Every definition
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ENHANCEMENTS))
def test_every_definition_is_complete(name):
    d = ENHANCEMENTS[name]
    assert d.stage in STAGES and d.short and d.help
    assert (d.apply is not None) == (d.stage != "store") and (not d.cached or d.stage == "batch")
    assert (d.prepare is not None) == (d.draw is not None) == (d.stage == "features")
    # a cached step's torch twin (what a GPU trial runs per batch) computes what its cache holds
    assert (d.apply_torch is not None) == d.cached
    if d.cached:
        x = np.random.default_rng(0).normal(size=(3, 16, 40)).astype(np.float32)
        defaults = {s.name: s.default for s in d.settings}
        np.testing.assert_allclose(d.apply_torch(torch.from_numpy(x), **defaults).numpy(), d.apply(x, **defaults),
                                   atol=1e-6)
    for s in d.settings:
        assert isinstance(s.default, s.kind) and s.help
        assert s.at_most in (None, "n_mels", "frames") and (s.at_most is None or s.kind is int)
        if s.read is not None:  # what it names is read by its definition's reader, the default included
            assert s.kind is str and s.read(s.default, 22050) is not None
        if s.low is not None:
            assert s.default > s.low or (s.default == s.low and not s.low_open)
        if s.high is not None:
            assert s.default <= s.high
    # its parameters exist in the search space, conditional on it
    from search.space import CONDITIONAL, PARAMS

    for s in d.settings:
        assert PARAMS[d.key(s.name)].default == s.default and CONDITIONAL[d.key(s.name)] == name
    # a trial's switch for it: the Enhancement field of its name, checked by its definition
    if d.stage != "store":
        assert name in {f.name for f in dataclasses.fields(Enhancement)}
        defaults = tuple(s.default for s in d.settings) if d.settings else True
        assert Enhancement(**{name: defaults}).names == (name,)
        for k, s in enumerate(d.settings):
            if s.low is not None:
                bad = list(defaults)
                bad[k] = s.low - 1
                with pytest.raises(AscError, match=f"^{name} {s.name} must be (>|an odd integer >=)"):
                    Enhancement(**{name: tuple(bad)})


def test_the_definitions_order_is_the_order_their_stages_run_in():
    """The dict's order is the order steps run in: stage by stage, and within the every-batch stage the
    cached step (its cache holds the normalised features after it) before the others."""
    import pickle

    order = [(STAGES.index(d.stage), d.stage == "batch" and not d.cached) for d in ENHANCEMENTS.values()]
    assert order == sorted(order)
    assert pickle.loads(pickle.dumps(ENHANCEMENTS["freq_mixstyle"])) == ENHANCEMENTS["freq_mixstyle"]


def test_compositions_are_canonical_and_labelled_once():
    assert parse_composition("median_filter+freq_mixstyle") == ("median_filter", "freq_mixstyle")
    order = ", ".join(ENHANCEMENTS)  # the definitions' order (a new definition adds its name here)
    assert order.startswith("spectrum_correction, dir, median_filter, mean_subtraction, freq_mixstyle")
    with pytest.raises(AscError, match=re.escape(f"'freq_mixstyle+median_filter': enhancements run in one order "
                                                 f"({order}); write median_filter+freq_mixstyle") + "$"):
        parse_composition("freq_mixstyle+median_filter")
    assert composition(["freq_mixstyle", "dir"]) == "dir+freq_mixstyle" and parse_composition("none") == ()
    with pytest.raises(AscError, match="'median' is not one of none, spectrum_correction"):
        parse_composition("median+dir")
    with pytest.raises(AscError, match="names an enhancement twice"):
        parse_composition("dir+dir")
    with pytest.raises(AscError, match="^'none\\+mean_subtraction': none is no enhancement and joins no other$"):
        parse_composition("none+mean_subtraction")
    with pytest.raises(AscError, match="^'mean_subtraction\\+': an empty name between or beside the"):
        parse_composition("mean_subtraction+")
    e = Enhancement.compose(["median_filter", "freq_mixstyle"], {"median_filter_bands": 5})
    assert e.median_filter == (5, 21) and e.freq_mixstyle == (0.4, 0.4)
    assert e.label() == "medfilt5x21+fms p=0.4 alpha=0.4" and Enhancement().label(spectrum_correction=True) == "spec-corr"
    # normalization auto, as the paper: GMS with mean subtraction or the median filter, else GMSVN
    assert auto_normalization(["median_filter", "freq_mixstyle"]) == auto_normalization(["mean_subtraction"]) == "gms"
    assert auto_normalization(["dir", "freq_mixstyle"]) == auto_normalization([]) == "gmsvn"
    assert Enhancement.from_dict({"normalization": "gms", "mean_subtraction": True, "median_filter": None}) == \
        Enhancement("gms", mean_subtraction=True)  # a checkpoint from before the newer fields
    with pytest.raises(TypeError):  # a switch by position would depend on the definitions' order
        Enhancement("gms", True)


# --------------------------------------------------------------------------------------------------
# Freq-MixStyle
# --------------------------------------------------------------------------------------------------
def test_freq_mixstyle_equals_its_description_on_a_hand_made_batch():
    """With probability p: each clip's per-band mean and standard deviation over time (detached)
    normalise it, and statistics mixed with a shuffled partner's, lambda ~ Beta(alpha, alpha), re-scale it."""
    x = torch.tensor(np.random.default_rng(0).normal(size=(4, 3, 6)) * [[[1.0], [2.0], [0.5]]] + 3.0,
                     dtype=torch.float32, requires_grad=True)
    got = freq_mixstyle(x, 1.0, 0.4, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the same draws, in the described order
    assert rng.random() <= 1.0
    lam, perm = rng.beta(0.4, 0.4, size=4), rng.permutation(4)
    xs = x.detach().numpy().astype(np.float64)
    want, slope = np.empty_like(xs), np.empty_like(xs)
    for i in range(4):
        for band in range(3):
            mu, sd = xs[i, band].mean(), math.sqrt(xs[i, band].var(ddof=1) + 1e-6)
            pmu, psd = xs[perm[i], band].mean(), math.sqrt(xs[perm[i], band].var(ddof=1) + 1e-6)
            mixed_mu, mixed_sd = lam[i] * mu + (1 - lam[i]) * pmu, lam[i] * sd + (1 - lam[i]) * psd
            want[i, band] = (xs[i, band] - mu) / sd * mixed_sd + mixed_mu
            slope[i, band] = mixed_sd / sd
    np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-5)
    # the statistics are detached: no gradient flows through them (nor to the partner), so each
    # value's gradient is its band's mixed_sd / sd, which it would not be through the statistics
    got.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), slope, rtol=1e-5)
    assert freq_mixstyle(x, 0.0, 0.4, np.random.default_rng(5)) is x  # p = 0: untouched


# --------------------------------------------------------------------------------------------------
# DIR: the responses and their gains
# --------------------------------------------------------------------------------------------------
def test_the_shipped_responses_and_their_gains():
    responses = read_responses("micirp", 22050)
    assert len(responses) == 66 and all(abs(np.sum(h * h) - 1) < 1e-9 for _, h in responses)
    assert (SHIPPED / "README.md").read_text().count("MicIRP") >= 2  # the credit travels with them
    gains = mel_gains("micirp", 22050, 1024, 32, 0.0, 11025.0, 2.0)
    assert gains.shape == (66, 32) and np.isfinite(gains).all()


def test_an_impulse_has_no_gain_and_a_lowpass_takes_the_highs(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "dull").mkdir()
    impulse = np.zeros(256)
    impulse[10] = 0.5
    soundfile.write(tmp_path / "flat" / "i.wav", impulse, 22050, subtype="PCM_24")
    soundfile.write(tmp_path / "dull" / "l.wav", np.hanning(31) / 8, 22050, subtype="PCM_24")  # a smoothing: lowpass
    flat = mel_gains(str(tmp_path / "flat"), 22050, 1024, 32, 0.0, 11025.0, 2.0)
    np.testing.assert_allclose(flat, 0.0, atol=1e-3)
    dull = mel_gains(str(tmp_path / "dull"), 22050, 1024, 32, 0.0, 11025.0, 2.0)[0]
    assert dull[:4].mean() > dull[-4:].mean() + 5  # natural-log units: the top bands lose far more


def test_bad_response_folders_are_one_line(tmp_path):
    with pytest.raises(AscError, match=r"dir_responses .*nope: no such folder"):
        read_responses(str(tmp_path / "nope"), 22050)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AscError, match=r"holds no .wav or .flac impulse responses"):
        read_responses(str(tmp_path / "empty"), 22050)
    (tmp_path / "stereo").mkdir()
    soundfile.write(tmp_path / "stereo" / "s.wav", np.ones((64, 2)) * 0.1, 22050)
    with pytest.raises(AscError, match=r"s.wav: 2 channels; an impulse response is mono"):
        read_responses(str(tmp_path / "stereo"), 22050)
    (tmp_path / "silent").mkdir()
    soundfile.write(tmp_path / "silent" / "z.wav", np.zeros(64), 22050)
    with pytest.raises(AscError, match=r"z.wav: a silent impulse response"):
        read_responses(str(tmp_path / "silent"), 22050)
    (tmp_path / "slow").mkdir()
    soundfile.write(tmp_path / "slow" / "r.wav", np.r_[1.0, 0.5, np.zeros(98)], 1)  # 1 Hz
    with pytest.raises(AscError, match=r"r.wav: recorded at 1 Hz, below 8000 Hz"):
        read_responses(str(tmp_path / "slow"), 22050)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "j.wav").write_text("not audio")
    with pytest.raises(AscError, match=r"j.wav: not a readable impulse response"):
        read_responses(str(tmp_path / "junk"), 22050)


def test_a_space_with_bad_dir_settings_is_refused_before_anything_runs(tmp_path):
    from search.space import parse_space

    def space(**params):
        return parse_space({"params": {"model": "cnn", "enhancement": "dir", **params}}, "s.yaml")

    with pytest.raises(AscError, match=r"s.yaml: params.dir_responses: dir_responses .*nope: no such folder"):
        space(dir_responses=str(tmp_path / "nope"))
    with pytest.raises(AscError, match=r"s.yaml: params.dir_p: 1.5 must be <= 1"):
        space(dir_p=1.5)
    with pytest.raises(AscError, match=r"s.yaml: params.freq_mixstyle_alpha: 0.0 must be > 0"):
        space(enhancement="freq_mixstyle", freq_mixstyle_alpha=0.0)
    with pytest.raises(AscError, match=r"s.yaml: params.freq_mixstyle_p: set, but no enhancement here is freq_mixstyle"):
        space(freq_mixstyle_p=0.5)
    with pytest.raises(AscError, match=r"s.yaml: params.enhancement: 'mixstyle' is not one of"):
        space(enhancement="dir+mixstyle")


def test_a_relative_response_folder_is_the_one_the_space_was_read_beside(tmp_path, monkeypatch):
    """Every trial runs in its own working directory: the folder checked is the folder trained with."""
    from search.space import parse_space

    (tmp_path / "irs").mkdir()
    soundfile.write(tmp_path / "irs" / "r.wav", np.r_[1.0, 0.5, np.zeros(62)], 22050)
    monkeypatch.chdir(tmp_path)
    space = parse_space({"params": {"model": "cnn", "enhancement": "dir", "dir_responses": {"choice": ["irs",
                                                                                                      "micirp"]}}},
                        "s.yaml")
    assert space.searched["dir_responses"].values == (str(tmp_path / "irs"), "micirp")
    monkeypatch.chdir("/")  # where a trial runs
    assert len(read_responses(space.searched["dir_responses"].values[0], 22050)) == 1


# --------------------------------------------------------------------------------------------------
# Served equals trained
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(synth_set, fast_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    report = build_stores(read_development(synth_set), [fast_config, dataclasses.replace(fast_config,
                                                                                         spectrum_correction=True)], root)
    built = {Path(p).name: p for p in report.built}
    return (next(p for n, p in built.items() if "-sc" not in n), next(p for n, p in built.items() if "-sc" in n))


def shipped_compositions() -> set[str]:
    """Every composition of enhancements a trial of a shipped space (spaces/*.yaml) can train: the
    ``enhancement`` choices crossed with the enhancements' own switches, or the points."""
    from itertools import product

    from search.space import enhancement_names, load_space

    found = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "spaces").glob("*.yaml")):
        space = load_space(path)
        if space.points:
            configs = [{**space.fixed, **point} for _, point in space.points]
        else:
            keys = [k for k in ("enhancement", *ENHANCEMENTS) if k in space.searched]
            configs = [{**space.fixed, **dict(zip(keys, values))}
                       for values in product(*(space.searched[k].values for k in keys))]
        found |= {composition(enhancement_names(c)) for c in configs}
    return found


# every enhancement alone, the paper's median filter after mean subtraction, every composition the
# shipped spaces can train (16), and bf16 training
SERVED = sorted({"none", *ENHANCEMENTS, "median_filter+mean_subtraction"} | shipped_compositions()) + ["bf16"]


@pytest.mark.parametrize("case", SERVED)
def test_the_audio_model_predicts_from_audio_what_the_trial_predicted_from_the_store(stores, synth_set, tmp_path, case):
    names = () if case == "bf16" else parse_composition(case)
    plain, corrected = stores
    enhancement = Enhancement.compose([n for n in names if n != "spectrum_correction"],
                                      {"median_filter_bands": 3, "median_filter_frames": 5, "freq_mixstyle_p": 1.0,
                                       "dir_p": 1.0},
                                      auto_normalization(names))
    config = TrainConfig(store=corrected if "spectrum_correction" in names else plain,
                         model=ModelConfig(name="cnn", width=4), enhancement=enhancement, epochs=2, batch_size=8,
                         mixup_alpha=0.3, bf16=case == "bf16", checkpoint_dir=str(tmp_path / "ckpt"))
    train(config)
    saved = np.load(tmp_path / "ckpt" / "best_probs.npz")
    member = member_from_checkpoint(tmp_path / "ckpt" / "best.pt")
    files = [str(synth_set / f) for f in saved["filenames"]]
    served = Ensemble([member]).predict(files, devices=list(saved["devices"]))
    np.testing.assert_allclose(served, saved["probs"], atol=1e-5)
    model = AudioSceneModel()  # the logged model's code, sent the clips' bytes as a model server is
    model.ensemble = Ensemble([member])
    sent = model.predict(None, pd.DataFrame({"audio": [Path(f).read_bytes() for f in files], "device": saved["devices"]}))
    np.testing.assert_allclose(sent[member.classes].to_numpy(), saved["probs"], atol=1e-5)
    if case == "median_filter+mean_subtraction":  # the batch steps after a cached median filter, and the
        import mlflow  # model as MLflow logs and loads it (the pyfunc flavour every server uses)

        from search.serving import log_audio_model

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("served", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            pass
        model_uri = log_audio_model(uri, run.info.run_id, [member.save(tmp_path / "member.pt")])
        got = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"path": files, "device": saved["devices"]}))
        np.testing.assert_allclose(got[member.classes].to_numpy(), saved["probs"], atol=1e-5)
        # the model pins what its members trained with, recorded in each (here: this environment)
        from importlib.metadata import version

        from search.serving import model_requirements

        assert member.packages["torch"] == version("torch") and set(member.packages) >= {"numpy", "librosa", "scipy"}
        pinned = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
        assert f"librosa=={member.packages['librosa']}" in pinned and f"mlflow=={version('mlflow')}" in pinned
        elsewhere = dataclasses.replace(member, packages={**member.packages, "librosa": "0.10.2"})
        assert "librosa==0.10.2" in model_requirements([elsewhere])  # trained with another librosa
        assert f"librosa=={version('librosa')}" in model_requirements([elsewhere, member])  # members disagree: here's


@pytest.fixture(scope="module")
def unseen_set(tmp_path_factory):
    """The small set with the default unseen devices s1 and s2 in its evaluation split."""
    from asc.synth import SynthConfig, write_dataset
    from tests.conftest import SMALL_SYNTH

    out = tmp_path_factory.mktemp("unseen") / "set"
    write_dataset(out, SynthConfig(**{**SMALL_SYNTH, "unseen": ("s1", "s2")}), workers=1)
    return out


def test_the_audio_model_refuses_unknown_devices_and_other_lengths_and_notes_unseen_ones(stores, synth_set, unseen_set,
                                                                                         tmp_path):
    plain, corrected = stores
    config = TrainConfig(store=corrected, model=ModelConfig(name="cnn", width=4), epochs=1, batch_size=8,
                         checkpoint_dir=str(tmp_path / "ckpt"))
    train(config)
    member = member_from_checkpoint(tmp_path / "ckpt" / "best.pt")
    clip = next((synth_set / "audio").glob("*-a.wav"))
    shutil.copy(clip, tmp_path / "0.wav")  # as the leaderboard and evaluation sets name their clips
    with pytest.raises(AscError, match=r"0.wav: its recording device is unknown .* predict --device"):
        Ensemble([member]).predict([str(tmp_path / "0.wav")])
    ensemble = Ensemble([member])
    ensemble.predict([str(tmp_path / "0.wav")], devices=["a"])  # told: fine
    unseen = next((unseen_set / "audio").glob("*-s1.wav"))
    ensemble.predict([str(unseen)])
    assert ensemble.notes and "(s1: unseen in training) were scored uncorrected" in ensemble.notes[0]
    served = AudioSceneModel()  # the logged model says so too (a warning: the model server's log)
    served.ensemble = ensemble
    with pytest.warns(UserWarning, match=r"1 clip\(s\) of devices .*\(s1: unseen in training\) were scored uncorrected"):
        served.predict(None, pd.DataFrame({"path": [str(unseen)]}))
    y, sr = soundfile.read(str(clip))
    soundfile.write(tmp_path / "short-a.wav", y[: len(y) // 2], sr, subtype="PCM_24")
    with pytest.raises(AscError, match=r"short-a.wav: 0.50 s gives \d+ frames; the model was trained on clips of "
                                       r"(0.99|1.00)-1.0\d s \(\d+ frames\)"):  # the set's clips: 1 s
        Ensemble([member]).predict([str(tmp_path / "short-a.wav")])
    # shorter than one STFT window: the same line, and no librosa warning before it
    soundfile.write(tmp_path / "tiny-a.wav", y[:100], sr, subtype="PCM_24")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AscError, match=r"tiny-a.wav: 0.00 s is shorter than one STFT window \(\d+ samples\); "
                                           r"the model was trained on clips of [\d.-]+ s \(\d+ frames\)"):
            Ensemble([member]).predict([str(tmp_path / "tiny-a.wav")])


def test_members_of_one_feature_setting_share_one_computation_of_the_features(stores, synth_set, tmp_path):
    plain, corrected = stores
    for name, store in (("plain", plain), ("sc", corrected)):
        train(TrainConfig(store=store, model=ModelConfig(name="cnn", width=4), epochs=1, batch_size=8,
                          checkpoint_dir=str(tmp_path / name)))
    # each load its own FeatureConfig: equal settings, other objects
    twice = [member_from_checkpoint(tmp_path / "plain" / "best.pt") for _ in range(2)]
    sc = member_from_checkpoint(tmp_path / "sc" / "best.pt")
    files = sorted(str(f) for f in (synth_set / "audio").glob("*.wav"))[:4]
    ensemble = Ensemble(twice + [sc])
    features = ensemble._features(files, [clip_device(f) for f in files], {})
    assert len(features) == 2 and twice[0].feature_key == twice[1].feature_key != sc.feature_key
    other = dataclasses.replace(sc, corrections={d: c * 2 for d, c in sc.corrections.items()})
    assert other.feature_key != sc.feature_key  # other coefficients: other features
    np.testing.assert_allclose(ensemble.predict(files),
                               (2 * Ensemble(twice[:1]).predict(files) + Ensemble([sc]).predict(files)) / 3, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Unseen devices
# --------------------------------------------------------------------------------------------------
def test_unseen_devices_are_evaluation_only_and_reported_apart(unseen_set):
    dataset = read_development(unseen_set)
    assert {c.device for c in dataset.split("train")} == {"a", "b", "c"}
    assert {"s1", "s2"} <= {c.device for c in dataset.split("evaluate")}
    m = device_metrics([0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 1], ["a", "a", "b", "c", "s1", "s2"], 2, seen=["a", "b", "c"])
    assert m["acc_a"] == 0.5 and m["acc_bc"] == 1.0 and m["acc_unseen"] == 0.0 and m["unseen_gap"] == 0.5
    assert m["metric_b"] == 0.75 and m["device_gap"] == -0.5  # the paper's figures stay A against B and C
    from search.objectives import Objective

    assert Objective("worst_device").values(m)["objective"] == 0.0 and Objective("acc_unseen").values(m)["objective"] == 0.0
    assert "acc_unseen" not in device_metrics([0, 1], [0, 1], ["a", "b"], 2, seen=["a", "b"])  # 2019: none


# --------------------------------------------------------------------------------------------------
# The median filter on the training device
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 21)])
def test_the_batched_torch_median_filter_equals_scipys(size):
    from asc.enhance import median_filter, median_filter_torch

    x = np.random.default_rng(1).normal(size=(5, 32, 40)).astype(np.float32)
    got = median_filter_torch(torch.from_numpy(x), size, max_elements=10_000).numpy()  # several chunks
    np.testing.assert_allclose(got, median_filter(x, size), atol=1e-6)


def test_dir_changes_the_features_of_the_device_a_clips_it_draws_and_no_others(stores):
    from asc.enhance import dir_draws
    from asc.train import FeatureView

    plain, _ = stores
    view = FeatureView(plain, Enhancement("gmsvn", dir=(1.0, str(SHIPPED))))
    reference = np.array([c.device == "a" for c in view.clips])
    rows = np.arange(len(view.clips))
    drawn = dir_draws(np.random.default_rng(0), rows, reference, view.states["dir"], 1.0)
    assert (drawn[reference] >= 0).all() and (drawn[~reference] == -1).all()  # p = 1: every A clip, no other
    half = dir_draws(np.random.default_rng(0), rows, reference, view.states["dir"], 0.5)
    assert 0 < (half >= 0).sum() < reference.sum() and (half[~reference] == -1).all()
    plain_x, with_dir = view.batch(rows)[0].numpy(), view.batch(rows, {"dir": half})[0].numpy()
    changed = np.abs(with_dir - plain_x).reshape(len(rows), -1).max(axis=1) > 1e-4
    np.testing.assert_array_equal(changed, half >= 0)  # the drawn clips changed, every other is as stored


@pytest.fixture(scope="module")
def half_store(synth_set, fast_config, tmp_path_factory):
    """The small set's store in float16, as ``prepare --dtype float16`` halves a large one."""
    report = build_stores(read_development(synth_set), [dataclasses.replace(fast_config, dtype="float16")],
                          tmp_path_factory.mktemp("half"))
    return report.built[0]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_view_filtering_on_the_device_reads_what_the_cache_gives_and_the_served_model_computes(
        stores, half_store, dtype):
    from asc.train import FeatureView

    store = stores[0] if dtype == "float32" else half_store
    enhancement = Enhancement("gms", mean_subtraction=True, median_filter=(3, 5))
    rows = np.arange(12)
    cached = FeatureView(store, enhancement).batch(rows)[0]
    view = FeatureView(store, enhancement, device_median=True)
    on_device = view.finish(view.batch(rows)[0]).numpy()
    np.testing.assert_allclose(on_device, cached.numpy(), atol=1e-5)
    # what the served model computes from the same stored features (asc.inference's Member.enhance)
    served = enhancement(view.base.features(rows), view.mean, view.std, cache_dtype=dtype)
    np.testing.assert_allclose(on_device, served, atol=1e-5)
