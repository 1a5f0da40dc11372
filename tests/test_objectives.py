"""Objectives: values worked out by hand from a metrics dict like the one ``asc.train`` reports."""

from __future__ import annotations

import math

import pytest

from asc.errors import AscError
from asc.metrics import device_metrics
from search.objectives import OBJECTIVES, Objective, summary

NAN = math.nan
# Per-device accuracies: A 0.8, B 0.5, C 0.6, S1 without clips; B&C pooled 0.55 (as many B as C clips).
METRICS = {"acc_a": 0.8, "acc_b": 0.5, "acc_c": 0.6, "acc_s1": NAN, "acc_bc": 0.55, "metric_a": 0.62,
           "metric_b": (0.8 + 0.55) / 2, "device_gap": 0.8 - 0.55, "loss": 1.3, "class_acc": [0.1, 0.9],
           "confusion": {"a": [[1]]}}


def value(name: str, metrics: dict, gap_lambda: float | None = None) -> float:
    return Objective(name, gap_lambda).values(metrics)["objective"]


def test_the_objectives():
    assert OBJECTIVES == ("metric_a", "metric_b", "acc_bc", "acc_unseen", "worst_device", "gap_penalized", "pareto")


def test_plain_metrics():
    assert value("metric_a", METRICS) == 0.62
    assert value("metric_b", METRICS) == pytest.approx(0.675)
    assert value("acc_bc", METRICS) == 0.55


def test_worst_device_is_the_lowest_device_accuracy():
    # B (0.5), not acc_bc, metric_a or the loss; S1 (no clips, NaN) is left out
    assert value("worst_device", METRICS) == 0.5
    assert value("worst_device", {**METRICS, "acc_bc": 0.1, "metric_b": 0.05}) == 0.5  # pooled, not a device
    assert value("worst_device", {**METRICS, "acc_s1": 0.3}) == 0.3
    assert math.isnan(value("worst_device", {"acc_a": NAN, "acc_bc": 0.4, "metric_a": 0.4}))  # no device


def test_gap_penalized():
    # metric_b - lambda * |gap| = 0.675 - 0.5 * 0.25
    assert value("gap_penalized", METRICS, 0.5) == pytest.approx(0.55)
    # the gap's sign does not matter: B&C better than A is penalised as much
    assert value("gap_penalized", {**METRICS, "device_gap": -0.25}, 0.5) == pytest.approx(0.55)
    assert value("gap_penalized", METRICS, 0.0) == pytest.approx(0.675)  # lambda 0: Metric B
    assert value("gap_penalized", METRICS, 2.0) == pytest.approx(0.675 - 0.5)


def test_pareto_pair():
    objective = Objective("pareto")
    assert objective.multi and objective.metrics == ["objective_acc_bc", "objective_abs_gap"]
    assert objective.modes == ["max", "min"]
    assert objective.values(METRICS) == pytest.approx({"objective_acc_bc": 0.55, "objective_abs_gap": 0.25})
    assert objective.values({**METRICS, "device_gap": -0.1}) == pytest.approx(
        {"objective_acc_bc": 0.55, "objective_abs_gap": 0.1})


def test_single_objectives_report_one_number():
    for name in ("metric_a", "metric_b", "acc_bc", "worst_device"):
        objective = Objective(name)
        assert not objective.multi and objective.metrics == ["objective"] and objective.modes == ["max"]
        assert set(objective.values(METRICS)) == {"objective"}
    assert Objective("gap_penalized", 0.5).metrics == ["objective"]


def test_nan_and_missing_metrics():
    assert math.isnan(value("metric_b", {}))
    assert math.isnan(value("acc_bc", {"acc_bc": None}))
    assert math.isnan(value("acc_bc", {"acc_bc": NAN}))
    # no reference clips: no gap, so no penalised value (a NaN, never a silently unpenalised Metric B)
    assert math.isnan(value("gap_penalized", {**METRICS, "device_gap": NAN}, 0.5))
    assert math.isnan(value("gap_penalized", {"device_gap": 0.1}, 0.5))
    pair = Objective("pareto").values({"acc_bc": 0.4})
    assert pair["objective_acc_bc"] == 0.4 and math.isnan(pair["objective_abs_gap"])


def test_from_device_metrics():
    """The same numbers from asc.metrics' hand-made confusion (tests/test_metrics.py): A 3/4, B 1/2, C 2/4."""
    devices = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "c"]
    y_true = [0, 1, 2, 0, 1, 2, 0, 1, 2, 2]
    y_pred = [0, 1, 2, 1, 1, 0, 0, 2, 2, 0]
    m = device_metrics(y_true, y_pred, devices, n_classes=3)
    assert value("worst_device", m) == 0.5
    assert value("gap_penalized", m, 1.0) == pytest.approx((0.75 + 0.5) / 2 - 0.25)
    assert Objective("pareto").values(m) == pytest.approx({"objective_acc_bc": 0.5, "objective_abs_gap": 0.25})


def test_labels():
    assert Objective("metric_b").label() == "metric_b"
    assert Objective("gap_penalized", 0.5).label() == "metric_b - 0.5 * |gap|"
    assert Objective("pareto").label() == "(acc_bc max, |gap| min)"


def test_bad_objectives():
    with pytest.raises(AscError, match="objective 'accuracy'"):
        Objective("accuracy")
    with pytest.raises(AscError, match="needs lambda"):
        Objective("gap_penalized")
    with pytest.raises(AscError, match="needs lambda"):
        Objective("gap_penalized", -1.0)
    with pytest.raises(AscError, match="needs lambda"):
        Objective("gap_penalized", NAN)


def test_summary_columns():
    row = summary(METRICS, ["a", "b", "c", "s2"])
    assert list(row) == ["acc_a", "acc_b", "acc_c", "acc_s2", "acc_bc", "metric_a", "metric_b", "device_gap"]
    assert row["acc_b"] == 0.5 and math.isnan(row["acc_s2"]) and row["device_gap"] == pytest.approx(0.25)


def test_an_objective_pooling_b_and_c_refuses_a_selection_without_one_of_them():
    from search.objectives import check_pooled_devices

    check_pooled_devices("metric_b", ["a", "b", "c"], ["a", "b", "c"], "s.yaml: objective")
    check_pooled_devices("metric_a", ["a", "b"], ["a", "b", "c"], "s.yaml: objective")  # per device: no pool
    with pytest.raises(AscError, match=r"^s.yaml: objective: metric_b pools devices B, C \(seen in training\), but the "
                                       r"selection clips hold none of device C: its figure would be B's alone; "):
        check_pooled_devices("metric_b", ["a", "b", "s1"], ["a", "b", "c"], "s.yaml: objective")
    with pytest.raises(AscError, match="acc_bc pools devices B, C"):
        check_pooled_devices("acc_bc", ["c"], ["a", "b", "c"], "fusion of 'x' by")
    with pytest.raises(AscError, match=r"^s.yaml: params.selection: metric_b pools .* or select by metric_a$"):
        check_pooled_devices("metric_b", ["a", "c"], ["a", "b", "c"], "s.yaml: params.selection", "select by metric_a")
    check_pooled_devices("metric_b", ["a"], ["a", "b", "c"], "s.yaml: objective")  # none at all: worded elsewhere


def test_the_selections_a_space_can_choose_by(tmp_path):
    from search.space import load_space
    from search.stores import _selections

    path = tmp_path / "s.yaml"
    for params, want in (("{}", {"metric_a"}), ("{selection: metric_b}", {"metric_b"}),
                         ("{selection: {choice: [metric_a, metric_b]}}", {"metric_a", "metric_b"})):
        path.write_text(f"objective: metric_a\nparams: {params}\n")
        assert _selections(load_space(path)) == want, params
    path.write_text("sampler: points\nobjective: metric_a\npoints: [A2, B2]\n")
    assert _selections(load_space(path)) == {"metric_a", "metric_b"}
