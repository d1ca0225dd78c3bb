"""The scikit-learn-style SEPFL estimator: fit / predict / save / load / pretrained."""
import numpy as np
import pytest
import torch

from sepfl import SEPFL
from sepfl.cluster import ClusterConfig
from sepfl.datasets import make_faces
from sepfl.estimator import NotFittedError
from sepfl.model import PairClassifier
from sepfl.train import TrainConfig

SMALL = dict(k=10, ranks=5, epochs=1, pairs_per_epoch=256, batch_size=64, warmup_steps=20,
             refit_steps=20, classifier_batch_size=64, device="cpu", progress=False)


@pytest.fixture(scope="module")
def faces():
    return make_faces(20, dim=16, seed=5)


@pytest.fixture(scope="module")
def fitted(faces):
    return SEPFL(**SMALL).fit(faces.features, faces.labels)


def test_settings_reach_both_configs():
    est = SEPFL(k=12, threshold=0.7, epochs=3, device="cpu")
    assert est.cluster_config.k == 12 and est.cluster_config.threshold == 0.7
    assert est.train_config.epochs == 3
    assert est.cluster_config.device == est.train_config.device == "cpu"
    with pytest.raises(TypeError, match="unknown SEPFL setting"):
        SEPFL(n_clusters=3)
    with pytest.raises(ValueError, match="threshold"):
        SEPFL(threshold=2.0)


def test_set_params_round_trips_and_keeps_the_model(faces, fitted):
    est = SEPFL(**SMALL)
    est.model_ = fitted.model_
    assert est.set_params(threshold=0.9, epochs=2) is est
    assert est.cluster_config.threshold == 0.9 and est.train_config.epochs == 2
    assert est.cluster_config.k == 10 and est.model_ is fitted.model_
    params = est.get_params()
    assert SEPFL(**params).get_params() == params  # what sklearn's clone does
    est.set_params(cluster_config=ClusterConfig(k=10, threshold=1.0, device="cpu",
                                                progress=False))
    labels = est.predict(faces.features)
    assert len(np.unique(labels)) == len(labels)  # threshold 1.0 links nothing
    with pytest.raises(TypeError, match="unknown SEPFL setting"):
        est.set_params(n_clusters=3)
    with pytest.raises(ValueError, match="threshold"):
        est.set_params(threshold=-0.1)


def test_predict_before_fit_raises(faces):
    with pytest.raises(NotFittedError, match="call fit"):
        SEPFL(**SMALL).predict(faces.features)
    with pytest.raises(NotFittedError):
        SEPFL(**SMALL).save("never.pt")


def test_fit_predict_returns_numpy_labels(faces, fitted):
    labels = fitted.predict(torch.from_numpy(faces.features))
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
    assert labels.shape == (len(faces.labels),)
    assert fitted.labels_ is labels and set(fitted.result_.timings) >= {"knn", "link"}
    np.testing.assert_array_equal(labels, fitted.predict(faces.features))


def test_save_load_round_trip(tmp_path, faces, fitted):
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = SEPFL.load(path)
    assert loaded.cluster_config == fitted.cluster_config
    np.testing.assert_array_equal(loaded.predict(faces.features), fitted.predict(faces.features))
    assert SEPFL.load(path, threshold=1.0).cluster_config.threshold == 1.0


def test_authors_state_dict_loads(tmp_path, faces):
    torch.manual_seed(1)
    path = tmp_path / "authors.pth"
    torch.save(PairClassifier(16, 10).state_dict(), path)
    est = SEPFL.load(path, device="cpu", progress=False)
    assert est.cluster_config.k == 10
    assert est.predict(faces.features).shape == (len(faces.labels),)


def test_checkpoint_for_other_shapes_is_refused(tmp_path, faces, fitted):
    path = tmp_path / "model.pt"
    fitted.save(path)
    with pytest.raises(ValueError, match="D = 8"):
        SEPFL.load(path).predict(faces.features[:, :8])
    with pytest.raises(ValueError, match="k = 10"):
        SEPFL.load(path, cluster_config=ClusterConfig(k=12, device="cpu")).predict(faces.features)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_raises_value_error(tmp_path, fitted, damage):
    path = tmp_path / "model.pt"
    fitted.save(path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10,
                      "empty": b""}[damage])
    with pytest.raises(ValueError, match="checkpoint"):
        SEPFL.load(path)


def test_failed_save_keeps_previous_checkpoint(tmp_path, fitted, monkeypatch):
    path = tmp_path / "model.pt"
    fitted.save(path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_bad_training_data(faces):
    with pytest.raises(ValueError, match="identit"):
        SEPFL(**SMALL).fit(faces.features, np.zeros(len(faces.labels), dtype=np.int64))
    bad = faces.features.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SEPFL(**SMALL).fit(bad, faces.labels)
