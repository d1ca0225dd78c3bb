"""One-page PNG report of a clustering run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

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


def size_distribution(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cluster sizes present in ``labels`` (int [N], 0..C-1) and how many clusters have each:
    (sizes int64 [S], counts int64 [S])."""
    counts = np.bincount(np.bincount(labels))
    sizes = np.flatnonzero(counts)
    return sizes, counts[sizes]


def report_figure(result: ClusterResult, threshold: float, gt: Optional[np.ndarray] = None,
                  title: str = "sepfl clustering") -> "plt.Figure":
    """The report's figure (see :func:`write_report`); the caller closes it."""
    panels = 4 if gt is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    found = result.num_clusters
    axes[0].loglog(*size_distribution(result.labels), "o", markersize=3, label="found")
    heading = f"{found:,} clusters"
    if gt is not None:
        # the ground-truth view: true and found size distributions on one axis
        axes[0].loglog(*size_distribution(gt), "x", markersize=4, label="true")
        axes[0].legend(loc="upper right")
        heading = f"{found:,} clusters found, {len(np.unique(gt)):,} true"
    axes[0].set(title=heading, xlabel="cluster size", ylabel="clusters")
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
        axes[3].set(title="components of the pairs above a threshold", xlabel="link threshold",
                    ylim=(0, 1.02))
        axes[3].legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_report(path: Union[str, Path], result: ClusterResult, threshold: float,
                 gt: Optional[np.ndarray] = None, title: str = "sepfl clustering") -> Path:
    """Write a PNG with cluster sizes, densities, pair scores and, with ``gt``, the true
    cluster sizes beside the found ones and P/R/F vs threshold.

    Parameters
    ----------
    path : str or Path
        Output ``.png``; written atomically.
    result : ClusterResult
    threshold : float
        The link threshold used, marked on the score plots.
    gt : int [N], optional
        True labels (0..C-1): adds their cluster-size distribution and the
        pairwise precision / recall / F curve.

    Returns
    -------
    Path of the written image.
    """
    path = Path(path)
    fig = report_figure(result, threshold, gt, title)
    try:
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as handle:
                fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
