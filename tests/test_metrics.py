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
