"""Untrained clustering baselines on the same kNN graph, for comparison with SEPFL.

* :func:`knn_threshold` — link every kNN edge whose cosine similarity is above
  a threshold, then connected components (the "naive" baseline).
* :func:`denser_threshold` — SEPFL's own pairs (each sample's nearest denser
  neighbour) linked by a cosine threshold instead of the network.
* :func:`oracle` — SEPFL's pairs linked exactly when the two samples share a
  true label: the ceiling of one pair per sample, for a perfect classifier.
* :func:`infomap_knn` — Infomap on the kNN graph weighted by similarity, the
  strongest training-free baseline (no labels needed); :func:`best_infomap`
  its best setting over the sweep its users tune by hand.
* :func:`edges_oracle` — the edges scheme's candidates kept exactly when the
  labels match: that scheme's ceiling.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from sepfl import edges, ops
from sepfl._validate import to_numpy
from sepfl.metrics import evaluate


def knn_threshold(nbrs, sims, threshold: float) -> np.ndarray:
    """Labels [N] from kNN edges (ranks >= 1) with similarity > ``threshold``."""
    nbrs, sims = to_numpy(nbrs), to_numpy(sims)
    n, k = nbrs.shape
    src = np.repeat(np.arange(n), k - 1)
    dst = nbrs[:, 1:].reshape(-1)
    scores = np.clip(sims[:, 1:].reshape(-1), 0.0, 1.0)
    valid = dst >= 0
    return ops.link(src[valid], dst[valid], scores[valid], threshold, n)


def denser_pairs(nbrs, sims, rho: float = 0.7) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SEPFL's inference pairs and their cosine similarities: (src, dst, sim) [P]."""
    nbrs, sims = to_numpy(nbrs), to_numpy(sims)
    src, dst = ops.select_pairs(nbrs, ops.density(sims, rho))
    rank = np.argmax(nbrs[src] == dst[:, None], axis=1)
    return src, dst, sims[src, rank]


def denser_threshold(nbrs, sims, threshold: float, rho: float = 0.7) -> np.ndarray:
    """Labels [N] from nearest-denser pairs with similarity > ``threshold``."""
    src, dst, sim = denser_pairs(nbrs, sims, rho)
    return ops.link(src, dst, np.clip(sim, 0.0, 1.0), threshold, len(nbrs))


def oracle(nbrs, sims, gt, rho: float = 0.7) -> np.ndarray:
    """Labels [N] from nearest-denser pairs kept exactly when their true labels match."""
    src, dst, _ = denser_pairs(nbrs, sims, rho)
    gt = to_numpy(gt)
    return ops.link(src, dst, (gt[src] == gt[dst]).astype(np.float32), 0.5, len(nbrs))


def sweep(labels_at, gt, thresholds: Sequence[float]) -> List[Dict[str, float]]:
    """``evaluate(gt, labels_at(t))`` for every threshold, each row with its ``threshold``."""
    return [{"threshold": float(t), **evaluate(gt, labels_at(t))} for t in thresholds]


def best(rows: List[Dict[str, float]], key: str = "pairwise_f") -> Dict[str, float]:
    """The row of a :func:`sweep` with the highest ``key``."""
    return max(rows, key=lambda row: row[key])


def infomap_knn(nbrs, sims, k: int, floor: float) -> np.ndarray:
    """Labels [N] from Infomap on the kNN graph: ranks 1..k-1 with similarity > ``floor``,
    weighted by similarity (the training-free method face-clustering users tune by hand)."""
    nbrs, sims = to_numpy(nbrs), to_numpy(sims)
    src, dst, rank = (x.numpy() for x in edges.candidate_edges(torch.from_numpy(nbrs), k - 1))
    return edges.group_edges(src, dst, sims[src, rank], len(nbrs), "infomap", threshold=floor)


INFOMAP_KS = (50, 80)
INFOMAP_FLOORS = (0.0, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)


def best_infomap(nbrs, sims, gt) -> Dict[str, float]:
    """:func:`infomap_knn` at every k of :data:`INFOMAP_KS` (capped at the table's k) and
    floor of :data:`INFOMAP_FLOORS`: the :func:`sepfl.metrics.evaluate` row with the best
    pairwise F, with its ``k`` and ``floor`` (chosen on the labels ``gt``, as at best a
    user tuning it would)."""
    ks = sorted({min(k, np.shape(nbrs)[1]) for k in INFOMAP_KS})
    return max(({"k": k, "floor": floor, **evaluate(gt, infomap_knn(nbrs, sims, k, floor))}
                for k in ks for floor in INFOMAP_FLOORS), key=lambda row: row["pairwise_f"])


def edges_oracle(nbrs, gt, candidates: int) -> np.ndarray:
    """Labels [N] from the edges scheme's candidates (ranks 1..candidates) kept exactly when
    their true labels match: the ceiling of that scheme's decisions."""
    nbrs, gt = to_numpy(nbrs), to_numpy(gt)
    src, dst, _ = (x.numpy() for x in edges.candidate_edges(torch.from_numpy(nbrs), candidates))
    return edges.group_edges(src, dst, (gt[src] == gt[dst]).astype(np.float32), len(nbrs),
                             "components")
