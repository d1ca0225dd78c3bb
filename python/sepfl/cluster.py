"""The clustering pipeline (SEPFL.md §1-§4, inference), with two schemes.

features → kNN → density → per-sample embeddings, then

* ``scheme="edges"`` (the default, :mod:`sepfl.edges`): each sample's first
  ``candidates`` neighbours as candidate edges → edge statistics → the edge
  head's P(same) → edges with P > threshold grouped as training calibrated
  (Infomap, or connected components);
* ``scheme="sepfl"``: SEPFL's pairs (nearest denser neighbour) → pair
  classifier → links (P(same) > threshold) → union-find.

Every stage runs on one device: the native CPU kernels and torch on the CPU,
or the CUDA kernels and torch on a GPU. Memory is bounded by batching the
network (``batch_size`` samples and ``pair_batch_size`` pairs at a time).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from sepfl import edges, ops
from sepfl._validate import Array, as_indices, as_values, check_index_range, to_numpy, to_tensor
from sepfl.config import ClusterConfig
from sepfl.device import resolve_device
from sepfl.features import normalize_features
from sepfl.knn import unit_knn
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


class _Stopwatch:
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


def cluster(features: Array, model: PairClassifier, config: Optional[ClusterConfig] = None,
            knn: Optional[Tuple[Array, Array]] = None,
            knn_cache: Optional[str] = None) -> ClusterResult:
    """Cluster embeddings with a trained pair classifier.

    Parameters
    ----------
    features : float [N, D], numpy array or torch tensor
        One embedding per sample; rows are L2-normalised here (with a warning
        when they were not unit length).
    model : PairClassifier
        Trained for this D and k; it is switched to eval mode and moved to the device.
    config : ClusterConfig, optional
        With ``distributed=True``, every process of a torch.distributed job
        calls this with the same arguments and clusters its shard of the rows
        (:func:`sepfl.distributed.cluster_sharded`).
    knn : (nbrs int [N, k], sims float [N, k]), optional
        A precomputed kNN graph (self at rank 0); built when None.
    knn_cache : str, optional
        File to reuse the kNN graph from (rebuilt when N, k or the features differ).

    Returns
    -------
    ClusterResult
        Labels and intermediate results as numpy arrays, and per-stage timings.

    Raises
    ------
    ValueError
        D or k not the model's, non-finite or all-zero rows, fewer than k + 1 samples.
    """
    config = config or ClusterConfig()
    if config.distributed:
        from sepfl.distributed import cluster_sharded

        return cluster_sharded(features, model, config, knn=knn, knn_cache=knn_cache)
    # the one check of the inputs: past it, stages trust the features and the kNN graph
    features = check_inputs(features, model, config)
    device = resolve_device(config.device)
    watch = _Stopwatch(device)
    with watch.stage("normalize"):
        features = to_tensor(normalize_features(features), device)
    n = features.shape[0]
    with watch.stage("knn"):
        if knn is None:
            nbrs, sims = unit_knn(features, cache=knn_cache, **config.knn_settings())
        else:
            nbrs, sims = checked_knn(*knn, range(n), n, config.k, device)
    with watch.stage("density"):
        density = ops.density(sims, config.rho)
    model = model.to(device).eval()
    with watch.stage("embeddings"):
        e = model.embed_graph(features, nbrs, batch_size=config.node_batch_size,
                              bf16=config.bf16, progress=config.progress)
    scheme = resolve_scheme(model, config)
    stats = None
    if scheme == "edges":
        with watch.stage("edges"):
            src, dst, rank = edges.candidate_edges(nbrs, candidates(model, config))
            stats = edges.edge_statistics(e, nbrs, sims, src, dst, rank)
    else:
        with watch.stage("pairs"):
            src, dst = ops.select_pairs(nbrs, density, config.max_per_node)
    with watch.stage("scores"):
        scores = pair_scores(model, config, scheme, e, src, dst, stats)
    grouping = grouping_of(model, config, scheme)
    with watch.stage(GROUP_STAGE[scheme]):
        labels = group(src, dst, scores, features.shape[0], grouping)
    return ClusterResult(labels=labels, density=to_numpy(density), src=to_numpy(src),
                         dst=to_numpy(dst), scores=to_numpy(scores), threshold=grouping[1],
                         timings=watch.timings, scheme=scheme, features=to_numpy(features),
                         nbrs=to_numpy(nbrs), sims=to_numpy(sims), embeddings=to_numpy(e))


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


def grouping_of(model: PairClassifier, config: ClusterConfig,
                scheme: str) -> Tuple[str, float, float]:
    """How :func:`group` joins the scored pairs: (grouping, threshold, markov_time).

    "edges": :func:`edge_grouping`; "sepfl": ("link", the threshold, unused 1.0),
    union-find of the pairs above the threshold (0.5 unless configured).
    """
    if scheme == "edges":
        return edge_grouping(model, config)
    return "link", 0.5 if config.threshold is None else config.threshold, 1.0


def group(src: Array, dst: Array, scores: Array, num_nodes: int,
          grouping: Tuple[str, float, float]) -> np.ndarray:
    """Labels int64 [num_nodes] of pairs ``src``, ``dst`` (int64 [P]) scored ``scores``
    (float32 [P]), grouped as ``grouping`` (:func:`grouping_of`) says."""
    how, threshold, markov_time = grouping
    if how == "link":
        return to_numpy(ops.link(src, dst, scores, threshold, num_nodes))
    return edges.group_edges(to_numpy(src), to_numpy(dst), to_numpy(scores), num_nodes, how,
                             threshold, markov_time)


def resolve_scheme(model: PairClassifier, config: ClusterConfig) -> str:
    """``config.scheme``, or "sepfl" (logged) when it asks for "edges" of a model without
    an edge head."""
    if config.scheme == "edges" and model.edge_head is None:
        log.warning("this model has no edge head (trained with edge_steps=0, or a SEPFL "
                    "checkpoint): clustering with scheme='sepfl'")
        return "sepfl"
    return config.scheme


def edge_grouping(model: PairClassifier, config: ClusterConfig) -> Tuple[str, float, float]:
    """How "edges" groups its scored edges: (grouping, threshold, markov_time).

    The config's values, with the model's calibrated grouping, threshold and
    Markov time where they are None, and connected components (logged) when
    Infomap is asked for but not installed.
    """
    head = model.edge_head
    grouping = config.grouping or head.grouping
    if grouping == "infomap" and not edges.infomap_available():
        log.warning("the infomap package is not installed (pip install infomap): grouping "
                    "the scored edges by connected components instead")
        grouping = "components"
    threshold = config.threshold
    if threshold is None:
        threshold = 0.5 if grouping == "infomap" else float(head.threshold)
    markov_time = float(head.markov_time) if config.markov_time is None else config.markov_time
    return grouping, threshold, markov_time
