"""Feature preprocessing: unit-length rows for cosine similarity, and a matrix's identity.

Every compute stage (:mod:`sepfl.knn`, :mod:`sepfl.cluster`, :mod:`sepfl.train`,
:mod:`sepfl.incremental`) works on L2-normalised float32 rows;
:func:`normalize_features` brings them there once, warning when the input was
not normalised, and leaves already unit rows untouched. :func:`fingerprint`
names a feature matrix so that a kNN graph or a checkpoint can tell the
features it was built on. Numpy arrays and torch tensors (any device) are
accepted and returned as the same kind.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch

from sepfl._validate import Array, as_values, is_tensor, to_numpy

__all__ = ["fingerprint", "l2_normalize", "normalize_features"]

# Rows per step when normalising: bounds the float64 temporaries to ~130 MB at D = 256.
_NORM_CHUNK = 65536
_FINGERPRINT_ROWS = 1024
_SHOWN_ROWS = 10


def _rows_text(rows: np.ndarray) -> str:
    """Row numbers (int [M]) for an error message: the first ten and the count."""
    shown = ", ".join(str(int(r)) for r in rows[:_SHOWN_ROWS])
    more = ", ..." if len(rows) > _SHOWN_ROWS else ""
    return f"[{shown}{more}] ({len(rows)} in all)"


def fingerprint(features: Array) -> str:
    """A cheap, stable identifier of a feature matrix.

    The shape plus a blake2b hash of up to 1024 evenly spaced rows (all rows
    of a small matrix), as float32. Reads only those rows, so it is cheap on a
    memory map; a change confined to rows outside the sample goes unnoticed.

    Parameters
    ----------
    features : float [N, D], numpy array or torch tensor (any device)

    Returns
    -------
    str
        ``"NxD:<32 hex digits>"``.
    """
    x = as_values(features, "features", 2)
    n, d = x.shape
    rows = np.unique(np.linspace(0, n - 1, min(n, _FINGERPRINT_ROWS)).astype(np.int64))
    sample = x[torch.as_tensor(rows, device=x.device)] if is_tensor(x) else x[rows]
    sample = np.ascontiguousarray(to_numpy(sample))
    digest = hashlib.blake2b(sample.tobytes(), digest_size=16)
    digest.update(np.array([n, d], dtype=np.int64).tobytes())
    return f"{n}x{d}:{digest.hexdigest()}"


def _row_norms(x: Array) -> Array:
    """Euclidean norm of every row, accumulated in float64, chunk by chunk: float64 [N]."""
    chunks = range(0, x.shape[0], _NORM_CHUNK)
    if is_tensor(x):
        parts = [torch.linalg.vector_norm(x[s:s + _NORM_CHUNK], dim=1, dtype=torch.float64)
                 for s in chunks]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=x.device)
    parts = [np.linalg.norm(np.asarray(x[s:s + _NORM_CHUNK], dtype=np.float64), axis=1)
             for s in chunks]
    return np.concatenate(parts) if parts else np.zeros(0)


def _check_normalizable(norms: Array, name: str) -> None:
    norms = to_numpy(norms)
    broken = np.flatnonzero(~np.isfinite(norms))
    if len(broken):
        raise ValueError(f"{name} rows {_rows_text(broken)} hold NaN or inf")
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise ValueError(f"{name} rows {_rows_text(zero)} are all zero and cannot be normalised")


def _divide_rows(x: Array, norms: Array, name: str) -> Array:
    """Every row of ``x`` (float32 [N, D]) divided by its norm (``norms``, float64 [N]), as a new
    array of ``x``'s kind; first ValueError naming the rows that cannot be (NaN / inf or zero)."""
    _check_normalizable(norms, name)
    if is_tensor(x):
        return x / norms.to(torch.float32)[:, None]
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, x.shape[0], _NORM_CHUNK):
        out[s:s + _NORM_CHUNK] = x[s:s + _NORM_CHUNK] / norms[s:s + _NORM_CHUNK, None]
    return out


def l2_normalize(x: Array, name: str = "features") -> Array:
    """Divide every row by its Euclidean norm.

    Parameters
    ----------
    x : float [N, D], numpy array or torch tensor
    name : str
        How error messages call ``x``.

    Returns
    -------
    float32 [N, D], a new array (or tensor on ``x``'s device) with unit rows.

    Raises
    ------
    ValueError
        Naming the rows that hold NaN / inf or are all zero.
    """
    x = as_values(x, name, 2)
    return _divide_rows(x, _row_norms(x), name)


def normalize_features(x: Array, warn: bool = True, atol: float = 1e-3,
                       name: str = "features") -> Array:
    """Unit-length rows for cosine similarity, warning when ``x`` was not normalised.

    Rows whose norms are all within ``atol`` of 1 are returned as they are
    (float32, no copy when already float32 and C-contiguous: possibly a
    read-only memory map), so normalising twice changes nothing, not even
    :func:`fingerprint`. Otherwise every row is divided by its norm and, when
    ``warn``, a UserWarning says how many rows were off.

    Parameters
    ----------
    x : float [N, D], numpy array or torch tensor
    warn : bool
    atol : float
        Tolerance on each row's norm.
    name : str
        How messages call ``x``.

    Returns
    -------
    float32 [N, D] with unit rows, same kind (and device) as ``x``.

    Raises
    ------
    ValueError
        Naming the rows that hold NaN / inf or are all zero.
    """
    x = as_values(x, name, 2)
    norms = _row_norms(x)
    off = to_numpy(~(abs(norms - 1.0) <= atol))  # NaN norms count as off
    if not off.any():
        return x
    unit = _divide_rows(x, norms, name)
    if warn:
        low, high = float(norms.min()), float(norms.max())
        warnings.warn(f"{int(off.sum())} of {len(off)} {name} rows were not unit length "
                      f"(norms {low:.4g} to {high:.4g}); normalised them", UserWarning,
                      stacklevel=2)
    return unit
