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
- :func:`bootstrap_greedy`: forward selection bagged over bootstrap resamples of the selection clips
  (Breiman's bagging of Caruana's selection): a member's weight is the share of resamples whose
  ensemble took it, so a gain that a clip or two make weighs what those clips' luck weighs; when
  every resample keeps one candidate alone, that candidate is the fusion, and the note says so.
- :func:`held_back_greedy`: bagged forward selection whose ensemble is taken only when it beats the
  best single candidate on clips it was not chosen on: the selection clips are split in halves within
  each device, the ensemble and the best single candidate are chosen on one half and compared on the
  other, both ways and over several splits. Compared on the clips it was chosen on, the ensemble is
  flattered by the choice, and so is the single candidate (the winner of a noisy ranking); on the
  held-back half neither is. With no gain there it is the best single candidate.
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
    note: str = ""  # what the choice did that a user should know (a fallback to one candidate)

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


def stratified_halves(strata: Sequence, repeats: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``2 * repeats`` (choose-on, held-back) pairs of clip indices: ``repeats`` random splits of the
    clips into halves within each stratum (device), each half once on either side."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in sorted(set(strata.tolist()))]
    pairs = []
    for _ in range(repeats):
        first, second = [], []
        for g in groups:
            order = rng.permutation(g)
            cut = len(g) // 2 + (rng.random() < 0.5 if len(g) % 2 else 0)  # an odd clip to either half
            first.append(order[:cut])
            second.append(order[cut:])
        a, b = np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
        pairs += [(a, b), (b, a)]
    return pairs


def stratified_bootstrap(strata: Sequence, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample of clip indices, drawn with replacement within each stratum (device), so
    that every device keeps its count of clips (a resample without a B clip has no Metric B)."""
    strata = np.asarray(strata)
    return np.concatenate([rng.choice(g, size=len(g), replace=True)
                           for g in (np.flatnonzero(strata == s) for s in sorted(set(strata.tolist())))])


def bootstrap_greedy(probs: Sequence[np.ndarray], score_on: Callable[[np.ndarray | None], Score],
                     strata: Sequence, steps: int = 9, bags: int = 40, seed: int = 0) -> Selection:
    """Forward selection (:func:`greedy_selection`, every candidate) on each of ``bags`` bootstrap
    resamples of the selection clips (:func:`stratified_bootstrap`), each resample's ensemble weighing
    the same in the pooled weights.

    ``score_on(rows)`` is the score on the selection clips ``rows`` (an index array, repeats counted;
    None: all of them); ``strata`` the clips' devices. Where the clips cannot tell candidates apart,
    the resamples disagree and the weight is shared among them, instead of going to whichever a
    single ranking of noisy figures put first (greedy selection's winner's curse); where one
    candidate or one ensemble is better beyond the clips' noise, every resample takes it. A member
    whose gain one clip makes is taken only by the resamples that draw that clip in its favour. When
    every resample keeps one candidate alone, it is the fusion, with a note."""
    n = len(probs)
    if n == 0:
        raise AscError("fusion needs at least one candidate")
    if steps < 0 or bags < 1:
        raise AscError("bootstrap greedy: steps >= 0, bags >= 1")
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    everything = score_on(None)
    if n == 1 or steps == 0:  # one candidate, or one pick (--size 1): the best single candidate
        return top_k(probs, everything, 1)
    rng = np.random.default_rng(seed)
    counts: dict[int, float] = {}
    order: list[int] = []
    for _ in range(bags):
        rows = stratified_bootstrap(strata, rng)
        chosen, _ = _greedy_once([p[rows] for p in probs], score_on(rows), list(range(n)), steps, 1)
        for i in chosen:
            counts[i] = counts.get(i, 0.0) + 1.0 / len(chosen)
        order += chosen
    selection = _counts_to_selection(counts, order, probs, everything)
    if len(selection.members) == 1:
        return dataclasses.replace(selection, note=f"one trial alone: every one of {bags} bootstrap resamples of the "
                                                   "selection clips kept it alone (no ensemble beat it on any)")
    return selection


def held_back_greedy(probs: Sequence[np.ndarray], score_on: Callable[[np.ndarray | None], Score],
                     strata: Sequence, steps: int = 9, bags: int = 20, repeats: int = 5,
                     seed: int = 0) -> Selection:
    """Bagged forward selection, taken only when it beats the best single candidate on held-back clips.

    ``score_on(rows)`` is the score on the selection clips ``rows`` (an index array; None: all of
    them); ``strata`` the clips' devices. For each pair of :func:`stratified_halves`, the ensemble
    (:func:`greedy_selection` with ``bags``) and the best single candidate are chosen on one half and
    scored on the other; the ensemble chosen on all the clips is the fusion when it scored higher in
    most of the held-back halves and on average, else the best single candidate, with a note that
    says why. A gain that one clip makes shows only in the halves that hold that clip back, half of
    them, and is not taken. A pair whose halves do not both hold every device (a device with one clip)
    does not count: a half without C would choose on B alone; with none left, the best single candidate."""
    n = len(probs)
    if n == 0:
        raise AscError("fusion needs at least one candidate")
    if steps < 0 or bags < 1 or repeats < 1:
        raise AscError("held-back greedy: steps >= 0, bags and repeats >= 1")
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    everything = score_on(None)
    single = top_k(probs, everything, 1)
    if n == 1 or steps == 0:  # one candidate, or one pick (--size 1): the best single candidate
        return single
    gains = []
    strata = np.asarray(strata)
    devices = set(strata.tolist())
    for chosen_on, held in stratified_halves(strata, repeats, seed):
        if set(strata[chosen_on].tolist()) != devices or set(strata[held].tolist()) != devices:
            continue  # a half without one of the devices scores another figure (B&C of B alone)
        score_fit, score_held = score_on(chosen_on), score_on(held)
        fit = [p[chosen_on] for p in probs]
        ensemble = greedy_selection(fit, score_fit, steps=steps, bags=bags, seed=seed)
        best = top_k(fit, score_fit, 1)
        rest = [p[held] for p in probs]
        gain = score_held(ensemble.fuse(rest)) - score_held(best.fuse(rest))
        if np.isfinite(gain):
            gains.append(gain)
    if not gains:
        return dataclasses.replace(single, note="the best single trial: the selection clips are too few to hold "
                                                "any back and check an ensemble on them")
    ensemble = greedy_selection(probs, everything, steps=steps, bags=bags, seed=seed)
    gain, wins = float(np.mean(gains)), int(np.sum(np.asarray(gains) > 0))
    if gain > 0 and wins > len(gains) / 2 and len(ensemble.members) > 1:
        return ensemble
    return dataclasses.replace(single, note=f"the best single trial: ensembles chosen on half the selection clips "
                                            f"did not beat it on the other half (higher in {wins} of {len(gains)} "
                                            f"halves, mean gain {gain:+.4f})")
