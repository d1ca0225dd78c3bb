"""Incremental clustering: add new samples to a clustering without redoing it.

:meth:`sepfl.SEPFL.add` runs :func:`add` on the :class:`State` that ``predict``
(or a previous ``add``) left. What each stage of :func:`sepfl.cluster.cluster`
becomes, for M new samples joining N old ones:

* **kNN** (:func:`extend_knn`): exact brute force. The new rows get their
  lists among old + new (:func:`sepfl.knn.unit_knn` of those rows, the search
  a one-shot run makes, in ``knn_precision``); the old rows are multiplied
  against the new ones and the new samples at least as close as an old list's
  last entry are merged into it. An old sample's list *changed* when a new
  sample entered it.
* **density**: recomputed for all samples from the kNN similarities (one pass
  over [N + M, k], cheap), so it is exactly the one-shot density, maximum
  normalisation included.
* **embeddings** (the cost): the new samples, and the old samples whose lists
  have *drifted*: at least ``refresh * (k - 1)`` entries (at least one) entered
  them since they were last embedded (``State.drift`` counts them across
  adds). Every other old sample keeps its embedding: a few late entries move
  its attention-weighted neighbour summary little, and re-embedding every
  changed list would re-embed nearly every old sample at each add.
* **scores**: a pair is re-scored when it is new or one of its ends was
  re-embedded (the new samples included); every other pair keeps its stored
  score. ``"sepfl"``: the pairs are chosen again from the exact density
  (cheap); a pair's score reads the two embeddings only, so a kept score is
  what its inputs would reproduce. ``"edges"``: an edge's statistics read both
  kNN lists as well (ranks, shared entries, the local scales), so a kept score
  is stale in the same measure as a kept embedding: a few late entries in a
  list move its sample's statistics little, and re-scoring every edge of a
  changed list would re-score nearly every edge at each add (``refresh`` 0
  re-scores them all).
* **grouping**: Infomap (or union-find) over all pairs again (see **labels**).
* **labels** (:func:`stable_labels`): old clusters are never split, so a merge
  is for good and needs surer evidence than one shot: the grouping above
  reads the pairs above ``merge_threshold`` only (above the usual threshold
  when that is higher). Each old cluster follows the group holding most of
  its members; old clusters
  following the same group merge into the smallest id (reported in
  ``merged``); a new sample takes the id of the old clusters its group holds,
  or a new id. Ids are stable across adds, so they are not renumbered 0..C-1
  (merged ids leave gaps).

Where the result differs from clustering everything at once: the embeddings
of old samples whose lists drifted less than ``refresh``, and the scores of
their edges; the ``"sepfl"`` pairs are exact, chosen from the
density normalised by today's maximum. And old clusters are kept whole where
a one-shot run could split them, and merge only over pairs above
``merge_threshold`` where a one-shot run reads every pair above ``threshold``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np
import torch

from sepfl import edges, ops
from sepfl._validate import to_tensor
from sepfl.stages import ClusterResult, Stopwatch, group, grouping_of, resolve_scheme
from sepfl.config import ClusterConfig
from sepfl.features import normalize_features
from sepfl.knn import resolve_precision, search_width, unit_knn
from sepfl.model import PairClassifier

__all__ = ["AddResult", "State", "add", "extend_knn", "stable_labels"]

# scores per block of old rows of the [block, M] similarity product
_BLOCK_SCORES = 1 << 24
# how far below a floor a candidate's product may fall and still be measured (a bfloat16
# product of unit rows is off by at most 2^-8)
_SLACK = 1.0 / 128


@dataclasses.dataclass
class State:
    """What an incremental clustering keeps between adds (all numpy, CPU).

    Attributes
    ----------
    scheme : {"edges", "sepfl"}
    features : float32 [N, D]
        L2-normalised features (the brute-force kNN index).
    nbrs, sims : int64 / float32 [N, k]
        The kNN graph.
    embeddings : float32 [N, 2D]
        ``e_u`` of each sample, from its list when it was last embedded.
    drift : int64 [N]
        kNN entries that entered each list since the sample was last embedded.
    src, dst : int64 [P]
        The scored pairs: ``candidate_edges(nbrs, m)`` ("edges") or
        ``select_pairs(nbrs, density)`` ("sepfl"), in that order.
    scores : float32 [P]
        P(same identity) of each pair.
    labels : int64 [N]
        Stable cluster ids (see the module notes).
    """

    scheme: str
    features: np.ndarray
    nbrs: np.ndarray
    sims: np.ndarray
    embeddings: np.ndarray
    drift: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, result: ClusterResult) -> "State":
        """The state a one-shot :func:`~sepfl.cluster.cluster` run leaves."""
        return cls(scheme=result.scheme, features=result.features, nbrs=result.nbrs,
                   sims=result.sims, embeddings=result.embeddings,
                   drift=np.zeros(len(result.labels), dtype=np.int64), src=result.src,
                   dst=result.dst, scores=result.scores, labels=result.labels)

    def to_dict(self) -> Dict[str, object]:
        """Tensors and strings only, for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {f.name: (getattr(self, f.name) if f.name == "scheme"
                         else torch.from_numpy(np.ascontiguousarray(getattr(self, f.name))))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, stored: Dict[str, object]) -> "State":
        return cls(**{name: (value if name == "scheme" else value.numpy())
                      for name, value in stored.items()})


@dataclasses.dataclass
class AddResult(ClusterResult):
    """What :func:`add` did, beyond a :class:`~sepfl.cluster.ClusterResult` of all samples.

    Attributes
    ----------
    merged : dict of int to int
        Old cluster id → the id it merged into, for each old cluster that merged.
    groups : int64 ndarray [N + M]
        The regrouping of all samples that the labels follow, over the pairs above
        ``merge_threshold`` (0..G-1 by smallest member), splits included; with
        ``merge_threshold`` 0, what a relabelling run would report.
    reembedded : int64 ndarray [R]
        Samples whose embedding was computed in this add (the new ones included).
    rescored : int64 ndarray [S]
        Indices into ``src`` / ``dst`` of the pairs scored in this add.
    changed : int64 ndarray [C]
        Samples whose kNN list changed (the new ones included).
    """

    merged: Dict[int, int] = dataclasses.field(default_factory=dict)
    groups: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    reembedded: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    rescored: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    changed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


def extend_knn(features: torch.Tensor, nbrs: torch.Tensor, sims: torch.Tensor,
               new: torch.Tensor, precision: str = "auto"
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact kNN graph of old + new samples from the old one.

    Parameters
    ----------
    features : float32 Tensor [N, D]
        Old samples, unit rows.
    nbrs, sims : int64 / float32 Tensor [N, k]
        Their kNN graph (self at rank 0, full lists).
    new : float32 Tensor [M, D]
        New samples, unit rows; they become rows N..N+M-1.
    precision : {"auto", "fp32", "bf16"}
        Of the products that find the candidates (:func:`sepfl.knn.resolve_precision`);
        every similarity kept is a float32 one.

    Returns
    -------
    nbrs, sims : int64 / float32 Tensor [N + M, k]
        Self first, then by decreasing cosine similarity.
    entered : int64 Tensor [N + M]
        New entries in each list: for old rows how many new samples entered
        it, for new rows k - 1.
    """
    n, k = nbrs.shape
    m = new.shape[0]
    if m == 0:
        return nbrs, sims, torch.zeros(n, dtype=torch.int64)
    x = torch.cat([features, new])
    precision = resolve_precision(precision, "torch", x.device)
    new_nbrs, new_sims = unit_knn(x, k, backend="torch", precision=precision,
                                  rows=range(n, n + m), progress=False)
    old_at, new_at, found = _entering(x, n, sims[:, k - 1], k, precision)
    best_nbrs, best_sims = _best_per_row(old_at, new_at, found, n, k - 1)
    merged_sims, order = torch.cat([sims[:, 1:], best_sims.clamp(-1.0, 1.0)], 1).topk(k - 1,
                                                                                     dim=1)
    entered = (order >= k - 1).sum(1)
    merged_nbrs = torch.cat([nbrs[:, 1:], best_nbrs], 1).gather(1, order)
    all_nbrs = torch.cat([torch.cat([nbrs[:, :1], merged_nbrs], 1), new_nbrs])
    all_sims = torch.cat([torch.cat([sims[:, :1], merged_sims], 1), new_sims])
    return all_nbrs, all_sims, torch.cat([entered, torch.full((m,), k - 1)])


def _entering(x: torch.Tensor, n: int, floor: torch.Tensor, k: int,
              precision: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The new samples that enter the old rows' lists of ``k``: every (old row, new
    sample) whose similarity is at least the old row's ``floor`` (float32 [N], its list's
    last similarity), among each old row's best new candidates. Returns int64 old rows
    (0..N-1), int64 new samples (N..N+M-1) and their float32 similarities [C].

    ``x`` [N + M, D] holds the old rows, then the new ones. Each block of old rows
    is multiplied against the new rows in ``precision`` and keeps its
    :func:`sepfl.knn.search_width` best above ``floor - _SLACK`` (:class:`sepfl.ops.RowTopk`:
    at most k - 1 new samples can enter a list, plus the kNN search's margin for the
    re-ranking; in bfloat16 a product of unit rows is off by at most 2^-8), each then
    measured by :func:`sepfl.ops.list_dots`.
    """
    m = x.shape[0] - n
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    columns = x[n:].to(dtype)
    width = search_width(k, precision)
    block = max(1, _BLOCK_SCORES // m)
    parts = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows, bound = torch.arange(start, stop), floor[start:stop]
        best = ops.RowTopk(rows, width, above=bound - _SLACK)
        best.offer(x[start:stop].to(dtype) @ columns.T, n)
        lists = best.result()[0][:, 1:]
        found = ops.list_dots(x, rows, lists)
        old_at, slot = torch.nonzero(found >= bound[:, None], as_tuple=True)
        parts.append((rows[old_at], lists[old_at, slot], found[old_at, slot]))
    return tuple(torch.cat(part) for part in zip(*parts))


def _best_per_row(rows: torch.Tensor, ids: torch.Tensor, sims: torch.Tensor, n: int,
                  width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` most similar of entries (``rows``, ``ids``, ``sims``: int64 / int64
    / float32 [C]) per row of n: int64 / float32 [n, width], by decreasing similarity,
    padded with -1 / -inf."""
    order = torch.argsort(sims, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, ids, sims = rows[order], ids[order], sims[order]
    counts = torch.bincount(rows, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(rows.shape[0]) - first[rows]
    keep = rank < width
    best_ids = torch.full((n, width), -1, dtype=torch.int64)
    best_sims = torch.full((n, width), -math.inf)
    best_ids[rows[keep], rank[keep]] = ids[keep]
    best_sims[rows[keep], rank[keep]] = sims[keep]
    return best_ids, best_sims


def stable_labels(old: np.ndarray, groups: np.ndarray) -> Tuple[np.ndarray, Dict[int, int]]:
    """Labels of all samples that never split an old cluster.

    Parameters
    ----------
    old : int64 ndarray [N]
        Stable ids of the N old samples (rows 0..N-1).
    groups : int64 ndarray [N + M]
        The new grouping of old + new samples, any numbering.

    Returns
    -------
    labels : int64 ndarray [N + M]
        Each old cluster goes to the group holding most of its members (ties:
        the smallest group number); old clusters going to one group merge into
        their smallest id; old samples keep their cluster's (surviving) id; a
        new sample takes its group's old id, or a new id (from ``old.max() + 1``,
        in order of the groups' smallest member).
    merged : dict of int to int
        Old id → surviving id, for each old cluster that merged.
    """
    n = old.shape[0]
    ids, old_rank = np.unique(old, return_inverse=True)
    group_ids, group_rank = np.unique(groups, return_inverse=True)
    width = group_ids.size
    pairs, counts = np.unique(old_rank * width + group_rank[:n], return_counts=True)
    # per old cluster, the group with the most members: sort by cluster, then count descending
    order = np.lexsort((pairs % width, -counts, pairs // width))
    first = np.unique(pairs[order] // width, return_index=True)[1]
    target = (pairs[order] % width)[first]  # [len(ids)]: the group each old cluster follows
    survivor = np.full(width, np.iinfo(np.int64).max)
    np.minimum.at(survivor, target, ids)
    following = survivor[target]
    merged = {int(a): int(b) for a, b in zip(ids, following) if a != b}
    fresh = survivor == np.iinfo(np.int64).max
    # new ids for the groups no old cluster follows, in order of their smallest member
    smallest = np.full(width, groups.shape[0])
    np.minimum.at(smallest, group_rank, np.arange(groups.shape[0]))
    fresh_groups = np.flatnonzero(fresh)
    fresh_groups = fresh_groups[np.argsort(smallest[fresh_groups], kind="stable")]
    survivor[fresh_groups] = (ids.max() + 1 if ids.size else 0) + np.arange(fresh_groups.size)
    labels = np.concatenate([following[old_rank], survivor[group_rank[n:]]])
    return labels, merged


def add(state: State, new: np.ndarray, model: PairClassifier,
        config: ClusterConfig) -> Tuple[State, AddResult]:
    """Cluster ``new`` samples into ``state`` (the module notes say how).

    Parameters
    ----------
    state : State
    new : float32 ndarray [M, D]
        Validated new features (D the model's), not yet normalised.
    model : PairClassifier
        The model the state was clustered with.
    config : ClusterConfig
        Its ``scheme`` must resolve to the state's.

    Returns
    -------
    state : State
        The state of all N + M samples.
    result : AddResult
        Labels of all samples (old first), what merged, and what was re-embedded
        and re-scored.
    """
    scheme = resolve_scheme(model, config)
    if scheme != state.scheme:
        raise ValueError(f"this clustering was made with scheme={state.scheme!r}; add with "
                         f"the same scheme, not {scheme!r}")
    device = torch.device("cpu")
    model = model.to(device).eval()
    watch = Stopwatch(device)
    n, k = state.nbrs.shape
    with watch.stage("normalize"):
        new = to_tensor(normalize_features(new))
    with watch.stage("knn"):
        nbrs, sims, entered = extend_knn(torch.from_numpy(state.features),
                                         torch.from_numpy(state.nbrs),
                                         torch.from_numpy(state.sims), new,
                                         config.knn_precision)
        features = torch.cat([torch.from_numpy(state.features), new])
    total = nbrs.shape[0]
    with watch.stage("density"):
        density = ops.density(sims, config.rho)
    changed = entered > 0
    drift = torch.cat([torch.from_numpy(state.drift), torch.zeros(total - n, dtype=torch.int64)])
    drift += entered
    stale = drift >= max(1, math.ceil(config.refresh * (k - 1)))
    reembedded = torch.nonzero(stale).squeeze(1)
    with watch.stage("embeddings"):
        e = torch.cat([torch.from_numpy(state.embeddings),
                       torch.empty((total - n, state.embeddings.shape[1]))])
        e[reembedded] = model.node_embeddings(features, nbrs, batch_size=config.node_batch_size,
                                              bf16=config.bf16, progress=config.progress,
                                              nodes=reembedded)
        drift[reembedded] = 0
    cosine = None
    if scheme == "edges":
        with watch.stage("edges"):
            src, dst, rank = edges.candidate_edges(nbrs, min(config.candidates, k - 1))
            cosine = sims[src, rank]
    else:
        with watch.stage("pairs"):
            src, dst = ops.select_pairs(nbrs, density, config.max_per_node)
    with watch.stage("scores"):
        scores, rescored = _kept_scores(state, src, dst, stale)
        if scheme == "edges":
            stats = edges.edge_statistics(e, nbrs, sims, src[rescored], dst[rescored],
                                          rank[rescored])
            scores[rescored] = model.edge_head.to(device).eval().probability(stats)
        else:
            scores[rescored] = model.score_pairs(e, src[rescored], dst[rescored],
                                                 batch_size=config.pair_batch_size,
                                                 bf16=config.bf16)
    grouping = grouping_of(model, config, scheme, scores)
    grouping = grouping._replace(threshold=max(grouping.threshold, config.merge_threshold))
    with watch.stage("group"):
        groups = group(src, dst, scores, total, grouping, cosine)
        labels, merged = stable_labels(state.labels, groups)
    state = State(scheme=scheme, features=features.numpy(), nbrs=nbrs.numpy(),
                  sims=sims.numpy(), embeddings=e.numpy(), drift=drift.numpy(),
                  src=src.numpy(), dst=dst.numpy(), scores=scores.numpy(), labels=labels)
    result = AddResult(labels=labels, density=density.numpy(), src=state.src, dst=state.dst,
                       scores=state.scores, threshold=grouping.threshold, grouping=grouping,
                       timings=watch.timings,
                       scheme=scheme, features=state.features, nbrs=state.nbrs,
                       sims=state.sims, embeddings=state.embeddings, merged=merged, groups=groups,
                       reembedded=reembedded.numpy(), rescored=rescored.numpy(),
                       changed=torch.nonzero(changed).squeeze(1).numpy())
    return state, result


def _kept_scores(state: State, src: torch.Tensor, dst: torch.Tensor,
                 touched: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stored scores of the pairs that keep them, and which pairs need scoring.

    A pair keeps its stored score when it was scored before and neither end
    is ``touched`` (bool [N + M]); the others are returned as int64 indices,
    their scores left NaN.
    """
    width = touched.shape[0]
    old_keys = torch.from_numpy(state.src) * width + torch.from_numpy(state.dst)
    order = torch.argsort(old_keys)
    # a sentinel past every key, so each search lands on a real slot
    sorted_keys = torch.cat([old_keys[order], torch.tensor([width * width])])
    keys = src * width + dst
    where = torch.searchsorted(sorted_keys, keys)
    keep = (sorted_keys[where] == keys) & ~touched[src] & ~touched[dst]
    scores = torch.full((src.shape[0],), math.nan)
    scores[keep] = torch.from_numpy(state.scores)[order[where[keep]]]
    return scores, torch.nonzero(~keep).squeeze(1)
