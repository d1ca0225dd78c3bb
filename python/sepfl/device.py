"""Which device sepfl runs on.

Configs check only how ``device`` is spelled (:func:`sepfl._validate.check_device`),
so a config naming "cuda" can be built and read on a CPU-only machine; whether
the hardware is there is asked here, by the function that runs on it
(:func:`sepfl.cluster.cluster`, :func:`sepfl.train.train`).
"""
from __future__ import annotations

from typing import Optional

import torch

from sepfl._validate import check_device

__all__ = ["has_cuda", "resolve_device"]


def has_cuda() -> bool:
    """True when the CUDA module ``sepfl._cuda`` was built and a GPU is usable."""
    try:
        from sepfl import _cuda
    except ImportError:
        return False
    return _cuda.device_count() > 0 and torch.cuda.is_available()


def resolve_device(device: Optional[str]) -> torch.device:
    """The torch device to run on; None means a GPU when sepfl can use one, else the CPU.

    Parameters
    ----------
    device : {"cpu", "cuda", "cuda:N"} or None

    Raises
    ------
    ValueError
        Any other spelling, or a CUDA device when :func:`has_cuda` is False.
    """
    if device is None:
        return torch.device("cuda" if has_cuda() else "cpu")
    resolved = check_device(device)
    if resolved.type == "cuda" and not has_cuda():
        raise ValueError("device 'cuda' was asked for, but no GPU is usable or sepfl was built "
                         "without its CUDA module")
    return resolved
