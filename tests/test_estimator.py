"""The scikit-learn-style SEPFL estimator: fit / predict / save / load / pretrained."""
import numpy as np
import pytest
import torch

import sepfl
from sepfl import SEPFL
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.datasets import make_faces
from sepfl.model import PairClassifier

SMALL = dict(k=10, ranks=5, epochs=1, pairs_per_epoch=256, batch_size=64, warmup_steps=20,
             refit_steps=20, classifier_batch_size=64, edge_steps=300, device="cpu",
             progress=False)


MAKE_FACES = dict(n_ids=20, dim=16, seed=5)


@pytest.fixture(scope="module")
def fitted(faces):
    return SEPFL(**SMALL).fit(faces.features, faces.labels)


def test_settings_reach_both_configs():
    est = SEPFL(k=12, threshold=0.7, epochs=3, device="cpu")
    assert est.cluster_config.k == 12 and est.cluster_config.threshold == 0.7
    assert est.train_config.epochs == 3
    assert est.cluster_config.device == est.train_config.device == "cpu"
    # bf16=None: each config keeps its own default
    assert est.cluster_config.bf16 == ClusterConfig().bf16
    assert est.train_config.bf16 == TrainConfig().bf16


def test_init_stores_flat_params_unchanged_and_clone_works():
    """Issue 14, item 8: scikit-learn's contract (clone raised before)."""
    from sklearn.base import clone

    milestones = (0.3, 0.6)
    est = SEPFL(k=12, threshold=0.7, lr_milestones=milestones, device="cuda")  # no GPU probe
    params = est.get_params()
    assert params["lr_milestones"] is milestones and params["threshold"] == 0.7
    # every field of both configs is a parameter, read from the dataclasses
    fields = {f for cls in (ClusterConfig, TrainConfig) for f in cls.__dataclass_fields__}
    assert set(params) == fields
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert not hasattr(twin, "model_")
    assert SEPFL(cluster_config=ClusterConfig(k=12, device="cpu")).get_params() == \
        SEPFL(k=12, device="cpu").get_params()


def test_set_params_round_trips_and_keeps_the_model(faces, fitted):
    est = SEPFL(**SMALL)
    est.model_ = fitted.model_
    assert est.set_params(threshold=0.9, epochs=2) is est
    assert est.cluster_config.threshold == 0.9 and est.train_config.epochs == 2
    assert est.cluster_config.k == 10 and est.model_ is fitted.model_
    params = est.get_params()
    assert SEPFL(**params).get_params() == params
    # SEPFL's links are exactly the pairs with P > threshold: 1.0 links nothing (the edge
    # scheme's components would still join each sample left alone by its best edge > 0.5)
    est.set_params(threshold=1.0, scheme="sepfl")
    labels = est.predict(faces.features)
    assert len(np.unique(labels)) == len(labels)
    with pytest.raises(ValueError, match="invalid SEPFL parameter"):
        est.set_params(n_clusters=3)
    with pytest.raises(ValueError, match="threshold"):
        est.set_params(threshold=-0.1)
    assert est.threshold == 1.0  # a rejected value leaves the estimator as it was


@pytest.mark.slow
def test_grid_search_over_threshold(faces):
    """Issue 14, item 8: GridSearchCV clones, sets and fits the estimator."""
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV

    from sepfl.metrics import pairwise

    data = make_faces(24, dim=16, seed=6)
    scorer = make_scorer(lambda y, pred: pairwise(y, pred)[2])
    search = GridSearchCV(SEPFL(**SMALL), {"threshold": [0.2, 0.8]}, scoring=scorer, cv=2,
                          refit=False, error_score="raise")
    search.fit(data.features, data.labels)
    assert [p["threshold"] for p in search.cv_results_["params"]] == [0.2, 0.8]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


@pytest.mark.slow
def test_threads_are_applied_for_the_run_and_restored(faces, fitted, monkeypatch):
    """Issue 14, item 6: threads=N for the run; the default runs classifier steps on 1 thread."""
    from sepfl import estimator, train

    before = torch.get_num_threads()
    seen = []
    real_cluster = estimator.cluster
    monkeypatch.setattr(estimator, "cluster", lambda *a, **k: (
        seen.append(torch.get_num_threads()), real_cluster(*a, **k))[1])
    est = SEPFL(**{**SMALL, "threads": 3})
    est.model_ = fitted.model_
    est.predict(faces.features)
    assert seen == [3] and torch.get_num_threads() == before
    steps = []
    real_optimise = train._optimise
    monkeypatch.setattr(train, "_optimise", lambda *a, **k: (
        steps.append((a[4], torch.get_num_threads())), real_optimise(*a, **k))[1])
    torch.set_num_threads(2)
    try:
        SEPFL(**SMALL).fit(faces.features, faces.labels)
    finally:
        torch.set_num_threads(before)
    assert dict(steps) == {"classifier warm-up": 1, "epoch 1/1": 2, "classifier refit": 1,
                           "edge head": 1}


def test_fit_predict_returns_numpy_labels(faces, fitted):
    labels = fitted.predict(torch.from_numpy(faces.features))
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
    assert labels.shape == (len(faces.labels),)
    assert fitted.labels_ is labels and set(fitted.result_.timings) >= {"knn", "edges", "group"}
    np.testing.assert_array_equal(labels, fitted.predict(faces.features))


def test_save_load_round_trip(tmp_path, faces, fitted):
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = SEPFL.load(path, progress=False)
    assert loaded.cluster_config == fitted.cluster_config
    np.testing.assert_array_equal(loaded.predict(faces.features), fitted.predict(faces.features))
    assert SEPFL.load(path, threshold=1.0).cluster_config.threshold == 1.0
    assert SEPFL.load(path, progress=False).get_params() == fitted.get_params()


def test_load_leaves_progress_and_threads_to_the_caller(tmp_path, fitted):
    # fitted was trained and saved with progress=False: a later run still shows its bars
    path = tmp_path / "model.pt"
    fitted.set_params(threads=1).save(path)
    try:
        params = SEPFL.load(path).get_params()
    finally:
        fitted.set_params(threads=None)
    assert params["progress"] is True and params["threads"] is None
    assert params["edge_steps"] == fitted.get_params()["edge_steps"] == 300
    assert SEPFL.load(path, threads=2).cluster_config.threads == 2


def test_model_saved_for_cuda_loads_on_a_cpu_machine(tmp_path, faces, fitted):
    """Issue 14, item 8: the stored device is checked when used, after the override."""
    est = SEPFL(**{**SMALL, "device": "cuda"})
    est.model_ = fitted.model_
    est.save(tmp_path / "gpu.pt")
    loaded = SEPFL.load(tmp_path / "gpu.pt", device="cpu")
    assert loaded.cluster_config.device == "cpu"
    assert loaded.predict(faces.features).shape == (len(faces.labels),)
    if not sepfl.has_cuda():
        with pytest.raises(ValueError, match="cuda"):
            SEPFL.load(tmp_path / "gpu.pt").predict(faces.features)


def test_authors_state_dict_loads(tmp_path, faces):
    torch.manual_seed(1)
    path = tmp_path / "authors.pth"
    torch.save(PairClassifier(16, 10).state_dict(), path)
    est = SEPFL.load(path, device="cpu", progress=False)
    assert est.cluster_config.k == 10
    assert est.predict(faces.features).shape == (len(faces.labels),)


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
