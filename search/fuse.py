"""``python -m search fuse``: choose an ensemble of a search's trials by an objective and log it.

The candidates are the trial runs of one search (one MLflow experiment) that logged predictions
(``predictions.parquet``: the selection clips and the evaluation split, at the trial's chosen epoch)
and an audio model. Every run with predictions is a candidate by default; ``full_budget`` keeps the
trials that trained every epoch (not stopped by ASHA). Runs whose predictions cover other clips than
the rest (another validation split, another dataset) stop the fusion, in one line naming them.

The ensemble is chosen on the selection clips only (``asc.fusion``; Metric B by default); the
evaluation split is reported for it, never used to choose it. The fusion is logged as a run under the
search's parent run (members, weights, fused metrics with the trials' names ``sel_*`` / ``eval_*``,
its predictions, a confusion matrix per device, every trial's B&C accuracy against its device gap
with the members marked) together with the fused audio model (``search.serving``), which
``register`` also enters in the MLflow model registry.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved, _validate_model_name

from asc import fusion
from asc.cli import MAX_FUSION_BAGS as MAX_BAGS, MAX_FUSION_SIZE
from asc.enhance import Enhancement, parse_composition
from asc.errors import AscError
from asc.metrics import device_metrics, mean_sem
from asc.progress import each
from asc.device_table import device_table
from search.objectives import SINGLE, Objective, check_pooled_devices
from search.predictions import FILE as PREDICTIONS, SPLITS, log_predictions, predictions_table, read_predictions
from search.report import CLIP_SE_HOW, clip_warning
from search.serving import download_members, log_audio_model, mlflow_uris, registry_uri
from search.space import CONDITIONAL
from search.stores import training_devices
from search.tracking import MODEL_TAG, ROLE_TAG, SEARCH_TAG, SELECTED_ON_TAG, TRAIN_DEVICES_TAG, _clean, _log_params, \
    FIGURES, check_tracking_uri, confusion_figure, figures_line, fusions_view, percent, run_tags, selected_on
from search.warmstart import _parse

METHODS = ("bootstrap", "gated", "greedy", "top", "per-enhancement")  # the default first
BOOTSTRAP_BAGS = 40  # the default fusion's bootstrap resamples of the selection clips, unless --bags says
GATE_BAGS = 20  # the gated fusion's bagged repeats, unless --bags says otherwise
GATE_SPLITS = 5  # its random halvings of the selection clips (each half held back once)


@dataclass
class Clips:
    """The clips of one split, in the order every candidate's probabilities are aligned to."""

    filenames: np.ndarray
    devices: np.ndarray
    labels: np.ndarray  # class indices
    seen: tuple | None = None  # the devices of the training clips (the others are unseen devices)


@dataclass
class Candidate:
    run_id: str
    label: str  # t003
    description: str  # mean-sub a=0.3 128mel
    group: str  # its enhancement (best-per-enhancement fusion)
    model_uri: str | None
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # split -> [clips, classes]
    member: int | None = None  # one seed of a several-seed trial: its index among the trial model's members
    seed_probs: dict[str, list[np.ndarray]] = field(default_factory=dict)  # a seed average's seeds: split -> theirs


@dataclass
class FusionResult:
    experiment: str
    method: str
    by: str
    candidates: list[Candidate]
    clips: dict[str, Clips]
    classes: list[str]
    members: list[int]  # indices into candidates
    weights: list[float]
    metrics: dict[str, dict[str, dict]]  # "fusion" or candidate label -> split -> device metrics
    refused: list[str]
    full_budget: bool = False
    protocol: str = "validation"  # "paper": the trials and the fusion choose on the evaluation split
    note: str = ""  # what the choice did that a user should know (a fallback to one trial)
    gap_lambda: float | None = None  # --by gap_penalized's weight of |device gap|
    run_id: str | None = None
    experiment_id: str | None = None
    model_uri: str | None = None
    registered: str | None = None
    version: int | None = None  # the registered model's version

    def fused(self, split: str) -> np.ndarray:
        return fusion.average([self.candidates[i].probs[split] for i in self.members], self.weights)


# --------------------------------------------------------------------------------------------------
# Reading the candidates from MLflow
# --------------------------------------------------------------------------------------------------
def _group(params: dict) -> str:
    """A trial's enhancement, settings included, as its one label (``medfilt7x21``): the groups of the
    best-per-enhancement fusion. ``params``: the run's MLflow params (strings)."""
    if not params.get("enhancement"):
        return params.get("point") or "?"
    names = parse_composition(params["enhancement"])
    values = {k: _parse(k, v) for k, v in params.items() if k in CONDITIONAL}
    return Enhancement.label_of(names, values)


def load_candidates(client, experiment_id: str, full_budget: bool = False, progress: bool = False,
                    seed_members: bool = False):
    """The search's candidate runs with their predictions; returns (candidates, clips, classes,
    notes, parent run id). Runs whose predictions cover other clips than the most runs' are refused,
    in one line. ``seed_members``: each seed of a several-seed trial is a candidate of its own
    (``t003/seed1``) instead of the trial's seed average."""
    experiment = client.get_experiment(experiment_id)
    name, tags = experiment.name, experiment.tags
    every = client.search_runs([experiment_id], filter_string=f"tags.{ROLE_TAG} = 'trial'", max_results=5000)
    parents = client.search_runs([experiment_id], filter_string=f"tags.{ROLE_TAG} = 'search'", max_results=2)
    parent_id = parents[0].info.run_id if parents else None
    runs = sorted((r for r in every if r.info.status == "FINISHED"), key=lambda r: r.info.run_name or "")
    if full_budget:
        runs = [r for r in runs if r.data.tags.get("stopped_early") == "false"]
    read: list[tuple[Candidate, list[str], dict]] = []
    skipped = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in each(runs, "predictions", "run", progress):
            run_name = run.info.run_name or run.info.run_id
            label = run_name.split(" ")[0]
            if not any(a.path == PREDICTIONS for a in client.list_artifacts(run.info.run_id)):
                skipped.append(label)
                continue
            local = client.download_artifacts(run.info.run_id, PREDICTIONS, tmp)
            classes, splits, per_seed = read_predictions(Path(local), f"run {label} ({run.info.run_id})")
            candidate = Candidate(run.info.run_id, label, run_name[len(label):].strip(), _group(run.data.params),
                                  run.data.tags.get(MODEL_TAG))
            if not (seed_members and per_seed):
                if len(per_seed) > 1:  # how far the seeds spread: the seed average's standard errors
                    candidate.seed_probs = {s: [probs[s] for probs in per_seed.values()] for s in splits}
                read.append((candidate, classes, splits))
                continue
            for k, (seed, probs) in enumerate(per_seed.items()):
                one = {s: (*splits[s][:3], probs[s]) for s in splits}
                read.append((Candidate(candidate.run_id, f"{label}/{seed}", candidate.description, candidate.group,
                                       candidate.model_uri, member=k), classes, one))
    if not read:
        budget = " that trained every epoch" if full_budget else ""
        unfinished = sum(r.info.status in ("RUNNING", "KILLED", "SCHEDULED") for r in every)
        hint = (f" ({unfinished} trial run(s) were stopped before they finished: `python -m search resume {name}` "
                "finishes them)" if unfinished else "")
        raise AscError(f"experiment {name!r}: no finished trial run{budget} with predictions to fuse{hint}")

    # The clips every candidate must cover: those of the most candidates (ties: the first run's).
    def signature(item):
        _, classes, splits = item
        return (tuple(classes),) + tuple((s, tuple(splits[s][0])) for s in sorted(splits))

    counts: dict = {}
    for item in read:
        counts[signature(item)] = counts.get(signature(item), 0) + 1
    reference = max(counts, key=lambda s: counts[s])
    candidates, refused = [], []
    for item in read:
        if signature(item) != reference:
            refused.append(item[0])
            continue
        candidate, classes, splits = item
        candidate.probs = {s: splits[s][3] for s in splits}
        candidates.append(candidate)
    _, classes, splits = next(item for item in read if signature(item) == reference)
    if "selection" not in splits:
        raise AscError(f"experiment {name!r}: the trials' predictions hold no selection clips to choose on")
    # Which devices training saw (Metric B pools the others but the reference as B&C; the rest are
    # unseen): the store's training split where it can be read here, else what the search recorded,
    # else, under the validation protocol, the selection clips' (training locations: never an unseen
    # device). The evaluation split may hold unseen devices: nothing else can tell them apart.
    store = next((r.data.params.get("store") for r in runs if r.data.params.get("store")), None)
    if store and Path(store, "_manifest.json").is_file():
        seen = tuple(training_devices(store))
    elif tags.get(TRAIN_DEVICES_TAG):
        seen = tuple(tags[TRAIN_DEVICES_TAG].split(","))
    elif tags.get(SELECTED_ON_TAG) != selected_on("paper"):
        seen = tuple(sorted(set(splits["selection"][1].tolist())))
    else:
        raise AscError(f"experiment {name!r}: its trials chose on the evaluation split (protocol paper), "
                       f"which may hold devices training never heard, and neither their store ({store}) can be read "
                       f"here nor does the experiment say which devices trained (tag {TRAIN_DEVICES_TAG}); fuse where "
                       "the store can be read, or set that tag (e.g. a,b,c)")
    clips = {s: Clips(splits[s][0], splits[s][1], np.array([classes.index(x) for x in splits[s][2]]), seen)
             for s in splits}
    if refused:  # one ensemble scores its members on one set of clips: these would be scored on others
        runs = {c.run_id: c.label.split("/")[0] for c in refused}  # a trial's seeds are one run
        kept = len({c.run_id for c in candidates})
        raise AscError(f"experiment {name!r}: {len(runs)} run(s) predicted other clips or classes than the other "
                       f"{kept} (another store or split): {', '.join(f'{label} ({i})' for i, label in runs.items())}; "
                       f"set them aside (`MLFLOW_TRACKING_URI={client.tracking_uri} mlflow runs delete --run-id ID` "
                       "for each, undone by `mlflow runs restore`) and fuse again")
    notes = []
    if skipped:
        notes.append(f"no predictions logged (left out): {', '.join(skipped)}")
    return candidates, clips, classes, notes, parent_id


# --------------------------------------------------------------------------------------------------
# Choosing
# --------------------------------------------------------------------------------------------------
def metrics_of(probs: np.ndarray, clips: Clips, detail: bool = True) -> dict:
    m = device_metrics(clips.labels, probs.argmax(axis=1), clips.devices, probs.shape[1], seen=clips.seen,
                       detail=detail)
    return {k: v for k, v in m.items() if isinstance(v, float)}


def seed_errors(candidate: Candidate, split: str, clips: Clips, objective: Objective) -> dict:
    """A seed average's ``<figure>_sem``: the standard error of the mean of its seeds' own figures (and
    ``objective_sem``), what the search's table shows beside a trial's objective; {} for one seed."""
    each = [metrics_of(p, clips) for p in candidate.seed_probs.get(split, ())]
    if len(each) < 2:
        return {}
    for m in each:
        m["objective"] = objective.values(m)["objective"]
    return {f"{k}_sem": mean_sem([m[k] for m in each])[1] for k in each[0]
            if not k.startswith("n_") and not k.endswith("_cse")}


def scorer(objective: Objective, clips: Clips):
    """``score(probs)`` on the selection clips. A metric the clips cannot define (Metric B without
    B/C clips) is refused here, not turned into another metric."""
    def score(probs: np.ndarray) -> float:
        value = objective.values(metrics_of(probs, clips, detail=False))["objective"]
        return -math.inf if math.isnan(value) else value
    return score


def choose(candidates: list[Candidate], clips: dict[str, Clips], method: str, objective: Objective,
           size: int | None = None, bags: int = 0, seed: int = 0):
    sel = [c.probs["selection"] for c in candidates]
    score = scorer(objective, clips["selection"])
    if all(score(p) == -math.inf for p in sel):  # e.g. Metric B on selection clips without B and C
        devices = clips["selection"].devices.tolist()
        counts = ", ".join(f"{d.upper()} {devices.count(d)}" for d in sorted(set(devices)))
        raise AscError(f"fusion by {objective.label()}: undefined on the selection clips, which hold {counts} clips and "
                       "none of the devices it needs; fuse --by metric_a, or search again with more locations held "
                       "out for the selection (validation_share in the space)")
    clips_sel = clips["selection"]
    steps = max((size or 10) - 1, 0)  # the greedy methods: picks after the first

    def score_on(rows: np.ndarray | None):  # the score on some of the selection clips (repeats counted)
        if rows is None:
            return score
        return scorer(objective, Clips(clips_sel.filenames[rows], clips_sel.devices[rows], clips_sel.labels[rows],
                                       clips_sel.seen))

    if method == "bootstrap":
        return fusion.bootstrap_greedy(sel, score_on, clips_sel.devices, steps=steps, bags=bags or BOOTSTRAP_BAGS,
                                       seed=seed)
    if method == "gated":
        return fusion.held_back_greedy(sel, score_on, clips_sel.devices, steps=steps, bags=bags or GATE_BAGS,
                                       repeats=GATE_SPLITS, seed=seed)
    if method == "greedy":
        return fusion.greedy_selection(sel, score, steps=steps, init=1, bags=bags, seed=seed)
    if method == "top":
        return fusion.top_k(sel, score, min(size or 3, len(sel)))
    if method == "per-enhancement":
        return fusion.best_per_group(sel, [c.group for c in candidates], score)
    raise AscError(f"fusion method {method!r}: choose one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def fuse(experiment: str, mlflow_uri: str, by: str = "metric_b", size: int | None = None, method: str = METHODS[0],
         register: str | None = None, full_budget: bool = False, bags: int = 0, gap_lambda: float | None = None,
         seed: int = 0, log: bool = True, progress: bool = True, seed_members: bool = False,
         protocol: str = "validation", alias: str | None = None) -> FusionResult:
    if method not in METHODS:
        raise AscError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if by not in SINGLE:
        raise AscError(f"--by {by!r}: fusion needs one number to maximise: one of {', '.join(SINGLE)}")
    if size is not None and not 1 <= size <= MAX_FUSION_SIZE:
        raise AscError(f"--size {size}: must be 1 to {MAX_FUSION_SIZE}")
    if not 0 <= bags <= MAX_BAGS:
        raise AscError(f"--bags {bags}: must be 0 (the method's default) to {MAX_BAGS}")
    if bags and method in ("top", "per-enhancement"):
        raise AscError(f"--bags {bags}: --method {method} does not resample (bootstrap, gated and greedy do)")
    if size is not None and method == "per-enhancement":
        raise AscError(f"--size {size}: --method per-enhancement takes one trial of each enhancement, whatever their number")
    if by == "gap_penalized" and gap_lambda is None:
        raise AscError("--by gap_penalized needs --gap-lambda (the weight of |device gap|)")
    if by != "gap_penalized" and gap_lambda is not None:
        raise AscError(f"--gap-lambda {gap_lambda:g}: only --by gap_penalized weighs the device gap (--by {by})")
    check_registry_names(register, alias)
    objective = Objective(by, gap_lambda)
    check_tracking_uri(mlflow_uri, must_exist=True)
    client = MlflowClient(mlflow_uri, registry_uri=registry_uri(mlflow_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = [e.name for e in client.search_experiments(max_results=50) if e.name != "Default"]
        raise AscError(f"MLflow at {mlflow_uri}: no experiment {experiment!r} (there: {', '.join(known) or 'none'})")
    chosen_on = exp.tags.get(SELECTED_ON_TAG)
    if chosen_on is not None and chosen_on != selected_on(protocol):
        other = "paper" if chosen_on == "evaluation" else "validation"
        raise AscError(f"experiment {experiment!r}: its trials chose their epochs on the {chosen_on} clips (protocol "
                       f"{other}), not on the clips of protocol {protocol}; fusing them would choose on other clips "
                       f"than they did (pass --protocol {other} to fuse them on theirs)")
    candidates, clips, classes, notes, parent_id = load_candidates(client, exp.experiment_id, full_budget, progress,
                                                                   seed_members)
    for note in notes:
        print(f"note: {note}")
    check_pooled_devices(by, clips["selection"].devices.tolist(), clips["selection"].seen or (),
                         f"fusion of {experiment!r} by")
    if method == "top" and size is not None and size > len(candidates):
        raise AscError(f"--size {size}: the top {size} of {len(candidates)} candidate(s) of {experiment!r}; give "
                       f"--size {len(candidates)} or less")
    selection = choose(candidates, clips, method, objective, size, bags, seed)
    metrics: dict = {}
    for i, c in enumerate(candidates):
        metrics[c.label] = {s: {**metrics_of(c.probs[s], clips[s]), **seed_errors(c, s, clips[s], objective)}
                            for s in clips}
    # heaviest member first, in the table, the run's name and the model (ties: the order they were chosen in)
    order = sorted(range(len(selection.members)), key=lambda k: -selection.weights[k])
    result = FusionResult(experiment, method, by, candidates, clips, classes, [selection.members[k] for k in order],
                          [selection.weights[k] for k in order], metrics, notes, full_budget, protocol=protocol,
                          note=selection.note, gap_lambda=gap_lambda)
    result.metrics["fusion"] = {s: metrics_of(result.fused(s), clips[s]) for s in clips}
    # what the selection clips can tell about the candidates it ranked, as the search's table says it
    rows = sorted(({"label": c.label, "objective": objective.values(metrics[c.label]["selection"])["objective"],
                    "objective_cse": objective.clip_se(metrics[c.label]["selection"]),
                    "objective_sem": metrics[c.label]["selection"].get("objective_sem"),
                    **{f"sel_{k}": v for k, v in metrics[c.label]["selection"].items() if k.startswith("n_")}}
                   for c in candidates), key=lambda r: -r["objective"] if math.isfinite(r["objective"]) else math.inf)
    warning = clip_warning(rows, objective, paper=protocol == "paper")
    if warning:
        print(warning)
    if selection.note:
        print(f"note: {selection.note}")
    if log:
        log_fusion(client, mlflow_uri, exp.experiment_id, parent_id, result, objective, register,
                   {"size": size, "full_budget": full_budget, "seed": seed,  # the resamples it ran, not 0
                    "bags": bags or (BOOTSTRAP_BAGS if method == "bootstrap" else 0)}, alias)
    return result


def gap_figure(result: FusionResult):
    """Every candidate's B&C accuracy against its device gap (selection clips and evaluation split),
    the members marked, the fusion a star."""
    import matplotlib  # here, not at the top: pyplot only after choosing the Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in SPLITS if s in result.clips]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.5), squeeze=False)
    members = {result.candidates[i].label for i in result.members}
    for ax, split in zip(axes[0], splits):
        xs = [100 * result.metrics[c.label][split]["device_gap"] for c in result.candidates]
        ys = [100 * result.metrics[c.label][split]["acc_bc"] for c in result.candidates]
        chosen = [c.label in members for c in result.candidates]
        ax.scatter([x for x, m in zip(xs, chosen) if not m], [y for y, m in zip(ys, chosen) if not m],
                   c="0.6", s=22, label="trial")
        ax.scatter([x for x, m in zip(xs, chosen) if m], [y for y, m in zip(ys, chosen) if m],
                   facecolors="none", edgecolors="C0", s=70, linewidths=1.8, label="fusion member")
        for c, x, y, m in zip(result.candidates, xs, ys, chosen):
            if m:
                ax.annotate(c.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="C0")
        f = result.metrics["fusion"][split]
        ax.scatter([100 * f["device_gap"]], [100 * f["acc_bc"]], marker="*", s=220, c="C3", label="fusion")
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("device gap: acc A - acc B&C (points)")
        ax.set_ylabel("accuracy on devices B & C (%)")
        ax.set_title(f"{split} clips" + (" (chosen here)" if split == "selection" else " (reported only)"))
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.experiment}: {result.method} fusion by {result.by}, {len(result.members)} of "
                 f"{len(result.candidates)} trials")
    fig.tight_layout()
    return fig


def log_fusion(client, uri: str, experiment_id: str, parent_id: str | None, result: FusionResult, objective: Objective,
               register: str | None, settings: dict, alias: str | None = None) -> None:
    """The fusion's run (under the search's run), its figures and predictions, and its audio model."""
    import matplotlib.pyplot as plt  # not at the top: importing pyplot picks a backend (the figures ask for Agg)
    members = [result.candidates[i] for i in result.members]
    missing = [m.label for m in members if not m.model_uri]
    if missing:
        raise AscError(f"fusion members without an audio model (logged by an older version?): {', '.join(missing)}")
    view = fusions_view(any(k == "n_unseen" for m in result.metrics["fusion"].values() for k in m))
    key = next(iter(view))
    if key not in client.get_experiment(experiment_id).tags:  # the first fusion of the search
        client.set_experiment_tag(experiment_id, key, view[key])
    tags = {ROLE_TAG: "fusion", SEARCH_TAG: result.experiment, SELECTED_ON_TAG: selected_on(result.protocol),
            "description": f"{result.method} by {result.by}: " + " + ".join(m.label for m in members)}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    name = f"fusion {result.method} by {result.by}: " + "+".join(m.label for m in members)
    tags["mlflow.note.content"] = fusion_note(result)  # its Description in MLflow's UI
    run = client.create_run(experiment_id, run_name=name[:250], tags=run_tags(tags))
    run_id = result.run_id = run.info.run_id
    result.experiment_id = experiment_id
    try:
        _log_params(client, run_id, {
            "method": result.method, "by": objective.label(), "candidates": len(result.candidates),
            "members": ",".join(m.label for m in members), "member_run_ids": ",".join(m.run_id for m in members),
            "weights": ",".join(f"{w:.4f}" for w in result.weights), **{k: v for k, v in settings.items()}})
        now = int(time.time() * 1000)
        fused = result.metrics["fusion"]
        prefix = {"selection": "sel_", "evaluation": "eval_"}
        values = [Metric(prefix[s] + k, _clean(v), now, 0) for s, m in fused.items() for k, v in m.items()
                  if _clean(v) is not None]
        objective_value = objective.values(fused["selection"])["objective"]
        objective_cse = objective.clip_se(fused["selection"])  # as a trial logs it: the runs view's column
        values += [Metric(k, v, now, 0) for k, v in (("objective", objective_value), ("objective_cse", objective_cse))
                   if not math.isnan(v)]
        values += [Metric("members", float(len(members)), now, 0)]
        client.log_batch(run_id, metrics=values)
        client.log_text(run_id, format_result(result), "fusion.txt")
        client.log_dict(run_id, {"members": [{"label": m.label, "run_id": m.run_id, "weight": w, "model_uri": m.model_uri,
                                              "description": m.description} for m, w in zip(members, result.weights)],
                                 "method": result.method, "by": result.by,
                                 "metrics": {k: v for k, v in result.metrics.items()}}, "fusion.json")
        table = predictions_table(result.classes, [
            (split, c.filenames, c.devices, [result.classes[k] for k in c.labels], result.fused(split), {})
            for split, c in result.clips.items()])
        log_predictions(client, run_id, table)
        with tempfile.TemporaryDirectory() as tmp:
            for split in result.clips:
                fig = confusion_figure(table, result.classes, split, "fusion")
                client.log_figure(run_id, fig, f"confusion_{split}.png")
                plt.close(fig)
            fig = gap_figure(result)
            client.log_figure(run_id, fig, "acc_bc_vs_gap.png")
            plt.close(fig)
            files, weights = [], []
            for k, (member, weight) in enumerate(zip(members, result.weights)):
                member_files, member_weights = download_members(member.model_uri, Path(tmp) / f"m{k}", uri)
                if member.member is not None:  # one seed of the trial's model
                    member_files, member_weights = [member_files[member.member]], [1.0]
                files += member_files
                weights += [weight * w / sum(member_weights) for w in member_weights]
            result.model_uri = log_audio_model(uri, run_id, files, weights, metadata={
                "search": result.experiment, "method": result.method, "by": result.by})
        client.set_tag(run_id, MODEL_TAG, result.model_uri)
        if register:  # the names were checked before any work (check_registry_names)
            said = io.StringIO()  # MLflow prints that it registered the model and created a version
            with contextlib.redirect_stderr(said), mlflow_uris(uri):
                version = mlflow.register_model(result.model_uri, register).version
            for line in said.getvalue().splitlines():  # the rest (a warning) is passed on
                if line.strip() and not line.startswith(("Successfully registered model", "Created version")):
                    print(line, file=sys.stderr)
            result.registered = f"models:/{register}/{version}"
            result.version = int(version)
            client.update_model_version(register, version,
                                         description=f"{_headline(result)}. {_title(result)}. {_figures(result)}.")
            client.update_registered_model(register, description=(
                f"Fusions registered by `python -m search fuse`; the latest from the search {result.experiment!r}. "
                "Each version's description says what it fused and how well it scores; it takes audio bytes "
                "(column `audio`) or file paths (`path`), and optionally each clip's `device`."))
            if alias:  # MLflow's aliases: models:/NAME@ALIAS follows whichever version holds it
                client.set_registered_model_alias(register, alias, version)
                result.registered = f"models:/{register}@{alias}"
            client.set_tag(run_id, "registered_model", result.registered)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise


def check_registry_names(register: str | None, alias: str | None) -> None:
    """``--register`` and ``--alias`` as MLflow's registry will take them, checked before any work (a name
    it refuses after the fusion run and its model were written would leave both behind). MLflow's own
    checks, so that the rules are the registry's: its version is pinned in requirements.txt."""
    if alias is not None and not register:
        raise AscError(f"--alias {alias}: an alias names a registered version; give --register NAME too")
    for option, value, checks in (("--register", register, (_validate_model_name,)),
                                  ("--alias", alias, (_validate_model_alias_name, _validate_model_alias_name_reserved))):
        try:
            for check in checks if value is not None else ():
                check(value)
        except MlflowException as exc:
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise AscError(f"{option} {shown!r}: {exc.message}") from None


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def _cut(text: str, most: int) -> str:
    """``text`` within ``most`` characters, a cut one ending in '...' so that a reader sees it was cut."""
    return text if len(text) <= most else text[:most - 3] + "..."


def format_result(result: FusionResult) -> str:
    splits = [s for s in SPLITS if s in result.clips]
    rows = [(_cut(f"{result.candidates[i].label} {result.candidates[i].description}", 64), f"{w:.2f}",
             result.metrics[result.candidates[i].label]) for i, w in zip(result.members, result.weights)]
    rows.append(("fusion", "1.00", result.metrics["fusion"]))
    # protocol paper: the trials and the fusion chose on the evaluation split, and the table says so
    titles = ({"selection": "chosen on: evaluation split (%)", "evaluation": "evaluation split, = chosen on (%)"}
              if result.protocol == "paper" else None)
    first = result.candidates[result.members[0]]
    seeds = len(first.seed_probs.get("selection", ()))
    return (_title(result) + "\n" + device_table(rows, splits, clip_se=(0, -1), seed_se=(0,) if seeds else (),
                                                  titles=titles)
            + f"\n+- (clips): one standard error from the clips ({CLIP_SE_HOW})"
            + (f"\n+- (seeds): the standard error of the mean of the {seeds} seeds' own figures (each member is its "
               "trial's seed average)" if seeds else ""))


def _headline(result: FusionResult) -> str:
    """The fusion's score in one phrase: Metric B on the clips that chose it and on the evaluation split."""
    def mb(split):
        m = result.metrics["fusion"].get(split, {})
        return percent({"mb": m.get("metric_b"), "mb_cse": Objective("metric_b").clip_se(m) if m else None}, "mb")
    if result.protocol == "paper":
        return f"Metric B {mb('evaluation')} % on the evaluation split, which chose it (protocol paper)"
    return f"Metric B {mb('selection')} % on the selection clips that chose it, {mb('evaluation')} % on the evaluation split"


def fusion_note(result: FusionResult) -> str:
    """The fusion run's note (Markdown): its score, what it is, and each member with its weight."""
    rows = ["| member | weight | selection clips: Metric B % | evaluation split: Metric B % |", "|---|---|---|---|"]
    for i, w in zip(result.members, result.weights):
        c = result.candidates[i]
        mb = {s: result.metrics[c.label].get(s, {}).get("metric_b", math.nan) for s in ("selection", "evaluation")}
        rows.append(f"| {c.label} {c.description} | {w:.2f} | "
                    + " | ".join(percent(mb, s, ()) for s in mb) + " |")
    return (f"{_headline(result)} (± one standard error from the clips).\n\n{_title(result)}.\n\n"
            f"{_figures(result)}.\n\n" + "\n".join(rows))


def _figures(result: FusionResult) -> str:
    """The fusion's every figure on the clips that chose it, each with its standard error from them."""
    chose = "The evaluation split, which chose it" if result.protocol == "paper" else "The selection clips"
    sel = result.metrics["fusion"]["selection"]
    objective = Objective(result.by, result.gap_lambda)
    value = {"objective": objective.values(sel)["objective"], "objective_cse": objective.clip_se(sel)}
    chosen_by = (f"; the objective, {objective.label()}, {percent(value, 'objective')}"
                 if result.by not in dict(FIGURES) else "")
    return (f"{chose} (%, the gap in points, ± one standard error from the clips): {figures_line(sel)}{chosen_by}")


def _title(result: FusionResult) -> str:
    """What the fusion is, which clips chose it and how well they know it (the table's title, the
    registered model's description)."""
    rule = "that trained every epoch" if result.full_budget else "with predictions, ASHA-stopped ones included"
    where = ("the evaluation split (protocol paper, as the paper did: its evaluation figures are not an unbiased "
             "estimate)" if result.protocol == "paper" else "the selection clips only")
    sel = result.metrics["fusion"]["selection"]
    devices = ", ".join(f"{k[2:].upper()} {int(v)}" for k, v in sorted(sel.items(), key=lambda kv: (kv[0] != "n_a", kv[0]))
                        if k.startswith("n_") and k not in ("n_bc", "n_unseen"))
    se = Objective(result.by, result.gap_lambda).clip_se(sel)
    known = (f"; {devices} selection clips (B&C {int(sel.get('n_bc', 0))}) know its {result.by} within "
             f"+-{100 * se:.1f} points (one standard error from the clips)" if devices and math.isfinite(se) else "")
    note = f"; {result.note}" if result.note else ""
    return (f"{result.method} fusion by {result.by} of the trials of {result.experiment!r}: {len(result.members)} "
            f"member(s) of {len(result.candidates)} candidate(s) (every finished trial {rule}), chosen on {where}"
            f"{known}{note}")
