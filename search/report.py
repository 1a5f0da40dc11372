"""The end of a search, as its console and its MLflow parent run show it: the best trials (and the
Pareto front) beside their evaluation-split figures, what the clips and the seeds can tell apart,
Optuna's plots, the search's figures, and where to browse them.

``search.tuner`` calls :func:`report_results` once the trials are done; ``search.fuse`` warns with
:func:`clip_warning` as the table does, and ``bench-chaos`` compares tables made by :func:`format_trials`.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import optuna
from mlflow.entities import Metric

from asc.enhance import ENHANCEMENTS, Enhancement, parse_composition
from asc.device_table import WIDTH, columns, head_cells, row_cells
from search.searcher import DUPLICATE_ATTR
from search.space import CONDITIONAL, Space
from search.tracking import RUNS_VIEW, TRIAL_TAG, percent, runs_url


# How the clip errors are computed (asc.metrics), as every table's legend says it.
CLIP_SE_HOW = "binomial, Agresti-Coull; B&C and Metric A stratified by device"

def trial_rows(results, space: Space) -> list[dict]:
    """One row per trial of Tune's results: its state, epochs, parameters and reported figures."""
    rows = []
    for result in results:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or (Path(result.path).name if result.path else "?")
        reached, epochs = int(m.get("epoch", 0)), int(m.get("epochs", 0) or 0)
        if result.error is not None:
            state, status = "failed", "ERROR"
        elif m.get("diverged"):
            state, status = "diverged", "TERMINATED"
        else:
            state, status = ("finished" if reached >= epochs and epochs else "stopped"), "TERMINATED"
        row = {"trial_id": trial_id, "label": Path(result.path).name.split("_")[0] if result.path else trial_id, "state": state, "status": status,
               "epoch": reached, "epochs": epochs, "best_epoch": m.get("best_epoch"), "diverged": m.get("diverged"),
               "params": {k: v for k, v in (result.config or {}).items()},
               "describe": space.describe(result.config or {}) if result.config else ""}
        row.update({k: v for k, v in m.items() if k.startswith(("sel_", "eval_", "objective"))})
        rows.append(row)
    return rows


def report_results(client, info: dict, space: Space, trials: list[dict], study, devices: list[str],
                   note: str = "") -> tuple[list[dict], dict]:
    """Print the best trials (and the Pareto front of a two-objective search) and log them to the
    search's parent run with every trial's row, Optuna's plots, the search's figures, ``note`` and
    the run note a user lands on in MLflow's UI. Returns (the Pareto front's rows, trials per state)."""
    parent = info["parent_run_id"]
    table = format_trials(trials, space, devices, info["top"])
    front = pareto_front(study, trials) if space.objective.multi else []
    print("\n" + table)
    front_table = format_trials(front, space, devices, len(front), title=(
        f"Pareto front: {len(front)} of {len(trials)} trials that no other beats on both B&C accuracy (up) and "
        "|device gap| (down), on the selection clips")) if front else ""
    if front:
        print("\n" + front_table)
    client.log_text(parent, table + "\n", "best_trials.txt")
    client.log_text(parent, json.dumps(trials, indent=1, default=str), "trials.json")
    if front:
        client.log_text(parent, front_table + "\n", "pareto_front.txt")
    _log_plots(client, parent, study, space)
    counts = {s: sum(t["state"] == s for t in trials) for s in ("finished", "stopped", "diverged", "failed")}
    client.log_batch(parent, metrics=_parent_metrics(trials, space, counts))
    if note:
        client.set_tag(parent, "note", note)
    # MLflow's run note (Markdown): where a user lands in the UI, the result and what to do next
    fuse_cmd = (f"python -m search fuse --experiment {info['name']} --mlflow-uri {info['mlflow_uri']}"
                + (" --protocol paper" if space.protocol == "paper" else "") + " --register NAME --alias champion")
    where = "The evaluation split, which chose (protocol paper)" if space.protocol == "paper" else "Selection clips"
    clips = clip_counts(trials)
    counts_line = (f"{where}: {clips}; ± one standard error from these clips ({CLIP_SE_HOW})"
                   + ("; seeds: from the seeds" if space.seeds > 1 else "") + ". "
                   if clips else "")
    files = "`best_trials.txt` (Artifacts)" + (", the Pareto front's: `pareto_front.txt`" if front else "")
    # the result first: the UI shows a note's first lines until "Show more"
    client.set_tag(parent, "mlflow.note.content", f"{_best_line(trials, space)}\n\n"
                   f"{markdown_trials(trials, space, info['top'])}\n\n{counts_line}Every device's figures: "
                   f"{files}.\n\nFuse the trials into one model:\n\n`{fuse_cmd}`\n\n{space.description}\n\n"
                   f"`{info['command']}`\n")
    return front, counts


def _rank_key(space: Space):
    """Best first: by the objective; a Pareto search by B&C, then (a tie) by the smaller |gap|, so that a
    trial is never listed above one that beats it on both. Trials that diverged or failed come after
    every trial that ended well (MLflow marks them FAILED and ``fuse`` leaves them out), whatever their
    last good epoch scored."""
    def finite(v, missing: float) -> float:
        return v if isinstance(v, float) and math.isfinite(v) else missing

    def key(row):
        broken = row.get("state") in ("diverged", "failed")
        if space.objective.multi:
            return (broken, -finite(row.get("objective_acc_bc"), -math.inf),
                    finite(row.get("objective_abs_gap"), math.inf))
        return (broken, -finite(row.get("objective"), -math.inf))
    return key


def format_trials(rows: list[dict], space: Space, devices: list[str], top: int, title: str | None = None) -> str:
    """The best trials: parameters, the selection clips' device columns at the selected epoch, the
    objective, the evaluation split beside them, and the epoch each reached."""
    shown = sorted(rows, key=_rank_key(space))[:top]
    searched = space.shown
    cols, heads = columns(devices, any(k.endswith("acc_unseen") for r in rows for k in r))
    obj_cols = space.objective.metrics
    obj_heads = ["B&C*", "|gap|*"] if space.objective.multi else ["objective"]
    seeds = space.seeds > 1  # means over seeds: the objective with its standard error
    obj_width = (27 if seeds else 18) if not space.objective.multi else (17 if seeds else 10)
    lines = []
    width_params = max([len(_params_cell(r, searched)) for r in shown] + [10])
    group = f"{'':<6}{'':<{width_params + 2}}{'':<12}{'':>7}{'':>7}"
    cells = WIDTH * len(heads)
    paper = space.protocol == "paper"  # chosen on the evaluation split itself: say so in every header
    chosen_on = "chosen on: evaluation split (%)" if paper else "selection clips (%)"
    beside = "evaluation split, = chosen on (%)" if paper else "evaluation split (%)"
    group += f" |{chosen_on:^{cells}} |{'':>{obj_width * len(obj_heads)}} |{beside:^{cells}}"
    head = (f"{'trial':<6}{'parameters':<{width_params + 2}}{'state':<12}{'epochs':>7}{'chosen':>7} |"
            + head_cells(heads) + " |" + "".join(f"{h:>{obj_width}}" for h in obj_heads) + " |" + head_cells(heads))
    each = (f"; every figure the mean over {space.seeds} seeds, the objective +- its standard error"
            if seeds else "")
    never = ("protocol paper: the epochs and the trials are chosen on the evaluation split itself, as the paper did, "
             "so its figures are not an unbiased estimate" if paper else
             "the evaluation split beside it is never used to choose")
    lines.append(title or f"best {len(shown)} of {len(rows)} trials by {space.objective.label()} on the "
                 f"{'evaluation split' if paper else 'selection clips'}, at each trial's chosen epoch ({never}){each}")
    counts = clips_line(shown, paper)
    if counts:
        lines.append(counts)
    lines.append(group.rstrip())
    lines.append(head)
    lines.append("-" * len(head))
    for r in shown:
        state = _state(r)
        sel = row_cells(r, cols, "sel_")
        ev = row_cells(r, cols, "eval_")
        objs = "".join(f"{_num(r.get(c), pct=space.objective.multi, sem=r.get(c + '_sem') if seeds else None, cse=r.get(c + '_cse')):>{obj_width}}"
                       for c in obj_cols)
        lines.append(f"{r['label']:<6}{_params_cell(r, searched):<{width_params + 2}}{state:<12}"
                     f"{r['epoch']:>3}/{r['epochs']:<3}{str(r.get('best_epoch') or '-'):>7} |{sel} |{objs} |{ev}")
        if r is shown[0] and any(f"sel_{c}_cse" in r for c in cols):  # how well the clips know the best's figures
            lines.append(f"{'':<6}{'  +- (clips)':<{width_params + 2}}{'':<12}{'':>7}{'':>7} |"
                         f"{row_cells(r, cols, 'sel_', suffix='_cse')} |{'':>{obj_width * len(obj_heads)}} |"
                         f"{row_cells(r, cols, 'eval_', suffix='_cse')}")
    note = noise_note(shown) if seeds and not space.objective.multi else ""
    if note:
        lines.append(note)
    # among the trials shown, and at least the best two: can the clips tell the best from the next?
    ranked = shown if len(shown) > 1 else sorted(rows, key=_rank_key(space))[:2]
    warning = clip_warning(ranked, space.objective, paper=paper) if not space.objective.multi else ""
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def _state(row: dict) -> str:
    return {"finished": "done", "stopped": f"ASHA@{row['epoch']}", "failed": "FAILED",
            "diverged": f"diverged@{row.get('diverged')}"}[row["state"]]


def _best_line(rows: list[dict], space: Space) -> str:
    """The search's result in one sentence (the best trial by the objective), for its run note."""
    ranked = sorted(rows, key=_rank_key(space))
    best = ranked[0] if ranked else None
    if best is None or space.objective.multi or not isinstance(best.get("sel_metric_b"), float):
        return f"**{len(rows)} trials**; the best by {space.objective.label()} below."
    where = "the evaluation split, which chose it" if space.protocol == "paper" else "the selection clips"
    ev = best.get("eval_metric_b")
    return (f"**Best of {len(rows)} trials by {space.objective.label()}: {best['label']} {best.get('describe', '')}**, "
            f"Metric B {100 * best['sel_metric_b']:.1f} % on {where}"
            + (f", {100 * ev:.1f} % on the evaluation split" if isinstance(ev, float) and space.protocol != "paper"
               else "") + ".")


def markdown_trials(rows: list[dict], space: Space, top: int) -> str:
    """The best trials as a narrow Markdown table for the search run's note in MLflow's UI (the wide
    table of every device is ``best_trials.txt``): what each tried, how far it ran, the figures that
    chose it with their standard errors from the clips (and the seeds), and the evaluation split's."""
    def pct(row, key):
        return percent(row, key, (("_cse", ""), ("_sem", " seeds")))

    shown = sorted(rows, key=_rank_key(space))[:top]
    where = "evaluation split" if space.protocol == "paper" else "selection clips"
    # the objective's own column where it is not Metric B itself (a Pareto pair has none)
    objective = [] if space.objective.multi or space.objective.label() == "metric_b" else [
        f"{space.objective.label()} %".replace("|", "\\|")]  # GitHub Markdown's escape in a table
    lines = ["| trial | state | chosen epoch | " + " | ".join(objective + [
        f"{where}: Metric B %", "B&C %", "gap", "evaluation split: Metric B %"]) + " |",
             "|---" * (7 + len(objective)) + "|"]
    for r in shown:
        cells = [f"{r['label']} {r.get('describe', '')}".strip(), _state(r), str(r.get("best_epoch") or "-")]
        cells += [pct(r, "objective")] if objective else []
        cells += [pct(r, "sel_metric_b"), pct(r, "sel_acc_bc"), pct(r, "sel_device_gap"), pct(r, "eval_metric_b")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def clip_counts(rows: list[dict]) -> str:
    """``A 168, B 20, C 20 (B&C 40)``: the clips the choosing figures stand on (from the first row that says)."""
    row = next((r for r in rows if "sel_n" in r), None)
    if row is None:
        return ""
    devices = sorted((k[6:] for k in row if k.startswith("sel_n_") and k[6:] not in ("bc", "unseen")
                      and not k.endswith(("_sem", "_cse"))), key=lambda d: (d != "a", d))
    return ", ".join(f"{d.upper()} {int(row['sel_n_' + d])}" for d in devices) + f" (B&C {int(row.get('sel_n_bc', 0))})"


def clips_line(rows: list[dict], paper: bool = False) -> str:
    """How many clips the choosing figures stand on, per device, and what the table's +- are."""
    counts = clip_counts(rows)
    if not counts:
        return ""
    row = next(r for r in rows if "sel_n" in r)
    where = "the evaluation split" if paper else "selection clips"
    return (f"{where}: {counts}; +- (clips) and objective +- c: standard errors "
            f"from these clips ({CLIP_SE_HOW})"
            + ("; +- s: from the seeds" if any(k.endswith("_sem") for k in row) else ""))


def clip_warning(ranked: list[dict], objective, z: float = 2.0, paper: bool = False) -> str:
    """One line when the clips cannot tell the trials apart: the best trial's objective is uncertain
    by more (z clip standard errors) than it lies above the median of the others it is ranked among
    (the median, so that one weak trial, stopped or diverged, does not hide the noise among the
    rest). ``paper``: the trials chose on the evaluation split (protocol paper), which the line names."""
    valid = [r for r in ranked if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])]
    if len(valid) < 2 or not isinstance(valid[0].get("objective_cse"), float):
        return ""
    best = valid[0]
    width, spread = z * best["objective_cse"], best["objective"] - statistics.median(r["objective"] for r in valid[1:])
    if not width > spread:
        line = ""
    else:
        counts = ", ".join(f"{d.upper()} {int(best[k])}" for k in sorted(best) if k.startswith("sel_n_")
                           and (d := k[6:]) not in ("bc", "unseen") and not k.endswith(("_sem", "_cse")))
        clips = "the evaluation split's clips, which chose here (protocol paper)," if paper else "the selection clips"
        more = "a larger evaluation split" if paper else ("more B and C clips in the held-out locations (a larger "
                                                          "validation_share in the space, or a larger set)")
        helps = [more] + (["choose by metric_a (all clips)"] if objective.label() != "metric_a" else [])
        line = (f"warning: {clips} ({counts}) know {objective.label()} only within +-{100 * width:.1f} "
                f"points ({z:g} standard errors), more than the {100 * spread:.1f} points by which {best['label']} "
                f"leads the median of the {len(valid) - 1} other trial(s) ranked here: {', '.join(helps)}, "
                "or add seeds")
    sem = best.get("objective_sem")
    if isinstance(sem, float) and math.isfinite(sem):  # several seeds (0: they agreed on every clip)
        dominant = "the clips'" if best["objective_cse"] > sem else "the seeds'"
        line = (line + "; " if line else "") + (
            f"for {best['label']}, {dominant} standard error is the larger (clips +-{100 * best['objective_cse']:.1f}, "
            f"seeds +-{100 * sem:.1f} points)")
    return line


def noise_note(ranked: list[dict], z: float = 2.0) -> str:
    """Which of the best trials the seeds cannot tell from the best one: those whose mean objective is
    within ``z`` standard errors of the difference (sqrt(se1^2 + se2^2)) of the best's."""
    valid = [r for r in ranked if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])]
    if len(valid) < 2:
        return ""
    best = valid[0]
    tied = []
    for r in valid[1:]:
        se = math.sqrt((best.get("objective_sem") or 0.0) ** 2 + (r.get("objective_sem") or 0.0) ** 2)
        if not math.isfinite(se) or best["objective"] - r["objective"] <= z * se:
            tied.append(r["label"])
    if not tied:
        return (f"{best['label']} is ahead of the next by more than {z:g} standard errors of the difference: "
                "the seeds tell them apart")
    return (f"within the noise: {', '.join(tied)} {'is' if len(tied) == 1 else 'are'} less than {z:g} standard errors "
            f"of the difference behind {best['label']}: the seeds cannot tell {'it' if len(tied) == 1 else 'them'} "
            "apart from the best")


def _params_cell(row: dict, keys: list[str]) -> str:
    params = row["params"]
    cells = []
    for k in keys:
        if k not in params:
            continue
        v = params[k]
        cells.append(f"{_short(k)}={v:.3g}" if isinstance(v, float) else f"{_short(k)}={v}")
    # an enhancement's settings that the space fixes (or defaults): its one label says them
    if any(k in params and k not in keys for k in CONDITIONAL) and "enhancement" in params:
        cells.append(f"({Enhancement.label_of(parse_composition(params['enhancement']), params)})")
    return " ".join(cells) or row["describe"]


_SHORT = {"enhancement": "enh", "normalization": "norm", "mixup_alpha": "mixup"}


def _short(key: str) -> str:
    """A parameter's name in the tables: an enhancement's setting by its definition's short name
    (``medfilt.bands``, ``fms.p``), a few others abbreviated."""
    if key in CONDITIONAL:
        d = ENHANCEMENTS[CONDITIONAL[key]]
        return f"{d.short}.{key[len(d.name) + 1:]}"
    return _SHORT.get(key, key)


def _num(value, pct: bool = False, sem: float | None = None, cse: float | None = None) -> str:
    """A figure with its standard errors: ``0.4762 +-0.057s +-0.043c`` (from the seeds, from the
    clips; the suffix only where both are shown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.1f}" if pct else f"{value:.4f}"
    has_cse = cse is not None and isinstance(cse, float) and math.isfinite(cse)
    if sem is not None and math.isfinite(sem):
        text += f" +-{100 * sem:.1f}" if pct else f" +-{sem:.3f}" if has_cse else f" +-{sem:.4f}"
        text += "s" if has_cse else ""
    if has_cse:
        text += f" +-{cse:.3f}c" if not pct else f" +-{100 * cse:.1f}c"
    return text


def pareto_front(study, rows: list[dict]) -> list[dict]:
    """The study's Pareto-optimal trials, as rows of the trials table."""
    by_tune_id = {r["trial_id"]: r for r in rows}
    return [by_tune_id[t.user_attrs[TRIAL_TAG]] for t in study.best_trials if t.user_attrs.get(TRIAL_TAG) in by_tune_id]


def _parent_metrics(trials, space: Space, counts: dict):
    now = int(time.time() * 1000)
    out = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    ranked = sorted(trials, key=_rank_key(space))
    if ranked:
        for key in space.objective.metrics + ["sel_metric_b", "sel_acc_bc", "sel_device_gap", "eval_metric_b"]:
            v = ranked[0].get(key)
            if isinstance(v, float) and math.isfinite(v):
                out.append(Metric(f"best_{key}", v, now, 0))
    return out


def _log_plots(client, run_id: str, study, space: Space) -> None:
    """Optuna's plots of the study (matplotlib backend) as images of the search's parent run."""
    import matplotlib  # here, not at the top: pyplot (which Optuna's plots import) after choosing Agg

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    # The plots show the trials trained (and taken from earlier searches), not the repeated proposals
    # the study was told about at no cost.
    shown = optuna.create_study(directions=study.directions, sampler=optuna.samplers.RandomSampler())
    shown.add_trials([t for t in study.get_trials(deepcopy=False) if DUPLICATE_ATTR not in t.user_attrs])
    study = shown

    target = {}
    if space.objective.multi:
        target = {"target": lambda t: t.values[0], "target_name": "B&C accuracy"}
    plots = {"optuna_history.png": lambda: ov.plot_optimization_history(study, **target),
             "optuna_importance.png": lambda: ov.plot_param_importances(study, **target),
             "optuna_parallel_coordinate.png": lambda: ov.plot_parallel_coordinate(study, **target)}
    if space.objective.multi:
        plots["optuna_pareto_front.png"] = lambda: ov.plot_pareto_front(study, target_names=["B&C accuracy", "|device gap|"])
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make()
        except Exception as exc:  # a study too small for a plot (one trial, one value of every parameter)
            print(f"note: no {name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        client.log_figure(run_id, fig, name)
        plt.close(fig)


def ui_command(uri: str, experiment_id: str, view: str = RUNS_VIEW) -> str:
    """How to see a search's trials (``view``: or its fusions) in MLflow's UI, with ``uri``'s server or a
    local one."""
    if uri.startswith(("http://", "https://")):
        return f"open {runs_url(uri, experiment_id, view)}"
    return (f"{shlex.quote(sys.executable)} -m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
            f"  then open {runs_url('http://127.0.0.1:5000', experiment_id, view)}")



def distinct_line(space: Space, searcher, num_samples: int, trained: int) -> str:
    """What the search did about repeated configurations, in one line."""
    distinct = space.distinct_points()
    parts = [f"{trained} distinct configuration(s) trained"]
    if distinct is not None:
        parts.append(f"of the {len(distinct)} the space holds")
    if searcher.finished and trained < num_samples:
        parts.append(f"(num_samples {num_samples}: "
                     + ("every configuration is trained" if distinct is not None else "the sampler and "
                        "random draws proposed only configurations it knew") + ")")
    if searcher.repeats:
        parts.append(f"; {searcher.repeats} repeated proposal(s) were told their recorded result instead of training")
    if searcher.drawn:
        parts.append(f"; {searcher.drawn} configuration(s) drawn at random after the sampler kept repeating")
    return " ".join(parts).replace(" ;", ";")

