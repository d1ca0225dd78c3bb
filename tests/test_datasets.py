import numpy as np
import pytest

from sepfl import ops
from sepfl.datasets import (FaceModel, make_faces, make_splits, random_models,
                            write_learn_to_cluster)
from sepfl.io import Dataset, read_dataset
from sepfl.knn import build_knn
from sepfl.metrics import pairwise


MAKE_FACES = dict(n_ids=120, dim=64, seed=3)


def test_shapes_dtypes_and_unit_rows(faces):
    x, labels = faces.features, faces.labels
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 64
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.unique(labels), np.arange(120))
    np.testing.assert_array_equal(faces.classes, np.arange(120))
    assert np.bincount(labels).min() >= 2


def test_seeded():
    a, b = make_faces(20, dim=16, seed=7), make_faces(20, dim=16, seed=7)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = make_faces(20, dim=16, seed=8)
    assert a.features.shape != c.features.shape or not np.array_equal(a.features, c.features)


def test_samples_are_shuffled(faces):
    first = faces.labels[:50]
    assert len(np.unique(first)) > 20  # not grouped by identity


def test_sizes_are_long_tailed():
    sizes = np.bincount(make_faces(3000, dim=8, seed=1).labels)
    assert 60 <= sizes.mean() <= 70  # MS1M part0_train: ~67 per identity
    assert sizes.max() > 4 * sizes.mean()
    assert np.median(sizes) < sizes.mean()


def centroid_cosines(data):
    sums = np.zeros((data.labels.max() + 1, data.features.shape[1]))
    np.add.at(sums, data.labels, data.features)
    unit = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -1)
    return cos


def test_lookalikes_are_hard_negatives():
    plain = make_faces(300, dim=256, seed=2, model=FaceModel(lookalike=0.0, nuisance=0.0))
    twins = make_faces(300, dim=256, seed=2, model=FaceModel(lookalike=0.5, nuisance=0.0))
    # Random centres in 256-d are nearly orthogonal; look-alikes sit at cosine 0.45-0.8.
    assert centroid_cosines(plain).max() < 0.35
    share = (centroid_cosines(twins).max(axis=1) > 0.4).mean()
    assert 0.4 <= share <= 0.9  # look-alikes and the identities they copy


def test_spread_varies_per_identity():
    data = make_faces(200, dim=256, seed=4, model=FaceModel(hard=0, outliers=0, nuisance=0))
    sums = np.zeros((200, 256))
    np.add.at(sums, data.labels, data.features)
    centre = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    to_centre = np.einsum("nd,nd->n", data.features, centre[data.labels])
    mean_cos = np.bincount(data.labels, to_centre) / np.bincount(data.labels)
    assert mean_cos.max() - mean_cos.min() > 0.15


def test_outliers_are_far_from_their_identity():
    model = FaceModel(hard=0.0, outliers=0.5, nuisance=0.0, spread_sigma=0.0, lookalike=0.0)
    data = make_faces(100, dim=256, seed=5, model=model)
    sums = np.zeros((100, 256))
    np.add.at(sums, data.labels, data.features)
    centre = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    to_centre = np.einsum("nd,nd->n", data.features, centre[data.labels])
    # Two populations: regular samples (cos ~ 0.7) and outliers (cos ~ 0.25).
    assert 0.4 <= (to_centre < 0.45).mean() <= 0.6


def test_splits_have_disjoint_identities():
    splits = make_splits(n_train_ids=80, n_test_ids=50, dim=64, seed=1)
    assert isinstance(splits.train, Dataset) and isinstance(splits.test, Dataset)
    np.testing.assert_array_equal(np.unique(splits.train.labels), np.arange(80))
    np.testing.assert_array_equal(np.unique(splits.test.labels), np.arange(50))
    both = Dataset(np.concatenate([splits.train.features, splits.test.features]),
                   np.concatenate([splits.train.labels, splits.test.labels + 80]))
    cos = centroid_cosines(both)
    assert cos[:80, 80:].max() < 0.95  # no test identity duplicates a train identity


@pytest.mark.parametrize("kwargs, match", [
    ({"hard": 0.7, "outliers": 0.4}, "hard \\+ outliers must be <= 1"),
    ({"lookalike_cos": (0.8, 0.4)}, "low <= high"),
    ({"spread": 0.0}, "spread > 0"),
    ({"mean_size": 2}, "mean_size > 2"),
    ({"nuisance": -1.0}, "non-negative"),
    ({"lookalike": 1.5}, "lookalike must be in \\[0, 1\\]"),
])
def test_bad_model(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FaceModel(**kwargs)


def test_random_models_are_seeded_and_vary_every_structure():
    models = random_models(12, seed=4)
    assert models == random_models(12, seed=4) and models != random_models(12, seed=5)
    for name in ("lookalike", "modes", "spread", "spread_sigma", "mean_size", "outliers"):
        assert len({getattr(m, name) for m in models}) > 1, name
    assert any(m.modes == 0 for m in models) and any(m.modes > 0 for m in models)


def test_hard_random_models_all_carry_look_alikes_and_far_sub_modes():
    models = random_models(12, seed=4, hard=True)
    assert models == random_models(12, seed=4, hard=True) and models != random_models(12, seed=4)
    for name in ("lookalike", "modes", "mode_cos", "spread", "mean_size"):
        assert len({getattr(m, name) for m in models}) > 1, name
    assert all(0.4 <= m.lookalike <= 0.8 and 1.0 <= m.modes <= 2.0 and m.mode_cos <= 0.8
               and m.lookalike_cos[0] >= 0.55 for m in models)
    # the plain draws include models without sub-modes or with few look-alikes; hard ones do not
    plain = random_models(12, seed=4)
    assert min(m.modes for m in plain) == 0 and min(m.lookalike for m in plain) < 0.4


def test_mixed_splits_give_each_model_its_own_identities():
    models = [FaceModel(mean_size=5, size_sigma=0.0), FaceModel(mean_size=40, size_sigma=0.0)]
    splits = make_splits(10, 6, dim=16, seed=2, model=models)
    for side, n_ids in ((splits.train, 10), (splits.test, 6)):
        np.testing.assert_array_equal(np.unique(side.labels), np.arange(n_ids))
        np.testing.assert_array_equal(side.classes, np.arange(n_ids))
        np.testing.assert_allclose(np.linalg.norm(side.features, axis=1), 1.0, atol=1e-5)
        sizes = np.bincount(side.labels)
        # half the identities of each split from each model, the small ones first
        assert set(sizes[:n_ids // 2]) == {5} and set(sizes[n_ids // 2:]) == {40}
        assert len(np.unique(side.labels[:10])) > 1  # the parts are shuffled together
    again = make_splits(10, 6, dim=16, seed=2, model=models)
    np.testing.assert_array_equal(splits.test.features, again.test.features)
    with pytest.raises(ValueError, match="models"):
        make_splits(2, 2, dim=16, model=[FaceModel()] * 3)


def test_bad_sizes():
    with pytest.raises(ValueError, match="n_ids must be >= 1"):
        make_faces(0)
    with pytest.raises(TypeError, match="dim must be an integer"):
        make_faces(5, dim=2.5)


def test_write_learn_to_cluster_round_trip(tmp_path):
    data = make_faces(15, dim=32, seed=6)
    paths = write_learn_to_cluster(data, tmp_path, "part0_train", k=10)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "features/part0_train.bin", "labels/part0_train.meta", "knns/part0_train/faiss_k_10.npz"]
    read = read_dataset(*paths)
    np.testing.assert_array_equal(read.features, data.features)
    np.testing.assert_array_equal(read.classes[read.labels], data.labels)
    nbrs, sims = build_knn(data.features, k=10)
    np.testing.assert_array_equal(read.nbrs[:, 0], np.arange(len(nbrs)))
    np.testing.assert_allclose(read.sims, np.clip(sims, 0, 1), atol=1e-6)
    # The raw .bin needs no sidecar when dim is given, as with the public release.
    (paths[0].parent / "part0_train.bin.json").unlink()
    np.testing.assert_array_equal(read_dataset(paths[0], dim=32).features, data.features)


def test_write_learn_to_cluster_uses_given_graph(tmp_path):
    data = make_faces(6, dim=8, seed=0)
    data.nbrs, data.sims = build_knn(data.features, k=4)
    with pytest.raises(ValueError, match="4 neighbours per row, not k=80"):
        write_learn_to_cluster(data, tmp_path, "x")
    paths = write_learn_to_cluster(data, tmp_path, "x", k=4)
    np.testing.assert_array_equal(read_dataset(*paths).nbrs, data.nbrs)
    with pytest.raises(ValueError, match="needs labels"):
        write_learn_to_cluster(Dataset(data.features), tmp_path, "y")


def test_calibrated_difficulty():
    """The defaults must stay hard for a threshold, yet leave SEPFL's pairs a high ceiling.

    A small version of benchmarks/calibrate_synth.py (see the numbers in sepfl.datasets).
    """
    data = make_faces(200, seed=0)
    nbrs, sims = build_knn(data.features, k=80, progress=False)
    n = len(data.labels)
    naive = 0.0
    for threshold in np.arange(0.40, 0.70, 0.02):
        rows, cols = np.nonzero(sims[:, 1:] >= threshold)
        pred = ops.connected_components(rows, nbrs[rows, cols + 1], n)
        naive = max(naive, pairwise(data.labels, pred)[2])
    src, dst = ops.select_pairs(nbrs, ops.density(sims))
    same = data.labels[src] == data.labels[dst]
    oracle = pairwise(data.labels, ops.connected_components(src[same], dst[same], n))[2]
    assert naive < 0.75, f"naive threshold baseline too good: F_P {naive:.3f}"
    assert oracle > 0.8, f"nearest-denser oracle too weak: F_P {oracle:.3f}"
    assert oracle - naive > 0.15
