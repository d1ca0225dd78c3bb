"""Argument checks shared by every public entry point of sepfl.

One place for the errors a user sees: TypeError for a wrong dtype, ValueError
for a wrong shape or an out-of-range value, IndexError for an index outside
its array. Each helper accepts a numpy array or a torch tensor, converts it
explicitly (never silently inside native code) and returns the same kind of
object: C-contiguous, float32 for values, int64 for indices.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

Array = Any  # numpy.ndarray or torch.Tensor


def is_tensor(x: Array) -> bool:
    return isinstance(x, torch.Tensor)


def to_tensor(x: Array, device: Optional[torch.device] = None) -> torch.Tensor:
    """``x`` as a tensor on ``device``, sharing memory with a numpy ``x`` when it stays on the CPU.

    A read-only array (a memory-mapped file) is wrapped without torch's
    warning: sepfl never writes into its inputs.
    """
    if not is_tensor(x):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.asarray(x))
    return x if device is None else x.to(device)


def to_numpy(x: Array) -> np.ndarray:
    """``x`` as a numpy array: a tensor is copied to the CPU, a numpy array returned as it
    is, anything else (a list) converted by ``np.asarray``."""
    return x.cpu().numpy() if is_tensor(x) else np.asarray(x)


def _describe(x: Array) -> str:
    return f"{type(x).__name__} of dtype {x.dtype} and shape {tuple(x.shape)}"


def _as_array(x: Array, name: str) -> Array:
    if is_tensor(x) or isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)) or np.isscalar(x):
        return np.asarray(x)
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _check_ndim(x: Array, name: str, ndim: int, shape: Sequence[int | None] | None) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if shape is not None:
        for axis, want in enumerate(shape):
            if want is not None and x.shape[axis] != want:
                expected = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")


def _is_floating(x: Array) -> bool:
    return x.is_floating_point() if is_tensor(x) else np.issubdtype(x.dtype, np.floating)


def _is_integral(x: Array) -> bool:
    if is_tensor(x):
        return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    return np.issubdtype(x.dtype, np.integer)


def _convert(x: Array, name: str, ndim: int, shape: Sequence[int | None] | None, dtype: str,
             accepts: Callable[[Array], bool], holds: str) -> Array:
    """``x`` as C-contiguous ``dtype`` ("float32" or "int64", named alike in numpy and torch);
    TypeError, saying ``x`` must hold ``holds``, unless ``accepts(x)``."""
    x = _as_array(x, name)
    if not accepts(x):
        raise TypeError(f"{name} must hold {holds}, got {_describe(x)}")
    _check_ndim(x, name, ndim, shape)
    if is_tensor(x):
        return x.detach().to(getattr(torch, dtype)).contiguous()
    return np.ascontiguousarray(x, dtype=dtype)


def as_values(x: Array, name: str, ndim: int,
              shape: Sequence[int | None] | None = None) -> Array:
    """``x`` as C-contiguous float32; TypeError unless it holds floating-point values."""
    return _convert(x, name, ndim, shape, "float32", _is_floating, "floating-point values")


def as_indices(x: Array, name: str, ndim: int,
               shape: Sequence[int | None] | None = None) -> Array:
    """``x`` as C-contiguous int64; TypeError unless it holds integers (bool is refused)."""
    return _convert(x, name, ndim, shape, "int64", _is_integral, "integer indices")


def check_probability(value: float, name: str) -> float:
    """``value`` as a float in [0, 1]; ValueError otherwise (NaN included)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_device(device: Union[str, torch.device, None]) -> Optional[torch.device]:
    """``device`` ("cpu", "cuda", "cuda:N", a torch.device or None) as a torch.device (None
    stays None).

    Checks the spelling only: whether the hardware is there is asked where the
    device is used, so a config naming "cuda" can be read on a CPU-only machine.
    """
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda ('cpu', 'cuda' or 'cuda:N'), "
                         f"got {device!r}")
    return resolved


def check_threads(threads: Optional[int]) -> Optional[int]:
    """``threads`` as an int >= 1, or None (sepfl's default, see :mod:`sepfl._threads`)."""
    return None if threads is None else check_positive_int(threads, "threads")


def check_finite(x: Array, name: str) -> None:
    """ValueError, with the count, when ``x`` holds NaN or inf."""
    bad = ~torch.isfinite(x) if is_tensor(x) else ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        raise ValueError(f"{name} holds {count} NaN or inf value(s)")


def check_index_range(x: Array, name: str, upper: int, allow_missing: bool = False) -> None:
    """IndexError unless every entry is in [0, upper) (or -1, when ``allow_missing``)."""
    if (x.numel() if is_tensor(x) else x.size) == 0:
        return
    low, high = (int(x.min()), int(x.max()))
    floor = -1 if allow_missing else 0
    if low < floor or high >= upper:
        bad = low if low < floor else high
        allowed = f"[-1, {upper})" if allow_missing else f"[0, {upper})"
        raise IndexError(f"{name} holds index {bad} outside {allowed}")


def same_device(*xs: Array) -> str:
    """'cpu' or 'cuda'; ValueError when numpy arrays and tensors of several devices are mixed."""
    devices = {x.device.type if is_tensor(x) else "cpu" for x in xs if x is not None}
    kinds = {is_tensor(x) for x in xs if x is not None}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(devices)}")
    device = devices.pop() if devices else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; sepfl runs on cpu or cuda")
    if device == "cuda" and kinds != {True}:
        raise ValueError("numpy arrays cannot be mixed with CUDA tensors")
    return device
