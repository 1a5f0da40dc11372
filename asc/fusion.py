"""Fusion: averaging class probabilities (the paper's late fusion) and choosing what to average.

Pure functions on arrays; where the candidates come from (MLflow, checkpoints) is the caller's
business. Every chooser takes ``score(probs) -> float`` (higher is better), computed by the caller on
the *selection* clips only (Metric B by default in ``search``); the evaluation split is for reporting
the chosen ensemble, never for choosing it.

- :func:`average`: weighted mean of probability matrices (weights normalised to sum to 1).
- :func:`greedy_selection`: Caruana et al. (2004), "Ensemble selection from libraries of models":
  start from the best few candidates, add with replacement the candidate that most improves the
  ensemble's score, keep the ensemble of the best step; optional bagging (repeat on random halves of
  the candidates and pool the counts) against overfitting the selection clips.
- :func:`top_k` and :func:`best_per_group` (the paper's A5 + A6 + A7: the best system of each
  enhancement).
- :func:`gated_greedy`: Caruana's forward selection whose ensemble is taken only when its gain over
  the best single candidate on the selection clips is larger than the noise of that gain: in at
  least ``1 - quantile`` of stratified bootstrap resamples of the clips (by device, the same resample
  for both: a paired comparison), the ensemble scores higher. A gain one or two clips make is not
  taken; with nothing beyond noise it is the best single candidate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from asc.errors import AscError

Score = Callable[[np.ndarray], float]


def average(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The weighted mean of ``probs`` (each ``[clips, classes]``, the same clips in the same order)."""
    if not len(probs):
        raise AscError("fusion needs at least one member")
    shape = np.shape(probs[0])
    if any(np.shape(p) != shape for p in probs):
        raise AscError(f"fusion members disagree on shape: {sorted({np.shape(p) for p in probs})}")
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(probs),) or (w < 0).any() or w.sum() <= 0:
        raise AscError(f"fusion weights must be {len(probs)} non-negative numbers, not all zero")
    return np.tensordot(w / w.sum(), np.stack([np.asarray(p, dtype=np.float64) for p in probs]), axes=1)


@dataclass(frozen=True)
class Selection:
    """A chosen ensemble: candidate indices with their weights, and how the choice went."""

    members: tuple[int, ...]  # distinct candidate indices, in the order first chosen
    weights: tuple[float, ...]  # one per member, summing to 1
    score: float  # the ensemble's score on the selection clips
    history: tuple[float, ...] = ()  # greedy: the score after each step (before truncation)
    note: str = ""  # what the choice did that a user should know (gated_greedy's fallback)

    def fuse(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        return average([probs[i] for i in self.members], self.weights)


def _counts_to_selection(counts: dict[int, float], order: list[int], probs, score: Score, history=()) -> Selection:
    members = tuple(i for i in dict.fromkeys(order) if counts.get(i, 0) > 0)
    total = sum(counts[i] for i in members)
    weights = tuple(counts[i] / total for i in members)
    return Selection(members, weights, float(score(average([probs[i] for i in members], weights))), tuple(history))


def _greedy_once(probs, score: Score, candidates: list[int], steps: int, init: int):
    ranked = sorted(candidates, key=lambda i: -score(np.asarray(probs[i])))
    chosen = ranked[:init]
    total = np.sum([np.asarray(probs[i], dtype=np.float64) for i in chosen], axis=0)
    history = [score(total / len(chosen))]
    for _ in range(steps):
        # Ties go to the candidate ranked higher on its own: a deterministic, sensible order.
        best = max(ranked, key=lambda i: score((total + probs[i]) / (len(chosen) + 1)))
        chosen.append(best)
        total = total + probs[best]
        history.append(score(total / len(chosen)))
    best_step = int(np.argmax(history))  # the first of the best: the smallest ensemble that scores so
    return chosen[:init + best_step], history


def greedy_selection(probs: Sequence[np.ndarray], score: Score, steps: int = 20, init: int = 1, bags: int = 0,
                     bag_fraction: float = 0.5, seed: int = 0) -> Selection:
    """Caruana's forward selection with replacement over ``probs`` (one matrix per candidate).

    ``init`` best candidates start the ensemble; ``steps`` additions follow, each the candidate
    (possibly one already in) whose addition scores best; the ensemble is truncated at its best step.
    With ``bags`` > 0 the selection runs that many times on a random ``bag_fraction`` of the
    candidates and the members' counts are pooled into the weights.
    """
    n = len(probs)
    if n == 0:
        raise AscError("fusion needs at least one candidate")
    if not 1 <= init <= n or steps < 0 or bags < 0 or not 0 < bag_fraction <= 1:
        raise AscError(f"greedy selection: init must be 1..{n}, steps and bags >= 0, bag_fraction in (0, 1]")
    if bags == 0:
        chosen, history = _greedy_once(probs, score, list(range(n)), steps, init)
        counts = {i: float(chosen.count(i)) for i in set(chosen)}
        return _counts_to_selection(counts, chosen, probs, score, history)
    rng = np.random.default_rng(seed)
    counts: dict[int, float] = {}
    order: list[int] = []
    size = max(init, int(round(bag_fraction * n)))
    for _ in range(bags):
        subset = sorted(rng.choice(n, size=size, replace=False).tolist())
        chosen, _ = _greedy_once(probs, score, subset, steps, min(init, len(subset)))
        for i in chosen:  # each bag's ensemble weighs the same in the pool
            counts[i] = counts.get(i, 0.0) + 1.0 / len(chosen)
        order += chosen
    return _counts_to_selection(counts, order, probs, score)


def top_k(probs: Sequence[np.ndarray], score: Score, k: int) -> Selection:
    """The ``k`` candidates that score best on their own, averaged with equal weights."""
    if not 1 <= k <= len(probs):
        raise AscError(f"top-k fusion: k must be 1..{len(probs)}, not {k}")
    ranked = sorted(range(len(probs)), key=lambda i: -score(np.asarray(probs[i])))[:k]
    return _counts_to_selection({i: 1.0 for i in ranked}, ranked, probs, score)


def best_per_group(probs: Sequence[np.ndarray], groups: Sequence[str], score: Score) -> Selection:
    """The best-scoring candidate of each group (e.g. each enhancement: the paper's A5 + A6 + A7),
    averaged with equal weights."""
    if len(groups) != len(probs):
        raise AscError(f"best-per-group fusion: {len(groups)} groups for {len(probs)} candidates")
    best: dict[str, int] = {}
    for i, group in enumerate(groups):
        if group not in best or score(np.asarray(probs[i])) > score(np.asarray(probs[best[group]])):
            best[group] = i
    chosen = sorted(best.values(), key=lambda i: -score(np.asarray(probs[i])))
    return _counts_to_selection({i: 1.0 for i in chosen}, chosen, probs, score)


def bootstrap_indices(strata: Sequence, resamples: int, seed: int = 0) -> list[np.ndarray]:
    """``resamples`` resamples of the clips (indices), each stratified: every stratum (device) keeps
    its count, drawn with replacement from its own clips."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in sorted(set(strata.tolist()))]
    return [np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups]) for _ in range(resamples)]


def gated_greedy(probs: Sequence[np.ndarray], score_on: Callable[[np.ndarray, int | None], float],
                 resamples: int, steps: int = 10, quantile: float = 0.1) -> Selection:
    """Caruana's forward selection whose ensemble is accepted only beyond the noise (module docstring).

    ``score_on(fused, b)`` scores fused probabilities on the selection clips (``b`` None) or on the
    ``b``-th bootstrap resample of them (0 .. ``resamples`` - 1; the caller draws them, e.g. with
    :func:`bootstrap_indices`, stratified by device).

    The greedy path runs its ``steps`` additions in full, as :func:`greedy_selection` does: an addition
    that does not help at once can help with the next (two members disagreeing tie; a third decides).
    Each prefix of the path that scores above the best single candidate is then compared with it on
    the same resamples; the prefixes whose gain is positive in at least ``1 - quantile`` of them pass,
    and the best-scoring of those (the smallest on a tie) is the ensemble. None passes: the best
    single candidate, with a note that says why."""
    n = len(probs)
    if n == 0:
        raise AscError("fusion needs at least one candidate")
    if resamples < 10 or not 0 < quantile < 0.5 or steps < 0:
        raise AscError("gated greedy: at least 10 resamples, quantile in (0, 0.5), steps >= 0")
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    ranked = sorted(range(n), key=lambda i: -score_on(probs[i], None))
    chosen = [ranked[0]]
    total = probs[ranked[0]].copy()
    path, fused, history = [list(chosen)], [total.copy()], [score_on(total, None)]
    for _ in range(steps):
        best = max(ranked, key=lambda i: score_on((total + probs[i]) / (len(chosen) + 1), None))
        chosen.append(best)
        total = total + probs[best]
        path.append(list(chosen))
        fused.append(total / len(chosen))
        history.append(score_on(fused[-1], None))
    single = np.array([score_on(probs[ranked[0]], b) for b in range(resamples)])
    passing = []
    for k in range(1, len(path)):
        if history[k] <= history[0]:
            continue  # not even higher on the clips it is chosen on
        gains = np.array([score_on(fused[k], b) for b in range(resamples)]) - single
        if np.quantile(gains, quantile) > 0:
            passing.append(k)
    pick = max(passing, key=lambda k: (history[k], -k)) if passing else 0
    members = path[pick]
    counts = {i: float(members.count(i)) for i in set(members)}
    selection = _counts_to_selection(counts, members, probs, lambda p: score_on(p, None), history[:pick + 1])
    if len(selection.members) == 1:
        note = ("the best single trial: no ensemble beat it by more than the noise of the selection clips"
                if max(history) > history[0] else "the best single trial: no ensemble scored higher on the selection clips")
        return dataclasses.replace(selection, note=note)
    return selection
