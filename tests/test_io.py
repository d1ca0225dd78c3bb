import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samples import unit_rows
from sepfl import io
from sepfl.features import fingerprint
from sepfl.io import (atomic_write, learn_to_cluster_paths, read_dataset, read_features, read_knn,
                      read_labels, write_features, write_knn, write_labels)


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert leftovers(target.parent) == []


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_write_reports_the_write_error_not_the_clean_up(tmp_path, monkeypatch):
    """Issue 14, item 5: in a read-only folder the clean-up fails too; one error, the first."""
    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(io.Path, "unlink", refuse)
    with pytest.raises(PermissionError) as caught:
        with atomic_write(tmp_path / "out.txt") as tmp:
            raise PermissionError(13, "Permission denied", str(tmp))
    assert caught.value.__context__ is None


def test_failed_writer_leaves_nothing(tmp_path, monkeypatch):
    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "savez", broken)
    target = tmp_path / "g.npz"
    with pytest.raises(OSError, match="disk full"):
        write_knn(target, np.array([[0, 1], [1, 0]]), np.ones((2, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("suffix", [".bin", ".npy", ".npz"])
@pytest.mark.parametrize("mmap", [None, True, False])
def test_features_round_trip(tmp_path, suffix, mmap):
    x = np.random.default_rng(1).standard_normal((13, 6)).astype(np.float32)
    path = tmp_path / f"f{suffix}"
    write_features(path, x)
    out = read_features(path, mmap=mmap)
    assert out.dtype == np.float32 and out.shape == (13, 6)
    np.testing.assert_array_equal(out, x)
    if suffix == ".bin":
        assert json.loads((tmp_path / "f.bin.json").read_text()) == {"dim": 6, "count": 13}
    if mmap and suffix != ".npz":
        assert isinstance(out, np.memmap) or isinstance(out.base, np.memmap)


def test_features_from_torch_and_float64(tmp_path):
    write_features(tmp_path / "t.npy", torch.ones(3, 2, dtype=torch.float64))
    out = read_features(tmp_path / "t.npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.ones((3, 2)))
    np.save(tmp_path / "d.npy", np.full((2, 2), 0.5))
    assert read_features(tmp_path / "d.npy").dtype == np.float32


def test_bin_without_sidecar_reads_with_dim(tmp_path):
    path = tmp_path / "raw.bin"
    np.arange(12, dtype=np.float32).tofile(path)
    np.testing.assert_array_equal(read_features(path, dim=4), np.arange(12).reshape(3, 4))


def test_npz_single_unnamed_array(tmp_path):
    np.savez(tmp_path / "one.npz", np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(read_features(tmp_path / "one.npz"), np.ones((2, 3)))


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("suffix", [".meta", ".txt", ".csv", ".npy"])
def test_labels_remapped_round_trip(tmp_path, suffix):
    raw = np.array([10, 3, 10, 7, -2])
    write_labels(tmp_path / f"l{suffix}", raw)
    labels, classes = read_labels(tmp_path / f"l{suffix}")
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [3, 1, 3, 2, 0])
    np.testing.assert_array_equal(classes, [-2, 3, 7, 10])
    np.testing.assert_array_equal(classes[labels], raw)


@pytest.mark.parametrize("suffix", [".meta", ".csv", ".npy"])
def test_string_labels(tmp_path, suffix):
    raw = np.array(["bob", "alice", "bob", "n01"])
    write_labels(tmp_path / f"l{suffix}", raw)
    labels, classes = read_labels(tmp_path / f"l{suffix}")
    np.testing.assert_array_equal(labels, [1, 0, 1, 2])
    assert classes.tolist() == ["alice", "bob", "n01"]


def test_text_labels_tolerate_spaces_and_trailing_blank_lines(tmp_path):
    (tmp_path / "l.meta").write_text(" 5\n2 \r\n5\n\n\n")
    labels, classes = read_labels(tmp_path / "l.meta")
    np.testing.assert_array_equal(labels, [1, 0, 1])
    np.testing.assert_array_equal(classes, [2, 5])


@pytest.mark.parametrize("value", ["", " padded", "two\nlines", "a,b"])
def test_write_labels_refuses_unreadable_strings(tmp_path, value):
    with pytest.raises(ValueError, match="cannot be written one per line"):
        write_labels(tmp_path / "l.csv", np.array(["ok", value]))
    assert not (tmp_path / "l.csv").exists()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-2**40, 2**40), min_size=0, max_size=30) |
       st.lists(st.text(alphabet="abcxyz_-", min_size=1, max_size=6), min_size=1, max_size=30))
def test_labels_round_trip_property(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("labels") / "l.meta"
    write_labels(path, raw)
    labels, classes = read_labels(path)
    assert len(labels) == len(raw)
    assert [str(c) for c in classes[labels].tolist()] == [str(r) for r in raw]
    assert labels.max(initial=-1) == len(set(raw)) - 1


# --------------------------------------------------------------------------- kNN files


def small_graph():
    nbrs = np.array([[0, 1, 2], [1, 0, 2], [2, 1, -1]])
    sims = np.array([[1.0, 0.5, -0.25], [1.0, 0.5, 0.125], [1.0, 0.125, -1.0]], np.float32)
    return nbrs, sims


def test_sepfl_knn_round_trip(tmp_path):
    nbrs, sims = small_graph()
    features = unit_rows(3, 4)
    write_knn(tmp_path / "g.npz", nbrs, sims, features=features, meta={"exact": True})
    graph = read_knn(tmp_path / "g.npz")
    assert graph.nbrs.dtype == np.int64 and graph.sims.dtype == np.float32
    np.testing.assert_array_equal(graph.nbrs, nbrs)
    np.testing.assert_array_equal(graph.sims, sims)
    assert graph.fingerprint == fingerprint(features)
    assert graph.meta == {"exact": True}
    with np.load(tmp_path / "g.npz") as stored:
        assert stored["nbrs"].dtype == np.int32


def test_learn_to_cluster_round_trip(tmp_path):
    nbrs, sims = small_graph()
    write_knn(tmp_path / "faiss_k_3.npz", nbrs, sims, layout="learn-to-cluster")
    with np.load(tmp_path / "faiss_k_3.npz") as stored:
        data = stored["data"]
    assert data.shape == (3, 2, 3)
    np.testing.assert_array_equal(data[:, 0], nbrs)
    np.testing.assert_allclose(data[:, 1], [[0, 0.5, 1], [0, 0.5, 0.875], [0, 0.875, 1]])
    graph = read_knn(tmp_path / "faiss_k_3.npz")
    np.testing.assert_array_equal(graph.nbrs, nbrs)
    # Negative similarities are clipped to 0 by the format; the empty slot stays -1.0.
    np.testing.assert_allclose(graph.sims, [[1, 0.5, 0], [1, 0.5, 0.125], [1, 0.125, -1]],
                               atol=1e-7)
    assert graph.fingerprint is None and graph.meta == {}


def test_learn_to_cluster_missing_entries(tmp_path, caplog):
    data = np.array([[[0, 1, -1], [0.0, 0.2, 1.0]],
                     [[1, np.nan, 0], [0.0, 0.3, np.nan]]], dtype=np.float64)
    np.savez_compressed(tmp_path / "k.npz", data=data)
    with caplog.at_level(logging.WARNING, logger="sepfl"):
        graph = read_knn(tmp_path / "k.npz")
    np.testing.assert_array_equal(graph.nbrs, [[0, 1, -1], [1, -1, -1]])
    np.testing.assert_allclose(graph.sims, [[1, 0.8, -1], [1, -1, -1]])
    assert "1 neighbour(s) have a NaN distance" in caplog.text


def test_write_knn_checks(tmp_path):
    nbrs, sims = small_graph()
    with pytest.raises(IndexError, match="index 3 outside"):
        write_knn(tmp_path / "g.npz", nbrs + 1, sims)
    with pytest.raises(ValueError, match="NaN or inf"):
        write_knn(tmp_path / "g.npz", nbrs, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"sims must have shape \(3, 3\)"):
        write_knn(tmp_path / "g.npz", nbrs, sims[:, :2])
    with pytest.raises(ValueError, match="features has 4 rows but the graph has 3"):
        write_knn(tmp_path / "g.npz", nbrs, sims, features=unit_rows(4, 2))
    with pytest.raises(ValueError, match="stores no fingerprint"):
        write_knn(tmp_path / "g.npz", nbrs, sims, features=unit_rows(3, 2),
                  layout="learn-to-cluster")
    with pytest.raises(ValueError, match="layout must be one of"):
        write_knn(tmp_path / "g.npz", nbrs, sims, layout="faiss")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- datasets


def write_set(root, n=6, d=4):
    features = unit_rows(n, d)
    nbrs = np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1)
    sims = np.stack([np.ones(n), (features * features[nbrs[:, 1]]).sum(1)], axis=1)
    paths = learn_to_cluster_paths(root, "part", k=2)
    write_features(paths[0], features)
    write_labels(paths[1], np.arange(n) % 3)
    write_knn(paths[2], nbrs, sims, layout="learn-to-cluster")
    return features, paths


def test_learn_to_cluster_paths(tmp_path):
    assert learn_to_cluster_paths(tmp_path, "part1_test") == (
        tmp_path / "features" / "part1_test.bin", tmp_path / "labels" / "part1_test.meta",
        tmp_path / "knns" / "part1_test" / "faiss_k_80.npz")


def test_read_dataset(tmp_path):
    features, paths = write_set(tmp_path)
    data = read_dataset(*paths)
    np.testing.assert_array_equal(data.features, features)
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(data.classes, [0, 1, 2])
    np.testing.assert_array_equal(data.nbrs[:, 1], [1, 2, 3, 4, 5, 0])
    assert read_dataset(paths[0]).labels is None


def test_read_dataset_accepts_the_graph_of_its_features(tmp_path):
    features, paths = write_set(tmp_path)
    graph = tmp_path / "g.npz"
    nbrs = np.stack([np.arange(6), (np.arange(6) + 1) % 6], axis=1)
    write_knn(graph, nbrs, np.ones((6, 2), np.float32), features=features)
    assert read_dataset(paths[0], knn_path=graph).nbrs.shape == (6, 2)


def test_verify_knn_accepts_the_features_of_the_graph(tmp_path):
    """Issue 14, item 2: the same rows pass, scaled or not (other features: test_bad_input.py)."""
    from sepfl.knn import build_knn

    x = unit_rows(300, 8, seed=3)
    nbrs, sims = build_knn(x, k=10, backend="torch", progress=False)
    write_knn(tmp_path / "l2c.npz", nbrs, sims, layout="learn-to-cluster")
    graph = read_knn(tmp_path / "l2c.npz")
    io.verify_knn(graph, x)
    io.verify_knn(graph, 3.0 * x)  # scaled rows: the same features once normalised
    write_knn(tmp_path / "own.npz", nbrs, sims, features=3.0 * x)
    io.verify_knn(read_knn(tmp_path / "own.npz"), 3.0 * x)


def test_csv_header_line_is_not_a_label(tmp_path):
    """Issue 14, item 10: a header row above integer labels is skipped."""
    (tmp_path / "y.csv").write_text("identity\n4\n7\n4\n")
    labels, classes = read_labels(tmp_path / "y.csv")
    np.testing.assert_array_equal(labels, [0, 1, 0])
    np.testing.assert_array_equal(classes, [4, 7])
    (tmp_path / "names.csv").write_text("ann\nbob\n")
    assert len(read_labels(tmp_path / "names.csv")[0]) == 2  # string labels: nothing to tell


@pytest.mark.parametrize("value", [np.nan, 0.0])
def test_read_dataset_keeps_bad_rows_without_normalize(tmp_path, value):
    x = unit_rows(4, 3)
    x[2] = value
    write_features(tmp_path / "f.npy", x)
    assert read_dataset(tmp_path / "f.npy", normalize=False).features.shape == (4, 3)


def test_read_dataset_normalises_with_warning(tmp_path):
    write_features(tmp_path / "f.npy", np.array([[3.0, 4.0], [0.0, 1.0]]))
    with pytest.warns(UserWarning, match="1 of 2"):
        data = read_dataset(tmp_path / "f.npy")
    np.testing.assert_allclose(data.features, [[0.6, 0.8], [0.0, 1.0]])
