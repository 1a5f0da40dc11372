"""Fusion maths on hand-made probabilities, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from asc import AscError
from asc.fusion import average, best_per_group, greedy_selection, top_k
from asc.metrics import device_metrics

# Four clips, two on the reference device and two on B; two classes.
LABELS = np.array([0, 1, 0, 1])
DEVICES = np.array(["a", "a", "b", "b"])


def metric_b(probs: np.ndarray) -> float:
    return device_metrics(LABELS, probs.argmax(1), DEVICES, 2)["metric_b"]


def confident(right: list[bool], sure: float) -> np.ndarray:
    """Probabilities that put ``sure`` on the true class where ``right``, else on the other one."""
    out = np.empty((len(LABELS), 2))
    for i, (label, ok) in enumerate(zip(LABELS, right)):
        out[i, label if ok else 1 - label] = sure
        out[i, 1 - label if ok else label] = 1 - sure
    return out


# The A specialist is sure where it is right and unsure where it is wrong; the B specialist likewise;
# averaged they are right everywhere. The third candidate is wrong everywhere.
A_EXPERT = confident([True, True, False, False], 0.9)
A_EXPERT[2:] = confident([True, True, False, False], 0.6)[2:]
B_EXPERT = confident([False, False, True, True], 0.9)
B_EXPERT[:2] = confident([False, False, True, True], 0.6)[:2]
WRONG = confident([False, False, False, False], 0.8)
CANDIDATES = [A_EXPERT, B_EXPERT, WRONG]


def test_average_is_the_weighted_mean():
    fused = average([A_EXPERT, WRONG], weights=[3, 1])
    np.testing.assert_allclose(fused, 0.75 * A_EXPERT + 0.25 * WRONG)
    np.testing.assert_allclose(fused.sum(1), 1.0)
    with pytest.raises(AscError, match="shape"):
        average([A_EXPERT, A_EXPERT[:2]])
    with pytest.raises(AscError, match="weights"):
        average([A_EXPERT, WRONG], weights=[0, 0])


def test_fused_metrics_against_a_hand_computation():
    fused = average([A_EXPERT, B_EXPERT])
    # Clip 0: (0.9 + 0.4) / 2 = 0.65 on class 0 (right); clip 2: (0.4 + 0.9) / 2 = 0.65 on class 0 (right).
    assert fused[0, 0] == pytest.approx(0.65) and fused[2, 0] == pytest.approx(0.65)
    m = device_metrics(LABELS, fused.argmax(1), DEVICES, 2)
    assert (m["acc_a"], m["acc_b"], m["metric_b"], m["device_gap"]) == (1.0, 1.0, 1.0, 0.0)
    assert metric_b(A_EXPERT) == metric_b(B_EXPERT) == 0.5 and metric_b(WRONG) == 0.0


def test_greedy_finds_the_complementary_pair_and_stops_at_its_best_step():
    selection = greedy_selection(CANDIDATES, metric_b, steps=5)
    assert selection.members == (0, 1) and selection.weights == pytest.approx((0.5, 0.5))
    assert selection.score == 1.0
    assert selection.history[:2] == (0.5, 1.0) and len(selection.history) == 6  # 5 steps tried, truncated at 1
    np.testing.assert_allclose(selection.fuse(CANDIDATES), average([A_EXPERT, B_EXPERT]))


def test_greedy_adds_with_replacement_when_repeating_a_member_helps():
    """One clip whose best fused probability of class 0 is 2/3: the ensemble S, W, S (weights 2:1)."""
    s_model, w_model = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    score = lambda p: -abs(float(p[0, 0]) - 2 / 3)
    selection = greedy_selection([s_model, w_model], score, steps=4)
    assert selection.members == (0, 1) and selection.weights == pytest.approx((2 / 3, 1 / 3))
    assert selection.score == pytest.approx(0.0)
    assert selection.history[:3] == pytest.approx((-1 / 3, -1 / 6, 0.0)) and max(selection.history[3:]) < 0


def test_bagging_pools_weights_and_is_reproducible():
    first = greedy_selection(CANDIDATES, metric_b, steps=3, bags=10, bag_fraction=0.67, seed=1)
    again = greedy_selection(CANDIDATES, metric_b, steps=3, bags=10, bag_fraction=0.67, seed=1)
    assert first == again and sum(first.weights) == pytest.approx(1.0)
    assert 2 not in first.members or first.weights[first.members.index(2)] < 0.5


def test_top_k_and_best_per_group():
    assert top_k(CANDIDATES, metric_b, 2).members == (0, 1)
    by_group = best_per_group(CANDIDATES, ["mean_subtraction", "none", "none"], metric_b)
    assert set(by_group.members) == {0, 1} and by_group.weights == pytest.approx((0.5, 0.5))
    with pytest.raises(AscError, match="k must be"):
        top_k(CANDIDATES, metric_b, 4)
    with pytest.raises(AscError, match="init"):
        greedy_selection(CANDIDATES, metric_b, init=0)


# --------------------------------------------------------------------------------------------------
# Fusion that does not fit noise; clip uncertainty
# --------------------------------------------------------------------------------------------------
def _onehot(pred, n_classes=3, sharp=0.9):
    p = np.full((len(pred), n_classes), (1 - sharp) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = sharp
    return p


def _gate_case(second, labels, devices):
    from asc.fusion import held_back_greedy
    from asc.metrics import device_metrics

    half = len(labels) // 2  # the first model: right on the first half, confidently wrong on the second
    first = _onehot(labels[:half].tolist() + [(y + 1) % 3 for y in labels[half:]])

    def score_on(rows):  # the score on the clips `rows`, of probabilities already cut to them
        ix = np.arange(len(labels)) if rows is None else rows
        return lambda fused: device_metrics(labels[ix], fused.argmax(1), devices[ix], 3)["metric_a"]

    return held_back_greedy([first, second], score_on, devices, steps=5)


def test_the_gate_takes_a_real_gain_and_refuses_one_a_clip_makes():
    labels = np.array([0, 1, 2] * 20)
    devices = np.array(["a", "b", "c"] * 20)
    # A second model that knows nothing of the first half and is right on the second: a real gain.
    good = np.full((60, 3), 1 / 3)
    good[30:] = _onehot(labels[30:].tolist(), sharp=0.95)
    taken = _gate_case(good, labels, devices)
    assert len(taken.members) == 2 and not taken.note and taken.score == 1.0
    # One that knows nothing but one clip the first misses: one clip is not evidence.
    one = np.full((60, 3), 1 / 3)
    one[45] = _onehot([labels[45]], sharp=0.95)[0]
    refused = _gate_case(one, labels, devices)
    assert refused.members == (0,) and "did not beat it on the other half" in refused.note


def test_the_gate_never_chooses_on_a_half_that_lacks_a_device():
    """One C clip: every split of the clips leaves one half without C, where B&C would be B alone.
    No pair counts, and the fusion is the best single candidate, saying why."""
    labels = np.array([0, 1, 2] * 20)
    devices = np.array((["a", "b"] * 30)[:59] + ["c"])
    good = np.full((60, 3), 1 / 3)
    good[30:] = _onehot(labels[30:].tolist(), sharp=0.95)
    alone = _gate_case(good, labels, devices)
    assert len(alone.members) == 1 and "too few to hold any back" in alone.note


def test_the_gate_with_one_pick_is_the_best_single_candidate():
    from asc.fusion import held_back_greedy

    labels = np.array([0, 1, 2] * 10)
    devices = np.array(["a", "b", "c"] * 10)
    probs = [_onehot(labels.tolist()), _onehot([(y + 1) % 3 for y in labels]), np.full((30, 3), 1 / 3)]

    def score_on(rows):
        ix = np.arange(30) if rows is None else rows
        return lambda fused: float((fused.argmax(1) == labels[ix]).mean())

    assert held_back_greedy(probs, score_on, devices, steps=0).members == (0,)


def _bootstrap_case(probs, labels, devices, **options):
    from asc.fusion import bootstrap_greedy
    from asc.metrics import device_metrics

    def score_on(rows):  # the score on the clips `rows` (repeats counted), of probabilities cut to them
        ix = np.arange(len(labels)) if rows is None else rows
        return lambda fused: device_metrics(labels[ix], fused.argmax(1), devices[ix], 3)["metric_a"]

    return bootstrap_greedy(probs, score_on, devices, **options)


def test_the_bootstrap_fusion_takes_a_real_gain_and_weighs_a_gain_one_clip_makes_as_that_clips_luck():
    labels = np.array([0, 1, 2] * 20)
    devices = np.array(["a", "b", "c"] * 20)
    first = _onehot(labels[:30].tolist() + [(y + 1) % 3 for y in labels[30:]])  # wrong on the second half
    good = np.full((60, 3), 1 / 3)
    good[30:] = _onehot(labels[30:].tolist(), sharp=0.95)  # right where the first is wrong: a real gain
    taken = _bootstrap_case([first, good], labels, devices, steps=5)
    assert set(taken.members) == {0, 1} and not taken.note and taken.score == 1.0
    one = np.full((60, 3), 1 / 3)
    one[45] = _onehot([labels[45]], sharp=0.95)[0]  # knows one clip the first misses: luck, not evidence
    lucky = _bootstrap_case([first, one], labels, devices, steps=5)
    weights = dict(zip(lucky.members, lucky.weights))
    assert weights[0] > 0.5 > weights.get(1, 0.0)  # taken only by the resamples that drew clip 45
    np.testing.assert_array_equal(lucky.fuse([first, one]).argmax(1), first.argmax(1))  # and it changes nothing


def test_the_bootstrap_fusion_keeps_a_candidate_no_resample_could_improve_and_says_so():
    labels = np.array([0, 1, 2] * 10)
    devices = np.array(["a", "b", "c"] * 10)
    probs = [_onehot([(y + 1) % 3 for y in labels]), _onehot(labels.tolist()), np.full((30, 3), 1 / 3)]
    alone = _bootstrap_case(probs, labels, devices, steps=5, bags=10)
    assert alone.members == (1,) and alone.weights == (1.0,) and "every one of 10 bootstrap resamples" in alone.note
    assert _bootstrap_case(probs, labels, devices, steps=0).members == (1,)  # one pick: the best single


def test_a_bootstrap_resample_keeps_every_devices_count():
    from asc.fusion import stratified_bootstrap

    devices = np.array(["a"] * 7 + ["b"] * 3 + ["c"] * 2)
    rows = stratified_bootstrap(devices, np.random.default_rng(0))
    assert [int((devices[rows] == d).sum()) for d in ("a", "b", "c")] == [7, 3, 2]


def test_held_back_halves_split_every_device_and_hold_each_clip_back_once_per_split():
    from asc.fusion import stratified_halves

    devices = np.array(["a"] * 7 + ["b"] * 3 + ["c"] * 2)
    pairs = stratified_halves(devices, 4, seed=0)
    assert len(pairs) == 8
    for k in range(0, 8, 2):
        (fit, held), (fit2, held2) = pairs[k], pairs[k + 1]
        assert np.array_equal(fit, held2) and np.array_equal(held, fit2)
        assert sorted(np.concatenate([fit, held]).tolist()) == list(range(12))
        for d, n in (("a", 7), ("b", 3), ("c", 2)):
            assert sorted([(devices[fit] == d).sum(), (devices[held] == d).sum()]) == [n // 2, n - n // 2]
