"""Training the pair classifier (SEPFL.md §3 training pairs, §4 recipe).

Candidates are every sample paired with its kNN neighbours at ranks 1..39;
each epoch trains on a class-balanced sample of them with cross-entropy, the
learning rate multiplied by ``lr_gamma`` at the ``lr_milestones``.
:meth:`sepfl.config.TrainConfig.paper` is the published recipe (SGD, batch 512, 100 epochs
of 2M pairs from Xavier-initialised weights: a GPU run).

The default configuration is a CPU recipe for the same network. Embedding one
sample costs ~170 MFLOP (k = 80 tokens through the channel-mixing MLP), the
pair classifier ~1 MFLOP per pair, so end to end a 2-core CPU manages only
~90-100 pairs/s (37 pairs/s for the paper's per-pair fp32 step) and the
classifier sees far too few pairs to learn a similarity. The default
therefore trains in three stages (``benchmarks/train_cost.py`` measures them):

* **classifier warm-up** (``warmup_steps``): the last attention Linear starts
  with zero weights and bias 1/k (:meth:`PairClassifier.init_mean_attention`),
  so every sample's initial embedding is exactly ``[f_u ‖ mean of its k kNN
  entries]``, whatever the mixing layers hold. Those embeddings are computed
  once for the whole training set with :func:`sepfl.ops.aggregate`, and the
  classifier alone trains on them at ~40K pairs/s.
* **end to end** (``epochs``): the whole network, AdamW, small batches (the
  number of steps limits learning here, not the pairs per step). The
  attention learns to weight the closest neighbours most.
* **classifier refit** (``refit_steps``): every training sample embedded once
  more, in eval mode, by the network as trained (the inference path), and the
  classifier alone trained on those embeddings, as in the warm-up: it sees
  millions of pairs of the final embeddings instead of the end-to-end stage's
  tens of thousands.

The end-to-end stage's cost savers: bfloat16 autocast on CPUs with bf16
instructions and on GPUs; every distinct sample of a batch embedded once and
its embedding reused by every pair touching it (BatchNorm then sees one batch
of distinct samples instead of the reference forward's two halves);
channels-first BatchNorm inputs.

A checkpoint is written atomically after every epoch and after the refit, and
training resumes from it; on CPU a resumed run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sepfl import edges, ops
from sepfl._threads import torch_threads
from sepfl._validate import (Array, as_indices, as_values, check_positive_int, to_numpy,
                             to_tensor)
from sepfl.checkpoint import load_checkpoint, save_checkpoint
from sepfl.cluster import cluster
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.device import resolve_device
from sepfl.features import fingerprint, normalize_features
from sepfl.knn import unit_knn
from sepfl.metrics import anchored, evaluate
from sepfl.model import PairClassifier, bf16_autocast, fast_bf16
from sepfl.stages import candidates, pair_scores

__all__ = ["train", "calibrate", "learning_rate", "default_ranks"]

log = logging.getLogger("sepfl")
PathLike = Union[str, Path]

# Settings that may change between a run and its resumption without changing its result.
_RESUMABLE_CHANGES = ("device", "progress", "threads")


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The step-wise schedule: ``lr * lr_gamma ** (milestones passed)``.

    Milestone ``m`` is passed from step ``round(m * total_steps)`` on, so with
    whole epochs (e.g. 100) the drops fall on epoch boundaries as in the paper.
    """
    passed = sum(step >= round(m * total_steps) for m in config.lr_milestones)
    return config.lr * config.lr_gamma ** passed


# ----------------------------------------------------------------------- training data


@dataclasses.dataclass
class _Graph:
    """Training features, kNN graph, labels and candidate pairs, on the training device."""

    features: torch.Tensor   # float32 [N, D], unit rows
    nbrs: torch.Tensor       # int64 [N, k]
    sims: torch.Tensor       # float32 [N, k]
    labels: np.ndarray       # int64 [N]
    src: np.ndarray          # int64 [P] candidate pairs (CPU: sampling happens in numpy)
    dst: np.ndarray          # int64 [P]
    target: np.ndarray       # int64 [P], 1 = same identity


def default_ranks(k: int) -> int:
    """Training ranks when ``TrainConfig.ranks`` is None: SEPFL's 39, or k - 1 for a smaller k."""
    return min(39, k - 1)


def _random_negatives(labels: np.ndarray, count: int,
                      rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` pairs (int64 [count] each) of samples with different labels, drawn uniformly."""
    src, dst = np.empty(0, np.int64), np.empty(0, np.int64)
    while src.size < count:
        a, b = rng.integers(0, labels.size, (2, 2 * (count - src.size) + 16))
        differ = labels[a] != labels[b]
        src, dst = np.concatenate([src, a[differ]]), np.concatenate([dst, b[differ]])
    return src[:count], dst[:count]


def with_negatives(src: np.ndarray, dst: np.ndarray, target: np.ndarray, labels: np.ndarray,
                   seed: int, what: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs with random different-label pairs added when negatives are rare.

    On clean data with a small k the kNN lists may hold (almost) no pair of two
    identities; then pairs from beyond the lists are drawn until negatives are a
    fifth of the candidates (logged). Arrays int64 [P]; ``target`` 1 = same label.
    """
    negatives = int((target == 0).sum())
    wanted = (target.size - negatives) // 4
    if negatives >= wanted:
        return src, dst, target
    extra_src, extra_dst = _random_negatives(labels, wanted - negatives,
                                             np.random.default_rng(seed))
    log.info("%s: %d negative pairs in the kNN lists; added %d random pairs of different "
             "identities", what, negatives, extra_src.size)
    return (np.concatenate([src, extra_src]), np.concatenate([dst, extra_dst]),
            np.concatenate([target, np.zeros(extra_src.size, target.dtype)]))


def _training_graph(features: Array, labels: Array, k: int, ranks: int,
                    knn: Optional[Tuple[Array, Array]], device: torch.device, seed: int,
                    progress: Optional[bool] = None) -> _Graph:
    features = as_values(features, "features", 2)
    labels = to_numpy(as_indices(labels, "labels", 1, shape=(features.shape[0],)))
    if np.unique(labels).size < 2:
        raise ValueError("training needs at least two identities in labels, got "
                         f"{np.unique(labels).size}")
    features = normalize_features(features)  # refuses NaN / inf / all-zero rows
    if knn is None:
        nbrs, sims = unit_knn(features, k=k, progress=progress)
    else:
        nbrs = as_indices(knn[0], "knn nbrs", 2, shape=(features.shape[0], k))
        sims = as_values(knn[1], "knn sims", 2, shape=(features.shape[0], k))
    src, dst, target = ops.train_pairs(to_numpy(nbrs), labels, ranks)
    if int(target.sum()) == 0:
        raise ValueError(f"the training kNN graph has no positive candidate pair in ranks "
                         f"1..{ranks}: no sample has a same-identity neighbour")
    src, dst, target = with_negatives(src, dst, target, labels, _seed(seed, 4),
                                      "training pairs")
    return _Graph(to_tensor(features, device), to_tensor(nbrs, device),
                  to_tensor(sims, device), labels, src, dst, target)


def _configured_graph(features: Array, labels: Array, k: int,
                      knn: Optional[Tuple[Array, Array]], device: torch.device,
                      config: TrainConfig) -> _Graph:
    """:func:`_training_graph` with ``config``'s ranks (k above them), seed and progress."""
    ranks = default_ranks(k) if config.ranks is None else config.ranks
    k = check_positive_int(k, "k", minimum=ranks + 1)
    # progress=False silences the kNN bar too; True leaves the choice to build_knn
    return _training_graph(features, labels, k, ranks, knn, device, config.seed,
                           progress=None if config.progress else False)


def _epoch_pairs(graph: _Graph, config: TrainConfig, epoch: int) -> np.ndarray:
    """Candidate indices of one epoch, shuffled: int64 [pairs, ≤ pairs_per_epoch]."""
    draw = epoch if config.resample_pairs else 0
    chosen = ops.balanced_sample(graph.target, max(1, config.pairs_per_epoch // 2),
                                 seed=_seed(config.seed, 1, draw))
    return np.random.default_rng(_seed(config.seed, 2, epoch)).permutation(chosen)


def _seed(*parts: int) -> int:
    """One 63-bit seed from several integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> 1)


def _steps_per_epoch(graph: _Graph, config: TrainConfig) -> int:
    """Full batches only (a batch of one pair would break the BatchNorms), but at least one."""
    positives = int(graph.target.sum())
    per_class = min(max(1, config.pairs_per_epoch // 2), positives, graph.target.size - positives)
    return max(1, 2 * per_class // config.batch_size)


def _pair_logits(model: PairClassifier, graph: _Graph, src: torch.Tensor,
                 dst: torch.Tensor) -> torch.Tensor:
    """Logits [P, 2] with every distinct node of the batch embedded once."""
    nodes, where = torch.unique(torch.cat([src, dst]), return_inverse=True)
    e = model.embed(graph.features[nodes], ops.gather(graph.features, graph.nbrs, nodes))
    return model.classify(e[where[:len(src)]], e[where[len(src):]])


# ----------------------------------------------------------------------- the loop


def _initial_embeddings(graph: _Graph, batch_size: int = 65536) -> torch.Tensor:
    """``[f_u ‖ (1/k) Σ_j F_u[j]]`` float32 [N, 2D]: the embeddings of a mean-attention model."""
    n, k = graph.nbrs.shape
    summary = torch.empty_like(graph.features)
    for start in range(0, n, batch_size):
        ids = torch.arange(start, min(start + batch_size, n), device=graph.features.device)
        weights = torch.full((ids.shape[0], k), 1.0 / k, device=ids.device)
        summary[start:start + ids.shape[0]] = ops.aggregate(weights, graph.features,
                                                            graph.nbrs, ids)
    return torch.cat([graph.features, summary], dim=1)


def _fit_classifier(model: PairClassifier, e: torch.Tensor, graph: _Graph, config: TrainConfig,
                    steps: int, stage: str, epoch: int) -> Dict[str, float]:
    """Train the classifier alone on fixed embeddings ``e`` [N, 2D] (the module notes'
    warm-up and refit): class-balanced batches, AdamW with a cosine learning rate.
    The returned record is numbered ``epoch``."""
    rng = np.random.default_rng(_seed(config.seed, 3, epoch))
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=config.classifier_lr,
                                  weight_decay=config.weight_decay)
    batches = itertools.islice(
        _balanced_batches(graph.target, config.classifier_batch_size, rng), steps)
    model.train()
    with torch_threads(config.threads or 1):
        record = _optimise(
            optimizer, (graph.src, graph.dst, graph.target), batches, steps, stage, config,
            e.device,
            lambda step: config.classifier_lr * 0.5 * (1 + np.cos(np.pi * step / steps)),
            lambda src, dst: model.classify(e[src], e[dst]))
    return {"epoch": epoch, **record, "lr": config.classifier_lr}


def _balanced_batches(target: np.ndarray, batch_size: int,
                      rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices into ``target`` (int64 [batch_size // 2 * 2]): half
    positive, half negative pairs, each half drawn uniformly with replacement."""
    positives, negatives = np.flatnonzero(target), np.flatnonzero(target == 0)
    while True:
        yield np.concatenate([rng.choice(positives, batch_size // 2),
                              rng.choice(negatives, batch_size // 2)])


def _optimise(optimizer: torch.optim.Optimizer,
              pairs: Tuple[np.ndarray, np.ndarray, np.ndarray], batches: Iterable[np.ndarray],
              steps: int, stage: str, config: TrainConfig, device: torch.device,
              lr_at: Callable[[int], float],
              logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Dict[str, float]:
    """One optimiser step per batch of indices into ``pairs`` (src, dst, target:
    int64 [P] each), cross-entropy on ``logits_of(src, dst)`` [B, 2] with the
    learning rate ``lr_at(i)`` at step i.

    Returns the stage's mean loss and accuracy, the last learning rate,
    pairs per second and seconds (also logged under ``stage``).
    """
    loss_sum = correct = seen = 0.0
    started = time.perf_counter()
    bar = tqdm(batches, total=steps, desc=stage, unit="batch", disable=not config.progress,
               leave=False)
    for step, batch in enumerate(bar):
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        src, dst, target = (torch.from_numpy(x[batch]).to(device)
                            for x in pairs)
        with bf16_autocast(device, fast_bf16(device) if config.bf16 is None else config.bf16):
            logits = logits_of(src, dst)
        loss = nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(batch)
        correct += float((logits.argmax(1) == target).sum())
        seen += len(batch)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    seconds = time.perf_counter() - started
    record = {"loss": loss_sum / seen, "accuracy": correct / seen, "lr": float(lr),
              "pairs_per_s": seen / seconds, "seconds": seconds}
    log.info("%s: loss %.4f  pair accuracy %.4f  %.0f pairs/s", stage, record["loss"],
             record["accuracy"], record["pairs_per_s"])
    return record


def _warm_up(model: PairClassifier, graph: _Graph, config: TrainConfig) -> Dict[str, float]:
    """Stage 0: mean attention, then the classifier on the initial embeddings."""
    model.init_mean_attention()
    return _fit_classifier(model, _initial_embeddings(graph), graph, config,
                           config.warmup_steps, "classifier warm-up", 0)


def _refit(model: PairClassifier, graph: _Graph, config: TrainConfig,
           e: torch.Tensor) -> Dict[str, float]:
    """Stage epochs + 1: the classifier on the trained network's eval-mode embeddings ``e``."""
    return _fit_classifier(model, e, graph, config, config.refit_steps, "classifier refit",
                           config.epochs + 1)


def _embeddings(model: PairClassifier, graph: _Graph, config: TrainConfig) -> torch.Tensor:
    """The training set's eval-mode node embeddings float32 [N, 2D] (inference path)."""
    return model.eval().embed_graph(graph.features, graph.nbrs, bf16=config.bf16,
                                    progress=config.progress)


# ----------------------------------------------------------------------- edge head

CALIBRATION_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
CALIBRATION_MARKOV_TIMES = (1.0, 2.0, 4.0, 8.0)
#: ...and with two modules joined where this many edges of P above each of
#: :data:`CALIBRATION_JOIN_ABOVE` connect them (0: none; :func:`sepfl.edges.join_modules`),
#: at each Markov time.
CALIBRATION_JOINS = (0.0, 3.0, 5.0, 10.0)
CALIBRATION_JOIN_ABOVE = (0.9, 0.98)


def _split_identities(labels: np.ndarray, share: float,
                      seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean masks [N] (fit, calibration): a seeded ``share`` of the identities held out."""
    ids = np.unique(labels)
    held = int(round(share * ids.size))
    if held < 2 or ids.size - held < 2:
        return np.ones(labels.size, bool), np.zeros(labels.size, bool)
    chosen = np.random.default_rng(seed).choice(ids, held, replace=False)
    calibration = np.isin(labels, chosen)
    return ~calibration, calibration


def _head_edges(graph: _Graph, inside: np.ndarray, m: int, seed: int
                ) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]]:
    """Candidate edges with both ends in ``inside`` (bool [N]), plus random negatives
    when the lists hold few: (src, dst, rank) int64 Tensors [E] and target int64 [E];
    None when no candidate edge joins two samples of one identity."""
    src, dst, rank = (x.cpu().numpy() for x in edges.candidate_edges(graph.nbrs, m))
    keep = inside[src] & inside[dst]
    src, dst, rank = src[keep], dst[keep], rank[keep]
    pool = np.flatnonzero(inside)
    target = (graph.labels[src] == graph.labels[dst]).astype(np.int64)
    if target.sum() == 0:
        return None
    local = np.full(graph.labels.size, -1, np.int64)
    local[pool] = np.arange(pool.size)
    s, d, target = with_negatives(local[src], local[dst], target, graph.labels[pool], seed,
                                  "edge head")
    k = graph.nbrs.shape[1]
    rank = np.concatenate([rank, np.full(s.size - rank.size, k, np.int64)])
    device = graph.nbrs.device
    return (torch.from_numpy(pool[s]).to(device), torch.from_numpy(pool[d]).to(device),
            torch.from_numpy(rank).to(device), target)


def _thinned_graph(graph: _Graph, inside: np.ndarray, share: float,
                   seed: int) -> Optional[_Graph]:
    """Each ``inside`` sample (bool [N]) kept with probability ``share``, with the kNN graph
    of the kept samples alone (no candidate pairs): the neighbourhoods a smaller data set
    of the same identities has. None when fewer than ``2 k`` samples are kept."""
    k = graph.nbrs.shape[1]
    kept = np.flatnonzero(inside & (np.random.default_rng(seed).random(inside.size) < share))
    if kept.size < 2 * k:
        return None
    features = graph.features[torch.from_numpy(kept).to(graph.features.device)]
    nbrs, sims = unit_knn(features, k=k, progress=False)
    device = features.device
    nothing = np.empty(0, np.int64)
    return _Graph(features, to_tensor(nbrs, device), to_tensor(sims, device),
                  graph.labels[kept], nothing, nothing, nothing)


def _view_edges(source: _Graph, inside: np.ndarray, embeddings: torch.Tensor, m: int,
                seed: int) -> Optional[Tuple[torch.Tensor, np.ndarray]]:
    """:func:`edges.edge_statistics` float32 [E, 13] and targets int64 [E] of one graph's
    :func:`_head_edges`; None when none of them is positive."""
    found = _head_edges(source, inside, m, seed)
    if found is None:
        return None
    src, dst, rank, target = found
    return edges.edge_statistics(embeddings, source.nbrs, source.sims, src, dst, rank), target


def _head_views(model: PairClassifier, graph: _Graph, inside: np.ndarray, e: torch.Tensor,
                m: int, config: TrainConfig) -> Tuple[torch.Tensor, np.ndarray]:
    """The edge head's training set: :func:`edges.edge_statistics` float32 [E, 13] and
    targets int64 [E] of the candidate edges among the ``inside`` samples of the whole
    training graph (embeddings ``e``), then of each :attr:`TrainConfig.edge_thinning` share
    of them (embedded on their own graph; one without a positive edge is left out)."""
    full = _view_edges(graph, inside, e, m, _seed(config.seed, 6, 0))
    if full is None:
        raise ValueError(f"no sample has a same-identity neighbour in ranks 1..{m}: the edge "
                         "head cannot be trained")
    views = [full]
    for view, share in enumerate(config.edge_thinning, 1):
        thinned = _thinned_graph(graph, inside, share, _seed(config.seed, 8, view))
        found = None if thinned is None else _view_edges(
            thinned, np.ones(thinned.labels.size, bool), _embeddings(model, thinned, config), m,
            _seed(config.seed, 6, view))
        if found is not None:
            views.append(found)
    return torch.cat([stats for stats, _ in views]), np.concatenate([t for _, t in views])


def _calibration_views(model: PairClassifier, graph: _Graph, held_out: np.ndarray,
                       e: torch.Tensor, config: TrainConfig, settings: ClusterConfig
                       ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                       np.ndarray, np.ndarray]]:
    """What :func:`_calibrate` groups: the whole training graph, then each
    :attr:`TrainConfig.edge_thinning` share of it (its own kNN graph and embeddings; the
    same draws as the head's views), each as (src, dst, P, cosine, labels, held-out mask):
    every candidate edge scored by the head as ``settings`` cluster, the labels and mask [N]
    of that graph."""
    ids = np.unique(graph.labels[held_out])
    views = [(graph, e)]
    for view, share in enumerate(config.edge_thinning, 1):
        thinned = _thinned_graph(graph, np.ones(graph.labels.size, bool), share,
                                 _seed(config.seed, 8, view))
        if thinned is not None:
            views.append((thinned, _embeddings(model, thinned, config)))
    found = []
    for source, embeddings in views:
        src, dst, rank = edges.candidate_edges(source.nbrs, candidates(model, settings))
        stats = edges.edge_statistics(embeddings, source.nbrs, source.sims, src, dst, rank)
        scores = pair_scores(model, settings, "edges", embeddings, src, dst, stats)
        found.append((to_numpy(src), to_numpy(dst), to_numpy(scores),
                      to_numpy(source.sims[src, rank]), source.labels,
                      np.isin(source.labels, ids)))
    return found


def _held_out_f(view: Tuple[np.ndarray, ...], found: np.ndarray) -> float:
    """The mean of pairwise and BCubed F of the clusters ``found`` (int64 [N]) of one
    :func:`_calibration_views` graph, counted from its held-out samples
    (:func:`sepfl.metrics.anchored`)."""
    *_, labels, anchors = view
    metrics = anchored(labels, found, anchors)
    return (metrics["pairwise_f"] + metrics["bcubed_f"]) / 2


def _calibrate(model: PairClassifier, graph: _Graph, held_out: np.ndarray, e: torch.Tensor,
               config: TrainConfig) -> Optional[Dict[str, object]]:
    """Store in the edge head how to group the whole training graph and each thinned copy
    of it (:attr:`TrainConfig.edge_thinning`), each with the graph's mean P over its
    candidate edges, by which a graph to cluster finds the one most alike it
    (:meth:`sepfl.edges.EdgeHead.calibrated`): for each graph the Markov time of
    :data:`CALIBRATION_MARKOV_TIMES` and the joining of :data:`CALIBRATION_JOINS` sure
    edges above :data:`CALIBRATION_JOIN_ABOVE` with which Infomap clusters its held-out
    identities best; for all graphs at once, whether connected components (at the threshold
    of :data:`CALIBRATION_THRESHOLDS` best on average) group them better than Infomap on
    average.

    Every candidate edge of a graph is scored (the whole graph's from the embeddings ``e``
    [N, 2D]) and grouped, and each grouping is scored from the held-out samples
    (``held_out``, bool [N]) by :func:`sepfl.metrics.anchored`, as the mean of pairwise
    and BCubed F, so neither a few large identities nor the many small ones decide alone:
    the head was trained on the other identities' edges, and the held-out identities keep
    the neighbours of other identities a test set of the same size gives them. (Clustered
    alone, a small held-out set has sparse kNN lists whose far ranks reach samples of
    distant identities, and the grouping chosen there did not carry over to full-size test
    sets.) Per graph, because one Infomap setting for all densities let the sparse copies
    pull the whole graph's away from its best; components only for all graphs, because one
    confidently wrong edge chains two identities, more often in larger graphs and on data
    unlike the training set's: chosen per graph, a mixture-trained model's 10 % copy picked
    components and populations at 10 % collapsed into giant clusters. None when nothing
    is held out."""
    if not held_out.any():
        return None
    settings = ClusterConfig(k=model.k, rho=config.rho, candidates=config.candidates,
                             device=str(e.device), bf16=config.bf16, progress=False)
    views = _calibration_views(model, graph, held_out, e, config, settings)
    # components above each threshold, scored on each graph: [thresholds, graphs]
    components_f = np.array([[_held_out_f(view, edges.group_edges(
        view[0], view[1], view[2], view[4].size, "components", threshold=value))
        for view in views] for value in CALIBRATION_THRESHOLDS])
    best = int(np.argmax(components_f.mean(1)))
    chosen = [edges.Calibrated("components", CALIBRATION_THRESHOLDS[best], 1.0, 0.0,
                               edges.JOIN_ABOVE, float(np.mean(view[2])) if view[2].size else 0.0)
              for view in views]
    view_f = components_f[best]
    if edges.infomap_available():
        infomap = [_infomap_choice(view, settings) for view in views]
        if np.mean([f for _, f in infomap]) >= view_f.mean():
            chosen = [calibrated._replace(grouping="infomap", markov_time=markov_time,
                                          join=join, join_above=above)
                      for calibrated, ((join, above, markov_time), _) in zip(chosen, infomap)]
            view_f = np.array([f for _, f in infomap])
    for view, calibrated, f in zip(views, chosen, view_f):
        log.info("edge head calibrated on the %d held-out samples of a graph of %d: %s "
                 "(mean of F_P and F_B %.4f)", int(view[5].sum()), view[4].size,
                 ", ".join(f"{name} {value:.4g}" if isinstance(value, float) else value
                           for name, value in calibrated._asdict().items()), f)
    model.edge_head.set_calibration(chosen)
    return {"calibration_samples": int(held_out.sum()),
            "calibration": [{**calibrated._asdict(), "held_out_f": float(f)}
                            for calibrated, f in zip(chosen, view_f)]}


def _infomap_choice(view: Tuple[np.ndarray, ...], settings: ClusterConfig
                    ) -> Tuple[Tuple[float, float, float], float]:
    """The (join, join_above, Markov time) of Infomap that groups one calibration graph's
    held-out samples best, and its score: one Infomap run per Markov time, each joining of
    :data:`CALIBRATION_JOINS` × :data:`CALIBRATION_JOIN_ABOVE` (or none) applied to its
    modules; the first best of joinings × Markov times in that order."""
    src, dst, scores, cosine, labels, _ = view
    modules = {markov_time: edges.infomap_modules(src, dst, scores, labels.size,
                                                  markov_time=markov_time, cosine=cosine,
                                                  full_cosine=settings.full_cosine)
               for markov_time in CALIBRATION_MARKOV_TIMES}
    joinings = [(0.0, edges.JOIN_ABOVE)] + [(join, above) for join in CALIBRATION_JOINS
                                            if join > 0 for above in CALIBRATION_JOIN_ABOVE]
    choices = [(join, above, markov_time) for join, above in joinings
               for markov_time in CALIBRATION_MARKOV_TIMES]

    def joined(join: float, above: float, markov_time: float) -> np.ndarray:
        found = modules[markov_time]
        return found if join == 0 else edges.join_modules(found, src, dst, scores, join, above)

    scored = [_held_out_f(view, joined(*choice)) for choice in choices]
    best = int(np.argmax(scored))
    return choices[best], scored[best]


def _fit_edge_head(model: PairClassifier, graph: _Graph, config: TrainConfig,
                   e: torch.Tensor) -> Dict[str, float]:
    """Stage epochs + 2: the edge head (:mod:`sepfl.edges`) on the candidate edges of the
    training identities outside the calibration share (in the whole graph and in thinned
    ones, :func:`_head_views`), then its threshold calibrated on
    those held out. ``e`` [N, 2D] are the training set's eval-mode embeddings."""
    started = time.perf_counter()
    m = min(config.candidates, model.k - 1)
    inside, held_out = _split_identities(graph.labels, config.calibration_share,
                                         _seed(config.seed, 5))
    stats, target = _head_views(model, graph, inside, e, m, config)
    head = edges.EdgeHead().to(e.device)
    head.candidates.fill_(m)
    head.set_normalization(stats)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.classifier_lr,
                                  weight_decay=config.weight_decay)
    rng = np.random.default_rng(_seed(config.seed, 7))
    steps = config.edge_steps
    batches = itertools.islice(_balanced_batches(target, config.classifier_batch_size, rng),
                               steps)
    index = np.arange(target.size)
    head.train()
    with torch_threads(config.threads or 1):
        record = _optimise(
            optimizer, (index, index, target), batches, steps, "edge head",
            dataclasses.replace(config, bf16=False), e.device,
            lambda step: config.classifier_lr * 0.5 * (1 + np.cos(np.pi * step / steps)),
            lambda rows, _: head(stats[rows]))
    model.edge_head = head.eval()
    calibration = _calibrate(model, graph, held_out, e, config) or {}
    return {"epoch": config.epochs + 2, **record, **calibration,
            "seconds": time.perf_counter() - started}


def _validate(model: PairClassifier, validation: Tuple[torch.Tensor, np.ndarray, tuple],
              config: TrainConfig, device: torch.device) -> Dict[str, float]:
    features, labels, knn = validation
    scheme = "sepfl" if model.edge_head is None else "edges"
    settings = ClusterConfig(k=model.k, rho=config.rho, scheme=scheme,
                             candidates=config.candidates, device=str(device),
                             bf16=config.bf16, progress=False)
    result = cluster(features, model, settings, knn=knn)
    model.train()
    return evaluate(labels, result.labels)


def _with_validation(record: Dict[str, float], model: PairClassifier, val: Optional[tuple],
                     config: TrainConfig, device: torch.device) -> Dict[str, float]:
    """``record`` plus the validation scores of ``model`` when there is a validation split."""
    if val is None:
        return record
    record = {**record, **_validate(model, val, config, device)}
    log.info("epoch %d: validation F_P %.4f  F_B %.4f", record["epoch"], record["pairwise_f"],
             record["bcubed_f"])
    return record


def _prepare_validation(validation: Optional[tuple], k: int, device: torch.device):
    if validation is None:
        return None
    features, labels = validation
    features = to_tensor(normalize_features(features, name="validation features"), device)
    labels = to_numpy(as_indices(labels, "validation labels", 1, shape=(features.shape[0],)))
    return features, labels, unit_knn(features, k=k)


def _restore(path: Optional[Path], model: PairClassifier, optimizer: torch.optim.Optimizer,
             config: TrainConfig, data_fingerprint: str) -> Tuple[int, List[dict]]:
    """Load the training state from ``path`` when it exists: (epochs done, history)."""
    if path is None or not path.exists():
        return 0, []
    checkpoint = load_checkpoint(path, dim=model.dim, k=model.k)
    if checkpoint.get("fingerprint") != data_fingerprint:
        raise ValueError(f"{path} was trained on other data ({checkpoint.get('fingerprint')}, "
                         f"these features are {data_fingerprint}); remove it or pick another "
                         "checkpoint path")
    stored, current = dataclasses.asdict(checkpoint["config"]), dataclasses.asdict(config)
    changed = sorted(name for name in current
                     if name not in _RESUMABLE_CHANGES and stored[name] != current[name])
    if changed:
        raise ValueError(f"cannot resume {path}: its {changed} differ from this run's config")
    model.edge_head = checkpoint["model"].edge_head
    model.load_state_dict(checkpoint["model"].state_dict())
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    log.info("resumed %s after epoch %d", path, checkpoint["epoch"])
    return checkpoint["epoch"], list(checkpoint["history"])


def train(features: Array, labels: Array, config: Optional[TrainConfig] = None, k: int = 80,
          validation: Optional[Tuple[Array, Array]] = None,
          checkpoint: Optional[PathLike] = None,
          knn: Optional[Tuple[Array, Array]] = None) -> PairClassifier:
    """Train a pair classifier on labelled embeddings.

    Parameters
    ----------
    features : float [N, D], numpy array or torch tensor
        Training embeddings (rows are L2-normalised here).
    labels : int [N]
        Identity of each row; at least two identities.
    config : TrainConfig, optional
    k : int
        Neighbours per sample, self included (the model's k).
    validation : (features [M, D], labels [M]), optional
        A labelled split clustered after every epoch with the SEPFL pipeline;
        its pairwise / BCubed F scores are logged and kept in the history.
    checkpoint : str or Path, optional
        Written atomically after every epoch. When it already exists, training
        resumes from it (it must come from the same data and config, apart
        from ``device`` and ``progress``).
    knn : (nbrs int [N, k], sims float [N, k]), optional
        The training kNN graph (self at rank 0); built when None.

    Returns
    -------
    PairClassifier
        In eval mode, on the training device. The checkpoint's ``history``
        holds each epoch's loss, accuracy, learning rate, pairs/s, seconds and
        validation scores; records with ``epoch`` 0 and ``epochs + 1`` are the
        classifier warm-up and refit.

    Raises
    ------
    ValueError
        NaN / inf features, a single identity, no positive (or no negative)
        candidate pair, a checkpoint from other data or settings.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    graph = _configured_graph(features, labels, k, knn, device, config)
    k = graph.nbrs.shape[1]
    data_fingerprint = fingerprint(features)
    val = _prepare_validation(validation, k, device)
    path = None if checkpoint is None else Path(checkpoint)

    torch.manual_seed(config.seed)
    model = PairClassifier(graph.features.shape[1], k).to(device)
    optimizer = _optimizer(model, config)
    start, history = _restore(path, model, optimizer, config, data_fingerprint)
    def save(epoch: int) -> None:
        if path is not None:
            save_checkpoint(path, model, config, extra={
                "epoch": epoch, "fingerprint": data_fingerprint, "history": history,
                "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()})

    if start == 0 and config.warmup_steps:
        history = [_with_validation(_warm_up(model, graph, config), model, val, config, device)]
    total_steps = config.epochs * _steps_per_epoch(graph, config)
    model.train()
    for epoch in range(start, config.epochs):
        record = _train_epoch(model, optimizer, graph, config, epoch, total_steps, device)
        history.append(_with_validation(record, model, val, config, device))
        save(epoch + 1)
    e = None
    if config.refit_steps and start <= config.epochs:
        e = _embeddings(model, graph, config)
        history.append(_with_validation(_refit(model, graph, config, e), model, val, config,
                                        device))
        save(config.epochs + 1)
    if config.edge_steps and start <= config.epochs + 1:
        e = _embeddings(model, graph, config) if e is None else e
        record = _fit_edge_head(model, graph, config, e)
        history.append(_with_validation(record, model, val, config, device))
        save(config.epochs + 2)
    return model.eval()


def calibrate(model: PairClassifier, features: Array, labels: Array,
              config: Optional[TrainConfig] = None,
              knn: Optional[Tuple[Array, Array]] = None) -> Dict[str, object]:
    """Choose again how a trained model's edge head groups, as training's last step does.

    The grouping stored in the edge head (Infomap's Markov time and joining, or the
    components threshold, for each calibration graph) is chosen by clustering the
    identities that ``config.calibration_share`` and ``config.seed`` hold out of
    ``features`` and ``labels`` (:func:`_calibrate`); the network and the head are left
    as they are. Given the model's own training set and config, these are the identities
    its head was not trained on, and the result is what training would store with
    today's grouping rules: for a model trained before a rule changed.

    Parameters
    ----------
    model : PairClassifier
        With an edge head; changed in place (its calibration buffers).
    features : float [N, D], labels : int [N], knn : (nbrs, sims), optional
        As for :func:`train`.
    config : TrainConfig, optional
        ``calibration_share``, ``seed``, ``edge_thinning`` (the thinned graphs calibrated
        besides the whole one), ``candidates``, ``rho``, ``device``, ``bf16``,
        ``progress`` are used.

    Returns
    -------
    dict
        The calibration record training keeps in its history.

    Raises
    ------
    ValueError
        A model without an edge head; too few identities to hold some out; the inputs
        :func:`train` refuses.
    """
    config = config or TrainConfig()
    if model.edge_head is None:
        raise ValueError("the model has no edge head to calibrate (trained with edge_steps=0 "
                         "or saved before edge heads existed)")
    identities = to_numpy(as_indices(labels, "labels", 1))
    held_out = _split_identities(identities, config.calibration_share, _seed(config.seed, 5))[1]
    if not held_out.any():
        raise ValueError(f"calibration_share {config.calibration_share} of "
                         f"{np.unique(identities).size} identities holds none out: at least "
                         "two identities must be held out and two kept")
    device = resolve_device(config.device)
    graph = _configured_graph(features, labels, model.k, knn, device, config)
    model = model.to(device)
    return _calibrate(model, graph, held_out, _embeddings(model, graph, config), config)


def _optimizer(model: PairClassifier, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _train_epoch(model: PairClassifier, optimizer: torch.optim.Optimizer, graph: _Graph,
                 config: TrainConfig, epoch: int, total_steps: int,
                 device: torch.device) -> Dict[str, float]:
    """One end-to-end epoch (SEPFL.md §4): this epoch's candidate pairs, shuffled, in batches."""
    order = _epoch_pairs(graph, config, epoch)
    steps = _steps_per_epoch(graph, config)
    batches = [order[i * config.batch_size:(i + 1) * config.batch_size] for i in range(steps)]
    done = epoch * steps
    record = _optimise(optimizer, (graph.src, graph.dst, graph.target), batches, steps,
                       f"epoch {epoch + 1}/{config.epochs}",
                       config, device, lambda step: learning_rate(config, done + step, total_steps),
                       lambda src, dst: _pair_logits(model, graph, src, dst))
    return {"epoch": epoch + 1, **record}
