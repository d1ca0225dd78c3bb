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

from typing import Optional, Tuple

from sepfl import edges, ops
from sepfl._validate import Array, to_numpy, to_tensor
from sepfl.config import ClusterConfig
from sepfl.device import resolve_device
from sepfl.distributed import cluster_sharded
from sepfl.features import normalize_features
from sepfl.knn import unit_knn
from sepfl.model import PairClassifier
from sepfl.stages import (GROUP_STAGE, ClusterResult, Stopwatch, candidates, check_inputs,
                          checked_knn, group, grouping_of, pair_scores, resolve_scheme)

__all__ = ["cluster", "ClusterResult"]


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
        return cluster_sharded(features, model, config, knn=knn, knn_cache=knn_cache)
    # the one check of the inputs: past it, stages trust the features and the kNN graph
    features = check_inputs(features, model, config)
    device = resolve_device(config.device)
    watch = Stopwatch(device)
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
    stats = cosine = None
    if scheme == "edges":
        with watch.stage("edges"):
            src, dst, rank = edges.candidate_edges(nbrs, candidates(model, config))
            stats = edges.edge_statistics(e, nbrs, sims, src, dst, rank)
            cosine = sims[src, rank]
    else:
        with watch.stage("pairs"):
            src, dst = ops.select_pairs(nbrs, density, config.max_per_node)
    with watch.stage("scores"):
        scores = pair_scores(model, config, scheme, e, src, dst, stats)
    grouping = grouping_of(model, config, scheme, scores)
    with watch.stage(GROUP_STAGE[scheme]):
        labels = group(src, dst, scores, features.shape[0], grouping, cosine)
    return ClusterResult(labels=labels, density=to_numpy(density), src=to_numpy(src),
                         dst=to_numpy(dst), scores=to_numpy(scores), threshold=grouping.threshold,
                         grouping=grouping, timings=watch.timings, scheme=scheme,
                         features=to_numpy(features), nbrs=to_numpy(nbrs), sims=to_numpy(sims),
                         embeddings=to_numpy(e))
