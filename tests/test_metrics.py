"""sepfl.metrics against brute-force definitions, scikit-learn and hand-computed cases."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

from sepfl import metrics


def brute_pairwise(gt, pred):
    """Precision / recall over all unordered pairs, by enumeration."""
    both = same_pred = same_gt = 0
    for a, b in itertools.combinations(range(len(gt)), 2):
        sp, sg = pred[a] == pred[b], gt[a] == gt[b]
        same_pred += sp
        same_gt += sg
        both += sp and sg
    precision = both / same_pred if same_pred else 1.0
    recall = both / same_gt if same_gt else 1.0
    return precision, recall


def brute_bcubed(gt, pred):
    """Per-sample precision / recall of the sample's own cluster, averaged."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    precision = [np.mean(gt[pred == pred[i]] == gt[i]) for i in range(len(gt))]
    recall = [np.mean(pred[gt == gt[i]] == pred[i]) for i in range(len(gt))]
    return float(np.mean(precision)), float(np.mean(recall))


def f_score(p, r):
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


labelings = st.integers(1, 30).flatmap(
    lambda n: st.tuples(st.lists(st.integers(-4, 5), min_size=n, max_size=n),
                        st.lists(st.integers(-1000, 1000), min_size=n, max_size=n)
                        | st.lists(st.integers(-3, 3), min_size=n, max_size=n)))


@given(labelings)
def test_pairwise_and_bcubed_match_brute_force(pair):
    gt, pred = pair
    scores = metrics.evaluate(np.array(gt), np.array(pred))
    p, r = brute_pairwise(gt, pred)
    assert scores["pairwise_precision"] == pytest.approx(p, abs=1e-12)
    assert scores["pairwise_recall"] == pytest.approx(r, abs=1e-12)
    assert scores["pairwise_f"] == pytest.approx(f_score(p, r), abs=1e-12)
    p, r = brute_bcubed(gt, pred)
    assert scores["bcubed_precision"] == pytest.approx(p, abs=1e-12)
    assert scores["bcubed_recall"] == pytest.approx(r, abs=1e-12)
    assert scores["bcubed_f"] == pytest.approx(f_score(p, r), abs=1e-12)


@given(labelings)
def test_nmi_matches_sklearn(pair):
    gt, pred = pair
    want = normalized_mutual_info_score(gt, pred, average_method="arithmetic")
    assert metrics.nmi(np.array(gt), np.array(pred)) == pytest.approx(want, abs=1e-9)


def test_hand_computed_case():
    # Classes {0,1,2} {3,4}; clusters {0,1} {2,3,4}. n_ij = [[2,1],[0,2]].
    gt = [7, 7, 7, -2, -2]
    pred = [0, 0, 5, 5, 5]
    p, r, f = metrics.pairwise(np.array(gt), np.array(pred))
    # TP = 4+1+4-5 = 4; predicted pairs = 4+9-5 = 8; true pairs = 9+4-5 = 8.
    assert (p, r) == (0.5, 0.5) and f == 0.5
    p, r, _ = metrics.bcubed(np.array(gt), np.array(pred))
    assert p == pytest.approx((4 / 2 + 1 / 3 + 4 / 3) / 5)
    assert r == pytest.approx((4 / 3 + 1 / 3 + 4 / 2) / 5)


def test_all_singletons_prediction():
    gt = np.array([0, 0, 1, 1])
    p, r, f = metrics.pairwise(gt, np.arange(4))
    assert (p, r, f) == (1.0, 0.0, 0.0)
    assert metrics.bcubed(gt, np.arange(4)) == pytest.approx((1.0, 0.5, 2 / 3))


def test_both_all_singletons_is_perfect():
    scores = metrics.evaluate(np.arange(5), np.arange(10, 15))
    assert all(value == 1.0 for value in scores.values())


def test_single_cluster_cases():
    ones = np.zeros(4, dtype=np.int64)
    assert metrics.nmi(ones, ones) == 1.0
    assert metrics.nmi(ones, np.array([0, 0, 1, 1])) == 0.0
    assert metrics.pairwise(np.array([0, 0, 1, 1]), ones) == pytest.approx((1 / 3, 1.0, 0.5))


def test_single_sample():
    assert metrics.evaluate([3], [-9]) == {
        "pairwise_precision": 1.0, "pairwise_recall": 1.0, "pairwise_f": 1.0,
        "bcubed_precision": 1.0, "bcubed_recall": 1.0, "bcubed_f": 1.0, "nmi": 1.0}


def test_identical_partitions_relabelled():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 50, size=2000)
    perm = rng.permutation(50) * 3 - 70
    scores = metrics.evaluate(gt, perm[gt])
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0), abs=1e-12)


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 8, size=300), rng.integers(-5, 5, size=300)
    assert metrics.evaluate(torch.from_numpy(gt), torch.from_numpy(pred).int()) == \
        metrics.evaluate(gt, pred)


def test_large_input_matches_sklearn_nmi():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 20_000, size=500_000)
    pred = np.where(rng.random(gt.shape) < 0.9, gt, rng.integers(0, 20_000, size=gt.shape))
    scores = metrics.evaluate(gt, pred)
    assert scores["nmi"] == pytest.approx(
        normalized_mutual_info_score(gt, pred, average_method="arithmetic"), abs=1e-9)
    # A pair inside a predicted cluster is correct when neither member was reassigned: 0.9².
    assert scores["pairwise_precision"] == pytest.approx(0.81, abs=0.005)
    assert scores["pairwise_recall"] == pytest.approx(0.81, abs=0.005)


def test_split_class_keeps_precision():
    # Splitting one class of n evenly in two: precision 1, recall 2 C(n/2, 2) / C(n, 2).
    n = 10
    p, r, _ = metrics.pairwise(np.zeros(n, dtype=int), np.repeat([0, 1], n // 2))
    assert p == 1.0
    assert r == pytest.approx(2 * math.comb(n // 2, 2) / math.comb(n, 2))


def brute_anchored(gt, pred, anchors):
    """Ordered pairs (anchor, any other sample) and BCubed over the anchors, by enumeration."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    both = same_pred = same_gt = 0
    for a in np.flatnonzero(anchors):
        for b in range(len(gt)):
            if a != b:
                sp, sg = pred[a] == pred[b], gt[a] == gt[b]
                same_pred += sp
                same_gt += sg
                both += sp and sg
    precision = both / same_pred if same_pred else 1.0
    recall = both / same_gt if same_gt else 1.0
    b_precision = np.mean([np.mean(gt[pred == pred[i]] == gt[i]) for i in np.flatnonzero(anchors)])
    b_recall = np.mean([np.mean(pred[gt == gt[i]] == pred[i]) for i in np.flatnonzero(anchors)])
    return precision, recall, b_precision, b_recall


@given(labelings, st.data())
def test_anchored_matches_brute_force(pair, data):
    gt, pred = pair
    anchors = np.array(data.draw(st.lists(st.booleans(), min_size=len(gt), max_size=len(gt))))
    if not anchors.any():
        anchors[data.draw(st.integers(0, len(gt) - 1))] = True
    scores = metrics.anchored(np.array(gt), np.array(pred), anchors)
    expected = brute_anchored(gt, pred, anchors)
    for key, value in zip(("pairwise_precision", "pairwise_recall", "bcubed_precision",
                           "bcubed_recall"), expected):
        assert scores[key] == pytest.approx(value, abs=1e-12)
    if anchors.all():
        full = metrics.evaluate(np.array(gt), np.array(pred))
        assert scores["pairwise_f"] == pytest.approx(full["pairwise_f"], abs=1e-12)
        assert scores["bcubed_f"] == pytest.approx(full["bcubed_f"], abs=1e-12)


def test_anchored_counts_a_merge_into_other_samples():
    # anchors 0, 1 (class 0) joined to a cluster of non-anchors of class 1: precision falls,
    # while the non-anchors' own split (2, 3 vs 4) does not count
    gt, pred = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 0, 1])
    scores = metrics.anchored(gt, pred, np.array([True, True, False, False, False]))
    assert scores["pairwise_precision"] == pytest.approx(2 / 6)
    assert scores["pairwise_recall"] == 1.0
    assert scores["bcubed_precision"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="anchors"):
        metrics.anchored(gt, pred, np.zeros(5, bool))
