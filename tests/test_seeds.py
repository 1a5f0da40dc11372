"""Several seeds per configuration: trained in lockstep, each seed computes what a separate
`train` with that seed computes; means and standard errors by hand; a resumed several-seed run ends
where an uninterrupted one does; a search with --seeds reports and records them."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from asc.train import mean_and_sem, train, train_seeds
from search.objectives import Objective
from search.trainable import flatten_report
from tests.conftest import predictions_artifact
from tests.helpers import lockstep_config, mlflow_runs, run, search_cmd

KEYS = ("train_loss", "loss", "acc_a", "acc_bc", "metric_a", "metric_b", "device_gap", "lr")


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_lockstep_seeds_equal_separate_runs_epoch_by_epoch(small_store):
    separate = {}
    for seed in (3, 4, 5):
        rows = []
        train(lockstep_config(small_store, seed=seed), report=lambda e, m, c: rows.append(m))
        separate[seed] = rows
    reports = []
    result = train_seeds(lockstep_config(small_store), [3, 4, 5], report=lambda e, m, c: reports.append((e, m)))
    assert [e for e, _ in reports] == [1, 2, 3]
    for (epoch, combined), k in zip(reports, range(3)):
        for seed in (3, 4, 5):
            mine, alone = combined["per_seed"][seed], separate[seed][k]
            assert all(same(mine[key], alone[key]) for key in KEYS), (epoch, seed)
        values = [separate[s][k]["metric_b"] for s in (3, 4, 5)]
        assert combined["metric_b"] == pytest.approx(np.mean(values))
        assert combined["metric_b_sem"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(3))
    assert [r["config"]["seed"] for r in result["results"]] == [3, 4, 5]


def test_the_seeds_mean_carries_the_clip_error_of_the_mean_not_the_mean_of_the_seeds_errors(small_store, tmp_path):
    """The seeds are scored on the same clips: the clip error of their mean figure is that of each
    clip's correctness averaged over the seeds (each seed's selected epoch, as its best_probs.npz
    holds it), on the selection clips and on the evaluation split, in every report and the result;
    never more than the mean of the seeds' own clip errors."""
    from asc.metrics import clip_errors

    reports = []
    config = lockstep_config(small_store, epochs=2, checkpoint_dir=str(tmp_path), protocol="validation",
                             validation_share=0.3)
    result = train_seeds(config, [0, 1, 2], report=lambda e, m, c: reports.append(m), evaluate_best=True)
    saved = [dict(np.load(tmp_path / f"seed{s}" / "best_probs.npz")) for s in (0, 1, 2)]
    last = reports[-1]
    for prefix, figures, per_seed in (("", last["best_metrics"], "best_metrics"),
                                      ("test_", last["best_test"], "best_test"),
                                      ("", result["best"], None), ("test_", result["test"], None)):
        correct = np.mean([z[prefix + "probs"].argmax(1) == z[prefix + "labels"] for z in saved], axis=0)
        want = clip_errors(correct, saved[0][prefix + "devices"])
        assert set(want) >= {"acc_a_cse", "acc_bc_cse", "metric_b_cse", "device_gap_cse"}
        for key, value in want.items():
            assert figures[key] == pytest.approx(value), (prefix, key)
            assert key + "_sem" not in figures  # no standard error of an error
            if per_seed:
                assert value <= np.mean([last["per_seed"][s][per_seed][key] for s in (0, 1, 2)]) + 1e-12, key


def test_mean_and_standard_error_against_a_hand_computation():
    reports = [{"metric_b": 0.5, "epoch": 2, "best_metrics": {"acc_a": 0.6}},
               {"metric_b": 0.7, "epoch": 2, "best_metrics": {"acc_a": 0.8}},
               {"metric_b": 0.6, "epoch": 2, "best_metrics": {"acc_a": 1.0}}]
    out = mean_and_sem(reports)
    # mean 0.6; sample sd sqrt(((-0.1)^2 + 0.1^2 + 0) / 2) = 0.1; standard error 0.1 / sqrt(3)
    assert out["metric_b"] == pytest.approx(0.6) and out["metric_b_sem"] == pytest.approx(0.1 / math.sqrt(3))
    assert out["best_metrics"]["acc_a"] == pytest.approx(0.8)
    assert out["best_metrics"]["acc_a_sem"] == pytest.approx(0.2 / math.sqrt(3))
    one = mean_and_sem(reports[:1])
    assert one["metric_b"] == 0.5 and math.isnan(one["metric_b_sem"])  # one seed: no spread to speak of

    # What a trial reports: the objective is the mean of the seeds' objectives, with its standard error.
    def seed_report(mb, gap):
        m = {"metric_b": mb, "acc_bc": mb, "device_gap": gap}
        return {**m, "epoch": 1, "best_epoch": 1, "train_loss": 1.0, "lr": 1e-3, "seconds": 1.0,
                "best_metrics": m, "best_test": m}
    per_seed = {0: seed_report(0.5, 0.2), 1: seed_report(0.7, -0.2)}
    combined = {**mean_and_sem(list(per_seed.values())), "epoch": 1, "best_epoch": 1, "per_seed": per_seed}
    flat = flatten_report(combined, 3, Objective("gap_penalized", 0.5))
    objectives = [0.5 - 0.5 * 0.2, 0.7 - 0.5 * 0.2]  # metric_b - 0.5 |gap| per seed
    assert flat["objective"] == pytest.approx(np.mean(objectives))
    assert flat["objective_sem"] == pytest.approx(np.std(objectives, ddof=1) / math.sqrt(2))
    assert flat["seed1/metric_b"] == 0.7 and flat["sel_metric_b_sem"] == pytest.approx(0.1)


def test_a_resumed_several_seed_run_equals_the_uninterrupted_one(small_store, tmp_path):
    whole = train_seeds(lockstep_config(small_store, checkpoint_dir=str(tmp_path / "whole")), [0, 1])

    class Crash(Exception):
        pass

    def crash_after(n):
        def report(epoch, metrics, checkpoint_dir):
            if epoch == n:
                raise Crash
        return report

    config = lockstep_config(small_store, checkpoint_dir=str(tmp_path / "resumed"))
    with pytest.raises(Crash):
        train_seeds(config, [0, 1], report=crash_after(2))
    # A kill between the two seeds' checkpoints of epoch 2: seed 1 is an epoch behind and catches up.
    early = lockstep_config(small_store, checkpoint_dir=str(tmp_path / "early"))
    with pytest.raises(Crash):
        train_seeds(early, [0, 1], report=crash_after(1))
    shutil.copy(tmp_path / "early" / "seed1" / "last.pt", tmp_path / "resumed" / "seed1" / "last.pt")
    epochs = []
    resumed = train_seeds(config, [0, 1], report=lambda e, m, c: epochs.append(e))
    assert epochs == [3]
    for a, b in zip(whole["results"], resumed["results"]):
        for x, y in zip(a["history"], b["history"]):
            assert all(x[k] == pytest.approx(y[k], abs=1e-6) for k in KEYS)
    assert whole["test"]["metric_b"] == pytest.approx(resumed["test"]["metric_b"])


def test_search_with_seeds_reports_means_and_records_each_seed(store, tmp_path):  # noqa: F811

    storage = tmp_path / "runs"
    done = run(search_cmd(store, storage, "seeded", "--seeds", "2", "--num-samples", "2",
                          sets=["epochs=2", "scheduler.grace_period=1"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the mean over 2 seeds" in done.stdout and "+-" in done.stdout
    client, experiment, parent, trials = mlflow_runs(f"sqlite:///{storage / 'mlflow.db'}", "seeded")
    assert len(trials) == 2
    for r in trials:
        m = r.data.metrics
        for key in ("metric_b", "metric_b_sem", "acc_bc_sem", "device_gap_sem", "objective_sem",
                    "seed0/metric_b", "seed1/metric_b", "seed1/eval_acc_bc"):
            assert key in m, key
        assert m["metric_b"] == pytest.approx((m["seed0/metric_b"] + m["seed1/metric_b"]) / 2)
        table = predictions_artifact(client, r.info.run_id)
        mean = table.column("p_tram").to_numpy()
        each = [table.column(f"seed{s}/p_tram").to_numpy() for s in (0, 1)]
        np.testing.assert_allclose(mean, (each[0] + each[1]) / 2, atol=1e-6)
        models = client.search_logged_models([experiment.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
        assert len(models) == 1 and models[0].name == "model"

    # Fusion over every seed's model: the fused audio model predicts the chosen seeds' average.
    import sys

    import mlflow

    uri = f"sqlite:///{storage / 'mlflow.db'}"
    # Fusion of the trials' seed averages: the seeds' standard errors beside the clips', and which is larger.
    done = run([sys.executable, "-m", "search", "fuse", "--experiment", "seeded", "--mlflow-uri", uri,
                "--method", "top", "--size", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    seeds_row = next(k for k, line in enumerate(lines) if line.startswith("  +- (seeds)"))
    assert lines[seeds_row - 1].startswith("  +- (clips)") and lines[seeds_row - 2].startswith("t00")
    assert "+-" in lines[seeds_row].split("|")[1]  # the first member's selection figures have them
    assert "+- (seeds): the standard error of the mean of the 2 seeds' own figures" in done.stdout
    assert "standard error is the larger (clips +-" in done.stdout and "seeds +-" in done.stdout

    done = run([sys.executable, "-m", "search", "fuse", "--experiment", "seeded", "--mlflow-uri", uri,
                "--seed-members", "--method", "top", "--size", "3", "--register", "seeded-fusion"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "/seed0 " in done.stdout or "/seed1 " in done.stdout
    fusion = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'fusion'")[0]
    members = fusion.data.params["members"].split(",")
    assert len(members) == 3 and all("/seed" in m for m in members)
    by_label = {r.info.run_name.split(" ")[0]: r for r in trials}
    files, expected = None, []
    for member in members:
        label, seed = member.split("/")
        table = predictions_artifact(client, by_label[label].info.run_id).to_pandas()
        table = table[table["split"] == "evaluation"].sort_values("filename")
        files = table["filename"].tolist()
        expected.append(table[[c for c in table.columns if c.startswith(f"{seed}/p_")]].to_numpy())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/seeded-fusion/1")
    import pandas as pd

    got = model.predict(pd.DataFrame({"path": [str(store.parent / "data" / f) for f in files]}))
    np.testing.assert_allclose(got.drop(columns="label").to_numpy(), np.mean(expected, axis=0), atol=1e-5)
