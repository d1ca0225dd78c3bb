"""The graph operations of SEPFL, running on native CPU or CUDA kernels.

Every function accepts numpy arrays or torch tensors and returns the same kind:
numpy in, numpy out; a torch tensor in, a tensor on the same device out. CPU
work runs in ``sepfl._core`` (C++/OpenMP), CUDA tensors in ``sepfl._cuda`` on
the current torch stream, with outputs allocated by torch.

Conventions: values are float32, indices int64 (other float / integer dtypes
are converted once, here). ``nbrs`` is an ``[N, k]`` kNN table with each row's
own index at rank 0; an entry ``-1`` (faiss's marker for a missing neighbour)
is an empty slot: it is never chosen as a pair partner and contributes a zero
feature vector to :func:`gather`, :func:`gather_add` and :func:`aggregate`.
Any other index outside ``[0, N)`` that an operation reads raises IndexError
naming the first such entry in input order; an entry an operation never reads
is not reported. Both backends check entries as they read them: the CPU
kernels raise after their loop, the CUDA kernels flag the position in a small
device buffer that this module reads once after the launch (one host sync).

Errors: TypeError for a wrong dtype, ValueError for a wrong shape or value
(NaN similarities, ``rho`` or ``threshold`` outside [0, 1]), IndexError for an
index out of range.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from sepfl import _core
from sepfl._validate import (Array, as_indices, as_values, check_finite, check_positive_int,
                             check_probability, is_tensor, same_device, to_numpy)

try:
    from sepfl import _cuda
except ImportError:
    _cuda = None

# Turns a position a kernel flagged into the exception the CPU kernel raises there.
Report = Callable[[int], Exception]


def _cuda_module():
    """``sepfl._cuda``; RuntimeError when this build has none."""
    if _cuda is None:
        raise RuntimeError("CUDA tensors were given, but this sepfl build has no CUDA module "
                           "(install with a CUDA compiler present, or pass CPU data)")
    return _cuda


def _launch(op: str, device: torch.device, *args) -> None:
    """Run ``_cuda.<op>(*args, stream)`` on ``device`` and its current torch stream."""
    module = _cuda_module()
    with torch.cuda.device(device):
        getattr(module, op)(*args, torch.cuda.current_stream(device).cuda_stream)


def _launch_checked(op: str, device: torch.device, args: tuple,
                    reports: Tuple[Report, ...]) -> None:
    """:func:`_launch` with the kernel's bad-input flags as its last argument.

    The flags are one int64 per report, -1 or the smallest position the kernel
    flagged (the CPU kernels' choice, so both backends name the same entry).
    They are read with one host sync; the first flagged report is raised.
    """
    flags = torch.full((len(reports),), -1, dtype=torch.int64, device=device)
    _launch(op, device, *args, flags.data_ptr())
    for position, report in zip(flags.tolist(), reports):
        if position >= 0:
            raise report(position)


def _bad_nbrs(nbrs: torch.Tensor) -> Report:
    """IndexError for a position into ``nbrs`` [N, k], worded as csrc/bad_index.h."""
    return lambda p: IndexError(f"nbrs row {p // nbrs.shape[1]} holds index "
                                f"{int(nbrs.reshape(-1)[p])} outside [-1, {nbrs.shape[0]})")


def _bad_node_id(node_ids: torch.Tensor, n: int) -> Report:
    """IndexError for a position into ``node_ids`` [B], worded as csrc/gather_cpu.cpp."""
    return lambda p: IndexError(f"node_ids[{p}] = {int(node_ids[p])} is outside [0, {n})")


def _bad_edge(src: torch.Tensor, dst: torch.Tensor, n: int) -> Report:
    """IndexError for an edge position, worded as csrc/bad_index.h (the source when
    it is out of range, else the target)."""
    def report(e: int) -> Exception:
        u = int(src[e])
        return IndexError(f"edge {e} has endpoint {u if not 0 <= u < n else int(dst[e])} "
                          f"outside [0, {n})")
    return report


def _compact(padded: Array, *alongside: Array) -> Tuple[Array, ...]:
    """Pairs from a padded table, the one compaction of both backends.

    Parameters
    ----------
    padded : int64 [N, m]
        A row per node, -1 where there is no entry.
    *alongside : int64 [N, m]
        At most one table of values kept with the entries.

    Returns
    -------
    rows, entries, *values : int64 [P]
        Every entry ``>= 0`` in row-major order (by node, then slot): its row, the
        entry, and the alongside value. Same type and device as ``padded``.
    """
    if is_tensor(padded):
        rows, slots = (padded >= 0).nonzero(as_tuple=True)
        return (rows, padded[rows, slots], *(x[rows, slots] for x in alongside))
    return tuple(_core.compact(padded, alongside[0] if alongside else None))


def _ptr(x: Optional[torch.Tensor]) -> int:
    return 0 if x is None else x.data_ptr()


def _to_numpy(x: Optional[Array]) -> Optional[np.ndarray]:
    return None if x is None else to_numpy(x)


def _wrap(out: np.ndarray, as_tensor: bool) -> Array:
    return torch.from_numpy(out) if as_tensor else out


def density(sims: Array, rho: float = 0.7) -> Array:
    """Combined density of every sample (SEPFL §2).

    Parameters
    ----------
    sims : float [N, k]
        Cosine similarities of each sample to its k nearest neighbours, self included.
    rho : float in [0, 1]
        Similarity at or above which a neighbour counts towards the density.

    Returns
    -------
    density : float32 [N]
        ``(a / max a + c / max c) / 2`` with ``a`` the row sums of ``clip(sims, 0, 1)``
        and ``c`` the number of clipped similarities ``>= rho``.
    """
    sims = as_values(sims, "sims", 2)
    rho = check_probability(rho, "rho")
    if same_device(sims) == "cuda":
        n, k = sims.shape
        out = torch.empty(n, dtype=torch.float32, device=sims.device)
        workspace = torch.empty(n + 2, dtype=torch.float32, device=sims.device)
        _launch_checked("density", sims.device, (sims.data_ptr(), n, k, rho, out.data_ptr(),
                                                 workspace.data_ptr()),
                        (lambda row: ValueError("sims holds NaN"),))
        return out
    return _wrap(_core.density(_to_numpy(sims), rho), is_tensor(sims))


def select_pairs(nbrs: Array, density: Array, max_per_node: int = 1) -> Tuple[Array, Array]:
    """Inference pairs: each node's first strictly denser neighbours in kNN order (SEPFL §3).

    Parameters
    ----------
    nbrs : int [N, k]
        kNN table, self at rank 0, -1 for a missing neighbour.
    density : float [N]
        Density of each node (:func:`density`).
    max_per_node : int
        How many distinct denser neighbours to take per node (1 in SEPFL).

    Returns
    -------
    src, dst : int64 [P]
        Pairs ordered by source node, then kNN rank. A node with no denser
        neighbour (a local density peak) has no pair, so ``P <= N * max_per_node``.
    """
    nbrs = as_indices(nbrs, "nbrs", 2)
    density = as_values(density, "density", 1, shape=(nbrs.shape[0],))
    # at most k distinct partners exist, so the cap changes no result (the width of the
    # padded table, as select_pairs_width in csrc/preconditions.h)
    max_per_node = min(check_positive_int(max_per_node, "max_per_node"), max(nbrs.shape[1], 1))
    check_finite(density, "density")
    if same_device(nbrs, density) == "cuda":
        n, k = nbrs.shape
        padded = torch.empty((n, max_per_node), dtype=torch.int64, device=nbrs.device)
        _launch_checked("select_pairs", nbrs.device, (nbrs.data_ptr(), density.data_ptr(), n, k,
                                                      max_per_node, padded.data_ptr()),
                        (_bad_nbrs(nbrs),))
        return _compact(padded)
    padded = _core.select_pairs(_to_numpy(nbrs), _to_numpy(density), max_per_node)
    return tuple(_wrap(x, is_tensor(nbrs)) for x in _compact(padded))


def train_pairs(nbrs: Array, labels: Array, ranks: int = 39) -> Tuple[Array, Array, Array]:
    """Training candidates: every node paired with its neighbours at ranks 1..ranks.

    Parameters
    ----------
    nbrs : int [N, k]
        kNN table, self at rank 0; requires ``ranks < k``.
    labels : int [N]
        Identity of each node.
    ranks : int
        Deepest rank paired (39 in SEPFL: the top 40 without the node itself).

    Returns
    -------
    src, dst, target : int64 [P]
        Pairs ordered by source node, then rank; ``target`` is 1 where the two
        labels match. Entries that are -1 or the node itself are skipped.
    """
    nbrs = as_indices(nbrs, "nbrs", 2)
    labels = as_indices(labels, "labels", 1, shape=(nbrs.shape[0],))
    ranks = check_positive_int(ranks, "ranks")
    if ranks >= nbrs.shape[1]:
        raise ValueError(f"ranks must be < k = {nbrs.shape[1]} (rank 0 is the node itself), "
                         f"got {ranks}")
    if same_device(nbrs, labels) == "cuda":
        n, k = nbrs.shape
        dst = torch.empty((n, ranks), dtype=torch.int64, device=nbrs.device)
        target = torch.empty_like(dst)
        _launch_checked("train_pairs", nbrs.device, (nbrs.data_ptr(), labels.data_ptr(), n, k,
                                                     ranks, dst.data_ptr(), target.data_ptr()),
                        (_bad_nbrs(nbrs),))
        return _compact(dst, target)
    dst, target = _core.train_pairs(_to_numpy(nbrs), _to_numpy(labels), ranks)
    return tuple(_wrap(x, is_tensor(nbrs)) for x in _compact(dst, target))


def balanced_sample(target: Array, n_per_class: int, seed: int = 0) -> Array:
    """Indices of a class-balanced sample of binary targets, drawn without replacement.

    Parameters
    ----------
    target : int [P]
        0 / 1 targets (:func:`train_pairs`).
    n_per_class : int
        Pairs wanted from each class; capped by the smaller class, so both
        classes are always equally represented.
    seed : int
        Seed of the draw.

    Returns
    -------
    index : int64 [2 * m]
        Sorted positions into ``target``, ``m = min(n_per_class, #positives, #negatives)``.
    """
    target = as_indices(target, "target", 1)
    n_per_class = check_positive_int(n_per_class, "n_per_class")
    values = _to_numpy(target.cpu() if is_tensor(target) else target)
    if values.size and not np.isin(values, (0, 1)).all():
        raise ValueError("target must hold only 0 and 1")
    positives, negatives = np.flatnonzero(values == 1), np.flatnonzero(values == 0)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError(f"cannot balance {positives.size} positive and {negatives.size} "
                         "negative pairs: both classes are needed")
    m = min(n_per_class, positives.size, negatives.size)
    rng = np.random.default_rng(seed)
    index = np.sort(np.concatenate([rng.choice(positives, m, replace=False),
                                    rng.choice(negatives, m, replace=False)]))
    return torch.from_numpy(index).to(target.device) if is_tensor(target) else index


def gather(features: Array, nbrs: Array, node_ids: Array) -> Array:
    """Neighbour features of the given nodes.

    Parameters
    ----------
    features : float [N, D]
    nbrs : int [N, k]
    node_ids : int [B]

    Returns
    -------
    out : float32 [B, k, D]
        ``out[b, j] = features[nbrs[node_ids[b], j]]``, zeros for a -1 slot.
    """
    features = as_values(features, "features", 2)
    nbrs = as_indices(nbrs, "nbrs", 2, shape=(features.shape[0], None))
    node_ids = as_indices(node_ids, "node_ids", 1)
    if same_device(features, nbrs, node_ids) == "cuda":
        (n, d), k, b = features.shape, nbrs.shape[1], node_ids.shape[0]
        out = torch.empty((b, k, d), dtype=torch.float32, device=features.device)
        _launch_checked("gather", features.device, (features.data_ptr(), nbrs.data_ptr(),
                                                    node_ids.data_ptr(), n, k, d, b,
                                                    out.data_ptr()),
                        _bad_node_inputs(nbrs, node_ids))
        return out
    out = _core.gather(_to_numpy(features), _to_numpy(nbrs), _to_numpy(node_ids))
    return _wrap(out, is_tensor(features))


def gather_add(a: Array, bproj: Array, nbrs: Array, node_ids: Array,
               bias: Optional[Array] = None, gelu: bool = True) -> Array:
    """Fused first channel-mixing layer over gathered neighbours.

    Parameters
    ----------
    a : float [N, H]
        Per-node projection of the centre feature.
    bproj : float [N, H]
        Per-node projection of the neighbour feature.
    nbrs : int [N, k]
    node_ids : int [B]
    bias : float [H], optional
    gelu : bool
        Apply the exact (erf) GELU.

    Returns
    -------
    out : float32 [B, k, H]
        ``act(a[u] + bproj[nbrs[u, j]] + bias)`` for ``u = node_ids[b]``; a -1 slot
        contributes no ``bproj`` term.
    """
    a = as_values(a, "a", 2)
    bproj = as_values(bproj, "bproj", 2, shape=a.shape)
    nbrs = as_indices(nbrs, "nbrs", 2, shape=(a.shape[0], None))
    node_ids = as_indices(node_ids, "node_ids", 1)
    if bias is not None:
        bias = as_values(bias, "bias", 1, shape=(a.shape[1],))
    if same_device(a, bproj, nbrs, node_ids, bias) == "cuda":
        (n, h), k, b = a.shape, nbrs.shape[1], node_ids.shape[0]
        out = torch.empty((b, k, h), dtype=torch.float32, device=a.device)
        _launch_checked("gather_add", a.device, (a.data_ptr(), bproj.data_ptr(), nbrs.data_ptr(),
                                                 node_ids.data_ptr(), _ptr(bias), bool(gelu), n,
                                                 k, h, b, out.data_ptr()),
                        _bad_node_inputs(nbrs, node_ids))
        return out
    out = _core.gather_add(_to_numpy(a), _to_numpy(bproj), _to_numpy(nbrs), _to_numpy(node_ids),
                           _to_numpy(bias), bool(gelu))
    return _wrap(out, is_tensor(a))


def amx_ready() -> bool:
    """Whether the AMX kernels (:func:`token_mix_`, :func:`channel_mix`,
    :func:`attention_scores`) run here: this build has them, the CPU lists AMX-BF16 and
    AVX-512 BF16, and the OS lets this process use AMX tiles."""
    return bool(_core.amx_ready())


def token_mix_weights(w_in: torch.Tensor, w_out: torch.Tensor) -> Tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """The token-mix Linears ``w_in`` [2k, k + 1] and ``w_out`` [k, 2k + 1] (bias as
    the last column; any float dtype) as :func:`token_mix_` reads them: bfloat16,
    zero-padded to multiples of 32 and cut into AMX A tiles [rows / 32, cols / 32, 32, 32]
    (element ``[i, c, r, j]`` = ``W[32 i + r, 32 c + j]``)."""
    k = w_out.shape[0]
    if w_in.shape != (2 * k, k + 1) or w_out.shape != (k, 2 * k + 1):
        raise ValueError(f"expected w_in [2k, k + 1] and w_out [k, 2k + 1], got "
                         f"{tuple(w_in.shape)} and {tuple(w_out.shape)}")
    tiled = []
    for weight, (rows, cols) in zip((w_in, w_out), _core.token_mix_shapes(k)):
        padded = torch.zeros((rows, cols), dtype=torch.bfloat16)
        padded[:weight.shape[0], :weight.shape[1]] = weight
        tiled.append(padded.view(rows // 32, 32, cols // 32, 32).transpose(1, 2).contiguous())
    return tiled[0], tiled[1]


def token_mix_(tokens: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
    """The token-mixing step of the bfloat16 node embeddings, fused, in place (CPU, AMX).

    Parameters
    ----------
    tokens : bfloat16 Tensor [k + 1, C], C-contiguous
        Token-major activations of C / W nodes' W channels each; row k all ones (the
        bias row).
    w_in, w_out : bfloat16 Tensor
        :func:`token_mix_weights` of the two token-mix Linears.
    scale : float32 Tensor [W]
        Per-channel gain of the mix.

    Returns
    -------
    tokens, with rows 0..k-1 plus ``scale[c % W] * (w_out @ [GELU(w_in @ tokens); 1])``
    (exact-form GELU, float32 sums, the GELU's output rounded to bfloat16 once).
    """
    _require_cpu_tensors(("tokens", tokens, torch.bfloat16), ("w_in", w_in, torch.bfloat16),
                         ("w_out", w_out, torch.bfloat16), ("scale", scale, torch.float32))
    _core.token_mix(_bits(tokens), _bits(w_in), _bits(w_out), scale.numpy())
    return tokens


def channel_mix_weights(mix: torch.Tensor) -> torch.Tensor:
    """The second channel-mix Linear ``mix`` [W, H] (any float dtype) as :func:`channel_mix`
    reads it: bfloat16 AMX tiles [⌈W/32⌉·2, ⌈H/32⌉, 16, 32], element ``[t, c, r, 2j + s]``
    = ``mix[16t + j, 32c + 2r + s]``, zero past the edges."""
    if mix.dim() != 2:
        raise ValueError(f"expected a [W, H] weight, got shape {tuple(mix.shape)}")
    width, depth = mix.shape
    col_tiles, chunks, _, _ = _core.channel_mix_shape(width, depth)
    padded = torch.zeros((col_tiles * 16, chunks * 32), dtype=torch.bfloat16)
    padded[:width, :depth] = mix
    # [t, j, c, r, s] -> [t, c, r, j, s]
    tiles = padded.view(col_tiles, 16, chunks, 16, 2).permute(0, 2, 3, 1, 4)
    return tiles.reshape(col_tiles, chunks, 16, 32).contiguous()


def channel_mix(tokens: torch.Tensor, hidden: torch.Tensor, pairs: torch.Tensor,
                weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The channel-mixing step of the bfloat16 node embeddings, fused (CPU, AMX).

    Parameters
    ----------
    tokens : bfloat16 Tensor [R, W], C-contiguous
    hidden : bfloat16 Tensor [R, H], C-contiguous
        Two tables over the same R rows: token parts and pre-activation hidden parts.
    pairs : int64 Tensor [M, 2], C-contiguous
        Rows of both tables, each in [0, R) (IndexError otherwise).
    weights : bfloat16 Tensor
        :func:`channel_mix_weights` of the Linear ``mix`` [W, H].
    out : bfloat16 Tensor [M, W], C-contiguous
        Written.

    Returns
    -------
    out, row i = ``tokens[a] + tokens[b] + GELU(hidden[a] + hidden[b]) @ mix.T`` for
    ``(a, b) = pairs[i]`` (exact-form GELU of the float32 sum rounded to bfloat16 once,
    float32 products and sums, rounded once): :func:`gather_gelu`, the product and the
    residual in one pass whose hidden rows stay in cache.
    """
    _require_cpu_tensors(("tokens", tokens, torch.bfloat16), ("hidden", hidden, torch.bfloat16),
                         ("pairs", pairs, torch.int64), ("weights", weights, torch.bfloat16),
                         ("out", out, torch.bfloat16))
    _core.channel_mix(_bits(out), _bits(tokens), _bits(hidden), pairs.numpy(), _bits(weights))
    return out


def attention_scores(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                     out_weight: torch.Tensor) -> torch.Tensor:
    """The attention scores of the bfloat16 node embeddings, fused (CPU, AMX).

    Parameters
    ----------
    x : bfloat16 Tensor [M, W], C-contiguous
        Tokens.
    weights : bfloat16 Tensor
        :func:`channel_mix_weights` of the attention's first Linear [O, W].
    bias, out_weight : float32 Tensor [O]
        Its bias and the attention's last Linear (one output).

    Returns
    -------
    float32 Tensor [M]: ``GELU(x @ W.T + bias) @ out_weight``, all in float32 (exact-form
    GELU; the [M, O] activations are never rounded nor written out).
    """
    _require_cpu_tensors(("x", x, torch.bfloat16), ("weights", weights, torch.bfloat16),
                         ("bias", bias, torch.float32), ("out_weight", out_weight, torch.float32))
    return torch.from_numpy(_core.attention_scores(_bits(x), _bits(weights), bias.numpy(),
                                                   out_weight.numpy()))


def gather_gelu_ready() -> bool:
    """Whether :func:`gather_gelu` runs here: this build has its AVX-512 kernel and the
    CPU lists AVX-512 BF16."""
    return bool(_core.gather_gelu_ready())


def gather_gelu(table: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """GELU of sums of two table rows, in bfloat16 (CPU, AVX-512 BF16).

    Parameters
    ----------
    table : bfloat16 Tensor [R, W], C-contiguous
    pairs : int64 Tensor [M, 2], C-contiguous
        Rows of ``table``, each in [0, R) (IndexError otherwise).

    Returns
    -------
    bfloat16 Tensor [M, W]: ``GELU(table[pairs[i, 0]] + table[pairs[i, 1]])``, the exact-form
    GELU of the float32 sum rounded to bfloat16 once (the node embeddings' first hidden
    activations from their factorised tables).
    """
    _require_cpu_tensors(("table", table, torch.bfloat16), ("pairs", pairs, torch.int64))
    out = _core.gather_gelu(_bits(table), pairs.numpy())
    return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)


def _require_cpu_tensors(*specs: Tuple[str, torch.Tensor, torch.dtype]) -> None:
    """TypeError unless each (name, tensor, dtype) is a contiguous CPU tensor of that dtype."""
    for name, t, dtype in specs:
        if not is_tensor(t) or t.dtype != dtype or t.is_cuda or not t.is_contiguous():
            raise TypeError(f"{name} must be a contiguous {dtype} CPU tensor")


def _bits(t: torch.Tensor) -> np.ndarray:
    """A contiguous bfloat16 CPU tensor's bits as a uint16 numpy view (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def aggregate(weights: Array, features: Array, nbrs: Array, node_ids: Array) -> Array:
    """Weighted sum of each node's neighbour features, without materialising them.

    Parameters
    ----------
    weights : float [B, k]
    features : float [N, D]
    nbrs : int [N, k]
    node_ids : int [B]

    Returns
    -------
    out : float32 [B, D]
        ``sum_j weights[b, j] * features[nbrs[node_ids[b], j]]``; a -1 slot adds nothing.
    """
    features = as_values(features, "features", 2)
    nbrs = as_indices(nbrs, "nbrs", 2, shape=(features.shape[0], None))
    node_ids = as_indices(node_ids, "node_ids", 1)
    weights = as_values(weights, "weights", 2, shape=(node_ids.shape[0], nbrs.shape[1]))
    if same_device(weights, features, nbrs, node_ids) == "cuda":
        (n, d), k, b = features.shape, nbrs.shape[1], node_ids.shape[0]
        out = torch.empty((b, d), dtype=torch.float32, device=features.device)
        _launch_checked("aggregate", features.device, (weights.data_ptr(), features.data_ptr(),
                                                       nbrs.data_ptr(), node_ids.data_ptr(), n, k,
                                                       d, b, out.data_ptr()),
                        _bad_node_inputs(nbrs, node_ids))
        return out
    out = _core.aggregate(_to_numpy(weights), _to_numpy(features), _to_numpy(nbrs),
                          _to_numpy(node_ids))
    return _wrap(out, is_tensor(features))


def list_dots(features: Array, rows: Array, lists: Array) -> Array:
    """Dot products of rows with the rows their lists name, summed in one fixed order (CPU only).

    The similarities a kNN list carries: every search's lists get them from here, so
    a list has the same last bits whichever search, block size, shard or thread
    count produced it.

    Parameters
    ----------
    features : float32 [N, D]
    rows : int [M]
        Rows in ``[0, N)``.
    lists : int [M, W]
        Row i's list: entries in ``[0, N)``, or -1 for an empty slot.

    Returns
    -------
    dots : float32 [M, W]
        ``features[rows[i]] · features[lists[i, j]]``; -inf for an empty slot.
    """
    features = as_values(features, "features", 2)
    rows = as_indices(rows, "rows", 1)
    lists = as_indices(lists, "lists", 2, shape=(rows.shape[0], None))
    if same_device(features, rows, lists) != "cpu":
        raise ValueError("list_dots runs on the CPU; got CUDA tensors")
    out = _core.list_dots(_to_numpy(features), _to_numpy(rows), _to_numpy(lists))
    return _wrap(out, is_tensor(features))


class RowTopk:
    """The top entries of each row of a score matrix fed in tiles of columns (CPU only).

    The selection step of a brute-force kNN search on the CPU, whose [B, N]
    block of scores never exists whole: tiles of it are computed in cache and
    offered one after another. An entry is looked at twice only when it beats
    the ``width - 1``-th best of its row so far; every other entry is read once,
    by a vectorised scan. (The CUDA search selects from whole blocks with
    ``torch.topk``.)

    Parameters
    ----------
    own : int [B]
        Each row's own column: placed first, never counted among the others.
    width : int
        Entries per row in the result, the own column included (>= 1).
    above : float32 [B], optional
        Row i keeps only entries greater than ``above[i]`` (not NaN; -inf keeps all).
    """

    def __init__(self, own: Array, width: int, above: Optional[Array] = None):
        own = as_indices(own, "own", 1)
        if above is not None:
            above = as_values(above, "above", 1, shape=(own.shape[0],))
            if bool(np.isnan(_to_numpy(above)).any()):
                raise ValueError("above must not hold NaN")
        if same_device(own, *([] if above is None else [above])) != "cpu":
            raise ValueError("RowTopk runs on the CPU; got a CUDA tensor")
        self._as_tensor = is_tensor(own)
        self._rows = own.shape[0]
        self._best = _core.RowTopk(_to_numpy(own), check_positive_int(width, "width"),
                                   None if above is None else _to_numpy(above))

    def offer(self, tile: Array, first_col: int, first_row: int = 0,
              mirror: bool = False) -> None:
        """Offer the columns ``first_col .. first_col + C - 1`` to rows ``first_row ..
        first_row + R - 1``.

        ``tile`` is float32 [R, C], or a bfloat16 tensor [R, C] (read as it is,
        without a float32 copy); CPU, C-contiguous. Ties are decided as
        :meth:`result` says when each row is offered its columns in increasing order.

        With ``mirror``, the scores are symmetric and the tile is also offered, as
        if transposed, to rows ``first_col .. first_col + C - 1`` as their columns
        ``first_row .. first_row + R - 1``: a symmetric search computes each product
        once for both sides. The two ranges of rows must not overlap.
        """
        if is_tensor(tile) and tile.dtype == torch.bfloat16:
            if tile.ndim != 2 or tile.is_cuda:
                raise ValueError(f"tile must be a 2-D CPU tensor, got {tuple(tile.shape)} on "
                                 f"{tile.device}")
            bits = _bits(tile.contiguous())
        else:
            bits = _to_numpy(as_values(tile, "tile", 2))
        self._best.offer(bits, first_col, first_row, mirror)

    def result(self, start: int = 0, stop: Optional[int] = None) -> Tuple[Array, Array]:
        """``idx`` int64 [M, width] and ``vals`` float32 [M, width] of rows ``start ..
        stop - 1`` (default: every row).

        Row i's own column first (value +inf), then its ``width - 1`` largest
        entries among the other columns offered, in non-increasing order; among
        equal values the smaller column first. Slots left empty (fewer columns
        offered) hold -1 and -inf. Numpy arrays, or tensors when ``own`` was one.
        """
        idx, vals = self._best.result(start, stop)
        return _wrap(idx, self._as_tensor), _wrap(vals, self._as_tensor)


def _bad_node_inputs(nbrs: torch.Tensor, node_ids: torch.Tensor) -> Tuple[Report, Report]:
    """The reports of the gathers' flags: a bad node id first, as the CPU checks them first."""
    return _bad_node_id(node_ids, nbrs.shape[0]), _bad_nbrs(nbrs)


def shared_neighbours(nbrs: Array, src: Array, dst: Array) -> Tuple[Array, Array]:
    """Per edge: the kNN entries its ends share, and the source's rank in the target's list.

    Parameters
    ----------
    nbrs : int [N, k]
        kNN table (self at rank 0, -1 for a missing neighbour).
    src, dst : int [E]
        Edges in ``[0, N)``. On CPU, edges grouped by source (as
        :func:`sepfl.edges.candidate_edges` gives them) run fastest.

    Returns
    -------
    shared : int64 [E]
        How many entries of ``dst[i]``'s list are also in ``src[i]``'s list
        (``-1`` slots never count; both ends count when each lists the other).
    reverse : int64 [E]
        The first rank at which ``src[i]`` appears in ``dst[i]``'s list, ``k`` when absent.
    """
    nbrs = as_indices(nbrs, "nbrs", 2)
    src = as_indices(src, "src", 1)
    dst = as_indices(dst, "dst", 1, shape=src.shape)
    if same_device(nbrs, src, dst) == "cuda":
        _check_shared_neighbours_inputs(nbrs, src, dst)
        return _shared_neighbours_sorted(nbrs, src, dst)
    shared, reverse = _core.shared_neighbours(_to_numpy(nbrs), _to_numpy(src), _to_numpy(dst))
    return _wrap(shared, is_tensor(src)), _wrap(reverse, is_tensor(src))


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """Position of the first True of ``mask`` (flattened), -1 when none: a 0-d int64 tensor
    on ``mask``'s device, so that several can be read with one sync."""
    flat = mask.reshape(-1)
    if flat.numel() == 0:
        return torch.tensor(-1, device=mask.device)
    first = flat.to(torch.uint8).argmax()
    return torch.where(flat[first], first, -1)


def _check_shared_neighbours_inputs(nbrs: torch.Tensor, src: torch.Tensor,
                                    dst: torch.Tensor) -> None:
    """The CPU kernel's index checks for the torch path, read with one host sync: the first
    edge with an endpoint outside [0, N), else the first bad entry of a row an edge reads."""
    n = nbrs.shape[0]
    edges = (src < 0) | (src >= n) | (dst < 0) | (dst >= n)
    read = torch.zeros(n, dtype=torch.bool, device=nbrs.device)
    if n:  # clamped: a bad endpoint is reported as such before any entry
        read[src.clamp(0, n - 1)] = True
        read[dst.clamp(0, n - 1)] = True
    entries = ((nbrs < -1) | (nbrs >= n)) & read[:, None]
    flags = torch.stack([_first_true(edges), _first_true(entries)]).tolist()
    for position, report in zip(flags, (_bad_edge(src, dst, n), _bad_nbrs(nbrs))):
        if position >= 0:
            raise report(position)


_SHARED_CHUNK = 1 << 16  # edges per batched search: a few hundred MB of working set


def _shared_neighbours_sorted(nbrs: torch.Tensor, src: torch.Tensor,
                              dst: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`shared_neighbours` in torch (the CUDA path): batched binary searches in sorted rows.

    Rows sorted once (int32: half the memory traffic of int64, stably, so the
    first of repeated entries keeps the lowest rank), then each entry of the
    target's row is looked up in the source's row by ``searchsorted``.
    """
    k = nbrs.shape[1]
    if k == 0:
        return torch.zeros_like(src), torch.zeros_like(src)
    ordered, order = torch.sort(nbrs.to(torch.int32), dim=1, stable=True)
    order = order.to(torch.int32)
    shared = torch.empty(src.shape[0], dtype=torch.int64, device=nbrs.device)
    reverse = torch.empty_like(shared)
    for start in range(0, src.shape[0], _SHARED_CHUNK):
        a, b = src[start:start + _SHARED_CHUNK], dst[start:start + _SHARED_CHUNK]
        row_a, row_b = ordered[a], ordered[b]
        at = torch.searchsorted(row_a, row_b).clamp_(max=k - 1)
        hit = (torch.gather(row_a, 1, at) == row_b) & (row_b >= 0)
        shared[start:start + a.shape[0]] = hit.sum(1)
        own = a.to(torch.int32).unsqueeze(1)
        at = torch.searchsorted(row_b, own).clamp_(max=k - 1)
        found = (torch.gather(row_b, 1, at) == own).squeeze(1)
        rank = torch.gather(order[b], 1, at).squeeze(1).long()
        reverse[start:start + a.shape[0]] = torch.where(found, rank, torch.full_like(rank, k))
    return shared, reverse


def link(src: Array, dst: Array, scores: Optional[Array], threshold: float,
         num_nodes: int) -> Array:
    """Clusters from scored pairs: keep edges with ``score > threshold``, then components.

    Parameters
    ----------
    src, dst : int [E]
        Edge endpoints in ``[0, num_nodes)``.
    scores : float [E] or None
        Score of each edge (P(same identity)); None keeps every edge.
    threshold : float in [0, 1]
    num_nodes : int

    Returns
    -------
    labels : int64 [num_nodes]
        Connected-component labels 0..C-1, numbered in order of each component's
        smallest member, so identical on CPU and CUDA and for any edge order.
    """
    src = as_indices(src, "src", 1)
    dst = as_indices(dst, "dst", 1, shape=src.shape)
    if scores is not None:
        scores = as_values(scores, "scores", 1, shape=src.shape)
        check_finite(scores, "scores")
    threshold = check_probability(threshold, "threshold")
    num_nodes = check_positive_int(num_nodes, "num_nodes", minimum=0)
    if same_device(src, dst, scores) == "cuda":
        labels = torch.empty(num_nodes, dtype=torch.int64, device=src.device)
        with torch.cuda.device(src.device):  # the scan's scratch size depends on the GPU
            size = _cuda_module().link_workspace_bytes(num_nodes)
        workspace = torch.empty(size, dtype=torch.uint8, device=src.device)
        _launch_checked("link", src.device, (src.data_ptr(), dst.data_ptr(), _ptr(scores),
                                             threshold, src.shape[0], num_nodes,
                                             labels.data_ptr(), workspace.data_ptr(),
                                             workspace.numel()),
                        (_bad_edge(src, dst, num_nodes),))
        return labels
    labels = _core.link(_to_numpy(src), _to_numpy(dst), _to_numpy(scores), threshold, num_nodes)
    return _wrap(labels, is_tensor(src))


def connected_components(src: Array, dst: Array, num_nodes: int) -> Array:
    """Connected components of an edge list; :func:`link` with every edge kept.

    Returns
    -------
    labels : int64 [num_nodes]
        Labels 0..C-1 in order of each component's smallest member.
    """
    return link(src, dst, None, 0.0, num_nodes)
