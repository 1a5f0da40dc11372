"""Device-wise metrics of the paper: accuracy per device, acc_bc, Metric A, Metric B, device gap.

- ``acc_<device>``: accuracy on each device's clips;
- ``acc_bc``: accuracy on the non-reference devices seen in training, pooled (B and C in 2019);
- ``acc_unseen``: accuracy on the devices never seen in training, pooled (none in 2019; DCASE 2020's
  s4-s6, the synthetic set's s1, s2), and ``unseen_gap = acc_<reference> - acc_unseen``;
- ``metric_a``: accuracy over all clips, ignoring the device (the paper's Metric A);
- ``metric_b``: the mean of the reference device's accuracy and ``acc_bc`` (the paper's Metric B;
  ``nan`` when either is missing);
- ``device_gap``: ``acc_<reference> - acc_bc``.

Every figure comes with how many clips it stands on (``n_<device>``, ``n_bc``, ``n_unseen``, ``n``)
and its standard error from those clips, ``<figure>_cse`` (:func:`clip_errors`): how far the figure
would move on another draw of as many clips from each device. A device's accuracy is a binomial
proportion; its variance is Agresti and Coull's, p~ (1 - p~) / (n + 4) with p~ = (right + 2) / (n + 4),
rather than the plain p (1 - p) / n, which is 0 when every clip (or none) is right: 4 of 4 B clips
right is not a certainty to within +-0. A pooled accuracy (B&C, Metric A, the unseen devices) is
stratified by device, as the selection splits are made: Var = sum over devices of (n_d / n)^2 Var_d,
which is smaller than one binomial over the pooled clips when the devices' accuracies differ. Metric B
and the gaps are sums of accuracies on disjoint clips: Var(MB) = (Var(A) + Var(B&C)) / 4, Var(gap) =
Var(A) + Var(B&C). These are what a stratified bootstrap over the clips gives (tested), in closed form
from the counts, so that every table, run and tag can carry them; fusion, which compares two
ensembles on the same clips, bootstraps (``asc.fusion``). Over several seeds a figure is their mean
with its standard error from the seeds, ``<figure>_sem`` (:func:`mean_sem`), and its clip error is
that of each clip's correctness averaged over the seeds: the seeds share their clips, so a clip one
seed gets wrong the others tend to get wrong too, and the mean of the seeds' own clip errors would
overstate the mean's.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from asc import REFERENCE_DEVICE


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts, rows = true class, columns = predicted."""
    return np.bincount(np.asarray(y_true) * n_classes + np.asarray(y_pred), minlength=n_classes**2).reshape(
        n_classes, n_classes)


def clip_variance(scores: np.ndarray) -> float:
    """Variance of the mean of per-clip scores (a clip's correctness, 0 or 1, or its mean over seeds)
    over a draw of as many clips: their variance over n, with two right and two wrong clips added
    (Agresti and Coull's adjustment; for 0/1 scores p~ (1 - p~) / (n + 4)). nan without clips."""
    if not len(scores):
        return math.nan
    padded = np.concatenate([np.asarray(scores, dtype=float), [1.0, 1.0, 0.0, 0.0]])
    return float(padded.var() / len(padded))


def clip_errors(scores, devices, reference: str = REFERENCE_DEVICE, seen: Sequence[str] | None = None) -> dict:
    """``<figure>_cse`` for every figure of :func:`device_metrics` from per-clip scores (each clip's
    correctness, or its mean over seeds) and each clip's device (the module docstring)."""
    scores, devices = np.asarray(scores, dtype=float), np.asarray(devices)
    names = sorted(set(devices.tolist()))
    count = {d: int((devices == d).sum()) for d in names}
    var = {f"acc_{d}": clip_variance(scores[devices == d]) for d in names}

    def pooled(group: list[str]) -> float:  # stratified by device
        n = sum(count[d] for d in group)
        return sum((count[d] / n) ** 2 * var[f"acc_{d}"] for d in group) if n else math.nan

    unseen = [] if seen is None else [d for d in names if d not in set(seen)]
    var["metric_a"] = pooled(names)
    var["acc_bc"] = pooled([d for d in names if d != reference and d not in unseen])
    ref_var = var.get(f"acc_{reference}", math.nan)
    var["metric_b"] = (ref_var + var["acc_bc"]) / 4
    var["device_gap"] = ref_var + var["acc_bc"]
    if unseen:
        var["acc_unseen"] = pooled(unseen)
        var["unseen_gap"] = ref_var + var["acc_unseen"]
    return {f"{k}_cse": math.sqrt(v) if v >= 0 else math.nan for k, v in var.items()}


def _accuracy(mask: np.ndarray, correct: np.ndarray) -> float:
    return float(correct[mask].mean()) if mask.any() else math.nan


def device_metrics(y_true: Sequence[int], y_pred: Sequence[int], devices: Sequence[str], n_classes: int,
                   reference: str = REFERENCE_DEVICE, seen: Sequence[str] | None = None, detail: bool = True) -> dict:
    """Every metric above from true and predicted class indices and each clip's device. ``seen``:
    the devices of the training clips (None: every device here counts as seen).

    Returns a flat dict of floats (``nan`` where a group has no clips) plus ``class_acc`` (list per
    class) and ``confusion`` ({device: matrix as nested lists}). ``detail=False``: the accuracies and
    what is made of them only, without counts, standard errors, per-class figures and confusion
    matrices (fusion scores thousands of candidate ensembles this way).
    """
    y_true, y_pred, devices = np.asarray(y_true), np.asarray(y_pred), np.asarray(devices)
    correct = y_true == y_pred
    out: dict = {"metric_a": float(correct.mean()) if len(correct) else math.nan}
    for device in sorted(set(devices.tolist()), key=lambda d: (d != reference, d)):
        out[f"acc_{device}"] = _accuracy(devices == device, correct)
    unseen = np.zeros(len(devices), bool) if seen is None else ~np.isin(devices, list(seen))
    bc = (devices != reference) & ~unseen
    out["acc_bc"] = _accuracy(bc, correct)
    acc_ref = out.get(f"acc_{reference}", math.nan)
    if unseen.any():
        out["acc_unseen"] = _accuracy(unseen, correct)
        out["unseen_gap"] = acc_ref - out["acc_unseen"]
    # nan unless both halves exist: Metric B of one device's clips would be that device's accuracy
    # under another name
    combined = {"metric_b": (acc_ref + out["acc_bc"]) / 2, "device_gap": acc_ref - out["acc_bc"]}
    if not detail:
        return out | combined
    # how many clips each figure stands on, and its standard error from them (the module docstring)
    out["n"] = float(len(devices))
    for device in sorted(set(devices.tolist())):
        out[f"n_{device}"] = float((devices == device).sum())
    out["n_bc"] = float(bc.sum())
    if unseen.any():
        out["n_unseen"] = float(unseen.sum())
    out.update(clip_errors(correct, devices, reference, seen))
    out.update(combined)
    out["class_acc"] = [_accuracy(y_true == k, correct) for k in range(n_classes)]
    out["confusion"] = {d: confusion(y_true[devices == d], y_pred[devices == d], n_classes).tolist()
                        for d in sorted(set(devices.tolist()))}
    return out


SELECTION_METRICS = ("metric_a", "metric_b")
SUFFIXES = ("_cse", "_sem")  # a figure's standard error from the clips, from the seeds
HEADS = {"acc_bc": "B&C", "device_gap": "gap", "acc_unseen": "unseen", "unseen_gap": "u-gap", "metric_a": "MA",
         "metric_b": "MB"}


def column_head(key: str) -> str:
    """A figure's column head in every device table: its device for ``acc_<device>`` (``B``), else
    ``B&C``, ``gap``, ``unseen``, ``u-gap``, ``MA``, ``MB``."""
    return HEADS.get(key) or key[len("acc_"):].upper()


def device_accuracies(metrics: dict) -> dict[str, float]:
    """``{device: accuracy}`` from a metrics dict's ``acc_<device>`` entries (not the pooled B&C or
    unseen accuracies, not the standard errors)."""
    return {k[4:]: v for k, v in metrics.items() if k.startswith("acc_") and k not in ("acc_bc", "acc_unseen")
            and not k.endswith(SUFFIXES)}


def pooled_gaps(selection_devices, seen_devices, reference: str = REFERENCE_DEVICE) -> tuple[list, list]:
    """(the devices B&C pools: those seen in training but the reference, those of them missing from
    ``selection_devices`` when some but not all are): where the second is not empty, a B&C (and a
    Metric B) chosen on those clips is the other devices' figure alone. None at all is a case of its
    own (no B&C), which the callers word themselves."""
    here = set(selection_devices)
    pooled = sorted(set(seen_devices) - {reference})
    missing = [d for d in pooled if d not in here]
    return pooled, (missing if len(missing) < len(pooled) else [])


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); nan for one value)."""
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(values):
        return math.nan, math.nan
    sem = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), sem
