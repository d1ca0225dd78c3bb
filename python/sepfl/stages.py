"""The stages of a clustering run, shared by :func:`sepfl.cluster.cluster`, the sharded
run (:mod:`sepfl.distributed`), :mod:`sepfl.incremental` and training's calibration.

Each takes inputs already checked at the public boundary (:func:`check_inputs`,
:func:`checked_knn`) and trusts them; :class:`ClusterResult` is what a run returns
and :class:`Stopwatch` times its stages.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np
import torch

from sepfl import edges, ops
from sepfl._validate import Array, as_indices, as_values, check_index_range, to_numpy, to_tensor
from sepfl.config import ClusterConfig
from sepfl.model import PairClassifier

log = logging.getLogger("sepfl")

# the last stage's name in ClusterResult.timings, by scheme
GROUP_STAGE = {"edges": "group", "sepfl": "link"}


@dataclasses.dataclass
class ClusterResult:
    """What :func:`cluster` found.

    Attributes
    ----------
    labels : int64 ndarray [N]
        Cluster of each sample, 0..C-1 in order of each cluster's smallest member.
    density : float32 ndarray [N]
    src, dst : int64 ndarray [P]
        The scored pairs: candidate edges ("edges") or each sample's nearest
        denser neighbour ("sepfl").
    scores : float32 ndarray [P]
        P(same identity) of each pair.
    threshold : float
        The threshold the pairs were kept at.
    grouping : Grouping
        How the pairs were grouped (the threshold again, and Infomap's settings).
    timings : dict of str to float
        Seconds spent in each stage, in pipeline order.
    scheme : {"edges", "sepfl"}
        The scheme that ran (``"sepfl"`` for a model without an edge head).
    features : float32 ndarray [N, D]
        The L2-normalised features.
    nbrs, sims : int64 / float32 ndarray [N, k]
        The kNN graph.
    embeddings : float32 ndarray [N, 2D]
        Each sample's network embedding ``e_u``.

    The last four are what :mod:`sepfl.incremental` continues from.
    """

    labels: np.ndarray
    density: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    scores: np.ndarray
    threshold: float
    grouping: Grouping
    timings: Dict[str, float]
    scheme: str
    features: np.ndarray
    nbrs: np.ndarray
    sims: np.ndarray
    embeddings: np.ndarray

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def num_singletons(self) -> int:
        return int((np.bincount(self.labels) == 1).sum()) if self.labels.size else 0


class Stopwatch:
    """Times named stages, synchronising the GPU so each stage is charged its own work."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timings: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = time.perf_counter() - start
        log.info("%-11s %8.3f s", name, self.timings[name])


def check_inputs(features: Array, model: PairClassifier, config: ClusterConfig) -> Array:
    """``features`` as float32 [N, D] once D and ``config.k`` are the model's (ValueError)."""
    if config.k != model.k:
        raise ValueError(f"config.k = {config.k} but the model was built for k = {model.k}")
    features = as_values(features, "features", 2)
    if features.shape[1] != model.dim:
        raise ValueError(f"features have D = {features.shape[1]} but the model was built "
                         f"for D = {model.dim}")
    return features


def checked_knn(nbrs: Array, sims: Array, rows: range, n: int, k: int,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """A given kNN graph's lists of ``rows``, checked once for the stages that trust them.

    Parameters
    ----------
    nbrs, sims : int [len(rows), k], float [len(rows), k]
        The lists of samples ``rows`` of N = ``n``; entries in ``[-1, N)``.

    Returns
    -------
    int64 / float32 tensors [len(rows), k] on ``device``.

    Raises
    ------
    TypeError, ValueError, IndexError
        Dtypes, a shape other than ``(len(rows), k)``, an index outside ``[-1, N)``.
    """
    nbrs, sims = as_indices(nbrs, "nbrs", 2), as_values(sims, "sims", 2)
    for table in (nbrs, sims):
        if tuple(table.shape) != (len(rows), k):
            raise ValueError(f"knn table has shape {tuple(table.shape)}, expected "
                             f"({len(rows)}, {k})")
    check_index_range(nbrs, "nbrs", n, allow_missing=True)
    return to_tensor(nbrs, device), to_tensor(sims, device)


def candidates(model: PairClassifier, config: ClusterConfig) -> int:
    """Candidate edges per sample of the "edges" scheme (``config.candidates``, below k)."""
    return min(config.candidates, model.k - 1)


def pair_scores(model: PairClassifier, config: ClusterConfig, scheme: str, e: torch.Tensor,
                src: torch.Tensor, dst: torch.Tensor,
                stats: Optional[torch.Tensor]) -> torch.Tensor:
    """P(same identity) float32 [P] of each pair: the edge head's from ``stats`` [P, 13]
    ("edges"), or the pair classifier's from the embeddings ``e`` [N, 2D] of the pairs'
    ends ``src``, ``dst`` (int64 [P]) ("sepfl")."""
    if scheme == "edges":
        return model.edge_head.to(e.device).eval().probability(stats)
    return model.score_pairs(e, src, dst, batch_size=config.pair_batch_size, bf16=config.bf16)


class Grouping(NamedTuple):
    """How :func:`group` joins scored pairs.

    how : {"link", "infomap", "components"}
        Union-find of the pairs above ``threshold`` ("sepfl"), or
        :func:`sepfl.edges.group_edges`'s grouping ("edges").
    threshold : float
        Pairs at or below it are dropped first.
    markov_time : float
        Infomap's.
    full_cosine : float
        Infomap's link weight is P, times (cosine / full_cosine)² below it.
    join, join_above : float
        Infomap's modules with ``join`` edges of P > ``join_above`` between them joined
        (:func:`sepfl.edges.join_modules`; ``join`` 0: none).
    prior : float
        The scores are re-weighted from even odds to this share of same-identity edges
        before anything else (:func:`sepfl.edges.shifted_prior`; one half: as scored).
    """

    how: str
    threshold: float
    markov_time: float = 1.0
    full_cosine: float = 0.0
    join: float = 0.0
    join_above: float = edges.JOIN_ABOVE
    prior: float = edges.EVEN_ODDS


def grouping_of(model: PairClassifier, config: ClusterConfig, scheme: str,
                scores: torch.Tensor,
                mean: Callable[[torch.Tensor], float] = edges.mean_of) -> Grouping:
    """How :func:`group` joins the pairs scored ``scores`` (float32 [P]): "edges":
    :func:`edge_grouping` (the mean score picks among the model's calibrated groupings),
    with ``config.prior_shift`` the scores re-weighted to the share of same-identity edges
    :func:`sepfl.edges.estimated_prior` finds in them; "sepfl":
    union-find ("link") of the pairs above the threshold (0.5 unless configured).
    ``mean`` reduces a tensor to its mean (a sharded run's over all its processes)."""
    if scheme != "edges":
        return Grouping("link", 0.5 if config.threshold is None else config.threshold)
    same_share = mean(scores)
    grouping = edge_grouping(model, config, same_share)
    if not same_share < edges.EVEN_ODDS:
        return grouping
    if not config.prior_shift:
        log.info("candidate edges' mean P is below one half (identities of a few samples "
                 "each): grouped as scored; prior_shift=True re-weights P to the set's "
                 "estimated share of same-identity edges, for higher precision where "
                 "identities are compact")
        return grouping
    prior = edges.estimated_prior(scores, mean)
    log.info("candidate edges' mean P is below one half: their P re-weighted to the "
             "estimated share %.3f of same-identity edges", prior)
    return grouping._replace(prior=prior)


def group(src: Array, dst: Array, scores: Array, num_nodes: int, grouping: Grouping,
          cosine: Optional[Array] = None) -> np.ndarray:
    """Labels int64 [num_nodes] of pairs ``src``, ``dst`` (int64 [P]) scored ``scores``
    (float32 [P]) with cosine similarities ``cosine`` (float32 [P], for Infomap's
    weights), grouped as ``grouping`` says (the scores first re-weighted to its prior)."""
    if grouping.how == "link":
        return to_numpy(ops.link(src, dst, scores, grouping.threshold, num_nodes))
    scores = edges.shifted_prior(to_numpy(scores), grouping.prior)
    return edges.group_edges(to_numpy(src), to_numpy(dst), scores, num_nodes,
                             grouping.how, grouping.threshold, grouping.markov_time,
                             cosine=None if cosine is None else to_numpy(cosine),
                             full_cosine=grouping.full_cosine, join=grouping.join,
                             join_above=grouping.join_above)


def resolve_scheme(model: PairClassifier, config: ClusterConfig) -> str:
    """``config.scheme``, or "sepfl" (logged) when it asks for "edges" of a model without
    an edge head."""
    if config.scheme == "edges" and model.edge_head is None:
        log.warning("this model has no edge head (trained with edge_steps=0, or a SEPFL "
                    "checkpoint): clustering with scheme='sepfl'")
        return "sepfl"
    return config.scheme


def edge_grouping(model: PairClassifier, config: ClusterConfig, same_share: float) -> Grouping:
    """How "edges" groups its scored edges: the config's values, and where they are None the
    grouping, threshold, Markov time and joining the model calibrated on the training graph
    most alike this one (:meth:`sepfl.edges.EdgeHead.calibrated` of ``same_share``, the mean
    P over the candidate edges); connected components (logged) when Infomap is asked for
    but not installed."""
    calibrated = model.edge_head.calibrated(same_share)
    if model.edge_head.same_share.numel() > 1:  # a head of one calibration graph picks nothing
        log.info("candidate edges' mean P %.3f: grouping as calibrated on the training graph "
                 "with mean P %.3f", same_share, calibrated.same_share)
    grouping = config.grouping or calibrated.grouping
    if grouping == "infomap" and not edges.infomap_available():
        log.warning("the infomap package is not installed (pip install infomap): grouping "
                    "the scored edges by connected components instead")
        grouping = "components"
    threshold = config.threshold
    if threshold is None:
        threshold = 0.5 if grouping == "infomap" else calibrated.threshold
    markov_time = calibrated.markov_time if config.markov_time is None else config.markov_time
    join = calibrated.join if config.join is None else config.join
    join_above = calibrated.join_above if config.join_above is None else config.join_above
    return Grouping(grouping, threshold, markov_time, config.full_cosine, join, join_above)
