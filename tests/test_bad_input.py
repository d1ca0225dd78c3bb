"""The bad-input contract of the public surface, in one table.

Each row feeds one bad input to the Python API, the file readers, the
pipeline or the CLI and names the exception and the words its message must
contain. (Direct calls of the native module are in test_native_crash.py,
each in a child process; the ops' own table is in test_ops.py.)
"""
import numpy as np
import pytest
import torch

import sepfl
from sepfl import SEPFL, io, ops
from sepfl.checkpoint import load_checkpoint
from sepfl.cli import main
from sepfl.cluster import cluster
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.datasets import make_faces
from sepfl.estimator import NotFittedError
from sepfl.knn import build_knn
from sepfl.metrics import evaluate
from sepfl.model import PairClassifier

FACES = make_faces(12, dim=16, seed=11)
X, Y = FACES.features, FACES.labels
MODEL = PairClassifier(16, 10).eval()
CPU = dict(device="cpu", progress=False)


def with_value(value, row=2):
    bad = X.copy()
    bad[row] = value
    return bad


def files(tmp_path):
    """A few valid and damaged files to read."""
    io.write_features(tmp_path / "x.npy", X)
    io.write_features(tmp_path / "x.bin", X)
    io.write_labels(tmp_path / "y.meta", Y)
    io.write_labels(tmp_path / "short.meta", Y[:-3])
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:200])
    (tmp_path / "odd.bin").write_bytes(b"\0" * 10)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save(PairClassifier(16, 10).state_dict(), tmp_path / "model.pt")
    torch.save(PairClassifier(8, 10).state_dict(), tmp_path / "model_d8.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:300])
    return tmp_path


CASES = [
    # data
    ("NaN feature row", lambda p: cluster(with_value(np.nan), MODEL, ClusterConfig(k=10, **CPU)),
     ValueError, "NaN"),
    ("inf feature row", lambda p: build_knn(with_value(np.inf), k=5), ValueError, "inf"),
    ("all-zero row", lambda p: build_knn(with_value(0.0), k=5), ValueError, "zero"),
    ("integer features", lambda p: build_knn(X.astype(np.int32), k=5), TypeError, "floating"),
    ("1-d features", lambda p: build_knn(X[0], k=5), ValueError, "dimension"),
    ("empty features", lambda p: build_knn(X[:0], k=5), ValueError, "k"),
    ("k >= N", lambda p: build_knn(X[:10], k=10), ValueError, "k"),
    ("k < 2", lambda p: build_knn(X, k=1), ValueError, "k"),
    ("test set smaller than k",
     lambda p: cluster(X[:8], MODEL, ClusterConfig(k=10, **CPU)), ValueError, "k"),
    ("features of another D", lambda p: cluster(X[:, :8], MODEL, ClusterConfig(k=10, **CPU)),
     ValueError, "D = 8"),
    ("kNN table of the wrong shape",
     lambda p: cluster(X, MODEL, ClusterConfig(k=10, **CPU),
                       knn=(np.zeros((len(X), 5), np.int64), np.zeros((len(X), 5), np.float32))),
     ValueError, "knn table"),
    ("kNN index out of range",
     lambda p: cluster(X, MODEL, ClusterConfig(k=10, **CPU),
                       knn=(np.full((len(X), 10), len(X)), np.ones((len(X), 10), np.float32))),
     IndexError, "outside"),
    # files
    ("missing file", lambda p: io.read_features(p / "nope.npy"), FileNotFoundError, "nope.npy"),
    (".bin without dim", lambda p: io.read_features(p / "odd.bin"), ValueError, "dim"),
    (".bin size not a multiple", lambda p: io.read_features(p / "odd.bin", dim=16), ValueError,
     "odd.bin"),
    ("truncated .npy", lambda p: io.read_features(p / "trunc.npy"), ValueError, "trunc.npy"),
    ("corrupt .npz", lambda p: io.read_knn(p / "bad.npz"), ValueError, "bad.npz"),
    ("labels / features count mismatch",
     lambda p: io.read_dataset(p / "x.npy", p / "short.meta"), ValueError, "short.meta"),
    ("unknown suffix", lambda p: io.read_features(p / "y.meta"), ValueError, "y.meta"),
    # checkpoints and the estimator
    ("truncated checkpoint", lambda p: load_checkpoint(p / "trunc.pt"), ValueError, "trunc.pt"),
    ("checkpoint for another D", lambda p: SEPFL.load(p / "model_d8.pt", **CPU).predict(X),
     ValueError, "D = 16"),
    ("checkpoint for another k", lambda p: load_checkpoint(p / "model.pt", k=80), ValueError,
     "k = 10"),
    ("predict before fit", lambda p: SEPFL().predict(X), NotFittedError, "fit"),
    ("training labels with one identity",
     lambda p: SEPFL(k=10, ranks=5, **CPU).fit(X, np.zeros(len(X), np.int64)), ValueError,
     "identit"),
    ("labels / features mismatch in fit", lambda p: SEPFL(k=10, ranks=5, **CPU).fit(X, Y[:-1]),
     ValueError, "labels"),
    ("threshold above 1", lambda p: SEPFL(threshold=1.2).fit(X, Y), ValueError, "threshold"),
    ("negative rho", lambda p: ClusterConfig(rho=-0.1), ValueError, "rho"),
    ("unknown setting", lambda p: SEPFL(n_clusters=4), TypeError, "n_clusters"),
    ("zero epochs", lambda p: TrainConfig(epochs=0), ValueError, "epochs"),
    ("metrics length mismatch", lambda p: evaluate(Y, Y[:-1]), ValueError, "same length"),
    ("metrics on nothing", lambda p: evaluate(Y[:0], Y[:0]), ValueError, "0 samples"),
    ("float labels to metrics", lambda p: evaluate(Y.astype(float), Y), TypeError, "integer"),
    ("faiss's -1 beyond the graph",
     lambda p: ops.select_pairs(np.array([[0, -7]]), np.ones(1, np.float32)), IndexError, "-7"),
]


@pytest.mark.parametrize("name, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(tmp_path, name, call, error, match):
    with pytest.raises(error, match=match):
        call(files(tmp_path))


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.skipif(sepfl.has_cuda(), reason="this build can run CUDA tensors")
def test_cuda_tensors_without_cuda_are_refused():
    with pytest.raises((RuntimeError, ValueError, AssertionError), match="CUDA|cuda"):
        ops.density(torch.ones(3, 2, device="cuda"))
    with pytest.raises(ValueError, match="cuda"):
        cluster(X, MODEL, ClusterConfig(k=10, device="cuda", progress=False))


def test_readonly_and_non_contiguous_inputs_are_fine():
    frozen = X.copy()
    frozen.flags.writeable = False
    strided = np.asfortranarray(X)
    knn = build_knn(X, k=10, progress=False)
    want = cluster(X, MODEL, ClusterConfig(k=10, **CPU), knn=knn).labels
    for features in (frozen, strided):
        got = cluster(features, MODEL, ClusterConfig(k=10, **CPU), knn=knn).labels
        np.testing.assert_array_equal(got, want)


def test_cli_reports_bad_files_in_one_line(tmp_path, capsys):
    paths = files(tmp_path)
    assert main(["cluster", str(paths / "trunc.npy"), "--checkpoint", str(paths / "model.pt"),
                 "--out", str(paths / "out.npy"), "--k", "10"]) == 2
    err = capsys.readouterr().err
    assert "trunc.npy" in err and "Traceback" not in err
    assert not (paths / "out.npy").exists()
