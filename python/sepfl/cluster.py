"""The SEPFL clustering pipeline (SEPFL.md §1-§4, inference).

features → kNN → density → pairs (nearest denser neighbour) → per-sample
embeddings → pair scores → links (P(same) > threshold) → union-find → labels.

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

import sepfl
from sepfl import ops
from sepfl._validate import (Array, as_values, check_device, check_positive_int,
                             check_probability, check_threads, to_tensor)
from sepfl.io import normalize_features
from sepfl.knn import build_knn
from sepfl.model import PairClassifier

log = logging.getLogger("sepfl")


@dataclasses.dataclass
class ClusterConfig:
    """Settings of :func:`cluster`, shared by the Python API and the CLI.

    Attributes
    ----------
    k : int
        Neighbours per sample, self included (80 in SEPFL); must equal the model's k.
    rho : float
        Similarity counted as "close" by the density (0.7 in SEPFL).
    threshold : float
        A pair is linked when its P(same identity) is above this (0.5: the argmax).
    max_per_node : int
        Denser neighbours paired per sample (1 in SEPFL).
    device : str or None
        "cpu", "cuda" or "cuda:N"; None picks a GPU when sepfl's CUDA module and one are present.
    knn_backend : str
        "auto", "faiss" or "torch" (see :func:`sepfl.knn.build_knn`).
    knn_precision : str
        "fp32", "tf32" or "bf16" for the torch kNN backend.
    knn_exact : bool
        False lets faiss use an approximate IVF index (for millions of samples; recall is logged).
    node_batch_size : int
        Samples embedded at a time.
    pair_batch_size : int
        Pairs classified at a time.
    bf16 : bool or None
        Compute dtype of the network: bfloat16 (True), float32 (False), or None for
        whichever the device runs faster (:func:`sepfl.model.fast_bf16`: bfloat16 on
        GPUs and on CPUs with AMX or AVX-512 BF16, float32 otherwise).
    progress : bool
        Show progress bars for long stages.
    threads : int or None
        torch threads for the run; None keeps torch's setting (see sepfl._threads).
    """

    k: int = 80
    rho: float = 0.7
    threshold: float = 0.5
    max_per_node: int = 1
    device: Optional[str] = None
    knn_backend: str = "auto"
    knn_precision: str = "fp32"
    knn_exact: bool = True
    node_batch_size: int = 2048
    pair_batch_size: int = 65536
    bf16: Optional[bool] = None
    progress: bool = True
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        check_positive_int(self.k, "k", minimum=2)
        check_probability(self.rho, "rho")
        check_probability(self.threshold, "threshold")
        check_positive_int(self.max_per_node, "max_per_node")
        check_positive_int(self.node_batch_size, "node_batch_size")
        check_positive_int(self.pair_batch_size, "pair_batch_size")
        check_device(self.device)
        check_threads(self.threads)


def resolve_device(device: Optional[str]) -> torch.device:
    """The torch device to run on; None means a GPU when sepfl can use one, else the CPU."""
    if device is None:
        return torch.device("cuda" if sepfl.has_cuda() else "cpu")
    resolved = check_device(device)
    if resolved.type == "cuda" and not sepfl.has_cuda():
        raise ValueError("device 'cuda' was asked for, but no GPU is usable or sepfl was built "
                         "without its CUDA module")
    return resolved


@dataclasses.dataclass
class ClusterResult:
    """What :func:`cluster` found.

    Attributes
    ----------
    labels : int64 ndarray [N]
        Cluster of each sample, 0..C-1 in order of each cluster's smallest member.
    density : float32 ndarray [N]
    src, dst : int64 ndarray [P]
        The scored pairs (each sample's nearest denser neighbour).
    scores : float32 ndarray [P]
        P(same identity) of each pair.
    timings : dict of str to float
        Seconds spent in each stage, in pipeline order.
    """

    labels: np.ndarray
    density: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    scores: np.ndarray
    timings: Dict[str, float]

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


def _numpy(x: Array) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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
    device = resolve_device(config.device)
    if config.k != model.k:
        raise ValueError(f"config.k = {config.k} but the model was built for k = {model.k}")
    features = as_values(features, "features", 2)
    if features.shape[1] != model.dim:
        raise ValueError(f"features have D = {features.shape[1]} but the model was built "
                         f"for D = {model.dim}")
    watch = _Stopwatch(device)
    with watch.stage("normalize"):
        features = to_tensor(normalize_features(features), device)
    with watch.stage("knn"):
        if knn is None:
            nbrs, sims = build_knn(features, k=config.k, backend=config.knn_backend,
                                   exact=config.knn_exact, precision=config.knn_precision,
                                   cache=knn_cache,
                                   progress=config.progress)
        else:
            nbrs, sims = knn
        nbrs, sims = to_tensor(nbrs, device), to_tensor(sims, device)
        if nbrs.shape != (features.shape[0], config.k):
            raise ValueError(f"knn table has shape {tuple(nbrs.shape)}, expected "
                             f"({features.shape[0]}, {config.k})")
    with watch.stage("density"):
        density = ops.density(sims, config.rho)
    with watch.stage("pairs"):
        src, dst = ops.select_pairs(nbrs, density, config.max_per_node)
    model = model.to(device).eval()
    with watch.stage("embeddings"):
        e = model.node_embeddings(features, nbrs, batch_size=config.node_batch_size,
                                  bf16=config.bf16, progress=config.progress)
    with watch.stage("scores"):
        scores = model.score_pairs(e, src, dst, batch_size=config.pair_batch_size,
                                   bf16=config.bf16)
    with watch.stage("link"):
        labels = ops.link(src, dst, scores, config.threshold, features.shape[0])
    return ClusterResult(labels=_numpy(labels), density=_numpy(density), src=_numpy(src),
                         dst=_numpy(dst), scores=_numpy(scores), timings=watch.timings)
