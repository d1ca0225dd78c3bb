"""Sharded clustering on torch.distributed: ``cluster(..., ClusterConfig(distributed=True))``.

Launched by ``torchrun --nproc-per-node=G`` (with ``--nnodes`` for several
machines), every process (a *rank*) calls :func:`sepfl.cluster.cluster` with
the same arguments. The process group is created from torchrun's environment
when the caller has not made one (gloo on the CPU, NCCL on GPUs, one GPU per
rank: ``cuda:LOCAL_RANK``), with ``config.distributed_timeout``. Rank r of G
owns the contiguous rows ``bounds[r]:bounds[r + 1]`` (:func:`shard_bounds`) and
holds only their share of the per-node arrays: kNN lists and similarities,
density, embeddings. Stage by stage:

normalize
    each rank normalises its own rows (of a memory map, only those are read).
    With ``config.distributed_features`` "all" (or "auto" where they fit: N·D·4
    bytes, 5.3 GB for 5.21M x 256, at most a quarter of each rank's share of its
    memory) they are all-gathered: every rank holds float32 [N, D].
knn
    features "all": the shard's rows searched against all rows
    (:func:`sepfl.knn.build_knn` with ``rows``, any backend). "shard": an exact
    brute-force search that never holds more than the shard and one other: each
    rank's shard is broadcast to all in turn, and every rank keeps the running
    top k of its rows; the rows the lists name are then fetched from their
    owners, a chunk of shard rows at a time, and the similarities recomputed as
    the single process's faiss search does (:func:`sepfl.knn.rescore_lists`).
density
    the shard's densities, normalised by the maxima over all ranks (one all-reduce).
embeddings
    the shard's rows (:meth:`PairClassifier.embed_nodes`), from the features of
    the samples their lists name (features "shard": fetched a chunk of shard
    rows at a time, as for the kNN).
edges / pairs
    "edges": the shard's candidate edges; their statistics also read the far
    end's embedding, list and similarities, and only those rows are fetched
    from their owners (:meth:`_Group.fetch`, two all-to-alls). "sepfl": the
    densities of the shard's remote kNN entries are fetched, each shard row
    picks its first denser neighbour, then the partners' embeddings are fetched.
scores
    each rank scores its shard's pairs.
group / link
    the scored pairs are gathered on rank 0 and grouped there by the
    single-process function (:func:`sepfl.stages.group`); the labels are broadcast.

Every rank gets all N labels, the same partition as a single process up to
float rounding: the shard's rows share node tiles differently in the network
(:meth:`PairClassifier.embed_nodes`), so an embedding, and a score near the
threshold, can differ in the last bits. kNN lists, similarities and (on the
CPU) densities are bit for bit the single process's, except that the ring search
of sharded features may order exactly tied neighbours differently (or keep
another of them last); such a list changes its row's candidate edges, and
Infomap can then place a whole cluster differently.

Failures: a rank that raises or dies makes the others raise
:class:`DistributedError`, naming the stage, at their next collective (at the
latest after ``distributed_timeout`` seconds) instead of hanging.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from sepfl import edges, ops
from sepfl._validate import Array, to_numpy, to_tensor
from sepfl.stages import (GROUP_STAGE, ClusterResult, Stopwatch, candidates, check_inputs,
                          checked_knn, group, grouping_of, pair_scores, resolve_scheme)
from sepfl.config import ClusterConfig
from sepfl.device import resolve_device
from sepfl.features import normalize_features
from sepfl.knn import rescore_lists, unit_knn
from sepfl.model import PairClassifier

__all__ = ["DistributedError", "ShardResult", "cluster_sharded", "is_rank_zero", "shard_bounds"]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# bytes of one block of similarities [query rows, shard rows] in the sharded kNN search
_RING_BLOCK_BYTES = 1 << 28
# features "shard": shard rows whose lists' rows are fetched at a time (at most k x as many)
_NAMED_CHUNK = 16384
# scheme "edges": bytes of the rows one chunk of the edges stage may hold
_EDGE_BYTES = 1 << 30

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """A collective failed: another rank raised, died or did not answer within the timeout."""


@dataclasses.dataclass
class ShardResult(ClusterResult):
    """What one rank of :func:`cluster_sharded` found.

    ``labels`` are all N labels (the same on every rank); ``density``,
    ``features``, ``nbrs``, ``sims`` and ``embeddings`` hold the shard's rows
    only, and ``src``, ``dst``, ``scores`` the pairs whose ``src`` is in the
    shard (global indices).

    Attributes
    ----------
    rows : range
        The samples of the shard: row i of the per-node arrays is sample ``rows[i]``.
    collectives : dict of str to float
        Seconds of each stage of ``timings`` spent in collectives (the all-gather
        of the features, the all-to-all fetches of other shards' rows, the gather
        and broadcast of the grouping), waiting for the other ranks included.
    """

    rows: range
    collectives: Dict[str, float]


def shard_bounds(n: int, world: int) -> List[int]:
    """Row bounds of ``world`` contiguous shards of ``n`` rows: rank r owns
    ``bounds[r]:bounds[r + 1]``; sizes differ by at most one."""
    return [n * r // world for r in range(world + 1)]


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of a torch.distributed job (or runs alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def cluster_sharded(features: Array, model: PairClassifier, config: ClusterConfig,
                    knn: Optional[Tuple[Array, Array]] = None,
                    knn_cache: Optional[str] = None) -> ShardResult:
    """This rank's part of :func:`sepfl.cluster.cluster` sharded over a torch.distributed job.

    Every rank calls it with the same arguments (see the module notes).

    Parameters
    ----------
    features : float [N, D], numpy array (a memory map: each rank reads its rows) or tensor
    model : PairClassifier
    config : ClusterConfig
    knn : (nbrs int [N, k], sims float [N, k]), optional
        A precomputed kNN graph of all rows; each rank uses its shard's rows.
    knn_cache : None
        Not supported here (ValueError).

    Returns
    -------
    ShardResult
        All N labels, and the shard's rows of the per-node arrays.

    Raises
    ------
    ValueError
        As :func:`sepfl.cluster.cluster`; no torchrun environment and no process group.
    DistributedError
        Another rank failed, died or did not answer within ``config.distributed_timeout``.
    """
    if knn_cache is not None:
        raise ValueError("knn_cache is not supported with distributed=True (each rank builds "
                         "its shard's lists); pass knn=(nbrs, sims) of all rows instead")
    features = check_inputs(features, model, config)
    device = _rank_device(config)
    with _process_group(config, device):
        return _run(features, model, config, knn, _Group(features.shape[0], device))


def _rank_device(config: ClusterConfig) -> torch.device:
    """The configured device; plain "cuda" (or None on a GPU machine) is ``cuda:LOCAL_RANK``."""
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def _process_group(config: ClusterConfig, device: torch.device) -> Iterator[None]:
    """The caller's process group, or one made from torchrun's environment for the call."""
    if dist.is_initialized():
        yield
        return
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(f"distributed=True runs under torchrun (or in an initialised "
                         f"torch.distributed process group): {', '.join(missing)} not set")
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=config.distributed_timeout),
                                device_id=device if device.type == "cuda" else None)
    except RuntimeError as err:
        raise DistributedError(f"rank {os.environ['RANK']}: the process group did not form "
                               f"within {config.distributed_timeout:g} s ({_one_line(err)})"
                               ) from err
    try:
        yield
    finally:
        dist.destroy_process_group()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


class _Group:
    """This rank's view of the job: its rows, and the collectives the stages use.

    Every collective names the stage it ran in when it fails (DistributedError),
    and its time is added to ``collectives[stage]`` (on a GPU the stream is
    synchronised around it, so that it is charged the transfer alone). Tensors
    travel on ``device`` (NCCL needs them on the GPU).
    """

    def __init__(self, n: int, device: torch.device):
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.bounds = shard_bounds(n, self.size)
        self.shard_sizes = [hi - lo for lo, hi in zip(self.bounds, self.bounds[1:])]
        self.rows = range(self.bounds[self.rank], self.bounds[self.rank + 1])
        self.device = device
        self.collectives: Dict[str, float] = {}
        self._stage = "start"

    @contextlib.contextmanager
    def stage(self, watch: Stopwatch, name: str) -> Iterator[None]:
        """``watch.stage(name)``, and ``name`` for the errors of the collectives inside."""
        self._stage = name
        with watch.stage(name):
            yield

    def _collective(self, what: str, call, *args, **kwargs) -> None:
        self._synchronize()
        start = time.perf_counter()
        try:
            call(*args, **kwargs)
            self._synchronize()
        except RuntimeError as err:
            raise DistributedError(
                f"rank {self.rank} of {self.size}, stage {self._stage!r}: {what} failed "
                f"({_one_line(err)}); another rank failed, died or did not answer within the "
                f"timeout: see its log") from err
        self.collectives[self._stage] = (self.collectives.get(self._stage, 0.0)
                                         + time.perf_counter() - start)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _sizes(self, count: int) -> List[int]:
        """``count`` of every rank, in rank order."""
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        self._collective("all_gather of sizes", dist.all_gather, sizes,
                         torch.tensor([count], device=self.device))
        return [int(s) for s in sizes]

    def all_rows(self, shard: torch.Tensor) -> torch.Tensor:
        """Every rank's shard [M_r, ...] stacked in rank order: [N, ...]."""
        padded = shard.new_zeros((max(self.shard_sizes),) + tuple(shard.shape[1:]))
        padded[:shard.shape[0]] = shard
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective("all_gather of rows", dist.all_gather, parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, self.shard_sizes)])

    def reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        """Element-wise ``op`` ("max", "min" or "sum") of ``values`` over the ranks (in
        place, returned)."""
        self._collective("all_reduce", dist.all_reduce, values,
                         op={"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
                             "sum": dist.ReduceOp.SUM}[op])
        return values

    def shard_of(self, owner: int, shard: torch.Tensor) -> torch.Tensor:
        """Rank ``owner``'s ``shard`` [M_owner, ...] on every rank (this rank passes its
        own, or any tensor of that row shape and dtype)."""
        rows = shard if owner == self.rank else \
            shard.new_empty((self.shard_sizes[owner],) + tuple(shard.shape[1:]))
        self._collective("broadcast of a shard", dist.broadcast, rows, src=owner)
        return rows

    def fetch(self, ids: torch.Tensor, tables: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Rows ``ids`` of tables sharded like the samples.

        Parameters
        ----------
        ids : int64 Tensor [R]
            Sorted, distinct samples outside this rank's shard.
        tables : Tensors [M, ...]
            This rank's rows of each table (each rank passes the same tables).

        Returns
        -------
        list of Tensors [R, ...]
            Row i of each is sample ``ids[i]``'s row, from its owner.
        """
        owner = torch.bucketize(ids, torch.tensor(self.bounds[1:-1], device=ids.device),
                                right=True)
        wanted = torch.bincount(owner, minlength=self.size)
        asked = torch.empty_like(wanted)
        self._collective("all_to_all of counts", dist.all_to_all_single, asked, wanted)
        send, recv = asked.tolist(), wanted.tolist()
        requests = torch.empty(sum(send), dtype=torch.int64, device=ids.device)
        self._collective("all_to_all of requests", dist.all_to_all_single, requests, ids,
                         send, recv)
        local = requests - self.rows.start
        out = []
        for table in tables:
            rows = table.new_empty((len(ids),) + tuple(table.shape[1:]))
            self._collective("all_to_all of rows", dist.all_to_all_single, rows,
                             table[local].contiguous(), recv, send)
            out.append(rows)
        return out

    def gather(self, parts: Sequence[torch.Tensor]) -> Optional[List[torch.Tensor]]:
        """Each of ``parts`` (1-D, the same length on a rank) concatenated over the ranks
        in rank order, on rank 0; None on the others."""
        sizes = self._sizes(parts[0].shape[0])
        out = [] if self.rank == 0 else None
        for part in parts:
            padded = part.new_zeros(max(sizes))
            padded[:part.shape[0]] = part
            pieces = [torch.empty_like(padded) for _ in range(self.size)] if out is not None \
                else None
            self._collective("gather", dist.gather, padded, pieces, dst=0)
            if out is not None:
                out.append(torch.cat([piece[:size] for piece, size in zip(pieces, sizes)]))
        return out

    def broadcast(self, labels: Optional[np.ndarray], n: int) -> np.ndarray:
        """Rank 0's ``labels`` (int64 [n]) on every rank."""
        out = (to_tensor(labels, self.device) if labels is not None
               else torch.empty(n, dtype=torch.int64, device=self.device))
        self._collective("broadcast of labels", dist.broadcast, out, src=0)
        return to_numpy(out)


class _Local:
    """A rank's numbering of the samples it touches: its shard rows 0..M-1, then the
    ``fetched`` samples (sorted, distinct, outside the shard: rows fetched from their
    owners)."""

    def __init__(self, rows: range, fetched: torch.Tensor):
        self.rows, self.fetched = rows, fetched

    def __len__(self) -> int:
        return len(self.rows) + len(self.fetched)

    def ids(self) -> torch.Tensor:
        """The sample of each local index, int64 [len(self)]."""
        shard = torch.arange(self.rows.start, self.rows.stop, device=self.fetched.device)
        return torch.cat([shard, self.fetched])

    def of(self, ids: torch.Tensor) -> torch.Tensor:
        """Local indices of samples ``ids`` (int64, any shape); -1 for -1 and for samples
        not numbered here."""
        inside = (ids >= self.rows.start) & (ids < self.rows.stop)
        out = torch.where(inside, ids - self.rows.start, torch.full_like(ids, -1))
        if len(self.fetched):
            at = torch.searchsorted(self.fetched, ids).clamp_(max=len(self.fetched) - 1)
            hit = ~inside & (self.fetched[at] == ids)
            out = torch.where(hit, len(self.rows) + at, out)
        return out


def _outside(ids: torch.Tensor, rows: range) -> torch.Tensor:
    """The distinct samples among ``ids`` (any shape, -1 ignored) outside ``rows``, sorted."""
    ids = ids[(ids >= 0) & ((ids < rows.start) | (ids >= rows.stop))]
    return torch.unique(ids)


def _memory_share(device: torch.device) -> int:
    """Bytes of memory one rank may count on: its GPU's, or its machine's RAM divided
    among the ranks torchrun started there."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return ram // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _replicate(config: ClusterConfig, n: int, dim: int, job: _Group) -> bool:
    """Whether every rank holds all N normalised rows: ``config.distributed_features``;
    for "auto", whether float32 [N, D] takes at most a quarter of every rank's memory
    share (one all-reduce, so that all ranks agree)."""
    if config.distributed_features != "auto":
        return config.distributed_features == "all"
    fits = float(n * dim * 4 <= _memory_share(job.device) // 4)
    return bool(job.reduce(torch.tensor([fits], device=job.device), "min")[0] > 0)


def _named_rows(job: _Group, x: torch.Tensor, nbrs: torch.Tensor
                ) -> Iterator[Tuple[int, int, torch.Tensor, _Local]]:
    """The shard's rows ``x`` (float32 [M, D]) in chunks of :data:`_NAMED_CHUNK`, each
    with the R rows outside the shard that its lists (``nbrs``, int64 [M, k]) name,
    fetched from their owners (every rank runs as many chunks, some empty): yields
    ``(lo, hi, rows, local)``, ``rows`` = the shard then the R fetched, [M + R, D],
    numbered by ``local``. R is at most k x the chunk's rows, whatever N: all of the
    shards together name nearly every sample when rows are in no particular order (any
    sample of an identity names the others), so fetching for the whole shard at once
    would hold about N rows."""
    for lo in range(0, max(job.shard_sizes), _NAMED_CHUNK):
        lo, hi = min(lo, len(x)), min(lo + _NAMED_CHUNK, len(x))
        local = _Local(job.rows, _outside(nbrs[lo:hi], job.rows))
        (far,) = job.fetch(local.fetched, [x])
        yield lo, hi, torch.cat([x, far]), local


def _ring_knn(job: _Group, x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN lists of the shard's unit rows ``x`` (float32 [M, D]) among all N rows,
    holding the shard and one other at a time.

    Each rank's shard is broadcast in turn; every rank scores its rows against it in
    blocks of :data:`_RING_BLOCK_BYTES` and keeps the running top k (its own row first).
    The similarities are then recomputed from the rows the lists name (fetched chunk
    by chunk, :func:`_named_rows`) by :func:`sepfl.knn.rescore_lists`, as the single
    process's faiss search does.

    Returns nbrs int64 [M, k] and sims float32 [M, k].
    """
    m = x.shape[0]
    best = x.new_full((m, k), -math.inf)
    nbrs = torch.full((m, k), -1, dtype=torch.int64, device=x.device)
    tile = max(1, _RING_BLOCK_BYTES // (4 * max(job.shard_sizes)))
    for owner in range(job.size):
        lo, hi = job.bounds[owner], job.bounds[owner + 1]
        if hi == lo:
            continue
        shard = job.shard_of(owner, x)
        for start in range(0, m, tile):
            stop = min(m, start + tile)
            scores = x[start:stop] @ shard.T
            if owner == job.rank:  # +inf keeps each row first, duplicates of it included
                own = torch.arange(start, stop, device=x.device)
                scores[own - start, own] = math.inf
            vals, idx = scores.topk(min(k, hi - lo), dim=1)
            vals = torch.cat([best[start:stop], vals], 1)
            idx = torch.cat([nbrs[start:stop], idx + lo], 1)
            best[start:stop], order = vals.topk(k, dim=1)
            nbrs[start:stop] = idx.gather(1, order)
    sims = np.empty((m, k), dtype=np.float32)
    for lo, hi, rows, local in _named_rows(job, x, nbrs):
        lists = to_numpy(local.of(nbrs[lo:hi])).copy()
        rescore_lists(to_numpy(rows), lists, sims[lo:hi], first=lo)
        lists = to_tensor(lists, x.device)
        nbrs[lo:hi] = torch.where(lists >= 0, local.ids()[lists.clamp(min=0)], lists)
    return nbrs, to_tensor(sims, x.device)


def _embed_shard(job: _Group, model: PairClassifier, config: ClusterConfig, x: torch.Tensor,
                 nbrs: torch.Tensor) -> torch.Tensor:
    """Features "shard": ``e`` float32 [M, 2D] of the shard's rows, from the rows their
    lists name, fetched chunk by chunk (:func:`_named_rows`)."""
    e = x.new_empty((x.shape[0], 2 * x.shape[1]))
    for lo, hi, rows, local in _named_rows(job, x, nbrs):
        if hi > lo:
            e[lo:hi] = model.embed_nodes(rows, torch.arange(lo, hi, device=x.device),
                                         local.of(nbrs[lo:hi]),
                                         batch_size=config.node_batch_size, bf16=config.bf16,
                                         progress=config.progress)
    return e


def _density(sims: torch.Tensor, rho: float, job: _Group) -> torch.Tensor:
    """:func:`sepfl.ops.density` of the shard's lists (float32 [M, k]) → float32 [M],
    normalised by the maxima over every rank (one all-reduce).

    Row sums are accumulated column by column in float32, the CPU kernel's
    order, so on the CPU the densities are bit for bit the single process's.
    """
    if bool(torch.isnan(sims).any()):
        raise ValueError("sims holds NaN")
    clipped = sims.clamp(0.0, 1.0)
    sums = torch.zeros(sims.shape[0], dtype=torch.float32, device=sims.device)
    for column in clipped.unbind(1):
        sums += column
    counts = (clipped >= rho).sum(1).to(torch.float32)
    zero = sums.new_zeros(1)
    top = job.reduce(torch.stack([torch.cat([sums, zero]).max(),
                                   torch.cat([counts, zero]).max()]), "max")
    # an all-zero column (every similarity clipped to 0, or none >= rho) stays 0
    top = torch.where(top > 0, top, torch.ones_like(top))
    return 0.5 * (sums / top[0] + counts / top[1])


def _edge_chunk(n: int, width: int, k: int, per_row: int) -> int:
    """Source rows per chunk of the edges stage, for N samples with embeddings of
    ``width`` floats, kNN lists of k and at most ``per_row`` edges per source: all of
    them where N held rows fit in :data:`_EDGE_BYTES`, else as many as keep a chunk's
    held rows (at most 1 + ``per_row`` per source) within it. A held row: its embedding
    and the unit copy :func:`sepfl.edges.edge_statistics` makes (8 bytes per float),
    its list, similarities and renumbered list (20 bytes per entry)."""
    fit = max(1, _EDGE_BYTES // (8 * width + 20 * k))
    return n if n <= fit else max(1, fit // (1 + per_row))


def _edge_statistics(job: _Group, e: torch.Tensor, nbrs: torch.Tensor, sims: torch.Tensor,
                     src: torch.Tensor, dst: torch.Tensor, rank: torch.Tensor,
                     per_row: int) -> torch.Tensor:
    """:func:`sepfl.edges.edge_statistics` [E, 13] of the shard's candidate edges.

    ``src`` are shard rows (0..M-1, ascending, as :func:`sepfl.edges.candidate_edges`
    gives them, at most ``per_row`` edges each), ``dst`` samples. The edges go
    :func:`_edge_chunk` source rows at a time (every rank runs as many chunks, some
    empty). A chunk's ends are its "held" samples, numbered first: their embedding,
    list and similarities come from the shard or from their owners. The samples the
    sources' lists name are numbered after them (the shared entries of an edge are in
    its source's list; an entry of a held list that no source names can share nothing
    and becomes -1), through a sample → number table of N entries reset after each
    chunk. Memory: per chunk, the held rows (within :data:`_EDGE_BYTES` unless N rows
    fit in it) and a list row of each named sample (at most k per source); and the
    N-entry table.
    """
    out = torch.empty((src.shape[0], edges.NUM_STATISTICS), dtype=torch.float32,
                      device=e.device)
    number = torch.full((job.bounds[-1],), -1, dtype=torch.int64, device=nbrs.device)
    per_chunk = _edge_chunk(job.bounds[-1], e.shape[1], nbrs.shape[1], per_row)
    first = torch.arange(0, max(job.shard_sizes) + per_chunk, per_chunk, device=src.device)
    cuts = torch.searchsorted(src, first).tolist()
    for lo, hi in zip(cuts, cuts[1:]):
        ends = slice(lo, hi)
        sources = src[ends] + job.rows.start
        held = torch.unique(torch.cat([sources, dst[ends]]))
        named = torch.unique(nbrs[torch.unique_consecutive(src[ends])])
        named = named[(named >= 0) & ~torch.isin(named, held)]
        mine = (held >= job.rows.start) & (held < job.rows.stop)
        far = job.fetch(held[~mine], [e, nbrs, sims])
        rows = []
        for table, far_rows in zip((e, nbrs, sims), far):
            part = table.new_empty((len(held),) + tuple(table.shape[1:]))
            part[mine], part[~mine] = table[held[mine] - job.rows.start], far_rows
            rows.append(part)
        numbered = torch.cat([held, named])
        number[numbered] = torch.arange(len(numbered), device=number.device)
        table = torch.full((len(numbered), nbrs.shape[1]), -1, dtype=torch.int64,
                           device=nbrs.device)
        table[:len(held)] = torch.where(rows[1] >= 0, number[rows[1].clamp(min=0)], -1)
        out[ends] = edges.edge_statistics(rows[0], table, rows[2], number[sources],
                                          number[dst[ends]], rank[ends])
        number[numbered] = -1
    return out


def _select_pairs(job: _Group, nbrs: torch.Tensor, density: torch.Tensor,
                  max_per_node: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`sepfl.ops.select_pairs` of the shard's rows: (shard rows [P], samples [P]).

    The densities of the lists' entries outside the shard are fetched.
    """
    rows = job.rows
    local = _Local(rows, _outside(nbrs, rows))
    (far_density,) = job.fetch(local.fetched, [density])
    table = torch.full((len(local), nbrs.shape[1]), -1, dtype=torch.int64, device=nbrs.device)
    table[:len(rows)] = local.of(nbrs)
    src, dst = ops.select_pairs(table, torch.cat([density, far_density]), max_per_node)
    return src, local.ids()[dst]


def _mean(job: _Group, values: torch.Tensor) -> float:
    """The mean of ``values`` [P] (this rank's) over all ranks' values."""
    total = job.reduce(torch.stack([values.double().sum(), values.new_tensor(
        values.numel(), dtype=torch.float64)]), "sum")
    return float(total[0] / total[1])


def _pair_scores(job: _Group, model: PairClassifier, config: ClusterConfig, scheme: str,
                 e: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                 stats: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`sepfl.stages.pair_scores` of the shard's pairs (shard rows ``src``, samples
    ``dst``); for "sepfl" the partners' embeddings outside the shard are fetched."""
    if scheme == "edges":
        return pair_scores(model, config, scheme, e, src, dst, stats)
    local = _Local(job.rows, _outside(dst, job.rows))
    (far_e,) = job.fetch(local.fetched, [e])
    return pair_scores(model, config, scheme, torch.cat([e, far_e]), src, local.of(dst), None)


def _run(features: Array, model: PairClassifier, config: ClusterConfig,
         knn: Optional[Tuple[Array, Array]], job: _Group) -> ShardResult:
    n, rows, device = features.shape[0], job.rows, job.device
    watch = Stopwatch(device)
    with job.stage(watch, "normalize"):
        x = to_tensor(normalize_features(features[rows.start:rows.stop]), device)
        replicate = _replicate(config, n, x.shape[1], job)
        every = job.all_rows(x) if replicate else None
    with job.stage(watch, "knn"):
        if knn is not None:
            if len(knn[0]) != n:
                raise ValueError(f"knn table has {len(knn[0])} rows, expected N = {n}")
            nbrs, sims = checked_knn(knn[0][rows.start:rows.stop], knn[1][rows.start:rows.stop],
                                     rows, n, config.k, device)
        elif replicate:
            nbrs, sims = unit_knn(every, rows=rows, **config.knn_settings())
        else:
            if job.rank == 0:
                log.info("features sharded over %d ranks: exact brute-force kNN, each shard "
                         "passed to every rank (the kNN backend settings do not apply)",
                         job.size)
            nbrs, sims = _ring_knn(job, x, config.k)
    with job.stage(watch, "density"):
        density = _density(sims, config.rho, job)
    model = model.to(device).eval()
    with job.stage(watch, "embeddings"):
        if replicate:
            e = model.embed_nodes(every, torch.arange(rows.start, rows.stop, device=device),
                                  nbrs, batch_size=config.node_batch_size, bf16=config.bf16,
                                  progress=config.progress)
        else:
            e = _embed_shard(job, model, config, x, nbrs)
    scheme = resolve_scheme(model, config)
    stats = cosine = None
    if scheme == "edges":
        with job.stage(watch, "edges"):
            per_row = candidates(model, config)
            src, dst, rank = edges.candidate_edges(nbrs, per_row)
            stats = _edge_statistics(job, e, nbrs, sims, src, dst, rank, per_row)
            cosine = sims[src, rank]
    else:
        with job.stage(watch, "pairs"):
            src, dst = _select_pairs(job, nbrs, density, config.max_per_node)
    with job.stage(watch, "scores"):
        scores = _pair_scores(job, model, config, scheme, e, src, dst, stats)
        # means over all ranks' pairs pick the calibrated grouping and estimate the prior
        grouping = grouping_of(model, config, scheme, scores, lambda values: _mean(job, values))
    src = src + rows.start
    with job.stage(watch, GROUP_STAGE[scheme]):
        # Infomap's weights need each edge's cosine; "sepfl" pairs are linked on scores alone
        gathered = job.gather([src, dst, scores] + ([] if cosine is None else [cosine]))
        labels = job.broadcast(None if gathered is None else
                               group(*gathered[:3], n, grouping, *gathered[3:]), n)
    return ShardResult(labels=labels, density=to_numpy(density), src=to_numpy(src),
                       dst=to_numpy(dst), scores=to_numpy(scores), threshold=grouping.threshold,
                       grouping=grouping, timings=watch.timings, scheme=scheme,
                       features=to_numpy(x), nbrs=to_numpy(nbrs),
                       sims=to_numpy(sims), embeddings=to_numpy(e), rows=rows,
                       collectives=job.collectives)

