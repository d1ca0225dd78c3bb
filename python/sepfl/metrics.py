"""Clustering quality: pairwise and BCubed precision / recall / F, and NMI (SEPFL §5).

Every metric is a function of the contingency table ``n_ij`` (samples with true
label i in predicted cluster j). :func:`evaluate` builds that table once, as the
nonzero counts of the distinct ``(gt, pred)`` label pairs, so the cost is a few
sorts of N integers whatever the number of clusters (5M samples take seconds).

Labels are arbitrary integers (negative and non-contiguous values included):
only equality between labels matters.

Conventions for the degenerate cases (N = 0 is refused with ValueError):

* Pairwise precision is 1.0 when the prediction puts no two samples together
  (all singletons): no predicted pair, so no wrong one. Pairwise recall is
  likewise 1.0 when every true class is a singleton. An F score is 0.0 when
  precision and recall are both 0.
* NMI is 1.0 when both labelings have one cluster each (identical partitions),
  and 0.0 when exactly one of them has a single cluster, as in scikit-learn's
  ``normalized_mutual_info_score``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepfl._validate import Array, as_indices, to_numpy

__all__ = ["pairwise", "bcubed", "nmi", "evaluate", "anchored"]


@dataclass(frozen=True)
class _Contingency:
    """Sparse contingency table of two labelings of ``n`` samples.

    ``counts`` [nnz] int64 holds the nonzero cells ``n_ij``; ``gt_of`` and
    ``pred_of`` [nnz] the dense (0-based) true class and predicted cluster of
    each cell; ``gt_sizes`` [C_gt] and ``pred_sizes`` [C_pred] the marginals.
    """

    n: int
    counts: np.ndarray
    gt_of: np.ndarray
    pred_of: np.ndarray
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray


def _as_labels(x: Array, name: str) -> np.ndarray:
    return to_numpy(as_indices(x, name, 1))


def _contingency(gt: Array, pred: Array) -> _Contingency:
    gt = _as_labels(gt, "gt")
    pred = _as_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same length, got {gt.shape[0]} and "
                         f"{pred.shape[0]}")
    if gt.shape[0] == 0:
        raise ValueError("cannot evaluate a clustering of 0 samples")
    _, gt_dense, gt_sizes = np.unique(gt, return_inverse=True, return_counts=True)
    _, pred_dense, pred_sizes = np.unique(pred, return_inverse=True, return_counts=True)
    cell = gt_dense.astype(np.int64) * len(pred_sizes) + pred_dense
    cells, counts = np.unique(cell, return_counts=True)
    return _Contingency(n=gt.shape[0], counts=counts.astype(np.int64),
                        gt_of=cells // len(pred_sizes), pred_of=cells % len(pred_sizes),
                        gt_sizes=gt_sizes.astype(np.int64), pred_sizes=pred_sizes.astype(np.int64))


def _f_score(precision: float, recall: float) -> float:
    total = precision + recall
    return 0.0 if total == 0 else 2.0 * precision * recall / total


def _pairwise(table: _Contingency) -> tuple[float, float, float]:
    # Integer sums: exact (5M samples in one cluster give 2.5e13, far below 2**63).
    same_both = int(np.sum(table.counts ** 2)) - table.n
    same_pred = int(np.sum(table.pred_sizes ** 2)) - table.n
    same_gt = int(np.sum(table.gt_sizes ** 2)) - table.n
    precision = 1.0 if same_pred == 0 else same_both / same_pred
    recall = 1.0 if same_gt == 0 else same_both / same_gt
    return precision, recall, _f_score(precision, recall)


def _bcubed(table: _Contingency) -> tuple[float, float, float]:
    squared = table.counts.astype(np.float64) ** 2
    precision = float(np.sum(squared / table.pred_sizes[table.pred_of]) / table.n)
    recall = float(np.sum(squared / table.gt_sizes[table.gt_of]) / table.n)
    return precision, recall, _f_score(precision, recall)


def _entropy(sizes: np.ndarray, n: int) -> float:
    p = sizes / n
    return float(-np.sum(p * np.log(p)))


def _nmi(table: _Contingency) -> float:
    one_gt, one_pred = len(table.gt_sizes) == 1, len(table.pred_sizes) == 1
    if one_gt and one_pred:
        return 1.0
    if one_gt or one_pred:
        return 0.0
    n = table.n
    outer = table.gt_sizes[table.gt_of].astype(np.float64) * table.pred_sizes[table.pred_of]
    mutual = float(np.sum(table.counts / n * np.log(table.counts * float(n) / outer)))
    mean_entropy = (_entropy(table.gt_sizes, n) + _entropy(table.pred_sizes, n)) / 2.0
    # Rounding can push the ratio a hair outside [0, 1] (e.g. identical partitions).
    return float(np.clip(mutual / mean_entropy, 0.0, 1.0))


def pairwise(gt: Array, pred: Array) -> tuple[float, float, float]:
    """Pairwise precision, recall and F score (``F_P``) over all unordered sample pairs.

    Parameters
    ----------
    gt, pred : array of int, shape [N]
        True and predicted labels (numpy array or torch tensor, any integer
        values). N must be > 0.

    Returns
    -------
    (precision, recall, f) : tuple of float
        Precision is 1.0 when ``pred`` is all singletons and recall 1.0 when
        ``gt`` is (see the module docstring).

    Raises
    ------
    TypeError
        Labels that are not integers.
    ValueError
        Empty input, arrays that are not 1-D, or lengths that differ.
    """
    return _pairwise(_contingency(gt, pred))


def bcubed(gt: Array, pred: Array) -> tuple[float, float, float]:
    """BCubed precision, recall and F score (``F_B``), averaged over samples.

    Parameters
    ----------
    gt, pred : array of int, shape [N]
        True and predicted labels, N > 0.

    Returns
    -------
    (precision, recall, f) : tuple of float

    Raises
    ------
    TypeError, ValueError
        As :func:`pairwise`.
    """
    return _bcubed(_contingency(gt, pred))


def nmi(gt: Array, pred: Array) -> float:
    """Normalised mutual information, normalised by the arithmetic mean of the entropies.

    Parameters
    ----------
    gt, pred : array of int, shape [N]
        True and predicted labels, N > 0.

    Returns
    -------
    float
        In [0, 1]; equal to scikit-learn's ``normalized_mutual_info_score``
        with ``average_method="arithmetic"``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pairwise`.
    """
    return _nmi(_contingency(gt, pred))


def evaluate(gt: Array, pred: Array) -> dict[str, float]:
    """All metrics from one contingency table.

    Parameters
    ----------
    gt, pred : array of int, shape [N]
        True and predicted labels, N > 0.

    Returns
    -------
    dict of str to float
        Keys ``pairwise_precision``, ``pairwise_recall``, ``pairwise_f``,
        ``bcubed_precision``, ``bcubed_recall``, ``bcubed_f`` and ``nmi``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pairwise`.
    """
    table = _contingency(gt, pred)
    scores = {}
    for kind, values in (("pairwise", _pairwise(table)), ("bcubed", _bcubed(table))):
        scores.update(zip((f"{kind}_precision", f"{kind}_recall", f"{kind}_f"), values))
    scores["nmi"] = _nmi(table)
    return scores


def anchored(gt: Array, pred: Array, anchors: np.ndarray) -> dict[str, float]:
    """Pairwise and BCubed scores of a clustering of all N samples, counted from ``anchors``.

    Pairwise counts the ordered pairs (i, j), i != j, whose first sample is an
    anchor; BCubed averages over the anchors, each anchor's cluster and class
    taken over all samples. So a cluster that joins an anchor to other samples
    counts against precision, whatever those samples are, while pairs of two
    non-anchors do not count. With every sample an anchor these are
    :func:`pairwise` and :func:`bcubed`. Training scores its held-out
    identities this way inside the whole training graph (:mod:`sepfl.train`).

    Parameters
    ----------
    gt, pred : array of int, shape [N]
        True and predicted labels, N > 0.
    anchors : bool ndarray [N]
        The samples counted from; at least one.

    Returns
    -------
    dict of str to float
        Keys ``pairwise_precision``, ``pairwise_recall``, ``pairwise_f``,
        ``bcubed_precision``, ``bcubed_recall`` and ``bcubed_f``.
    """
    gt, pred = _as_labels(gt, "gt"), _as_labels(pred, "pred")
    anchors = np.asarray(anchors)
    if gt.shape != pred.shape or anchors.dtype != bool or anchors.shape != gt.shape \
            or not anchors.any():
        raise ValueError(f"gt, pred and anchors must have one length; anchors bool with at "
                         f"least one True (got {gt.shape[0]}, {pred.shape[0]}, "
                         f"{anchors.dtype} {anchors.shape})")
    # per sample: the size of its class, of its cluster and of their intersection
    _, gt_dense, gt_sizes = np.unique(gt, return_inverse=True, return_counts=True)
    _, pred_dense, pred_sizes = np.unique(pred, return_inverse=True, return_counts=True)
    cell = gt_dense.astype(np.int64) * len(pred_sizes) + pred_dense
    _, cell_dense, cell_sizes = np.unique(cell, return_inverse=True, return_counts=True)
    in_gt, in_pred, in_both = (sizes[dense][anchors].astype(np.int64) for sizes, dense in
                               ((gt_sizes, gt_dense), (pred_sizes, pred_dense),
                                (cell_sizes, cell_dense)))
    same_both, same_pred, same_gt = ((x - 1).sum() for x in (in_both, in_pred, in_gt))
    precision = 1.0 if same_pred == 0 else same_both / same_pred
    recall = 1.0 if same_gt == 0 else same_both / same_gt
    b_precision = float(np.mean(in_both / in_pred))
    b_recall = float(np.mean(in_both / in_gt))
    return {"pairwise_precision": float(precision), "pairwise_recall": float(recall),
            "pairwise_f": float(_f_score(precision, recall)), "bcubed_precision": b_precision,
            "bcubed_recall": b_recall, "bcubed_f": float(_f_score(b_precision, b_recall))}
