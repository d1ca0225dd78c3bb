"""The kNN graph: each sample's k most cosine-similar samples, itself first (SEPFL §1).

:func:`build_knn` is the one entry point. Rows of the features are normalised
first (:func:`sepfl.features.normalize_features`: a warning and a normalised
copy when they were not unit length), so similarities are cosines whatever the
input.

Backends
--------
``"faiss"``
    ``IndexFlatIP`` (exact), on the GPU when faiss has GPU support and
    ``device`` is CUDA, otherwise on the CPU. Approximate (``exact=False``, or
    ``exact=None`` from ``APPROXIMATE_FROM`` samples up): a graph index
    (``IndexHNSWFlat``, ``HNSW_LINKS`` links per node, built with a candidate
    list of ``HNSW_EF_BUILD``, searched with one of ``ef_search``), on the CPU;
    its recall@k is estimated on 1,000 sampled rows against brute force and
    logged. ``benchmarks/bench_knn.py --approximate`` measured these settings
    against exact search, faiss IVF, hnswlib and usearch.
``"torch"``
    Brute force, a block of query rows at a time; CPU or CUDA. On the CPU the
    block's similarities are computed in cache-sized tiles of columns, each
    offered to a running top-k (:class:`sepfl.ops.RowTopk`), so the ``[block,
    N]`` matrix never exists; a search of every row multiplies each pair once
    and offers it to both rows (:func:`_cpu_symmetric_search`), half the
    products. On CUDA the block's matrix exists (never ``N x N``), followed by an
    exact two-stage top-k (top groups by maximum, then top entries within them;
    see :func:`_grouped_topk`). Always exact up to ``precision``: ``"fp32"``
    computes everything in float32 (TF32 disabled);
    ``"tf32"`` / ``"bf16"`` find ``k + margin`` candidates with TF32 / bfloat16
    matrix products and re-rank them with float32 dot products, so the returned
    similarities are float32-accurate and only a near-tie at rank k can differ
    (recall >= 0.99 against fp32 on face-like data).
``"auto"``
    ``"torch"`` for every exact search (on the CPU, a search of every row computes
    half the products exact faiss does) and wherever the precision is reduced;
    ``"faiss"`` for an approximate search in float32 on the CPU when faiss is
    importable (:func:`choose_backend`). With ``precision="auto"`` (the default) a search on a
    CPU with AMX, exact or approximate, runs on the torch backend in bf16
    (:func:`resolve_precision`), any other search in fp32.

Self first
    The sample itself is at rank 0 with similarity exactly 1.0, also when
    exact duplicates tie with it (torch backend: its own score is set to +inf
    before ``topk``; faiss: the row is moved or inserted to the front). Other
    similarities are clamped to [-1, 1] (float rounding can exceed 1), so rows
    are sorted in non-increasing order. Empty slots (an approximate index that
    found fewer than k) are index -1 with similarity -1.0, as in :mod:`sepfl.io`.

Logs go to the ``sepfl.knn`` logger (a child of ``sepfl``).
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from sepfl import ops
from sepfl._threads import faiss_module as _faiss
from sepfl._validate import Array, check_positive_int, is_tensor, to_numpy, to_tensor
from sepfl.device import cpu_has_amx, resolve_device
from sepfl.features import fingerprint, normalize_features
from sepfl.io import read_knn, write_knn

__all__ = ["build_knn", "unit_knn", "choose_backend", "resolve_exact", "resolve_precision",
           "estimate_recall",
           "rescore_lists", "BACKENDS", "PRECISIONS", "APPROXIMATE_FROM"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "torch")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")

# Size of one [block, N] similarity matrix (plus the re-ranking gather) on CUDA.
_CUDA_BLOCK_BYTES = 2 << 30
# Columns per tile of a CPU block: [8192, 512] and [8192, 2048] tiles were slower at N = 300,000.
_CPU_TILE = 1024
# Rows per CPU block (a multiple of _CPU_TILE): at N = 300,000 the search took 34 s in blocks of
# 8,192 rows and 42 s in blocks of 2,184 (a 256 MiB budget's), one [block, 1024] tile at a time.
_CPU_BLOCK = 8192
_FAISS_BLOCK = 16384
# N * N * D multiply-adds from which a progress bar is worth showing (seconds on a laptop CPU).
_PROGRESS_MIN_WORK = 5e10
_RECALL_ROWS = 1000
# exact=None searches approximately from this many samples up. The approximate index is faiss's
# graph index, used where the CPU lacks AMX: at 300,000 samples on such a CPU (this project's Xeon
# held to AVX2, benchmarks/bench_knn.py --approximate --brute-force fp32) the exact float32 search
# took 142 s and the index 174 s at recall@80 0.94. The search grows as N², the index about as N.
APPROXIMATE_FROM = 500_000
HNSW_LINKS = 32
HNSW_EF_BUILD = 100


def build_knn(features: Array, k: int = 80, backend: str = "auto",
              device: Union[str, torch.device, None] = None, exact: Optional[bool] = True,
              precision: str = "auto", cache: Union[str, Path, None] = None,
              chunk_size: Optional[int] = None, progress: Optional[bool] = None,
              rows: Optional[range] = None, ef_search: int = 160) -> Tuple[Array, Array]:
    """The k nearest neighbours of every sample by cosine similarity, the sample itself first.

    Parameters
    ----------
    features : float [N, D], numpy array (a memory map is fine) or torch tensor (CPU / CUDA)
    k : int
        Neighbours per row, the sample itself included: ``2 <= k < N``.
    backend : {"auto", "faiss", "torch"}
        See the module notes.
    device : str or torch.device, optional
        Where to compute (``"cpu"``, ``"cuda"``, ``"cuda:1"``). Default: where
        ``features`` lives. The outputs still follow the input's kind and device.
    exact : bool or None
        ``False`` lets the faiss backend use its approximate graph index (and
        log its estimated recall); ``None`` does so from ``APPROXIMATE_FROM``
        samples up (:func:`resolve_exact`). The torch backend is always brute
        force.
    precision : {"auto", "fp32", "tf32", "bf16"}
        Matrix-product precision of the torch backend's candidate search;
        ``"auto"``: :func:`resolve_precision`.
    cache : str or path, optional
        A sepfl ``.npz`` kNN file: reused when it holds the same N and k, the
        same features (:func:`sepfl.features.fingerprint`) and, for an exact
        request, an exact graph; otherwise rebuilt (logged) and rewritten
        atomically.
    chunk_size : int, optional
        Query rows per block. Default: 8,192 on the CPU (a search of every row
        rounds it down to a multiple of its 1,024-column tiles); on CUDA as many as
        fit a 2 GiB block.
    progress : bool, optional
        tqdm bar on stderr. Default: shown for builds of more than a few seconds.
    rows : range, optional
        Only the lists of these rows (a contiguous ``range(start, stop)``, step
        1), searched among all N rows: a distributed rank's shard
        (:mod:`sepfl.distributed`). Not with ``cache``.
    ef_search : int
        Candidate list of the approximate index's search (raised to k when
        smaller): larger finds more true neighbours, more slowly.

    Returns
    -------
    nbrs : int64 [N, k] (or [len(rows), k])
        ``nbrs[i, 0] == i``; then neighbours by decreasing similarity (ties in
        any order).
    sims : float32 [N, k]
        Cosine similarities, ``sims[:, 0] == 1``, non-increasing along rows.
        Numpy arrays for numpy input; torch tensors on the input's device for
        tensor input.

    Raises
    ------
    TypeError
        ``features`` is not floating point; ``k`` is not an integer.
    ValueError
        ``features`` is not 2-D or holds NaN / inf / all-zero rows; ``k`` out of
        range; unknown backend / precision / device; ``precision`` other than
        fp32 with the faiss backend; ``ef_search`` not a positive integer.
    ImportError
        ``backend="faiss"`` without faiss installed.
    """
    return unit_knn(normalize_features(features), k=k, backend=backend, device=device,
                    exact=exact, precision=precision, cache=cache, chunk_size=chunk_size,
                    progress=progress, rows=rows, ef_search=ef_search)


def unit_knn(x: Array, k: int = 80, backend: str = "auto",
             device: Union[str, torch.device, None] = None, exact: Optional[bool] = True,
             precision: str = "auto", cache: Union[str, Path, None] = None,
             chunk_size: Optional[int] = None, progress: Optional[bool] = None,
             rows: Optional[range] = None, ef_search: int = 160) -> Tuple[Array, Array]:
    """:func:`build_knn` of features already checked and normalised: the pipeline's entry.

    ``x`` is float32 [N, D] with unit rows, as
    :func:`sepfl.features.normalize_features` returns it (numpy or a tensor);
    it is trusted, not checked again. The settings are checked as in
    :func:`build_knn`, which takes the same parameters and returns the same.
    """
    k = _check_k(k, x.shape[0])
    rows = _check_rows(rows, x.shape[0], cache)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    ef_search = check_positive_int(ef_search, "ef_search")
    where = resolve_device(device, x, native=False)
    exact = resolve_exact(exact, x.shape[0])
    precision = resolve_precision(precision, backend, where)
    backend = choose_backend(backend, where, precision, exact)
    # a brute-force graph counts as exact whatever its precision (in a cache too): reduced
    # precision only picks candidates, which float32 dot products then rank
    exact = exact or backend != "faiss"
    found = None if cache is None else _read_cache(Path(cache), x, k, exact)
    if found is None:
        show = _show_progress(progress, *x.shape)
        if backend == "faiss":
            found = _faiss_knn(to_numpy(x), k, exact, ef_search, where, chunk_size, show, rows)
        else:
            found = _torch_knn(to_tensor(x, where), k, precision, chunk_size, show, rows)
        if cache is not None:
            write_knn(cache, *found, features=x,
                      meta={"exact": exact, "backend": backend, "precision": precision})
    return _like(found, x)


# --------------------------------------------------------------------------- arguments


def _check_k(k: int, n: int) -> int:
    k = check_positive_int(k, "k")
    if not 2 <= k < n:
        raise ValueError(f"k must satisfy 2 <= k < N = {n} (rank 0 is the sample itself), "
                         f"got k={k}")
    return k


def resolve_exact(exact: Optional[bool], n: int) -> bool:
    """Whether a kNN search of ``n`` samples is exact: ``exact`` itself, or for None
    whether ``n`` is below ``APPROXIMATE_FROM``."""
    if exact is None:
        return n < APPROXIMATE_FROM
    if not isinstance(exact, (bool, np.bool_)):
        raise TypeError(f"exact must be True, False or None, got {exact!r}")
    return bool(exact)


def _check_rows(rows: Optional[range], n: int, cache: Union[str, Path, None]) -> range:
    """``rows`` (all N rows when None) once it is a contiguous range inside ``[0, N)``."""
    if rows is None:
        return range(n)
    if not isinstance(rows, range) or rows.step != 1 or not 0 <= rows.start <= rows.stop <= n:
        raise ValueError(f"rows must be a range(start, stop) with 0 <= start <= stop <= N = {n}, "
                         f"got {rows!r}")
    if cache is not None:
        raise ValueError("a kNN cache holds every row: pass rows or cache, not both")
    return rows


def resolve_precision(precision: str, backend: str, where: torch.device) -> str:
    """The precision a search with ``precision`` and ``backend`` runs in on ``where``.

    ``"auto"`` is ``"bf16"`` on a CPU whose bfloat16 products run on AMX
    (:func:`sepfl.device.cpu_has_amx`), unless the faiss backend was asked for, for
    approximate requests too: the torch backend's bf16 search there finds the exact
    lists (recall@80 1.0000 on 2,000 sampled rows) faster than faiss's exact search
    and faster than its graph index, at N = 300,000 and 1,000,000 on 2 cores
    (``benchmarks/bench_knn.py --approximate``). Elsewhere ``"fp32"``, and so an
    approximate search stays faiss's graph index. Other values are returned as
    they are.
    """
    if precision != "auto":
        return precision
    fast = backend != "faiss" and where.type == "cpu" and cpu_has_amx()
    return "bf16" if fast else "fp32"


def choose_backend(backend: str, where: torch.device, precision: str,
                   exact: bool = True) -> str:
    """The backend :func:`build_knn` uses on device ``where`` ("faiss" or "torch") for a
    search in ``precision``, ``exact`` or not (module notes).

    Raises ValueError for an unknown backend or a precision faiss does not
    offer, ImportError for ``"faiss"`` without faiss installed: cheap, so
    callers can check before any work.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        graph_index = not exact and where.type == "cpu" and precision == "fp32"
        return "faiss" if graph_index and _faiss() is not None else "torch"
    if backend == "faiss":
        if precision != "fp32":
            raise ValueError(f"precision={precision!r} applies to the torch backend; faiss "
                             "computes in fp32")
        if _faiss() is None:
            raise ImportError("the faiss kNN backend needs faiss: pip install faiss-cpu, or use "
                              "the torch backend (--knn-backend torch, backend='torch')")
    return backend


# --------------------------------------------------------------------------- conversions


def _like(found: Tuple[Array, Array], features: Array) -> Tuple[Array, Array]:
    nbrs, sims = found
    if is_tensor(features):
        return (torch.as_tensor(nbrs).to(features.device),
                torch.as_tensor(sims).to(features.device))
    return to_numpy(nbrs), to_numpy(sims)


# --------------------------------------------------------------------------- cache


def _read_cache(path: Path, x: Array, k: int, exact: bool) -> Optional[Tuple[Array, Array]]:
    if not path.exists():
        return None
    try:
        graph = read_knn(path)
    except (ValueError, TypeError) as err:
        logger.warning("kNN cache %s is unreadable (%s); rebuilding", path, err)
        return None
    if graph.nbrs.shape != (x.shape[0], k):
        reason = f"it holds {graph.nbrs.shape}, not ({x.shape[0]}, {k})"
    elif graph.fingerprint != fingerprint(x):
        reason = "it was built on other features"
    elif exact and not graph.meta.get("exact", False):
        reason = "it is approximate and an exact graph was asked for"
    else:
        logger.info("reusing kNN cache %s", path)
        return graph.nbrs, graph.sims
    logger.warning("kNN cache %s does not match (%s); rebuilding", path, reason)
    return None


# --------------------------------------------------------------------------- progress


def _show_progress(progress: Optional[bool], n: int, d: int) -> bool:
    return progress if progress is not None else n * n * d >= _PROGRESS_MIN_WORK


def _bar(total: int, show: bool, unit: str = "row") -> tqdm:
    return tqdm(total=total, desc="kNN", unit=unit, unit_scale=True, disable=not show,
                leave=False)


# --------------------------------------------------------------------------- torch backend


@contextlib.contextmanager
def _matmul_precision(level: str) -> Iterator[None]:
    """Temporarily set torch's float32 matmul precision ("highest" = fp32, "high" = TF32)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def search_width(k: int, precision: str) -> int:
    """Candidates per row a search in ``precision`` keeps for lists of ``k``: ``k`` in
    float32, with extra ones otherwise for the float32 re-ranking to choose among."""
    return k if precision == "fp32" else k + max(16, k // 2)


def _block_rows(n: int, columns: int, d: int, width: int, elem: int,
                where: torch.device) -> int:
    """Rows of ``n`` per block: on the CPU ``_CPU_BLOCK``; on CUDA as many as keep a
    [block, columns] score buffer and the re-ranking's [block, width, d] float32 gather
    each within the device's budget."""
    if where.type == "cpu":
        return min(n, _CPU_BLOCK)
    budget = _CUDA_BLOCK_BYTES
    return max(1, min(n, budget // (columns * elem), budget // (width * d * 4)))


def _torch_search(x: torch.Tensor, rows: torch.Tensor, k: int, precision: str,
                  chunk_size: Optional[int], show: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """kNN of ``rows`` (int64 [M]) among all rows of unit ``x`` (float32 [N, D]).

    Returns int64 [M, k] indices and float32 [M, k] similarities on ``x``'s device,
    each row's own index first.
    """
    n, d = x.shape
    width = min(n, search_width(k, precision))
    base = x.to(torch.bfloat16) if precision == "bf16" else x
    columns, select = (_cpu_selection if x.device.type == "cpu" else _cuda_selection)(base, width)
    block = min(len(rows), chunk_size or _block_rows(n, columns, d, width, base.element_size(),
                                                     x.device))
    nbrs = torch.empty((len(rows), k), dtype=torch.int64, device=x.device)
    sims = torch.empty((len(rows), k), dtype=torch.float32, device=x.device)
    # One score buffer for every block: a fresh one per block pays its page faults again.
    buffer = base.new_empty(block * columns)
    with _bar(len(rows), show) as bar:
        for start in range(0, len(rows), block):
            part = rows[start:start + block]
            with _matmul_precision("high" if precision == "tf32" else "highest"):
                vals, idx = select(part, buffer[:len(part) * columns])
            _finish(x, part, vals, idx, k, nbrs[start:start + len(part)],
                    sims[start:start + len(part)])
            bar.update(len(part))
    return nbrs, sims


def _finish(x: torch.Tensor, part: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor,
            k: int, nbrs: torch.Tensor, sims: torch.Tensor) -> None:
    """Write the lists of rows ``part`` [B] from their candidates ``idx`` / ``vals``
    [B, W >= k] (own row first): re-ranked in float32 when W > k, similarities clamped."""
    if idx.shape[1] > k:
        vals, idx = _rerank(x, part, idx, k)
    vals[:, 0] = 1.0
    nbrs.copy_(idx)
    sims.copy_(vals.clamp_(-1.0, 1.0))


def _cpu_symmetric_search(x: torch.Tensor, k: int, precision: str, chunk_size: Optional[int],
                          show: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """kNN of every row of unit ``x`` (float32 [N, D], CPU), each product computed once.

    The scores are symmetric: a tile of rows a.. against columns b.. (b past the
    block of rows a..) is offered to its rows and, mirrored, to its columns' rows
    (:meth:`sepfl.ops.RowTopk.offer`), so only the blocks on and above
    the diagonal are multiplied, half the products of :func:`_torch_search`. Every
    row is offered its columns in increasing order (earlier blocks' mirrored
    tiles, then its own block's tiles from its block on), so the candidates are
    those :func:`_torch_search` selects. The selection holds every row's candidates
    until the end: 8 bytes per candidate, ``2 * (width - 1)`` per row.

    Returns int64 [N, k] indices and float32 [N, k] similarities, each row's own
    index first.
    """
    n = x.shape[0]
    width = min(n, search_width(k, precision))
    base = x.to(torch.bfloat16) if precision == "bf16" else x
    block = max(_CPU_TILE, (chunk_size or _CPU_BLOCK) // _CPU_TILE * _CPU_TILE)
    best = ops.RowTopk(torch.arange(n), width)
    buffer = base.new_empty(block * _CPU_TILE)
    with _bar(n * (n + 1) // 2, show, unit="pair") as bar:
        for first_row in range(0, n, block):
            queries = base[first_row:first_row + block]
            after = first_row + len(queries)
            with _matmul_precision("high" if precision == "tf32" else "highest"):
                for first in range(first_row, n, _CPU_TILE):
                    columns = base[first:first + _CPU_TILE]
                    tile = buffer[:len(queries) * len(columns)].view(len(queries), len(columns))
                    torch.mm(queries, columns.T, out=tile)
                    best.offer(tile, first, first_row, mirror=first >= after)
            bar.update(len(queries) * (n - first_row) - len(queries) * (len(queries) - 1) // 2)
    nbrs = torch.empty((n, k), dtype=torch.int64)
    sims = torch.empty((n, k), dtype=torch.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        idx, vals = best.result(start, stop)
        _finish(x, torch.arange(start, stop), vals, idx, k, nbrs[start:stop], sims[start:stop])
    return nbrs, sims


# select(part, buffer): the top ``width`` candidates of rows ``part`` [B] among all rows, own
# row first: float32 values and int64 indices [B, width]. ``buffer`` holds B * columns scores.
Selection = Tuple[int, Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]]


def _cpu_selection(base: torch.Tensor, width: int) -> Selection:
    """Tiles of ``_CPU_TILE`` columns of a block's scores, each computed in cache and offered
    to :class:`sepfl.ops.RowTopk`: the [B, N] block never exists whole, so the search is
    bound by its products, not by writing and reading the block through memory."""
    n = base.shape[0]

    def select(part: torch.Tensor, buffer: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        queries, best = base[part], ops.RowTopk(part, width)
        for first in range(0, n, _CPU_TILE):
            columns = base[first:first + _CPU_TILE]
            tile = buffer[:len(part) * len(columns)].view(len(part), len(columns))
            best.offer(torch.mm(queries, columns.T, out=tile), first)
        idx, vals = best.result()
        return vals, idx

    return min(n, _CPU_TILE), select


def _cuda_selection(base: torch.Tensor, width: int) -> Selection:
    """Row-major blocks [B, N] and :func:`_grouped_topk`."""
    n, d = base.shape
    group, stride = _groups(n, width)
    # Zero rows pad N to group * stride, a multiple of 64: on an H200 a bf16 [2048, N] product
    # took 0.34 s for N = 584,960 and 2.1 s for the odd N = 584,913 (0.9 s unpadded, 584,908).
    padded = torch.cat([base, base.new_zeros(group * stride - n, d)])

    def select(part: torch.Tensor, buffer: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        scores = torch.mm(padded[part], padded.T, out=buffer.view(len(part), len(padded)))
        scores[:, n:] = -math.inf
        # +inf keeps the row itself first even when exact duplicates tie with it.
        scores[torch.arange(len(part), device=base.device), part] = math.inf
        return _grouped_topk(scores, width, stride)

    return len(padded), select


def _groups(n: int, width: int) -> Tuple[int, int]:
    """Shape ``(group, stride)`` of the column groups of :func:`_grouped_topk`.

    ``group ~ sqrt(N / width)`` balances its two stages; ``stride >= N / group``
    is a multiple of 64 and ``group * stride`` covers all N columns.
    """
    group = max(1, math.isqrt(n // width))
    return group, -(-n // (64 * group)) * 64


def _grouped_topk(scores: torch.Tensor, width: int,
                  stride: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top ``width`` of ``scores`` [B, group * stride], sorted, looking at few entries.

    Columns ``j, j + stride, j + 2 stride, ...`` form group j. The width-th
    largest entry of a row is at least the width-th largest of its group maxima
    (the top ``width`` groups each hold an entry that large), so the row's top
    ``width`` entries all lie in its top ``width`` groups (up to ties at that
    value). Two small top-k's (over ``stride`` maxima, then over ``width * group``
    entries) replace one over all columns; strided groups make the maxima a
    reduction over contiguous rows of the block, which runs at memory speed.
    Needs ``stride >= width``.
    """
    rows = scores.shape[0]
    group = scores.shape[1] // stride
    if group == 1:
        return scores.topk(width, dim=1)
    best = scores.view(rows, group, stride).amax(dim=1).topk(width, dim=1).indices
    offsets = torch.arange(0, group * stride, stride, device=scores.device)
    cols = (best[:, :, None] + offsets).view(rows, -1)
    vals, order = scores.gather(1, cols).topk(width, dim=1)
    return vals, cols.gather(1, order)


def _rerank(x: torch.Tensor, part: torch.Tensor, idx: torch.Tensor,
            k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float32 similarities of candidates ``idx`` [B, W] (self in column 0); keep the top k.

    On the CPU they are :func:`sepfl.ops.list_dots`, the sums every other search's
    lists get (:func:`rescore_lists`), so a shard of rows gets the whole set's last bits.
    """
    if x.device.type == "cpu":
        exact = ops.list_dots(x, part, idx)
    else:
        candidates = x.index_select(0, idx.view(-1)).view(*idx.shape, x.shape[1])
        with _matmul_precision("highest"):
            exact = torch.einsum("bwd,bd->bw", candidates, x[part])
    exact[:, 0] = math.inf
    vals, order = exact.topk(k, dim=1)
    return vals, idx.gather(1, order)


def _torch_knn(x: torch.Tensor, k: int, precision: str, chunk_size: Optional[int],
               show: bool, rows: range) -> Tuple[torch.Tensor, torch.Tensor]:
    if x.device.type == "cpu" and len(rows) == x.shape[0]:
        return _cpu_symmetric_search(x, k, precision, chunk_size, show)
    return _torch_search(x, torch.arange(rows.start, rows.stop, device=x.device), k, precision,
                         chunk_size, show)


# --------------------------------------------------------------------------- faiss backend


def _faiss_index(faiss: Any, x: np.ndarray, exact: bool, ef_search: int, k: int,
                 show: bool) -> Any:
    """The exact index of ``x``, or its graph index (built with a progress bar)."""
    d = x.shape[1]
    if exact:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index
    index = faiss.IndexHNSWFlat(d, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_BUILD
    index.hnsw.efSearch = max(ef_search, k)
    with tqdm(total=len(x), desc="kNN index", unit="row", unit_scale=True, disable=not show,
              leave=False) as bar:
        for start in range(0, len(x), _FAISS_BLOCK):
            index.add(np.ascontiguousarray(x[start:start + _FAISS_BLOCK]))
            bar.update(min(_FAISS_BLOCK, len(x) - start))
    return index


def _faiss_knn(x: np.ndarray, k: int, exact: bool, ef_search: int, where: torch.device,
               chunk_size: Optional[int], show: bool,
               rows: range) -> Tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    index = _faiss_index(faiss, x, exact, ef_search, k, show)
    resources = None
    if where.type == "cuda":
        if not exact:
            logger.info("faiss's graph index runs on the CPU; searching there")
        elif getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, where.index or 0, index)
        else:
            logger.info("faiss has no GPU support here; searching on the CPU")
    n = len(rows)
    nbrs = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    block = chunk_size or _FAISS_BLOCK
    with _bar(n, show) as bar:
        for start in range(0, n, block):
            first = rows.start + start
            sims[start:start + block], nbrs[start:start + block] = \
                index.search(np.ascontiguousarray(x[first:first + min(block, n - start)]), k)
            bar.update(min(block, n - start))
    del index, resources
    rescore_lists(x, nbrs, sims, rows.start)
    if not exact:
        recall = estimate_recall(x, nbrs, first=rows.start)
        logger.info("approximate kNN (faiss HNSW, ef_search %d): estimated recall@%d %.4f on %d "
                    "sampled rows", max(ef_search, k), k, recall, min(n, _RECALL_ROWS))
    return nbrs, sims


def rescore_lists(x: np.ndarray, nbrs: np.ndarray, sims: np.ndarray, first: int = 0) -> None:
    """In place: the lists ``nbrs`` (int64 [M, k], -1 empty) of rows ``first..first + M - 1``
    of unit ``x`` (float32 [N, D]), however a search found them, as every search returns
    them: ``sims`` (float32 [M, k]) the dot products summed in one fixed order, each row
    sorted by them with its own index first (similarity 1), empty slots -1."""
    _exact_sims(x, nbrs, sims, first)
    _finish_rows(nbrs, sims, first)


def _exact_sims(x: np.ndarray, nbrs: np.ndarray, sims: np.ndarray, first: int,
                block: int = 1024) -> None:
    """In place: ``sims[i, j] = x[first + i] · x[nbrs[i, j]]``, each row re-sorted by it
    (entries with ``nbrs`` -1 last, with similarity -inf until :func:`_finish_rows`).

    faiss's matrix products round a similarity differently with the number of
    query rows searched together, so a shard of rows (:mod:`sepfl.distributed`)
    would get other last bits than the whole set and Infomap could amplify
    them; each dot product here is summed in one order whatever the block.
    """
    for start in range(0, len(nbrs), block):
        part = nbrs[start:start + block]
        dots = ops.list_dots(x, np.arange(first + start, first + start + len(part)), part)
        # a near-tie's new last bits can swap two neighbours: keep the rows sorted
        order = np.argsort(-dots, axis=1, kind="stable")
        nbrs[start:start + block] = np.take_along_axis(part, order, 1)
        sims[start:start + block] = np.take_along_axis(dots, order, 1)


def _finish_rows(nbrs: np.ndarray, sims: np.ndarray, first: int = 0) -> None:
    """In place: mark empty slots, put each row's own index first with sim 1, clamp to [-1, 1].

    Row i of the tables is the list of sample ``first + i``.
    """
    missing = nbrs < 0
    nbrs[missing] = -1
    sims[missing] = -1.0
    own = np.arange(first, first + nbrs.shape[0])
    fix = np.flatnonzero(nbrs[:, 0] != own)
    if len(fix):
        sub_n, sub_s = nbrs[fix], sims[fix]
        is_self = sub_n == own[fix, None]
        # Rows holding themselves further down: a stable sort moves self first, the rest keep order.
        order = np.argsort(~is_self, axis=1, kind="stable")
        sub_n, sub_s = np.take_along_axis(sub_n, order, 1), np.take_along_axis(sub_s, order, 1)
        # Rows missing themselves (more than k duplicates, or an approximate index): insert.
        absent = ~is_self.any(axis=1)
        sub_n[absent, 1:], sub_s[absent, 1:] = sub_n[absent, :-1], sub_s[absent, :-1]
        sub_n[absent, 0] = own[fix[absent]]
        nbrs[fix], sims[fix] = sub_n, sub_s
    sims[:, 0] = 1.0
    np.clip(sims, -1.0, 1.0, out=sims)


def estimate_recall(features: np.ndarray, nbrs: np.ndarray, rows: int = _RECALL_ROWS,
                    seed: int = 0, first: int = 0) -> float:
    """Share of true k nearest neighbours found by ``nbrs``, on a sample of rows.

    Parameters
    ----------
    features : float32 [N, D], unit rows
    nbrs : int [M, k]
        An (approximate) kNN table of rows ``first .. first + M - 1`` of ``features``.
    rows : int
        How many rows to check against brute force (fp32).
    seed : int
    first : int
        The sample of ``nbrs``' first row.

    Returns
    -------
    float in [0, 1]: mean over the sampled rows of ``|found ∩ true| / k``.
    """
    n, k = nbrs.shape
    picked = np.sort(np.random.default_rng(seed).choice(n, min(n, rows), replace=False))
    x = to_tensor(features, torch.device("cpu"))
    true, _ = _torch_search(x, torch.from_numpy(picked + first), k, "fp32", None, False)
    found = np.asarray(nbrs)[picked]
    hits = (found[:, :, None] == true.numpy()[:, None, :]).any(axis=2)
    return float(hits.mean())
