"""bench-fusion on hand-made pools whose answers are known: copies of one model gain nothing from fusion,
independent models gain; and its refusals of sizes the pool cannot hold. The command end to end on a
real search's MLflow store is in test_fuse.py (it reuses that module's search)."""

from __future__ import annotations

import numpy as np
import pytest

from asc.errors import AscError
from search.bench.fusion import METHODS, Pool, check_sizes, goals, run, split_pool, summarize
from search.fuse import Candidate, Clips

CLASSES = 10


def make_pool(n_a: int, n_b: int, n_c: int, configs: int, seeds: int, accuracy: float, copies: bool,
              seed: int = 0) -> Pool:
    """Candidates right on each clip with probability ``accuracy``, independently of each other (or all
    the same model when ``copies``), confident in their answer."""
    rng = np.random.default_rng(seed)
    devices = np.array(["a"] * n_a + ["b"] * n_b + ["c"] * n_c)
    labels = rng.integers(0, CLASSES, size=len(devices))
    clips = Clips(np.array([f"clip{i:05d}.wav" for i in range(len(devices))]), devices, labels, ("a", "b", "c"))

    def model() -> np.ndarray:
        right = rng.random(len(labels)) < accuracy
        answer = np.where(right, labels, (labels + rng.integers(1, CLASSES, size=len(labels))) % CLASSES)
        probs = np.full((len(labels), CLASSES), 0.3 / (CLASSES - 1))
        probs[np.arange(len(labels)), answer] = 0.7
        return probs

    one = model()
    candidates, members = [], []
    for c in range(configs):
        members.append([])
        for s in range(seeds):
            members[-1].append(len(candidates))
            candidates.append(Candidate(f"run{c}", f"t{c:03d}/seed{s}", "", f"group{c % 3}", None,
                                        probs={"evaluation": one if copies else model()}))
    return Pool(candidates, members, clips, [str(k) for k in range(CLASSES)], "handmade")


def test_copies_of_one_model_gain_nothing_by_any_method():
    pool = make_pool(120, 30, 30, configs=4, seeds=2, accuracy=0.6, copies=True)
    results = run(pool, [8], trials=3, draws=4, seed=0, progress=False)
    for draw in results[8]:
        for label, _, _ in METHODS:
            assert draw[label]["eval"] == 0 and draw[label]["sel"] == 0, label


def test_independent_models_gain_from_fusion_where_the_clips_can_show_it():
    """Averaging independent 60% models is right more often than one of them: with many selection
    clips every method fuses and gains on the unseen clips; the default too."""
    pool = make_pool(1200, 300, 300, configs=6, seeds=2, accuracy=0.6, copies=False)
    rows = summarize(run(pool, [120], trials=5, draws=6, seed=0, progress=False))
    by = {r["method"]: r for r in rows}
    assert by["greedy"]["median"] > 3 and by["top 3"]["median"] > 3
    assert by[METHODS[0][0]]["median"] > 3 and by[METHODS[0][0]]["single"] < 0.5
    assert len(goals(rows)) == 2 and all(isinstance(ok, bool) for _, ok in goals(rows))


def test_a_selection_part_holds_the_asked_clips_and_the_rest_everything_else():
    devices = np.array(["a"] * 100 + ["b"] * 20 + ["c"] * 20 + ["s1"] * 10)
    sel, rest = split_pool(devices, 8, np.random.default_rng(0))
    assert [int((devices[sel] == d).sum()) for d in ("a", "b", "c", "s1")] == [50, 4, 4, 0]  # A capped at half
    assert not set(sel) & set(rest) and len(sel) + len(rest) == 140  # the unseen device is in neither


@pytest.mark.parametrize("sizes, trials, message", [([7], 3, "an even number"), ([40], 3, "too few to score on"),
                                                    ([8], 1, "--trials 1"), ([8], 9, "--trials 9")])
def test_sizes_and_trials_the_pool_cannot_hold_are_refused_in_one_line(sizes, trials, message):
    pool = make_pool(120, 30, 30, configs=4, seeds=2, accuracy=0.6, copies=True)
    with pytest.raises(AscError, match=message) as err:
        check_sizes(pool, sizes, trials)
    assert "\n" not in str(err.value)
