"""sepfl: Structure-Enhanced Pairwise Feature Learning for clustering embeddings."""
from __future__ import annotations

__version__ = "0.1.0"


def has_cuda() -> bool:
    """True when the CUDA module ``sepfl._cuda`` was built and a GPU is usable."""
    try:
        from sepfl import _cuda
    except ImportError:
        return False
    import torch

    return _cuda.device_count() > 0 and torch.cuda.is_available()


def __getattr__(name: str):
    # SEPFL is imported on first use: the estimator pulls in torch and the
    # whole pipeline, which `import sepfl` alone should not pay for.
    if name == "SEPFL":
        from sepfl.estimator import SEPFL

        return SEPFL
    raise AttributeError(f"module 'sepfl' has no attribute {name!r}")
