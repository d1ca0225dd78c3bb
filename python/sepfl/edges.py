"""Scored candidate edges: the default clustering scheme, beyond one pair per sample.

SEPFL (SEPFL.md §3-4) gives each sample one candidate, its nearest denser
neighbour, and links it when the pair classifier says "same". One wrong link
then merges two identities, and a look-alike's nearest denser neighbour is
exactly where wrong links sit. The ``"edges"`` scheme keeps SEPFL's network
and changes what is scored and how it is grouped:

* **Candidates**: every sample's first ``m`` kNN neighbours (ranks 1..m), so
  each sample has several chances to join its identity.
* **Edge statistics** (:func:`edge_statistics`), thirteen numbers per edge
  (a, b) read off the network's node embeddings ``e_u = [f_u ‖ s_u]`` (``s_u``
  the attention-weighted neighbour summary, SEPFL.md §4 step 6) and the kNN
  graph: ``cos(f_a, f_b)``, ``cos(s_a, s_b)``, ``cos(f_a, s_b)``,
  ``cos(s_a, f_b)``, the shared kNN entries over k, b's rank in a's list over
  k, a's rank in b's list over k (1 when absent), and each end's local scale:
  the mean similarity of its nearest neighbours, ``cos(f_a, f_b)`` minus it,
  and the similarity at the far end of its candidates. The pair classifier
  sees ``[e_a ‖ e_b]`` and must learn an inner product from a concatenation;
  these statistics hand the comparisons to the scorer directly. Every one is
  local (no normalisation by a maximum over the data set), so a tight
  identity next to a loose one, or a set with far-off samples, reads the same
  to the head as the sets it was trained on.
* **Edge head** (:class:`EdgeHead`): a small MLP over the standardised
  statistics giving P(same identity), trained on the training graph's own
  candidate edges (the negatives inference meets: look-alikes at low ranks).
* **Prior** (:func:`estimated_prior`, :func:`shifted_prior`; opt-in,
  :attr:`ClusterConfig.prior_shift`): the head learns from class-balanced
  batches, so its P is a posterior for even odds. Where a set's identities
  have a few samples each, most of a sample's candidates are other identities
  and that P merges them; where the mean P is below one half, P can be
  re-weighted to the share of same-identity edges estimated from the P's
  themselves (EM, no labels) before grouping. That estimate is only as good as
  the head's calibration on the set: where the head scores the edges between
  an identity's sub-modes low, it comes out low and the re-weighting cuts
  those identities apart.
* **Grouping** (:func:`group_edges`): Infomap on the edges with P > 0.5,
  weighted by P, and by ``(cos / c)²`` more where the edge's cosine is
  below ``c`` = :attr:`ClusterConfig.full_cosine` (0.5), so a cluster is a
  region the weighted walk stays in and one wrong edge does not merge two
  identities. The cosine factor matters where identities have few samples:
  a sample whose identity has no other sample in its list is still joined by
  likely edges to the unrelated samples nearest it by chance, and those sit
  at lower cosines than a true partner, so the walk leaves them sooner.
  Above ``c`` every edge weighs its P: weighing all edges by their cosine
  split identities whose sub-modes meet at middling cosines (docs/results.md,
  "Smaller data sets"). Infomap cuts an identity made of sub-modes that only a few edges
  cross; two modules with at least ``join`` sure edges (P > ``join_above``)
  between them, and a mean P above 0.5 over all their candidate edges between
  them, are then joined (:func:`join_modules`). Or connected components of the
  edges above a high threshold, which keep an identity whose sub-modes are
  joined by a few sure edges in one piece where Infomap would cut it, and then
  each sample those sure edges left alone joins the partner of its most
  probable edge when that edge has P > 0.5 (a hard sample whose edges are all
  merely likely is not left a singleton). Training
  clusters held-out identities to choose between them and to set Infomap's
  Markov time, the joining and the components threshold, for the whole training set
  and for thinned copies of it; a graph is grouped as the calibration graph most alike
  it (:meth:`EdgeHead.calibrated`).
  Without the ``infomap`` package, connected components.

Everything here is torch on the tensors' device, CPU or CUDA.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from sepfl import ops
from sepfl._threads import faiss_module

log = logging.getLogger("sepfl")

__all__ = ["Calibrated", "EdgeHead", "candidate_edges", "edge_statistics", "estimated_prior",
           "group_edges", "infomap_available", "infomap_modules", "join_modules", "mean_of",
           "shifted_prior", "singleton_edges", "NUM_STATISTICS"]

NUM_STATISTICS = 13
NEAR = 10  # neighbours whose mean similarity is a sample's local scale
FAR = 40   # the rank whose similarity marks the far end of a sample's candidates
_CHUNK = 1 << 16  # edges at a time: a chunk's gathered rows stay in cache


def candidate_edges(nbrs: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """Each sample joined to its kNN entries at ranks 1..m.

    Parameters
    ----------
    nbrs : int64 Tensor [N, k]
        kNN table, self at rank 0, -1 for a missing neighbour.
    m : int
        Candidates per sample, ``1 <= m < k``.

    Returns
    -------
    src, dst, rank : int64 Tensors [E]
        Edge ``src → dst`` with ``dst = nbrs[src, rank]``; missing entries dropped.
    """
    n, k = nbrs.shape
    if not 1 <= m < k:
        raise ValueError(f"candidates must be in [1, k) = [1, {k}), got {m}")
    dst = nbrs[:, 1:m + 1].reshape(-1)
    src = torch.arange(n, device=nbrs.device).repeat_interleave(m)
    rank = torch.arange(1, m + 1, device=nbrs.device).repeat(n)
    keep = dst >= 0
    return src[keep], dst[keep], rank[keep]


def edge_statistics(e: torch.Tensor, nbrs: torch.Tensor, sims: torch.Tensor,
                    src: torch.Tensor, dst: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The thirteen statistics of each candidate edge (module notes), float32 [E, 13].

    Columns: 0 ``cos(f_a, f_b)``, 1 ``cos(s_a, s_b)``, 2 ``cos(f_a, s_b)``,
    3 ``cos(s_a, f_b)``, 4 shared kNN entries / k, 5 ``rank`` / k, 6 a's rank in
    b's list / k; then for a (7, 9, 11) and b (8, 10, 12): the local scale (mean
    similarity at ranks 1..:data:`NEAR`), ``cos(f_a, f_b)`` minus that scale, and
    the similarity at rank :data:`FAR` (both ranks capped at k - 1).

    Parameters
    ----------
    e : float32 Tensor [N, 2D]
        Node embeddings ``[f_u ‖ s_u]`` (:meth:`PairClassifier.node_embeddings`).
    nbrs : int64 Tensor [N, k]
    sims : float32 Tensor [N, k]
        The kNN similarities, rows in rank order (-1 at a missing entry, as sepfl's
        kNN tables hold it, so a short list lowers its sample's local scale).
    src, dst, rank : int64 Tensors [E]
        From :func:`candidate_edges` (``rank`` = k for a pair from outside the lists).
    """
    dim = e.shape[1] // 2
    k = nbrs.shape[1]
    # unit halves once, so each cosine is one dot product of gathered rows
    unit = torch.cat([nn.functional.normalize(e[:, :dim], dim=1, eps=1e-8),
                      nn.functional.normalize(e[:, dim:], dim=1, eps=1e-8)], dim=1)
    shared, reverse = ops.shared_neighbours(nbrs, src, dst)
    out = torch.empty((src.shape[0], NUM_STATISTICS), dtype=torch.float32, device=e.device)
    rows_a = torch.empty((min(_CHUNK, src.shape[0]), 2 * dim), device=e.device)
    rows_b = torch.empty_like(rows_a)
    for start in range(0, src.shape[0], _CHUNK):
        a, b = src[start:start + _CHUNK], dst[start:start + _CHUNK]
        ua = torch.index_select(unit, 0, a, out=rows_a[:a.shape[0]]).view(-1, 2, dim)
        ub = torch.index_select(unit, 0, b, out=rows_b[:a.shape[0]]).view(-1, 2, dim)
        # [[f_a·f_b, f_a·s_b], [s_a·f_b, s_a·s_b]] of every edge in one batched product
        dots = torch.bmm(ua, ub.transpose(1, 2)).view(-1, 4)
        out[start:start + a.shape[0], :4] = dots[:, [0, 3, 1, 2]]
    out[:, 4] = shared.float() / k
    out[:, 5] = rank.float() / k
    out[:, 6] = reverse.float() / k
    scale = sims[:, 1:min(NEAR, k - 1) + 1].float().mean(1)
    far = sims[:, min(FAR, k - 1)].float()
    for column, ends in ((7, src), (8, dst)):
        out[:, column] = scale[ends]
        out[:, column + 2] = out[:, 0] - out[:, column]
        out[:, column + 4] = far[ends]
    return out


class Calibrated(NamedTuple):
    """The grouping :func:`sepfl.train._calibrate` chose for one graph (:class:`EdgeHead`)."""

    grouping: str        # "infomap" or "components"
    threshold: float     # connected components above it
    markov_time: float   # Infomap's
    join: float          # Infomap's modules joined by this many edges of P > join_above
    join_above: float
    same_share: float    # the graph's mean P(same identity) over its candidate edges


class EdgeHead(nn.Module):
    """P(same identity) of a candidate edge from its :func:`edge_statistics`.

    Standardisation (``mean``, ``std``, set by :meth:`set_normalization` from
    the training edges) then Linear(13→64), GELU, Linear(64→64), GELU,
    Linear(64→2). ``candidates`` holds the candidate edges per sample it was
    trained with; the other buffers, [V] each, what training calibrated on
    V graphs (the whole training set and its thinned copies,
    :func:`sepfl.train._calibrate`): ``same_share``, each graph's mean P(same
    identity) over its candidate edges, then how to group it — ``components``
    (1 for connected components above ``threshold``, 0 for Infomap at
    ``markov_time`` with its modules joined by ``join`` edges of P above
    ``join_above``, :func:`join_modules`; ``join`` 0: none; training sets
    ``components`` and ``threshold`` alike for every graph). :meth:`calibrated`
    picks one for a graph to cluster.
    """

    def __init__(self, hidden: int = 64, views: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(NUM_STATISTICS, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2))
        self.register_buffer("mean", torch.zeros(NUM_STATISTICS))
        self.register_buffer("std", torch.ones(NUM_STATISTICS))
        self.register_buffer("candidates", torch.tensor(20))
        self.set_calibration([Calibrated("infomap", 0.5, 1.0, 0.0, JOIN_ABOVE, 0.0)] * views)

    def set_calibration(self, views: Sequence[Calibrated]) -> None:
        """Store the grouping calibrated on each of V graphs (the buffers become [V])."""
        device = self.mean.device
        columns = list(zip(*views))
        for name, values in zip(Calibrated._fields, columns):
            if name == "grouping":
                self.register_buffer("components", torch.tensor(
                    [int(value == "components") for value in values], device=device))
            else:
                self.register_buffer(name, torch.tensor(values, dtype=torch.float32,
                                                        device=device))

    def calibrated(self, same_share: float) -> Calibrated:
        """The grouping calibrated on the graph whose ``same_share`` is nearest this one's.

        ``same_share`` is the mean P(same identity) over the candidate edges of
        the graph to cluster: about the share of a sample's candidates that are
        its own identity, which falls as identities have fewer samples, so the
        nearest calibration graph is the one with neighbourhoods most alike.
        """
        view = int(torch.argmin((self.same_share.double() - same_share).abs()))
        return Calibrated("components" if int(self.components[view]) else "infomap",
                          *(float(getattr(self, name)[view]) for name in Calibrated._fields[1:]))

    @torch.no_grad()
    def set_normalization(self, stats: torch.Tensor) -> None:
        """Standardise by the mean and standard deviation of ``stats`` [E, 13]."""
        self.mean.copy_(stats.mean(0))
        self.std.copy_(stats.std(0).clamp_min(1e-6))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        """Logits [E, 2] (class 1: same identity) from ``stats`` float32 [E, 13]."""
        return self.net((stats - self.mean) / self.std)

    @torch.no_grad()
    def probability(self, stats: torch.Tensor, batch_size: int = 1 << 18) -> torch.Tensor:
        """P(same identity) float32 [E] in eval mode, ``batch_size`` edges at a time."""
        out = torch.empty(stats.shape[0], dtype=torch.float32, device=stats.device)
        for start in range(0, stats.shape[0], batch_size):
            logits = self(stats[start:start + batch_size]).float()
            out[start:start + logits.shape[0]] = torch.softmax(logits, dim=1)[:, 1]
        return out


EVEN_ODDS = 0.5  # the class prior the edge head's balanced training batches assume
_PRIOR_TOLERANCE = 1e-4
_PRIOR_ITERATIONS = 200


def _prior_weight(prior: float) -> float:
    return prior / (1.0 - prior)


def mean_of(values: torch.Tensor) -> float:
    """The mean of ``values`` (any shape), accumulated in float64."""
    return float(values.mean(dtype=torch.float64))


def estimated_prior(prob: torch.Tensor,
                    mean: Callable[[torch.Tensor], float] = mean_of) -> float:
    """The share of same-identity edges among ``prob``'s (float32 [E], the edge head's P)
    where their mean P is below one half, else :data:`EVEN_ODDS`.

    The head learns from class-balanced batches, so its P is a posterior for even odds;
    where identities have few samples most candidate edges join two identities and that
    P is too high. The prior is the EM fixed point of label-shift correction: P re-weighted
    to prior π (:func:`shifted_prior`) has mean π. Where the mean P is at least one half
    (full-size sets) P is left as trained, so the calibration made on such graphs holds.
    The estimate is right where the head's P is calibrated for the set's edges up to the
    prior (the share of each kind of edge shifts, the edges of each kind do not). ``mean``
    reduces a tensor to its mean (over every process in a sharded run).
    """
    share = mean(prob)
    if not share < EVEN_ODDS:
        return EVEN_ODDS
    prior = max(share, 1e-3)
    for _ in range(_PRIOR_ITERATIONS):
        weighted = _prior_weight(prior) * prob
        update = max(mean(weighted / (weighted + 1 - prob)), 1e-3)
        converged = abs(update - prior) < _PRIOR_TOLERANCE
        prior = update
        if converged:
            break
    return prior


def shifted_prior(prob: np.ndarray, prior: float) -> np.ndarray:
    """P(same identity) float32 [E] re-weighted from even odds to class prior ``prior``:
    w P / (w P + 1 - P) with w = prior / (1 - prior); ``prob`` itself at even odds."""
    if prior == EVEN_ODDS:
        return prob
    weighted = _prior_weight(prior) * prob.astype(np.float64)
    return (weighted / (weighted + 1 - prob)).astype(np.float32)


def _import_infomap():
    """The ``infomap`` module, with ``faiss`` imported before it where faiss is installed.

    Both are SWIG modules sharing SWIG's runtime type table; when faiss is first
    imported after Infomap has run, Infomap's next result iteration crashes the
    process (faiss-cpu 1.15, infomap 2.16), while the other order works. A kNN
    graph given by the caller leaves faiss unimported until a later build needs it.
    """
    faiss_module()
    import infomap
    return infomap


def infomap_available() -> bool:
    """Whether the optional ``infomap`` package can be imported."""
    try:
        _import_infomap()
    except ImportError:
        return False
    return True


SINGLETON_ABOVE = 0.5

#: :func:`join_modules`: an edge above this P counts as sure where the calibration says none.
JOIN_ABOVE = 0.9
#: :func:`join_modules`: two modules are joined only where the mean P of all the candidate
#: edges between them is above this (on average those edges say "same identity").
JOIN_MEAN_ABOVE = 0.5


def singleton_edges(labels: np.ndarray, src: np.ndarray, dst: np.ndarray, prob: np.ndarray,
                    floor: float) -> Tuple[np.ndarray, np.ndarray]:
    """The most probable edge of each sample alone in its cluster, when its P > ``floor``.

    Added to the edges that made ``labels``, each joins one sample alone to one
    partner: a sample alone joins a cluster (or another sample alone), and two
    clusters are never merged, since every edge added starts at a different
    sample alone.

    Parameters
    ----------
    labels : int64 ndarray [N]
        Clusters of the edges kept so far.
    src, dst : int64 ndarray [E]
        Every candidate edge (either direction).
    prob : float32 ndarray [E]
        P(same identity) of each edge.
    floor : float

    Returns
    -------
    (alone, partner) : int64 ndarray [A] each
    """
    alone = np.bincount(labels)[labels] == 1
    ends = np.concatenate([src, dst])
    partners = np.concatenate([dst, src])
    p = np.concatenate([prob, prob])
    usable = alone[ends] & (p > floor)
    ends, partners, p = ends[usable], partners[usable], p[usable]
    order = np.lexsort((-p, ends))  # by sample, its most probable edge first
    ends, partners = ends[order], partners[order]
    first = np.unique(ends, return_index=True)[1]
    return ends[first], partners[first]


def group_edges(src: np.ndarray, dst: np.ndarray, prob: np.ndarray, num_nodes: int,
                grouping: str = "infomap", threshold: float = 0.5,
                markov_time: float = 1.0, seed: int = 1,
                cosine: Optional[np.ndarray] = None, full_cosine: float = 0.0,
                join: float = 0.0, join_above: float = JOIN_ABOVE) -> np.ndarray:
    """Clusters from scored edges: the edges with P > threshold, grouped.

    Parameters
    ----------
    src, dst : int64 ndarray [E]
        Edges (either direction; for Infomap an edge given both ways weighs the sum).
    prob : float32 ndarray [E]
        P(same identity) of each edge.
    num_nodes : int
    grouping : {"infomap", "components"}
        Infomap's two-level partition of the edges (:func:`infomap_modules`), or
        connected components with each sample they leave alone joined by
        :func:`singleton_edges` at P > 0.5.
    threshold : float
        Edges at or below it are dropped (for components: before samples left alone are
        joined).
    markov_time : float
        Infomap's Markov time: above 1 the walk looks further and modules grow
        (sub-modes of one identity join), below 1 they shrink.
    seed : int
        Infomap's seed.
    cosine : float32 ndarray [E], optional
        Each edge's cosine similarity; with ``full_cosine`` > 0 it weights
        Infomap's links (module notes). Components ignore both.
    full_cosine : float in [0, 1]
        The cosine from which an edge weighs its whole P (0: P alone).
    join, join_above : float
        Infomap only, ``join`` above 0: two modules with at least ``join`` edges of
        P > ``join_above`` between them are one cluster (:func:`join_modules`).

    Returns
    -------
    labels : int64 ndarray [N]
        0..C-1, numbered in order of each cluster's smallest member.
    """
    if grouping == "components":
        keep = prob > threshold
        kept_src, kept_dst = src[keep], dst[keep]
        found = np.asarray(ops.connected_components(kept_src, kept_dst, num_nodes))
        alone, partner = singleton_edges(found, src, dst, prob, min(threshold, SINGLETON_ABOVE))
        if alone.size == 0:
            return found
        return np.asarray(ops.connected_components(np.concatenate([kept_src, alone]),
                                                   np.concatenate([kept_dst, partner]),
                                                   num_nodes))
    modules = infomap_modules(src, dst, prob, num_nodes, threshold, markov_time, seed,
                              cosine, full_cosine)
    return join_modules(modules, src, dst, prob, join, join_above) if join > 0 else modules


def infomap_modules(src: np.ndarray, dst: np.ndarray, prob: np.ndarray, num_nodes: int,
                    threshold: float = 0.5, markov_time: float = 1.0, seed: int = 1,
                    cosine: Optional[np.ndarray] = None,
                    full_cosine: float = 0.0) -> np.ndarray:
    """Infomap's modules of the edges with P > ``threshold``, each weighted by P times
    ``min(1, max(cosine, 0) / full_cosine) ** 2`` (one trial, seeded, so the same edges
    give the same labels): int64 [num_nodes], numbered by smallest member. Arguments as
    :func:`group_edges`'."""
    keep = prob > threshold
    src, dst, weight = src[keep], dst[keep], prob[keep].astype(np.float64)
    if cosine is not None and full_cosine > 0:
        weight *= np.clip(cosine[keep].astype(np.float64) / full_cosine, 0.0, 1.0) ** 2
    return _infomap_modules(src, dst, weight, num_nodes, markov_time, seed)


def join_modules(modules: np.ndarray, src: np.ndarray, dst: np.ndarray, prob: np.ndarray,
                 join: float, join_above: float,
                 mean_above: float = JOIN_MEAN_ABOVE) -> np.ndarray:
    """``modules`` (int64 [N], 0..M-1, numbered by smallest member) with every two joined
    that at least ``join`` edges (``src``, ``dst``: int64 [E], either direction) of P
    (``prob``, float32 [E]) above ``join_above`` connect, and whose edges between them
    have a mean P above ``mean_above``; joined transitively. Infomap cuts an identity made
    of several sub-modes (pose, age) where the walk rarely crosses, at any Markov time: a
    few sure edges between two large modules weigh little against the thousands inside
    them. Requiring several sure edges, not one, keeps a single wrong edge from merging
    two identities; requiring the mean, over every candidate edge between the two, keeps
    two look-alike identities apart that a handful of confidently wrong edges connect
    among many that the head scores as different people (between sub-modes of one
    identity the edges that are not sure are mostly likely still). ``mean_above`` 0: the
    count alone. Returns int64 [N], numbered by smallest member."""
    cross = modules[src] != modules[dst]
    a, b, p = modules[src[cross]], modules[dst[cross]], prob[cross]
    size = np.int64(modules.max(initial=-1)) + 1
    pair, where, count = np.unique(np.minimum(a, b) * size + np.maximum(a, b),
                                   return_inverse=True, return_counts=True)
    sure = np.bincount(where, weights=p > join_above, minlength=pair.size)
    mean = np.bincount(where, weights=p.astype(np.float64), minlength=pair.size) / count
    joined = pair[(sure >= join) & (mean > mean_above)]
    # modules are numbered by smallest member, so components of module ids numbered by their
    # smallest id are numbered by smallest member too
    found = np.asarray(ops.connected_components(joined // size, joined % size, int(size)))
    return found[modules]


def _infomap_modules(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, num_nodes: int,
                     markov_time: float, seed: int) -> np.ndarray:
    """Infomap's two-level modules of the links ``src``-``dst`` weighted ``weight``
    (float64 [E]), as int64 [num_nodes] labels numbered by smallest member."""
    infomap = _import_infomap()

    # one undirected link per pair, its two directions' weights summed (as Infomap
    # would aggregate them): half the links to hand over
    low, high = np.minimum(src, dst), np.maximum(src, dst)
    pairs, where = np.unique(low * num_nodes + high, return_inverse=True)
    weight = np.bincount(where, weights=weight, minlength=pairs.size)
    solver = infomap.Infomap(two_level=True, silent=True, num_trials=1, seed=seed,
                             markov_time=markov_time)
    solver.add_nodes(range(num_nodes))
    # one [E, 3] float64 array: infomap reads it in C++ (exact for ids below 2^53)
    solver.add_links(np.column_stack([pairs // num_nodes, pairs % num_nodes, weight]))
    modules = solver.run().modules()
    module = np.empty(num_nodes, dtype=np.int64)
    module[np.fromiter(modules.keys(), np.int64, len(modules))] = np.fromiter(
        modules.values(), np.int64, len(modules))
    # each node joined to its module's first node: the components are the modules, numbered
    # by smallest member as every sepfl labelling is
    first = np.unique(module, return_index=True)[1]
    order = np.empty(module.max() + 1, dtype=np.int64)
    order[module[first]] = first
    return np.asarray(ops.connected_components(np.arange(num_nodes), order[module], num_nodes))
