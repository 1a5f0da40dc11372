"""The training loop: it learns, it resumes to the same result, mixup and the LR schedule are the
paper's, the CLI writes its result, and the validation protocol keeps evaluate for the end."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asc import AscError
from asc.enhance import Enhancement
from asc.models import ModelConfig, build_model
from asc.store import FeatureStore, build_stores
from asc.synth import SynthConfig, write_dataset
from asc.train import FeatureView, TrainConfig, evaluate, make_optimizer, mix, mixup_loss, split_indices, train

REPO = Path(__file__).resolve().parents[1]
CNN = ModelConfig(name="cnn")


@pytest.fixture(scope="module")
def learnable_store(fast_config, tmp_path_factory):
    """240 clips: enough to learn something in a few CPU seconds (40 evaluate clips per device)."""
    root = tmp_path_factory.mktemp("learn")
    dataset = write_dataset(root / "data", SynthConfig(segments_per_scene=12, parallel_per_scene=6, seconds=1.0,
                                                       sample_rate=22050, seed=5), workers=1)
    return build_stores(dataset, [fast_config], root / "store").built[0]


def _config(store, **kw) -> TrainConfig:
    return TrainConfig(**{"store": store, "model": CNN, "epochs": 4, "batch_size": 8, **kw})


def test_a_few_epochs_beat_chance_on_every_device(learnable_store):
    result = train(_config(learnable_store, epochs=6, enhancement=Enhancement("gmsvn")))
    best = result["best"]
    for device in ("acc_a", "acc_b", "acc_c"):
        assert best[device] > 0.2, best  # chance is 0.1 with 10 scenes
    assert result["best_epoch"] == max(range(1, 7), key=lambda e: result["history"][e - 1]["metric_a"])
    assert len(result["history"]) == 6 and result["test"] == result["best"]


def test_resume_from_a_mid_run_checkpoint_equals_the_uninterrupted_run(small_store, tmp_path):
    base = dict(mixup_alpha=0.3, enhancement=Enhancement("gms", mean_subtraction=True))
    whole = train(_config(small_store, checkpoint_dir=str(tmp_path / "whole"), **base))

    class Crash(Exception):
        pass

    def crash_after_two(epoch, metrics, checkpoint_dir):
        if epoch == 2:
            raise Crash

    config = _config(small_store, checkpoint_dir=str(tmp_path / "resumed"), **base)
    with pytest.raises(Crash):
        train(config, report=crash_after_two)
    epochs_seen = []
    resumed = train(config, report=lambda e, m, c: epochs_seen.append(e))
    assert epochs_seen == [3, 4]
    for a, b in zip(whole["history"], resumed["history"]):
        for key in ("train_loss", "metric_a", "metric_b", "acc_a", "acc_bc", "loss", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert resumed["best_epoch"] == whole["best_epoch"]
    w, r = (torch.load(tmp_path / d / "best.pt", weights_only=False)["model"] for d in ("whole", "resumed"))
    assert all(torch.allclose(w[k].float(), r[k].float(), atol=1e-6) for k in w)


def test_deterministic_for_a_seed(small_store):
    one, two = (train(_config(small_store, epochs=2, mixup_alpha=0.3)) for _ in range(2))
    assert [h["train_loss"] for h in one["history"]] == [h["train_loss"] for h in two["history"]]


def test_checkpoint_of_another_configuration_is_refused(small_store, tmp_path):
    train(_config(small_store, epochs=1, checkpoint_dir=str(tmp_path)))
    with pytest.raises(AscError, match="another configuration"):
        train(_config(small_store, epochs=1, lr=0.01, checkpoint_dir=str(tmp_path)))


def test_mixup_mixture_and_loss():
    x1, x2 = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert torch.equal(mix(x1, x2, 0.25), torch.full((2, 3, 4), 0.75))
    logits = torch.randn(5, 4)
    y1, y2 = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 0, 2, 3])
    lam = 0.3
    soft = lam * F.one_hot(y1, 4) + (1 - lam) * F.one_hot(y2, 4)
    expected = -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert torch.allclose(mixup_loss(logits, y1, y2, lam), expected)
    assert torch.allclose(mixup_loss(logits, y1, y2, 1.0), F.cross_entropy(logits, y1))


def test_plateau_schedule_halves_after_three_epochs_without_improvement(small_store):
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model, _config(small_store))
    lrs = []
    for value in [0.5, 0.6, 0.6, 0.59, 0.6, 0.6, 0.55, 0.7, 0.7]:
        scheduler.step(value)
        lrs.append(optimizer.param_groups[0]["lr"])
    # best 0.6 at step 2; steps 3, 4, 5 do not improve (patience 3); step 6 is the 4th: halve
    assert lrs == [1e-3] * 5 + [5e-4] * 4


def test_validation_protocol_holds_out_training_locations_of_every_scene(small_store):
    clips = FeatureStore(small_store).clips
    train_idx, select_idx, test_idx = split_indices(clips, _config(small_store, protocol="validation"))
    places = lambda idx: {clips[i].identifier for i in idx}  # noqa: E731
    assert not places(train_idx) & places(select_idx)
    assert all(clips[i].split == "train" for i in select_idx)
    assert all(clips[i].split == "evaluate" for i in test_idx)
    scenes_with_two_places = {c.scene for c in clips if c.split == "train"
                              and len({d.identifier for d in clips if d.split == "train" and d.scene == c.scene}) > 1}
    assert scenes_with_two_places and {clips[i].scene for i in select_idx} == scenes_with_two_places


def test_validation_protocol_selects_on_held_out_and_reports_evaluate_for_that_epoch(small_store, tmp_path):
    config = _config(small_store, epochs=3, protocol="validation", checkpoint_dir=str(tmp_path),
                     enhancement=Enhancement("gmsvn"))
    result = train(config)
    train_idx, select_idx, test_idx = split_indices(FeatureStore(small_store).clips, config)
    view = FeatureView(small_store, config.enhancement, train_idx)
    # normalisation statistics of the clips it trains on, not of the whole training split
    mean, std = FeatureStore(small_store).band_statistics(train_idx)
    np.testing.assert_array_equal(view.mean, mean)
    assert not np.allclose(view.mean, FeatureStore(small_store).train_mean)
    model = build_model(ModelConfig(name="cnn", n_classes=len(view.classes)))
    model.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=False)["model"])
    selected, _ = evaluate(model, view, select_idx, torch.device("cpu"), config)
    tested, _ = evaluate(model, view, test_idx, torch.device("cpu"), config)
    assert selected["metric_a"] == pytest.approx(result["best"]["metric_a"])
    assert tested["metric_a"] == pytest.approx(result["test"]["metric_a"])
    # without a checkpoint folder, the best epoch is kept in memory: the same result
    no_ckpt = train(dataclasses.replace(config, checkpoint_dir=None))
    assert no_ckpt["test"] == result["test"] and no_ckpt["best_epoch"] == result["best_epoch"]


def test_band_statistics_over_the_training_split_are_the_manifests(small_store):
    store = FeatureStore(small_store)
    mean, std = store.band_statistics(store.select("train"))
    np.testing.assert_allclose(mean, store.train_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, store.train_std, rtol=1e-4, atol=1e-5)


def test_a_run_resumes_with_more_epochs(small_store, tmp_path):
    short = train(_config(small_store, epochs=2, mixup_alpha=0.3, checkpoint_dir=str(tmp_path / "r")))
    longer = train(_config(small_store, epochs=3, mixup_alpha=0.3, checkpoint_dir=str(tmp_path / "r")))
    assert longer["history"][:2] == short["history"] and len(longer["history"]) == 3
    whole = train(_config(small_store, epochs=3, mixup_alpha=0.3))  # epoch 3 as if never interrupted
    for key in ("train_loss", "metric_a", "loss", "lr"):
        assert longer["history"][2][key] == pytest.approx(whole["history"][2][key], abs=1e-6), key
    with pytest.raises(AscError, match="already 3 epochs, more than the 2"):
        train(_config(small_store, epochs=2, mixup_alpha=0.3, checkpoint_dir=str(tmp_path / "r")))


def test_median_filter_trains_from_the_store_cache(small_store):
    enhancement = Enhancement("gms", mean_subtraction=True, median_filter=(7, 21))
    train(_config(small_store, epochs=1, enhancement=enhancement))
    assert (Path(small_store) / "_derived" / "gms-medfilt7x21" / "_manifest.json").is_file()
    from search.stores import cache_line  # what a search's last lines say about the disk it takes

    caches = sorted(p for p in (Path(small_store) / "_derived").iterdir() if not p.name.startswith("."))
    size = sum(f.stat().st_size for c in caches for f in c.rglob("*") if f.is_file())
    line = cache_line({"a": small_store, "b": small_store})  # one store read by two configurations
    assert line.startswith(f"caches: {len(caches)} median-filter cache(s), {size / 1e9:.2f} GB in ")
    assert line.count(str(Path(small_store) / "_derived")) == 1
    assert cache_line({"a": str(Path(small_store) / "_derived" / "gms-medfilt7x21")}) is None
    view, store = FeatureView(small_store, enhancement), FeatureStore(small_store)
    idx = np.array([41, 3, 17, 60])  # unsorted, as a shuffled batch is
    x, y = view.batch(idx)
    expected = enhancement(store.features(idx), store.train_mean, store.train_std)  # the paper's loader, on the fly
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    assert y.tolist() == [view.classes.index(store.clips[i].scene) for i in idx]


def test_cli_trains_a_paper_system_and_writes_json(small_store, tmp_path):
    out = tmp_path / "a6.json"
    run = subprocess.run([sys.executable, "-m", "asc", "train", "--store", str(Path(small_store).parent),
                          "--system", "A6", "--model", "cnn", "--epochs", "2", "--json-out", str(out)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "acc_bc" in run.stdout and "best epoch" in run.stdout
    result = json.loads(out.read_text())
    assert result["system"] == "A6" and result["selection"] == "metric_a"
    assert result["config"]["mixup_alpha"] == 0.3 and result["config"]["enhancement"]["mean_subtraction"]
    assert {"acc_a", "acc_b", "acc_c", "acc_bc", "metric_a", "metric_b", "device_gap"} <= set(result["best"])


def test_spectrum_correction_system_needs_its_own_store(small_store):
    """SC (A2 on spectrum-corrected features) picks the corrected store under a root; a root without
    one is a one-line error naming the prepare option that makes it."""
    from asc.systems import get_system, selection_metric

    assert get_system("sc").spectrum_correction and selection_metric("SC") == "metric_a"
    run = subprocess.run([sys.executable, "-m", "asc", "train", "--store", str(Path(small_store).parent),
                          "--system", "SC", "--model", "cnn", "--epochs", "1"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "spectrum-corrected" in run.stderr and "--spectrum-correction" in run.stderr


def test_cli_without_weights_names_the_path(small_store, tmp_path):
    run = subprocess.run([sys.executable, "-m", "asc", "train", "--store", small_store, "--system", "B2",
                          "--weights", str(tmp_path / "missing.pth"), "--epochs", "1"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "missing.pth" in run.stderr and run.stderr.count("\n") == 1


def test_a_pickled_view_reads_the_same_cache(small_store):
    """DataLoader workers that spawn get the view by pickle: same features, no second cache."""
    import pickle

    enhancement = Enhancement("gms", median_filter=(3, 5))
    train_idx, _, _ = split_indices(FeatureStore(small_store).clips, _config(small_store, protocol="validation"))
    idx = np.array([5, 1, 9])
    for view in (FeatureView(small_store, enhancement), FeatureView(small_store, enhancement, train_idx)):
        copy = pickle.loads(pickle.dumps(view))
        np.testing.assert_array_equal(copy.mean, view.mean)
        np.testing.assert_array_equal(copy.batch(idx)[0].numpy(), view.batch(idx)[0].numpy())
    caches = sorted(p.name for p in (Path(small_store) / "_derived").iterdir() if p.name.startswith("gms-medfilt3x5"))
    assert len(caches) == 2 and caches[0] == "gms-medfilt3x5"  # the store's statistics, the subset's


def test_bad_run_settings_are_one_line_errors(small_store, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(AscError, match="no CUDA device"):
            train(_config(small_store, device="cuda"))
    with pytest.raises(AscError, match="fewer than one batch"):
        train(_config(small_store, batch_size=1000))
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AscError, match="last.pt: not a readable checkpoint"):
        train(_config(small_store, checkpoint_dir=str(tmp_path)))
    torch.save({"model": {}}, tmp_path / "last.pt")  # e.g. a best.pt copied over it
    with pytest.raises(AscError, match="last.pt: not a training checkpoint"):
        train(_config(small_store, checkpoint_dir=str(tmp_path)))


def test_a_checkpoint_that_cannot_resume_the_run_names_what_differs(small_store, tmp_path):
    """Another configuration, another seed count, another version or code, a model that does not fit, a
    file truncated mid-write: one line each, naming the checkpoint and what differs (a search's trial restarts on it instead)."""
    from asc.train import CheckpointMismatch, train_seeds

    one, two = tmp_path / "one", tmp_path / "two"
    train(_config(small_store, epochs=1, checkpoint_dir=str(one)))
    with pytest.raises(CheckpointMismatch, match=r"one/last.pt: a checkpoint of another configuration \(lr 0.001 "
                                                 r"there, 0.002 here\)"):
        train(_config(small_store, epochs=2, lr=0.002, checkpoint_dir=str(one)))
    with pytest.raises(CheckpointMismatch, match=r"one/last.pt: a one-seed run's checkpoint; this run trains seeds \[0, 1\]"):
        train_seeds(_config(small_store, epochs=2, checkpoint_dir=str(one)), [0, 1])
    train_seeds(_config(small_store, epochs=1, checkpoint_dir=str(two)), [0, 1])
    with pytest.raises(CheckpointMismatch, match=r"two: holds the checkpoints of seeds \[0, 1\], trained together; this run trains one"):
        train(_config(small_store, epochs=2, checkpoint_dir=str(two)))
    with pytest.raises(CheckpointMismatch, match=r"two: holds the checkpoints of seeds \[0, 1\]; this run trains seeds \[0, 2\]"):
        train_seeds(_config(small_store, epochs=2, checkpoint_dir=str(two)), [0, 2])
    state = torch.load(one / "last.pt", weights_only=False)
    torch.save({**state, "format": 1}, one / "last.pt")
    with pytest.raises(CheckpointMismatch, match=r"last.pt: written by another version \(checkpoint format 1; "):
        train(_config(small_store, epochs=2, checkpoint_dir=str(one)))
    torch.save({**state, "code": "0123456789ab"}, one / "last.pt")
    with pytest.raises(CheckpointMismatch, match=r"last.pt: written by other code \(asc source 0123456789ab; this is "):
        train(_config(small_store, epochs=2, checkpoint_dir=str(one)))
    torch.save({**state, "torch": "1.0.0"}, one / "last.pt")
    with pytest.raises(CheckpointMismatch, match=r"last.pt: written with torch 1.0.0; this is torch "):
        train(_config(small_store, epochs=2, checkpoint_dir=str(one)))
    model = dict(state["model"])
    model[next(iter(model))] = torch.zeros(3, 3)
    torch.save({**state, "model": model}, one / "last.pt")
    with pytest.raises(CheckpointMismatch, match=r"last.pt: its model or optimiser does not fit this run's"):
        train(_config(small_store, epochs=2, checkpoint_dir=str(one)))
    torch.save(state, one / "last.pt")
    whole = (one / "best.pt").read_bytes()
    (one / "best.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointMismatch, match=r"best.pt: not a readable checkpoint \(truncated"):
        train(_config(small_store, epochs=2, checkpoint_dir=str(one)))
    (one / "best.pt").write_bytes(whole)
    assert train(_config(small_store, epochs=2, checkpoint_dir=str(one)))["history"][-1]["epoch"] == 2


def test_result_json_has_class_accuracy_and_no_nan_tokens(small_store, tmp_path):
    from asc.train import write_json

    result = train(_config(small_store, epochs=1))
    assert set(result["best"]["class_acc"]) == set(FeatureStore(small_store).manifest["dataset"]["scenes"])
    write_json({**result, "missing": float("nan")}, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text)["missing"] is None


# --------------------------------------------------------------------------------------------------
# Hardening: paths before work, a non-finite loss, the logged lr, Metric B's definition, the split.


def test_checkpoint_paths_are_checked_before_training(small_store, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AscError, match=f"checkpoint_dir {tmp_path / 'file'}: is a file, not a folder"):
        train(_config(small_store, checkpoint_dir=str(tmp_path / "file")))
    with pytest.raises(AscError, match="cannot be made"):
        train(_config(small_store, checkpoint_dir=str(tmp_path / "file" / "below")))


def test_a_non_finite_loss_stops_the_run_naming_the_epoch(small_store, tmp_path):
    """A store whose features hold NaN (as stores made before the check could): one line, and the
    last checkpoint stays the last good epoch's."""
    from asc.store import read_table_file, write_table_file

    broken = tmp_path / "store"
    shutil.copytree(small_store, broken)
    for shard in sorted(broken.glob("part-*.arrow")):
        clips, features = read_table_file(shard)
        features = np.array(features)
        features[:, 3, 5] = np.nan
        write_table_file(shard, clips, features)  # same shape: the same size, so not "damaged"
    with pytest.raises(AscError, match=r"epoch 1, step 1: the training loss is nan .*stopped, nothing was saved"):
        train(_config(str(broken), checkpoint_dir=str(tmp_path / "ckpt")))
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_the_logged_lr_is_the_one_the_epoch_trained_with(small_store):
    result = train(_config(small_store, epochs=5, lr_patience=0))
    history, best = result["history"], -np.inf
    assert history[0]["lr"] == 1e-3
    for before, after in zip(history, history[1:]):
        improved = before["metric_a"] > best
        best = max(best, before["metric_a"])
        assert after["lr"] == before["lr"] * (1 if improved else 0.5), history


def _clips(rows):
    from asc.dataset import Clip

    return [Clip(filename=f"audio/{scene}-city-{loc}-{seg}-{dev}.wav", split=split, scene=scene, city="city",
                 location=str(loc), segment=str(seg), device=dev) for scene, loc, seg, dev, split in rows]


def test_selection_by_metric_b_needs_both_halves(tmp_path):
    rows = [(s, loc, seg, "a", "train") for s in ("bus", "park") for loc in (0, 1) for seg in range(20)]
    only_a = _clips(rows + [(s, 5, 0, "a", "evaluate") for s in ("bus", "park")])
    with pytest.raises(AscError, match=r"selection by metric_b needs evaluate clips of the reference device 'a' and of another"):
        split_indices(only_a, TrainConfig(store="S", selection="metric_b"))
    assert len(split_indices(only_a, TrainConfig(store="S", selection="metric_a"))[1]) == 2
    with pytest.raises(AscError, match="validation clips"):
        split_indices(only_a, TrainConfig(store="S", selection="metric_b", protocol="validation"))
    # trained on A, B and C, chosen on A and B: Metric B's B&C would be B's alone
    no_c = _clips(rows + [(s, 0, 30, d, "train") for s in ("bus", "park") for d in "bc"]
                  + [(s, 5, 0, d, "evaluate") for s in ("bus", "park") for d in "ab"])
    with pytest.raises(AscError, match=r"^S: selection by metric_b pools devices B, C \(seen in training\), but the "
                                       r"evaluate clips hold none of device C: its B&C would be the others' alone "
                                       r"\(an evaluation split with clips of each, or select by metric_a\)$"):
        split_indices(no_c, TrainConfig(store="S", selection="metric_b"))
    assert len(split_indices(no_c, TrainConfig(store="S", selection="metric_a"))[1]) == 4


def test_validation_holds_out_scene_location_pairs_and_never_a_scenes_last():
    """Location identifiers that recur under several scenes are separate places: holding one out
    for one scene must not take another scene's last training location."""
    rows = [(scene, loc, seg, "a", "train") for scene in ("bus", "park", "tram") for loc in (0, 1) for seg in range(20)]
    clips = _clips(rows + [(s, 9, 0, d, "evaluate") for s in ("bus", "park", "tram") for d in "abc"])
    for seed in range(50):
        train_idx, select_idx, _ = split_indices(clips, TrainConfig(store="S", protocol="validation",
                                                                    validation_seed=seed, batch_size=8))
        trained = {(clips[i].scene, clips[i].identifier) for i in train_idx}
        held = {(clips[i].scene, clips[i].identifier) for i in select_idx}
        assert not trained & held
        assert {s for s, _ in trained} == {s for s, _ in held} == {"bus", "park", "tram"}, (seed, trained, held)
