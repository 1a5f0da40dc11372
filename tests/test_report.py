"""The search's best-trials table and fuse's device table say how well their clips know each figure:
the clip counts, a standard error under the best trial's and the fusion's figures, the objective's
+- c (and +- s over seeds), and the one-line warning when the clips cannot rank the trials."""

from __future__ import annotations

import numpy as np
import pytest

from asc.metrics import device_metrics
from asc.device_table import device_table
from search.objectives import Objective
from search.report import clip_warning, format_trials, markdown_trials
from search.space import parse_space


def metrics(correct_a: int, correct_b: int, correct_c: int, n_a: int = 60, n_bc: int = 4) -> dict:
    """Device metrics of n_a A clips and n_bc B and C clips each, the first ``correct_*`` right."""
    devices = ["a"] * n_a + ["b"] * n_bc + ["c"] * n_bc
    truth = np.zeros(len(devices), int)
    right = [k < correct_a for k in range(n_a)] + [k < correct_b for k in range(n_bc)] + [k < correct_c for k in range(n_bc)]
    return device_metrics(truth, np.where(right, 0, 1), devices, 2)


def row(label: str, m: dict, objective: Objective, sem: float | None = None) -> dict:
    out = {"label": label, "state": "finished", "epoch": 3, "epochs": 3, "best_epoch": 3, "params": {"lr": 0.001}}
    out.update({f"sel_{k}": v for k, v in m.items() if isinstance(v, float)})
    out.update({f"eval_{k}": v for k, v in m.items() if isinstance(v, float)})
    out["objective"], out["objective_cse"] = objective.values(m)["objective"], objective.clip_se(m)
    if sem is not None:
        out["objective_sem"] = sem
    return out


def test_the_best_trials_table_shows_the_clip_counts_and_standard_errors_and_warns_when_they_cannot_rank():
    space = parse_space({"sampler": "tpe", "objective": "metric_b", "scheduler": "none",
                         "params": {"model": "cnn", "epochs": 3, "lr": {"float": [0.0005, 0.003], "log": True}}}, "s.yaml")
    objective = space.objective
    best, second = metrics(45, 3, 2), metrics(44, 2, 2)  # one B clip apart: 6.25 points of Metric B
    rows = [row("t000", best, objective, sem=0.01), row("t001", second, objective, sem=0.01)]
    table = format_trials(rows, space, ["a", "b", "c"], 2)
    assert "selection clips: A 60, B 4, C 4 (B&C 8); +- (clips) and objective +- c: standard errors" in table
    assert "; +- s: from the seeds" in table
    from search.report import _num  # an objective with both errors, as a search with seeds shows it

    assert _num(0.55, sem=0.01, cse=0.04) == "0.5500 +-0.010s +-0.040c" and _num(0.55, sem=0.01) == "0.5500 +-0.0100"
    se_line = next(line for line in table.splitlines() if "+- (clips)" in line and "|" in line)
    # under the best trial: A's binomial standard error (45 of 60 right, Agresti-Coull) and Metric B's
    assert f"+-{100 * ((47 / 64) * (17 / 64) / 64) ** 0.5:.1f}" in se_line
    assert f"+-{100 * best['metric_b_cse']:.1f}" in se_line
    assert best["metric_b_cse"] ** 2 == pytest.approx(
        (best["acc_a_cse"] ** 2 + best["acc_bc_cse"] ** 2) / 4)
    warning = clip_warning(rows, objective)
    # B 3 of 4 and C 2 of 4 right, stratified: each device's Agresti-Coull variance, weighed by (4 / 8)^2
    assert best["acc_bc_cse"] ** 2 == pytest.approx((((5 / 8) * (3 / 8) + 0.25) / 8) / 4)
    assert warning.startswith("warning: the selection clips (A 60, B 4, C 4) know metric_b only within "
                              f"+-{200 * best['metric_b_cse']:.1f} points (2 standard errors)")
    assert 13 < 200 * best["metric_b_cse"] < 14
    assert "for t000, the clips' standard error is the larger" in warning
    assert "by which t000 leads the median of the 1 other trial(s) ranked here" in warning
    assert "validation_share in the space, or a larger set), choose by metric_a (all clips), or add seeds; " in warning
    by_a = Objective("metric_a")  # already choosing on all clips: not advised again
    a_rows = [row("t000", metrics(45, 3, 2), by_a), row("t001", metrics(44, 2, 2), by_a)]
    assert clip_warning(a_rows, by_a).endswith("a larger set), or add seeds")
    # a trial far behind the rest (stopped early, diverged) does not hide that the rest are within the noise
    weak = rows + [row("t002", metrics(44, 3, 1), objective), row("t003", metrics(5, 0, 0), objective)]
    assert "leads the median of the 3 other trial(s)" in clip_warning(weak, objective)
    paper = clip_warning(rows, objective, paper=True)  # protocol paper chose on the evaluation split
    assert paper.startswith("warning: the evaluation split's clips, which chose here (protocol paper), (A 60, B 4, C 4)")
    assert "a larger evaluation split" in paper and "held-out locations" not in paper
    # many clips and a clear gap: no warning, only which error dominates
    many = [row("t000", metrics(500, 450, 450, 600, 600), objective, sem=0.03),
            row("t001", metrics(300, 200, 200, 600, 600), objective, sem=0.03)]
    assert clip_warning(many, objective) == ("for t000, the seeds' standard error is the larger (clips +-"
                                             f"{100 * many[0]['objective_cse']:.1f}, seeds +-3.0 points)")


def test_the_fusion_table_puts_the_clips_standard_errors_under_the_first_member_and_the_fusion():
    m = metrics(45, 3, 2)
    table = device_table([("t000 member", "0.50", {"selection": m}), ("t001 member", "0.50", {"selection": m}),
                          ("fusion", "1.00", {"selection": m})], ["selection"], clip_se=(0, -1))
    lines = table.splitlines()
    assert [k for k, line in enumerate(lines) if line.startswith("  +- (clips)")] == [4, 7]
    assert f"+-{100 * m['acc_bc_cse']:.1f}" in lines[7] and f"+-{100 * m['device_gap_cse']:.1f}" in lines[7]


def test_asc_compare_shows_the_unseen_devices_beside_the_papers_columns_where_the_set_has_them():
    from asc.systems import SYSTEMS, format_comparison

    seen = {"acc_a": 0.7, "acc_b": 0.6, "acc_c": 0.5, "acc_bc": 0.55, "device_gap": 0.15}
    plain = format_comparison([("A2", SYSTEMS["A2"], {"test": seen})])
    assert "unseen" not in plain and "u-gap" not in plain  # a set without unseen devices: the paper's columns
    table = format_comparison([("A2", SYSTEMS["A2"], {"test": {**seen, "acc_unseen": 0.4, "unseen_gap": 0.3}})])
    head, _, row = table.splitlines()[:3]
    assert head.split("|")[0].split()[-2:] == ["unseen", "u-gap"]
    assert row.split("|")[0].split()[-2:] == ["40.0", "30.0"]


def test_a_device_table_names_its_column_groups_as_asked():
    m = metrics(45, 3, 2)
    plain = device_table([("t000", None, {"selection": m, "evaluation": m})], ["selection", "evaluation"])
    assert "selection clips (%)" in plain.splitlines()[0] and "evaluation clips (%)" in plain.splitlines()[0]
    paper = device_table([("t000", None, {"selection": m})], ["selection"],
                         titles={"selection": "chosen on: evaluation split (%)"})
    assert "chosen on: evaluation split (%)" in paper.splitlines()[0] and "selection clips" not in paper


def test_the_search_runs_note_is_a_narrow_markdown_table_in_percent():
    space = parse_space({"sampler": "tpe", "objective": "gap_penalized", "lambda": 0.5, "scheduler": "none",
                         "params": {"model": "cnn", "epochs": 3, "lr": {"float": [0.0005, 0.003], "log": True}}}, "s.yaml")
    rows = [{"label": "t001", "describe": "plain lr=1e-03", "state": "stopped", "epoch": 2, "epochs": 3, "best_epoch": 2,
             "objective": 0.55, "objective_cse": 0.04, "objective_sem": 0.01, "sel_metric_b": 0.6, "sel_metric_b_cse": 0.043,
             "sel_acc_bc": 0.575, "sel_device_gap": 0.068, "eval_metric_b": 0.599}]
    table = markdown_trials(rows, space, 5).splitlines()
    assert table[0] == ("| trial | state | chosen epoch | metric_b - 0.5 * \\|gap\\| % | selection clips: Metric B % | "
                        "B&C % | gap | evaluation split: Metric B % |")
    assert table[2] == "| t001 plain lr=1e-03 | ASHA@2 | 2 | 55.0 ± 4.0, 1.0 seeds | 60.0 ± 4.3 | 57.5 | 6.8 | 59.9 |"


def test_a_pareto_searchs_table_never_lists_a_trial_above_one_that_beats_it():
    space = parse_space({"sampler": "nsga2", "objective": "pareto", "scheduler": "none",
                         "params": {"model": "cnn", "epochs": 3, "lr": {"float": [0.0005, 0.003], "log": True}}}, "s.yaml")
    rows = []
    for label, bc, gap in (("t001", 0.225, 0.162), ("t002", 0.225, 0.055), ("t003", 0.4, 0.3)):
        r = row(label, metrics(30, 2, 2), Objective("metric_b"))
        r.update(objective_acc_bc=bc, objective_abs_gap=gap)
        rows.append(r)
    table = format_trials(rows, space, ["a", "b", "c"], 3)
    order = [line[:4] for line in table.splitlines() if line[:4] in ("t001", "t002", "t003")]
    assert order == ["t003", "t002", "t001"]  # B&C first; at equal B&C the smaller |gap|


def test_a_trial_that_diverged_is_ranked_after_those_that_ended_well_and_a_fixed_setting_keeps_spec_corr():
    space = parse_space({"sampler": "tpe", "objective": "metric_b", "scheduler": "none",
                         "params": {"model": "cnn", "epochs": 3, "enhancement": "spectrum_correction+median_filter",
                                    "median_filter_bands": 5, "lr": {"float": [0.0005, 0.003], "log": True}}}, "s.yaml")
    objective = space.objective
    rows = [row("t000", metrics(30, 2, 2), objective), row("t001", metrics(50, 4, 4), objective),
            row("t002", metrics(40, 3, 3), objective)]
    rows[1].update(state="diverged", diverged=3, epoch=2)  # the best last good epoch, but it diverged
    for r in rows:
        r["params"].update(enhancement="spectrum_correction+median_filter", median_filter_bands=5)
    table = format_trials(rows, space, ["a", "b", "c"], 3)
    order = [line[:4] for line in table.splitlines() if line[:4] in ("t000", "t001", "t002")]
    assert order == ["t002", "t000", "t001"]
    assert "(spec-corr+medfilt5x21)" in table and "diverged@3" in table
    assert markdown_trials(rows, space, 1).splitlines()[2].startswith("| t002 ")


def test_a_trials_note_gives_every_figure_that_chose_it_with_the_clips_error_and_an_objective_not_among_them():
    from search.tracking import trial_note

    m = metrics(45, 3, 2)
    result = {"epoch": 3, "epochs": 3, "best_epoch": 2, **{f"sel_{k}": v for k, v in m.items()},
              "eval_metric_b": 0.5, "objective": 0.4, "objective_cse": 0.05}
    note = trial_note(result, "validation", "gap_penalized")
    shown = ", ".join(f"{name} {100 * m[k]:.1f} ± {100 * m[k + '_cse']:.1f}" for k, name in (
        ("acc_a", "A"), ("acc_b", "B"), ("acc_c", "C"), ("acc_bc", "B&C"), ("device_gap", "gap"),
        ("metric_a", "Metric A"), ("metric_b", "Metric B")))
    assert note.startswith(f"Ran 3 of 3 epochs; kept epoch 2, chosen on the selection clips (%, the gap in points, "
                           f"± one standard error from the clips): {shown}; the objective, gap_penalized, 40.0 ± 5.0.")
    for among in ("metric_b", "metric_a", "acc_bc", "acc_unseen"):  # one of the figures already: not twice
        assert "the objective" not in trial_note(result, "validation", among)


def test_a_fusions_figures_name_its_objective_where_it_is_not_one_of_them():
    from search.fuse import FusionResult, _figures

    m = metrics(45, 3, 2)
    result = FusionResult("s", "bootstrap", "gap_penalized", [], {}, [], [], [], {"fusion": {"selection": m}}, [],
                          gap_lambda=0.5)
    value = m["metric_b"] - 0.5 * abs(m["device_gap"])
    se = Objective("gap_penalized", 0.5).clip_se(m)
    text = _figures(result)
    assert text.startswith(f"The selection clips (%, the gap in points, ± one standard error from the clips): A "
                           f"{100 * m['acc_a']:.1f} ± {100 * m['acc_a_cse']:.1f}, B ")
    assert text.endswith(f"; the objective, metric_b - 0.5 * |gap|, {100 * value:.1f} ± {100 * se:.1f}")
    result.by, result.gap_lambda = "metric_b", None
    assert "the objective" not in _figures(result)
