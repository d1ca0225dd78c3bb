"""One-page PNG report of a clustering run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sepfl import ops  # noqa: E402
from sepfl.cluster import ClusterResult  # noqa: E402
from sepfl.io import atomic_write  # noqa: E402
from sepfl.metrics import pairwise  # noqa: E402

THRESHOLDS = np.linspace(0.05, 0.95, 19)


def threshold_curve(result: ClusterResult, gt: np.ndarray,
                    thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Pairwise (precision, recall, F) [T, 3] of ``result``'s scored pairs linked at each threshold."""
    n = len(result.labels)
    return np.array([pairwise(gt, ops.link(result.src, result.dst, result.scores, t, n))
                     for t in thresholds])


def write_report(path: Union[str, Path], result: ClusterResult, threshold: float,
                 gt: Optional[np.ndarray] = None, title: str = "sepfl clustering") -> Path:
    """Write a PNG with cluster sizes, densities, pair scores and (with ``gt``) P/R/F vs threshold.

    Parameters
    ----------
    path : str or Path
        Output ``.png``; written atomically.
    result : ClusterResult
    threshold : float
        The link threshold used, marked on the score plots.
    gt : int [N], optional
        True labels; adds the pairwise precision / recall / F curve.

    Returns
    -------
    Path of the written image.
    """
    path = Path(path)
    panels = 4 if gt is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    sizes = np.bincount(result.labels)
    counts = np.bincount(sizes)
    nonzero = np.flatnonzero(counts)
    axes[0].loglog(nonzero, counts[nonzero], "o", markersize=3)
    axes[0].set(title=f"{len(sizes):,} clusters", xlabel="cluster size", ylabel="clusters")
    axes[1].hist(result.density, bins=50, color="tab:green")
    axes[1].set(title="density", xlabel="combined density", ylabel="samples")
    axes[2].hist(result.scores, bins=50, color="tab:purple")
    axes[2].axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
    axes[2].set(title=f"{len(result.scores):,} pair scores", xlabel="P(same identity)",
                ylabel="pairs", yscale="log")
    axes[2].legend(loc="upper center")
    if gt is not None:
        curve = threshold_curve(result, gt)
        for column, name in enumerate(("precision", "recall", "F_P")):
            axes[3].plot(THRESHOLDS, curve[:, column], label=name)
        axes[3].axvline(threshold, color="k", linestyle="--")
        axes[3].set(title="pairwise quality vs threshold", xlabel="link threshold",
                    ylim=(0, 1.02))
        axes[3].legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path
