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


def test_bin_without_sidecar_needs_dim(tmp_path):
    path = tmp_path / "raw.bin"
    np.arange(12, dtype=np.float32).tofile(path)
    with pytest.raises(ValueError, 
                       match=r"raw\.bin: a \.bin file has no header; give its feature width \(--dim"):
        read_features(path)
    np.testing.assert_array_equal(read_features(path, dim=4), np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match=r"raw\.bin: 48 bytes is not a whole number of float32 "
                                         r"rows of dim 5"):
        read_features(path, dim=5)


def test_bin_dim_must_agree_with_sidecar(tmp_path):
    path = tmp_path / "f.bin"
    write_features(path, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dim 2 \(--dim\) disagrees with f\.bin\.json, which says dim=4"):
        read_features(path, dim=2)
    np.zeros(4, np.float32).tofile(path)  # the file shrank behind the sidecar's back
    with pytest.raises(ValueError, match="holds 1 rows of dim 4 but f.bin.json says 2"):
        read_features(path)


def test_npy_dim_checked(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"f\.npy: holds features of dim 4, not 3 \(--dim\)"):
        read_features(tmp_path / "f.npy", dim=3)


def test_read_features_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_features(tmp_path / "missing.npy")
    (tmp_path / "f.txt").write_text("1 2\n")
    with pytest.raises(ValueError, match=r"unknown feature format '\.txt'"):
        read_features(tmp_path / "f.txt")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match=r"junk\.npy: not a readable \.npy file"):
        read_features(tmp_path / "junk.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz file"):
        read_features(tmp_path / "junk.npz")
    np.savez(tmp_path / "zip.npy", features=np.zeros((2, 2), np.float32))
    (tmp_path / "zip.npy.npz").rename(tmp_path / "zip.npy")
    with pytest.raises(ValueError, match=r"zip\.npy: an \.npz archive, not a single \.npy"):
        read_features(tmp_path / "zip.npy")
    np.save(tmp_path / "ints.npy", np.zeros((2, 2), np.int32))
    with pytest.raises(TypeError, match=r"ints\.npy: features must be floating point"):
        read_features(tmp_path / "ints.npy")
    np.save(tmp_path / "flat.npy", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy: features must be 2-D"):
        read_features(tmp_path / "flat.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 1)), b=np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"expected an array named 'features' or a single array"):
        read_features(tmp_path / "two.npz")


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


@pytest.mark.parametrize("name, text, error, match", [
    ("gap.meta", "1\n\n2\n", ValueError, r"gap\.meta: line 2 is empty"),
    ("wide.csv", "img1.jpg,4\n", ValueError, r"wide\.csv: line 1 has several columns"),
])
def test_bad_label_text(tmp_path, name, text, error, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(error, match=match):
        read_labels(tmp_path / name)


def test_bad_label_arrays(tmp_path):
    np.save(tmp_path / "f.npy", np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"f\.npy: labels must be integers or strings"):
        read_labels(tmp_path / "f.npy")
    np.save(tmp_path / "m.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"m\.npy: labels must be 1-D"):
        read_labels(tmp_path / "m.npy")
    with pytest.raises(FileNotFoundError, match="nope.meta"):
        read_labels(tmp_path / "nope.meta")
    with pytest.raises(ValueError, match=r"unknown label format '\.json'"):
        write_labels(tmp_path / "l.json", [1])


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


@pytest.mark.parametrize("data, match", [
    (np.zeros((2, 3)), r"must have shape \(N, 2, k\)"),
    (np.array([[[0, 5]], [[0.0, 0.1]]]).reshape(1, 2, 2), r"integers in \[0, 1\) or -1"),
    (np.array([[[0, 0.5], [0, 0]], [[1, 0], [0, 0]]]), r"integers in \[0, 2\) or -1"),
])
def test_corrupt_learn_to_cluster(tmp_path, data, match):
    np.savez(tmp_path / "k.npz", data=data)
    with pytest.raises(ValueError, match=match):
        read_knn(tmp_path / "k.npz")


def test_corrupt_knn_files(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not a kNN file"):
        read_knn(tmp_path / "other.npz")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npy: not a readable \.npz file"):
        read_knn(tmp_path / "plain.npy")
    np.savez(tmp_path / "bad.npz", sepfl_knn=1, nbrs=np.array([[0, 7]]), sims=np.ones((1, 2)),
             fingerprint="", meta="{}")
    with pytest.raises(ValueError, match=r"bad\.npz: corrupt sepfl kNN file"):
        read_knn(tmp_path / "bad.npz")
    np.savez(tmp_path / "nometa.npz", sepfl_knn=1, nbrs=np.zeros((1, 1)), sims=np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"nometa\.npz: corrupt sepfl kNN file"):
        read_knn(tmp_path / "nometa.npz")
    with pytest.raises(FileNotFoundError, match="gone.npz"):
        read_knn(tmp_path / "gone.npz")


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


def test_read_dataset_count_mismatch(tmp_path):
    _, paths = write_set(tmp_path)
    write_labels(paths[1], [0, 1, 2])
    with pytest.raises(ValueError, match=r"part\.meta has 3 labels but .*part\.bin has 6"):
        read_dataset(paths[0], paths[1])
    short = tmp_path / "short.npz"
    write_knn(short, np.array([[0, 1], [1, 0]]), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"short\.npz: the kNN graph has 2 rows but the features have 6"):
        read_dataset(paths[0], knn_path=short)


def test_read_dataset_fingerprint_mismatch(tmp_path):
    features, paths = write_set(tmp_path)
    graph = tmp_path / "g.npz"
    nbrs = np.stack([np.arange(6), (np.arange(6) + 1) % 6], axis=1)
    write_knn(graph, nbrs, np.ones((6, 2), np.float32), features=features)
    assert read_dataset(paths[0], knn_path=graph).nbrs.shape == (6, 2)
    write_knn(graph, nbrs, np.ones((6, 2), np.float32), features=unit_rows(6, 4, seed=9))
    with pytest.raises(ValueError, match=r"g\.npz: the kNN graph was built from other features .*part\.bin"):
        read_dataset(paths[0], knn_path=graph)


def test_verify_knn_refuses_a_graph_of_other_features(tmp_path):
    """Issue 14, item 2: a learn-to-cluster graph of the same N but shuffled rows."""
    from sepfl.knn import build_knn

    x = unit_rows(300, 8, seed=3)
    nbrs, sims = build_knn(x, k=10, backend="torch", progress=False)
    write_knn(tmp_path / "l2c.npz", nbrs, sims, layout="learn-to-cluster")
    graph = read_knn(tmp_path / "l2c.npz")
    io.verify_knn(graph, x)
    io.verify_knn(graph, 3.0 * x)  # scaled rows: the same features once normalised
    shuffled = x[np.random.default_rng(0).permutation(len(x))]
    with pytest.raises(ValueError, match="built from other features: .* sampled rows"):
        io.verify_knn(graph, shuffled)
    write_knn(tmp_path / "own.npz", nbrs, sims, features=3.0 * x)
    io.verify_knn(read_knn(tmp_path / "own.npz"), 3.0 * x)
    with pytest.raises(ValueError, match="fingerprint differs"):
        io.verify_knn(read_knn(tmp_path / "own.npz"), shuffled)


def test_csv_header_line_is_not_a_label(tmp_path):
    """Issue 14, item 10: a header row above integer labels is skipped."""
    (tmp_path / "y.csv").write_text("identity\n4\n7\n4\n")
    labels, classes = read_labels(tmp_path / "y.csv")
    np.testing.assert_array_equal(labels, [0, 1, 0])
    np.testing.assert_array_equal(classes, [4, 7])
    (tmp_path / "names.csv").write_text("ann\nbob\n")
    assert len(read_labels(tmp_path / "names.csv")[0]) == 2  # string labels: nothing to tell


@pytest.mark.parametrize("value, match", [(np.nan, r"rows \[2\] .* hold NaN or inf"),
                                          (0.0, r"rows \[2\] .* are all zero")])
def test_read_dataset_bad_rows(tmp_path, value, match):
    x = unit_rows(4, 3)
    x[2] = value
    write_features(tmp_path / "f.npy", x)
    with pytest.raises(ValueError, match=r"f\.npy: .*" + match):
        read_dataset(tmp_path / "f.npy")
    assert read_dataset(tmp_path / "f.npy", normalize=False).features.shape == (4, 3)


def test_read_dataset_normalises_with_warning(tmp_path):
    write_features(tmp_path / "f.npy", np.array([[3.0, 4.0], [0.0, 1.0]]))
    with pytest.warns(UserWarning, match="1 of 2"):
        data = read_dataset(tmp_path / "f.npy")
    np.testing.assert_allclose(data.features, [[0.6, 0.8], [0.0, 1.0]])
