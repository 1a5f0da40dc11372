"""Device-wise metrics from a confusion worked out by hand."""

import math

import numpy as np
import pytest

from asc.metrics import confusion, device_metrics


def test_metrics_from_a_hand_made_confusion():
    # 4 clips on A (3 right), 2 on B (1 right), 4 on C (2 right); classes 0..2.
    devices = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "c"]
    y_true = [0, 1, 2, 0, 1, 2, 0, 1, 2, 2]
    y_pred = [0, 1, 2, 1, 1, 0, 0, 2, 2, 0]
    m = device_metrics(y_true, y_pred, devices, n_classes=3)
    assert m["acc_a"] == 0.75 and m["acc_b"] == 0.5 and m["acc_c"] == 0.5
    assert m["acc_bc"] == 0.5  # 3 of the 6 non-reference clips
    assert m["metric_a"] == 0.6  # 6 of 10
    assert m["metric_b"] == pytest.approx((0.75 + 0.5) / 2)
    assert m["device_gap"] == pytest.approx(0.25)
    assert m["class_acc"] == [pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 4)]
    assert m["confusion"]["a"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert m["confusion"]["c"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]
    # what fusion scores its ensembles with: the same accuracies and what is made of them, nothing else
    light = device_metrics(y_true, y_pred, devices, n_classes=3, seen=["a", "b"], detail=False)
    full = device_metrics(y_true, y_pred, devices, n_classes=3, seen=["a", "b"])
    assert set(light) == {"metric_a", "acc_a", "acc_b", "acc_c", "acc_bc", "acc_unseen", "unseen_gap", "metric_b",
                          "device_gap"}
    assert light == {k: full[k] for k in light}


def test_confusion_counts():
    np.testing.assert_array_equal(confusion([0, 0, 1, 1], [0, 1, 1, 1], 2), [[1, 1], [0, 2]])


def test_metric_b_is_undefined_without_both_halves():
    """Metric B of the reference device's clips alone would be acc_a under another name."""
    m = device_metrics([0, 1], [0, 0], ["a", "a"], n_classes=2)
    assert m["acc_a"] == 0.5 and math.isnan(m["acc_bc"]) and math.isnan(m["metric_b"]) and math.isnan(m["device_gap"])
    m = device_metrics([0, 1], [0, 0], ["b", "c"], n_classes=2)
    assert m["acc_bc"] == 0.5 and math.isnan(m["metric_b"]) and m["metric_a"] == 0.5


def _clips(right: dict[str, tuple[int, int]]):
    """Labels, predictions and devices of clips of which ``right[device] = (right, n)`` are right."""
    devices = np.concatenate([[d] * n for d, (_, n) in right.items()])
    wrong = np.concatenate([np.arange(n) >= r for r, n in right.values()]).astype(int)
    return np.zeros(len(devices), int), wrong, devices


def test_clip_errors_are_a_stratified_bootstrap_over_the_clips_in_closed_form():
    """Devices of unequal accuracy (B 90%, C 40%), enough clips for the Agresti-Coull adjustment to
    be small: every figure's clip error, the gap-penalised objective's (a covariance) included, is
    the spread of that figure over 4000 resamples that keep each device's count."""
    from search.objectives import Objective

    labels, pred, devices = _clips({"a": (150, 200), "b": (90, 100), "c": (40, 100)})
    m = device_metrics(labels, pred, devices, 2)
    rng = np.random.default_rng(1)
    groups = [np.flatnonzero(devices == d) for d in "abc"]
    keys = ("acc_a", "acc_b", "acc_bc", "metric_a", "metric_b", "device_gap")
    objective = Objective("gap_penalized", gap_lambda=2.0)
    boot = []
    for _ in range(4000):
        ix = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        r = device_metrics(labels[ix], pred[ix], devices[ix], 2, detail=False)
        boot.append([r[k] for k in keys] + [objective.values(r)["objective"]])
    spread = np.std(boot, axis=0)
    for key, s in zip(keys, spread):
        assert m[key + "_cse"] == pytest.approx(s, rel=0.08), key
    assert objective.clip_se(m) == pytest.approx(spread[-1], rel=0.08)
    # stratified: below one binomial over the 200 pooled B&C clips, which the devices' difference inflates
    assert m["acc_bc_cse"] < 0.95 * math.sqrt(0.65 * 0.35 / 200)


def test_a_device_all_right_or_all_wrong_still_has_a_clip_error():
    """4 of 4 B clips right is not a certainty: Agresti and Coull's p~ = (4 + 2) / (4 + 4), not +-0."""
    labels, pred, devices = _clips({"a": (20, 20), "b": (4, 4), "c": (0, 4)})
    m = device_metrics(labels, pred, devices, 2)
    assert m["acc_b_cse"] == pytest.approx(math.sqrt(0.75 * 0.25 / 8))
    assert m["acc_c_cse"] == pytest.approx(math.sqrt(0.25 * 0.75 / 8))
    assert m["acc_a_cse"] == pytest.approx(math.sqrt((22 / 24) * (2 / 24) / 24))
    assert m["acc_bc_cse"] == pytest.approx(math.sqrt(0.25 * m["acc_b_cse"] ** 2 + 0.25 * m["acc_c_cse"] ** 2))
    assert m["metric_b_cse"] ** 2 == pytest.approx((m["acc_a_cse"] ** 2 + m["acc_bc_cse"] ** 2) / 4)
