import numpy as np
import torch

from sepfl.cluster import ClusterConfig, cluster
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
