"""Reading and writing embeddings, labels and kNN graphs.

Formats
-------
features
    ``.bin``: raw float32, row-major, no header (learn-to-cluster's layout). Its
    width comes from ``dim=`` or from the JSON sidecar ``NAME.bin.json``
    (``{"dim": D, "count": N}``) that :func:`write_features` writes beside it.
    ``.npy``; ``.npz`` (the array ``features``, or the only array in the file).
labels
    ``.meta``, ``.txt``, ``.csv``: one label per line, no header. ``.npy``: a 1-D
    integer or unicode array. Labels may be any integers or strings;
    :func:`read_labels` numbers them 0..C-1 and keeps the mapping.
kNN graph
    ``.npz`` in one of two layouts, told apart by their arrays (the suffix does
    not matter):

    * learn-to-cluster: one array ``data`` of shape ``(N, 2, k)``;
      ``data[:, 0]`` the neighbour indices stored as floats, ``data[:, 1]`` the
      distances ``1 - sim`` (clipped to [0, 1] when written here, so negative
      similarities read back as 0).
    * sepfl: ``nbrs`` int32 (int64 when N >= 2**31), ``sims`` float32, the
      ``fingerprint`` of the features the graph was built on, and ``meta``, a
      JSON object describing the build (backend, exactness).

Missing neighbours
    A kNN slot may be empty (faiss's approximate indexes return fewer than k
    hits; learn-to-cluster marks those with index -1). In memory an empty slot
    is index ``-1`` with similarity ``-1.0``, the lowest cosine: rows stay sorted
    in descending order, the slot adds nothing to sums of ``clip(sim, 0, 1)``,
    and :mod:`sepfl.ops` skips it. Reading a learn-to-cluster file, a slot whose
    index is -1 or NaN, or whose distance is NaN, becomes such an empty slot
    (NaN distances are logged as a warning: they point at a broken file).

Every writer writes to a temporary file in the target's directory and renames
it into place (:func:`atomic_write`): a failed write leaves no half-written file.
Every reader raises FileNotFoundError for a missing file and ValueError (or
TypeError for a wrong dtype) naming the file for content it cannot use.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Union

import numpy as np

from sepfl._validate import Array, as_indices, as_values, check_finite, check_index_range, \
    check_positive_int, to_numpy
from sepfl.features import fingerprint, l2_normalize, normalize_features

__all__ = [
    "atomic_write", "read_features", "write_features", "read_labels", "write_labels",
    "KnnGraph", "read_knn", "write_knn", "verify_knn", "Dataset", "read_dataset",
    "learn_to_cluster_paths", "FEATURE_SUFFIXES", "LABEL_SUFFIXES",
]

PathLike = Union[str, "os.PathLike[str]"]

logger = logging.getLogger(__name__)

#: Feature files at least this large are memory-mapped by default.
MMAP_MIN_BYTES = 64 << 20

FEATURE_SUFFIXES = (".bin", ".npy", ".npz")
_LABEL_TEXT_SUFFIXES = (".meta", ".txt", ".csv")
LABEL_SUFFIXES = _LABEL_TEXT_SUFFIXES + (".npy",)
_KNN_LAYOUTS = ("sepfl", "learn-to-cluster")
_SEPFL_KNN_VERSION = 1
# verify_knn: rows recomputed, the tolerance on a similarity, the share of entries allowed off
_VERIFY_ROWS = 256
_VERIFY_ATOL = 1e-2
_VERIFY_OFF = 0.01


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write ``path`` all at once: yield a temporary path to write, then rename it over ``path``.

    The temporary file lives in the same directory (so the rename is atomic)
    and is removed if the body raises, leaving any previous ``path`` untouched.
    Missing parent directories are created. Open the temporary path yourself
    (write through a file object with numpy, whose ``save`` functions append a
    suffix to bare path names); use ``str(tmp)`` for APIs that need a string.

    Examples
    --------
    >>> with atomic_write("run/report.json") as tmp:      # doctest: +SKIP
    ...     tmp.write_text(json.dumps(report))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        # in a folder that refuses writes the clean-up fails too: report the first error only
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    return path


def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"{path}: unknown {what} format {suffix!r}; expected one of "
                         f"{', '.join(allowed)}")
    return suffix


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{path}: an .npz archive, not a single .npy array")
    return array


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    # Through our own file object: np.load leaks its handle when the zip is corrupt.
    try:
        with open(path, "rb") as f:
            archive = np.load(f, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with archive:
                return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None


# --------------------------------------------------------------------------- features


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
        return {"dim": int(meta["dim"]), "count": int(meta["count"])}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{sidecar}: not a valid feature sidecar ({err!r}); expected "
                         '{"dim": D, "count": N}') from None


def _use_mmap(mmap: Optional[bool], size: int) -> bool:
    return size >= MMAP_MIN_BYTES if mmap is None else mmap


def _read_bin(path: Path, dim: Optional[int], mmap: Optional[bool]) -> np.ndarray:
    meta = _read_sidecar(path)
    if dim is None and not meta:
        raise ValueError(f"{path}: a .bin file has no header; give its feature width (--dim, "
                         f"dim= in Python) or write {_sidecar(path).name} with "
                         f"{{\"dim\": D, \"count\": N}}")
    if dim is not None:
        dim = check_positive_int(dim, "dim")
        if meta and meta["dim"] != dim:
            raise ValueError(f"{path}: dim {dim} (--dim) disagrees with {_sidecar(path).name}, "
                             f"which says dim={meta['dim']}")
    dim = dim or meta["dim"]
    size = path.stat().st_size
    if size % (4 * dim):
        raise ValueError(f"{path}: {size} bytes is not a whole number of float32 rows of "
                         f"dim {dim} ({4 * dim} bytes each); is the feature width (--dim) right?")
    n = size // (4 * dim)
    if meta and meta["count"] != n:
        raise ValueError(f"{path}: holds {n} rows of dim {dim} but {_sidecar(path).name} "
                         f"says {meta['count']}; truncated file or stale sidecar?")
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if _use_mmap(mmap, size):
        return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
    return np.fromfile(path, dtype=np.float32).reshape(n, dim)


def _pick_features(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if "features" in arrays:
        return arrays["features"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(f"{path}: expected an array named 'features' or a single array, found "
                     f"{sorted(arrays)}")


def read_features(path: PathLike, dim: Optional[int] = None,
                  mmap: Optional[bool] = None) -> np.ndarray:
    """Read a feature matrix from ``.bin``, ``.npy`` or ``.npz``.

    Parameters
    ----------
    path : str or path
    dim : int, optional
        Feature width. Needed for a ``.bin`` file unless its sidecar
        ``NAME.bin.json`` gives it; when given, the file must agree.
    mmap : bool, optional
        Memory-map ``.bin`` / float32 ``.npy`` files (read-only) instead of
        reading them. Default: map files of at least :data:`MMAP_MIN_BYTES`.

    Returns
    -------
    float32 [N, D] numpy array, as stored (not normalised; see
    :func:`sepfl.features.normalize_features`).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unknown suffix; unreadable file; not 2-D; a ``.bin`` size that is not
        a whole number of rows of ``dim``; ``dim`` missing for a ``.bin``.
    TypeError
        The stored array is not floating point.
    """
    path = _existing(path)
    suffix = _suffix(path, FEATURE_SUFFIXES, "feature")
    if suffix == ".bin":
        return _read_bin(path, dim, mmap)
    if suffix == ".npy":
        x = _load_npy(path, mmap=_use_mmap(mmap, path.stat().st_size))
    else:
        x = _pick_features(path, _load_npz(path))
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{path}: features must be floating point, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{path}: features must be 2-D [N, D], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{path}: holds features of dim {x.shape[1]}, not {dim} (--dim)")
    return x if x.dtype == np.float32 else x.astype(np.float32)


def write_features(path: PathLike, features: Array) -> None:
    """Write ``features`` (float [N, D]) as ``.bin`` (+ sidecar), ``.npy`` or ``.npz`` (float32).

    A ``.bin`` gets the sidecar ``NAME.bin.json`` = ``{"dim": D, "count": N}``
    so :func:`read_features` needs no ``dim``. An ``.npz`` holds the array
    ``features``. Torch tensors are copied to the CPU.
    """
    path = Path(path)
    suffix = _suffix(path, FEATURE_SUFFIXES, "feature")
    x = to_numpy(as_values(features, "features", 2))
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        if suffix == ".bin":
            x.tofile(f)
        elif suffix == ".npy":
            np.save(f, x)
        else:
            np.savez(f, features=x)
    if suffix == ".bin":
        with atomic_write(_sidecar(path)) as tmp:
            tmp.write_text(json.dumps({"dim": x.shape[1], "count": x.shape[0]}) + "\n")


# --------------------------------------------------------------------------- labels


def _read_label_lines(path: Path) -> np.ndarray:
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f"{path}: line {number} is empty; expected one label per line")
        if "," in line and path.suffix.lower() == ".csv":
            raise ValueError(f"{path}: line {number} has several columns ({line!r}); expected "
                             "one label per line")
    text = np.array(lines, dtype=str)
    if path.suffix.lower() == ".csv" and len(text) > 1 and _integers(text[1:]) is not None \
            and _integers(text[:1]) is None:
        logger.info("%s: first line %r read as a header", path, lines[0])
        text = text[1:]
    numbers = _integers(text)
    return text if numbers is None else numbers


def _integers(text: np.ndarray) -> Optional[np.ndarray]:
    """``text`` (str [M]) as int64, or None when some entry is not an integer."""
    try:
        return text.astype(np.int64)
    except (ValueError, OverflowError):
        return None


def _encode_labels(raw: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if raw.dtype.kind not in "iuUS":
        raise TypeError(f"{where} must be integers or strings, got dtype {raw.dtype}")
    if raw.ndim != 1:
        raise ValueError(f"{where} must be 1-D, got shape {raw.shape}")
    classes, ids = np.unique(raw, return_inverse=True)
    return ids.astype(np.int64).reshape(-1), classes


def read_labels(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one label per sample and number the distinct labels 0..C-1.

    Parameters
    ----------
    path : str or path
        ``.meta`` / ``.txt`` / ``.csv`` (one label per line, surrounding spaces
        and trailing blank lines ignored) or ``.npy`` (1-D integer or unicode).

    Returns
    -------
    labels : int64 [N]
        Each sample's class in 0..C-1, classes numbered in sorted order of
        the original labels.
    classes : [C] numpy array
        The original labels, sorted: ``classes[labels]`` restores the file's
        labels. int64 when every label in a text file is an integer, else str.

    Raises
    ------
    FileNotFoundError, ValueError (empty line, several CSV columns, not 1-D,
    unreadable), TypeError (float or object labels).
    """
    path = _existing(path)
    suffix = _suffix(path, LABEL_SUFFIXES, "label")
    raw = _load_npy(path) if suffix == ".npy" else _read_label_lines(path)
    return _encode_labels(raw, f"{path}: labels")


def _check_label_text(labels: np.ndarray, path: Path) -> None:
    for value in np.unique(labels):
        if not value or value != value.strip() or "\n" in value or "\r" in value or (
                "," in value and path.suffix.lower() == ".csv"):
            raise ValueError(f"{path}: label {value!r} cannot be written one per line and read "
                             "back unchanged (empty, surrounding spaces, line break or comma)")


def write_labels(path: PathLike, labels: Array) -> None:
    """Write labels (1-D integers or strings) as ``.meta`` / ``.txt`` / ``.csv`` or ``.npy``.

    Text formats hold one label per line. :func:`read_labels` reads them back
    as ``classes[labels]``; string labels that all look like integers come
    back as integers.
    """
    path = Path(path)
    suffix = _suffix(path, LABEL_SUFFIXES, "label")
    raw = to_numpy(labels)
    if raw.size == 0:
        raw = raw.astype(np.int64)  # np.asarray([]) is float64
    _encode_labels(raw, "labels")  # the same checks as reading
    if raw.dtype.kind == "S":
        raw = raw.astype(str)
    if suffix != ".npy" and raw.dtype.kind == "U":
        _check_label_text(raw, path)
    with atomic_write(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, raw)
        else:
            tmp.write_text("".join(f"{value}\n" for value in raw.tolist()))


# --------------------------------------------------------------------------- kNN graphs


class KnnGraph(NamedTuple):
    """A kNN graph as read by :func:`read_knn`.

    Attributes
    ----------
    nbrs : int64 [N, k]
        Neighbour indices, -1 for an empty slot.
    sims : float32 [N, k]
        Cosine similarities, -1.0 for an empty slot.
    fingerprint : str or None
        :func:`sepfl.features.fingerprint` of the features the graph was built
        on (sepfl layout only).
    meta : dict
        How the graph was built (sepfl layout only; empty otherwise).
    """

    nbrs: np.ndarray
    sims: np.ndarray
    fingerprint: Optional[str]
    meta: dict


def _parse_learn_to_cluster(path: Path, data: np.ndarray) -> KnnGraph:
    if data.ndim != 3 or data.shape[1] != 2:
        raise ValueError(f"{path}: learn-to-cluster array 'data' must have shape (N, 2, k), "
                         f"got {data.shape}")
    if data.dtype.kind not in "fiu":
        raise ValueError(f"{path}: learn-to-cluster array 'data' must be numeric, got "
                         f"{data.dtype}")
    index, dist = data[:, 0, :].astype(np.float64), data[:, 1, :].astype(np.float64)
    nan_dist = np.isnan(dist) & np.isfinite(index) & (index != -1)
    missing = ~np.isfinite(index) | (index == -1) | ~np.isfinite(dist)
    present = index[~missing]
    if present.size and (np.any(present != np.round(present)) or present.min() < 0
                         or present.max() >= data.shape[0]):
        raise ValueError(f"{path}: neighbour indices must be integers in [0, {data.shape[0]}) "
                         "or -1")
    if nan_dist.any():
        logger.warning("%s: %d neighbour(s) have a NaN distance; read as empty slots", path,
                       int(nan_dist.sum()))
    nbrs = np.where(missing, -1, index).astype(np.int64)
    sims = np.where(missing, -1.0, 1.0 - dist).astype(np.float32)
    return KnnGraph(nbrs, sims, None, {})


def _parse_sepfl(path: Path, arrays: dict[str, np.ndarray]) -> KnnGraph:
    try:
        nbrs = as_indices(arrays["nbrs"], "nbrs", 2)
        sims = as_values(arrays["sims"], "sims", 2, shape=nbrs.shape)
        check_finite(sims, "sims")
        check_index_range(nbrs, "nbrs", nbrs.shape[0], allow_missing=True)
        meta = json.loads(str(arrays["meta"]))
        stamp = str(arrays["fingerprint"])
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"{path}: corrupt sepfl kNN file ({err!r})") from None
    return KnnGraph(nbrs, sims, stamp or None, meta)


def read_knn(path: PathLike) -> KnnGraph:
    """Read a kNN graph in the learn-to-cluster or the sepfl ``.npz`` layout.

    Returns
    -------
    KnnGraph
        ``(nbrs int64 [N, k], sims float32 [N, k], fingerprint, meta)``; see
        the module notes for empty slots. Rows are returned in the stored order
        (not re-sorted).

    Raises
    ------
    FileNotFoundError, or ValueError naming the file when it is not an
    ``.npz``, has neither layout's arrays, or holds indices outside [-1, N).
    """
    path = _existing(path)
    arrays = _load_npz(path)
    if "sepfl_knn" in arrays:
        return _parse_sepfl(path, arrays)
    if "data" in arrays:
        return _parse_learn_to_cluster(path, arrays["data"])
    raise ValueError(f"{path}: not a kNN file: expected an array 'data' (learn-to-cluster) or "
                     f"'sepfl_knn', 'nbrs', 'sims' (sepfl), found {sorted(arrays)}")


def write_knn(path: PathLike, nbrs: Array, sims: Array, features: Optional[Array] = None,
              layout: str = "sepfl", meta: Optional[dict] = None) -> None:
    """Write a kNN graph as ``.npz``.

    Parameters
    ----------
    path : str or path
    nbrs : int [N, k]
        Neighbour indices in [0, N), or -1 for an empty slot.
    sims : float [N, k]
        Cosine similarities (finite).
    features : float [N, D], optional
        The features the graph was built on; their
        :func:`~sepfl.features.fingerprint` is stored (sepfl layout only).
    layout : {"sepfl", "learn-to-cluster"}
        The learn-to-cluster layout stores indices as float32 (float64 when
        N > 2**24, beyond which float32 loses integers) and ``clip(1 - sim, 0, 1)``.
    meta : dict, optional
        JSON-serialisable notes on the build (sepfl layout only).

    Raises
    ------
    TypeError, ValueError (shapes, NaN, layout, features row count,
    fingerprint or meta with the learn-to-cluster layout), IndexError (indices).
    """
    nbrs = to_numpy(as_indices(nbrs, "nbrs", 2))
    sims = to_numpy(as_values(sims, "sims", 2, shape=nbrs.shape))
    n = nbrs.shape[0]
    check_finite(sims, "sims")
    check_index_range(nbrs, "nbrs", n, allow_missing=True)
    if layout not in _KNN_LAYOUTS:
        raise ValueError(f"layout must be one of {_KNN_LAYOUTS}, got {layout!r}")
    if layout == "learn-to-cluster":
        if features is not None or meta:
            raise ValueError("the learn-to-cluster layout stores no fingerprint or meta; "
                             "use layout='sepfl'")
        index_dtype = np.float32 if n <= 1 << 24 else np.float64
        data = np.stack([nbrs.astype(index_dtype),
                         np.clip(1.0 - sims, 0.0, 1.0).astype(index_dtype)], axis=1)
        arrays = {"data": data}
    else:
        stamp = ""
        if features is not None:
            features = as_values(features, "features", 2)
            if features.shape[0] != n:
                raise ValueError(f"features has {features.shape[0]} rows but the graph has {n}")
            stamp = fingerprint(features)
        arrays = {
            "sepfl_knn": np.int64(_SEPFL_KNN_VERSION),
            "nbrs": nbrs.astype(np.int32 if n < 1 << 31 else np.int64),
            "sims": sims,
            "fingerprint": np.str_(stamp),
            "meta": np.str_(json.dumps(meta or {})),
        }
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def verify_knn(graph: KnnGraph, features: Array, rows: int = _VERIFY_ROWS, seed: int = 0) -> None:
    """ValueError unless ``graph`` was built from ``features`` (same rows, same order).

    A graph with a fingerprint (sepfl's layout) must carry that of ``features``,
    as stored or L2-normalised. A graph without one (learn-to-cluster files)
    is cross-checked: the similarities of ``rows`` sampled rows are recomputed
    from ``features`` and compared with the stored ones, both clipped to
    [0, 1] (the learn-to-cluster layout stores ``clip(1 - sim, 0, 1)``); more
    than 1 % of them off by over 0.01 means other, or reordered, features.

    Parameters
    ----------
    graph : KnnGraph
        nbrs int64 [N, k] (-1 for an empty slot), sims float32 [N, k].
    features : float [N, D], numpy array (a memory map is fine)
    rows : int
        Rows recomputed for a graph without fingerprint.
    seed : int
        Picks those rows.
    """
    n = features.shape[0]
    if graph.nbrs.shape[0] != n:
        raise ValueError(f"the kNN graph has {graph.nbrs.shape[0]:,} rows but the features "
                         f"have {n:,}")
    if graph.fingerprint is not None:
        if graph.fingerprint not in (fingerprint(features),
                                     fingerprint(normalize_features(features, warn=False))):
            raise ValueError("the kNN graph was built from other features (its fingerprint "
                             "differs); rebuild it")
        return
    picked = np.sort(np.random.default_rng(seed).choice(n, min(n, rows), replace=False))
    idx = graph.nbrs[picked]
    present = idx >= 0
    centre = l2_normalize(np.asarray(features[picked]))
    neighbours = l2_normalize(np.asarray(features[np.where(present, idx, 0).ravel()]))
    recomputed = np.einsum("rd,rkd->rk", centre, neighbours.reshape(*idx.shape, -1))
    off = present & (np.abs(np.clip(recomputed, 0, 1) - np.clip(graph.sims[picked], 0, 1))
                     > _VERIFY_ATOL)
    share = off.sum() / max(1, present.sum())
    if share > _VERIFY_OFF:
        raise ValueError(f"the kNN graph was built from other features: {share:.0%} of the "
                         f"similarities of {len(picked)} sampled rows differ from those "
                         f"of these features; rebuild it")


# --------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    """Features with, optionally, their labels and kNN graph.

    Attributes
    ----------
    features : float32 [N, D]
    labels : int64 [N] in 0..C-1, optional
    classes : [C], optional
        Original label of each class (``classes[labels]``).
    nbrs : int64 [N, k], optional
    sims : float32 [N, k], optional
    """

    features: np.ndarray
    labels: Optional[np.ndarray] = None
    classes: Optional[np.ndarray] = None
    nbrs: Optional[np.ndarray] = None
    sims: Optional[np.ndarray] = None


def learn_to_cluster_paths(root: PathLike, name: str, k: int = 80) -> tuple[Path, Path, Path]:
    """``(features, labels, knn)`` paths of set ``name`` in the learn-to-cluster layout.

    ``root/features/NAME.bin``, ``root/labels/NAME.meta``,
    ``root/knns/NAME/faiss_k_K.npz``.
    """
    root = Path(root)
    return (root / "features" / f"{name}.bin", root / "labels" / f"{name}.meta",
            root / "knns" / name / f"faiss_k_{k}.npz")


def read_dataset(features_path: PathLike, labels_path: Optional[PathLike] = None,
                 knn_path: Optional[PathLike] = None, dim: Optional[int] = None,
                 normalize: bool = True) -> Dataset:
    """Read features and, optionally, labels and a kNN graph, checking they belong together.

    Parameters
    ----------
    features_path, labels_path, knn_path : str or path
        See :func:`read_features`, :func:`read_labels`, :func:`read_knn`.
    dim : int, optional
        Feature width of a ``.bin`` without sidecar.
    normalize : bool
        Pass the features through :func:`~sepfl.features.normalize_features`
        (warns when rows were not unit length).

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError, TypeError, or ValueError naming the file(s): any
    reader's error; NaN / inf or all-zero feature rows (when normalising); a
    label count or kNN row count other than the number of feature rows; a kNN
    graph built from other features (:func:`verify_knn`).
    """
    features = read_features(features_path, dim=dim)
    n = features.shape[0]
    if normalize:
        try:
            features = normalize_features(features)
        except ValueError as err:
            raise ValueError(f"{features_path}: {err}") from None
    data = Dataset(features)
    if labels_path is not None:
        data.labels, data.classes = read_labels(labels_path)
        if len(data.labels) != n:
            raise ValueError(f"{labels_path} has {len(data.labels):,} labels but "
                             f"{features_path} has {n:,} rows")
    if knn_path is not None:
        graph = read_knn(knn_path)
        try:
            verify_knn(graph, features)
        except ValueError as err:
            raise ValueError(f"{knn_path}: {err} ({features_path})") from None
        data.nbrs, data.sims = graph.nbrs, graph.sims
    return data
