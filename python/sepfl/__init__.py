"""sepfl: Structure-Enhanced Pairwise Feature Learning for clustering embeddings.

Re-exports :class:`~sepfl.estimator.SEPFL` and :func:`~sepfl.device.has_cuda`;
each is imported on first use, because both pull in torch (the estimator the
whole pipeline), which ``import sepfl`` alone should not pay for.
"""
from __future__ import annotations

import importlib

from sepfl._version import __version__

__all__ = ["SEPFL", "has_cuda", "__version__"]

_LAZY = {"SEPFL": "sepfl.estimator", "has_cuda": "sepfl.device"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sepfl' has no attribute {name!r}")
