import numpy as np
import torch

from sepfl.cluster import cluster
from sepfl.config import ClusterConfig
from sepfl.datasets import make_faces
from sepfl.model import PairClassifier
from sepfl.report import threshold_curve, write_report


def test_report_is_a_valid_png(tmp_path):
    import matplotlib.image

    data = make_faces(20, dim=16, seed=1)
    torch.manual_seed(0)
    result = cluster(data.features, PairClassifier(16, 10).eval(),
                     ClusterConfig(k=10, device="cpu", progress=False))
    for gt in (None, data.labels):
        path = write_report(tmp_path / "sub" / "report.png", result, 0.5, gt=gt)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 300
        assert image.std() > 0.01  # not a blank canvas
    assert not list((tmp_path / "sub").glob(".*tmp"))
    curve = threshold_curve(result, data.labels)
    assert curve.shape == (19, 3) and np.all((curve >= 0) & (curve <= 1))
    # raising the threshold can only remove links: recall never increases
    assert np.all(np.diff(curve[:, 1]) <= 1e-12)


def test_report_shows_true_cluster_sizes_beside_found_ones():
    """Issue 14, item 10: with labels, the size panel holds both distributions."""
    from sepfl.report import report_figure, size_distribution

    sizes, counts = size_distribution(np.array([0, 0, 1, 2, 2, 2, 3]))
    np.testing.assert_array_equal(sizes, [1, 2, 3])
    np.testing.assert_array_equal(counts, [2, 1, 1])
    data = make_faces(20, dim=16, seed=1)
    torch.manual_seed(0)
    result = cluster(data.features, PairClassifier(16, 10).eval(),
                     ClusterConfig(k=10, device="cpu", progress=False))
    fig = report_figure(result, 0.5, gt=data.labels)
    assert fig.axes[0].get_legend_handles_labels()[1] == ["found", "true"]
    assert "20 true" in fig.axes[0].get_title()
