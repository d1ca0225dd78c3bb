"""The clustering pipeline end to end on small synthetic sets (random-weight networks)."""
import numpy as np
import pytest
import torch

from sepfl import baselines, ops
from sepfl.cluster import cluster
from sepfl.config import ClusterConfig
from sepfl.knn import build_knn
from sepfl.model import PairClassifier

K = 10


MAKE_FACES = dict(n_ids=25, dim=16, seed=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PairClassifier(16, K).eval()


def run(features, model, **settings):
    return cluster(features, model, ClusterConfig(k=K, device="cpu", progress=False, **settings))


def test_pipeline_outputs_are_consistent(faces, model):
    result = run(faces.features, model)
    n = len(faces.labels)
    assert result.labels.shape == (n,) and result.labels.dtype == np.int64
    assert list(result.timings) == ["normalize", "knn", "density", "embeddings", "pairs",
                                    "scores", "link"]
    # labels are exactly the components of the accepted pairs, numbered by smallest member
    np.testing.assert_array_equal(
        result.labels, ops.link(result.src, result.dst, result.scores, 0.5, n))
    first = np.unique(result.labels, return_index=True)[1]
    assert np.all(np.diff(first) > 0)
    assert len(result.src) < n and np.all(result.density[result.dst] > result.density[result.src])
    assert np.all((result.scores >= 0) & (result.scores <= 1))


def test_pipeline_is_deterministic_and_accepts_tensors(faces, model):
    a = run(faces.features, model)
    b = run(torch.from_numpy(faces.features), model)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_precomputed_knn_gives_the_same_labels(faces, model):
    knn = build_knn(faces.features, k=K, progress=False)
    given = cluster(faces.features, model, ClusterConfig(k=K, device="cpu", progress=False),
                    knn=knn)
    np.testing.assert_array_equal(given.labels, run(faces.features, model).labels)


def test_threshold_extremes(faces, model):
    assert run(faces.features, model, threshold=1.0).num_clusters == len(faces.labels)
    everything = run(faces.features, model, threshold=0.0)
    # with every pair linked, only local density peaks start clusters
    peaks = len(faces.labels) - len(everything.src)
    assert everything.num_clusters == peaks


def test_unnormalised_features_warn_and_still_cluster(faces, model):
    with pytest.warns(UserWarning, match="not unit length"):
        scaled = run(faces.features * 3.0, model)
    np.testing.assert_array_equal(scaled.labels, run(faces.features, model).labels)


def test_oracle_on_pairs_beats_nothing(faces):
    knn = build_knn(faces.features, k=K, progress=False)
    from sepfl.metrics import pairwise
    precision, _, _ = pairwise(faces.labels, baselines.oracle(*knn, faces.labels))
    assert precision == 1.0


def test_knn_with_missing_slots_clusters(faces, model):
    nbrs, sims = build_knn(faces.features, k=K, progress=False)
    nbrs, sims = nbrs.copy(), sims.copy()
    nbrs[::3, -4:], sims[::3, -4:] = -1, -1.0  # what an approximate faiss index leaves empty
    result = cluster(faces.features, model, ClusterConfig(k=K, device="cpu", progress=False),
                     knn=(nbrs, sims))
    assert result.src.min() >= 0 and result.dst.min() >= 0
    np.testing.assert_array_equal(
        result.labels, ops.link(result.src, result.dst, result.scores, 0.5, len(nbrs)))


def test_knn_exact_false_uses_the_approximate_index(faces, model, caplog):
    pytest.importorskip("faiss")
    with caplog.at_level("INFO", logger="sepfl"):
        result = run(faces.features, model, knn_backend="faiss", knn_exact=False)
    assert any("estimated recall" in r.getMessage() for r in caplog.records)
    assert result.labels.shape == faces.labels.shape
