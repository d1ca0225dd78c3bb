"""The bad-input contract of the public surface, in one table.

Each row feeds one user mistake to the Python API, the file readers, the
pipeline or the ``sepfl`` command line and names the exception and the words
its message must contain. A command-line row runs ``sepfl.cli.main`` in this
process and must end with exit code 2, one line on stderr, no traceback and no
output file; its message is then checked like an exception's. (Direct calls of
the native module are in test_native_crash.py, each in a child process; the
ops' per-backend bad-index table, which checks that every backend names a bad
index in the same words, is in test_ops.py.)
"""
import contextlib
import io as text_io
import math
import re
from unittest import mock

import numpy as np
import pytest
import torch

import sepfl
from sepfl import SEPFL, io, knn, metrics, ops
from sepfl.checkpoint import load_checkpoint, save_checkpoint
from sepfl.cli import main
from sepfl.cluster import cluster
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.datasets import make_faces
from sepfl.edges import EdgeHead
from sepfl.estimator import NotFittedError
from sepfl.knn import build_knn
from sepfl.model import PairClassifier
from sepfl.train import calibrate, train

from samples import toy_graph, unit_rows

FACES = make_faces(12, dim=16, seed=11)
X, Y = FACES.features, FACES.labels
MODEL = PairClassifier(16, 10).eval()
CPU = dict(device="cpu", progress=False)
# the kNN graph, features and labels of a model for D = 4, k = 3
TOY_X, TOY_NBRS = toy_graph(20, 4, 3, seed=0)
# a raw .bin of at least 1,000 rows, so that counts print with thousands separators
BIG = np.tile(X, (math.ceil(1000 / len(X)), 1))
# a three-node graph and its features for the ops rows
NBRS = np.array([[0, 1], [1, 0], [2, 1]])
FEATS = np.ones((3, 4), dtype=np.float32)


def with_value(value, row=2, column=slice(None)):
    """The features X with ``value`` written into row ``row`` (or one entry of it)."""
    bad = X.copy()
    bad[row, column] = value
    return bad


def with_head(model):
    """``model`` with an untrained edge head."""
    model.edge_head = EdgeHead()
    return model.eval()


def train_config(**overrides):
    return TrainConfig(**{**dict(ranks=7, epochs=1, pairs_per_epoch=64, warmup_steps=0,
                                 refit_steps=0, edge_steps=0, **CPU), **overrides})


def files(tmp_path):
    """A few valid and damaged files to read."""
    io.write_features(tmp_path / "x.npy", X)
    io.write_features(tmp_path / "x.bin", X)
    BIG.tofile(tmp_path / "raw.bin")  # no sidecar: --dim says the width
    io.write_labels(tmp_path / "y.meta", Y)
    io.write_labels(tmp_path / "y.npy", Y)
    io.write_labels(tmp_path / "big.meta", np.zeros(len(BIG), np.int64))
    io.write_labels(tmp_path / "short.meta", Y[:-3])
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:200])
    (tmp_path / "odd.bin").write_bytes(b"\0" * 10)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    torch.save(PairClassifier(16, 10).state_dict(), tmp_path / "model.pt")
    torch.save(PairClassifier(8, 10).state_dict(), tmp_path / "model_d8.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:300])
    save_checkpoint(tmp_path / "small.pt", PairClassifier(8, 4), train_config())
    data = (tmp_path / "small.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    shuffled = X[np.random.default_rng(1).permutation(len(X))]
    for layout in ("sepfl", "learn-to-cluster"):
        io.write_knn(tmp_path / f"stale-{layout}.npz", *build_knn(shuffled, k=10, progress=False),
                     layout=layout, features=shuffled if layout == "sepfl" else None)
    # feature files
    np.arange(12, dtype=np.float32).tofile(tmp_path / "headless.bin")  # 48 bytes, no sidecar
    io.write_features(tmp_path / "f.bin", np.zeros((2, 4), np.float32))
    io.write_features(tmp_path / "shrunk.bin", np.zeros((2, 4), np.float32))
    np.zeros(4, np.float32).tofile(tmp_path / "shrunk.bin")  # shrank behind the sidecar's back
    np.save(tmp_path / "f.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "f.txt").write_text("1 2\n")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with open(tmp_path / "zip.npy", "wb") as f:
        np.savez(f, features=X)
    np.save(tmp_path / "ints.npy", X.astype(np.int32))
    np.save(tmp_path / "flat.npy", X[0])
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 1)), b=np.zeros((1, 1)))
    io.write_features(tmp_path / "nan-row.npy", with_value(np.nan))
    io.write_features(tmp_path / "zero-row.npy", with_value(0.0))
    # label files
    (tmp_path / "gap.meta").write_text("1\n\n2\n")
    (tmp_path / "wide.csv").write_text("img1.jpg,4\n")
    np.save(tmp_path / "floats.npy", np.array([1.0, 2.0]))
    np.save(tmp_path / "m.npy", np.zeros((2, 2), np.int64))
    # kNN files
    np.savez(tmp_path / "k-2d.npz", data=np.zeros((2, 3)))
    np.savez(tmp_path / "k-index-5.npz", data=np.array([[[0, 5]], [[0.0, 0.1]]]).reshape(1, 2, 2))
    np.savez(tmp_path / "k-index-half.npz", data=np.array([[[0, 0.5], [0, 0]], [[1, 0], [0, 0]]]))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    np.savez(tmp_path / "bad-index.npz", sepfl_knn=1, nbrs=np.array([[0, 7]]),
             sims=np.ones((1, 2)), fingerprint="", meta="{}")
    np.savez(tmp_path / "nometa.npz", sepfl_knn=1, nbrs=np.zeros((1, 1)), sims=np.ones((1, 1)))
    # a data set of 6 samples with 3 labels, a 2-row graph and one of other features
    io.write_features(tmp_path / "part.bin", X[:6])
    io.write_labels(tmp_path / "part.meta", Y[:3])
    io.write_knn(tmp_path / "short.npz", np.array([[0, 1], [1, 0]]), np.ones((2, 2), np.float32))
    io.write_knn(tmp_path / "g.npz", np.stack([np.arange(6), (np.arange(6) + 1) % 6], axis=1),
                 np.ones((6, 2), np.float32), features=X[6:12])
    # an estimator's checkpoint and an empty one
    fitted = SEPFL(k=10, **CPU)
    fitted.model_ = MODEL
    fitted.save(tmp_path / "sepfl.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    return tmp_path


class CliError(Exception):
    """What a command-line row raises: the one line ``sepfl`` printed on stderr."""


def cli(*argv):
    """A row's call running ``sepfl ARGV`` ("{p}" in an argument is the files' folder)."""
    def call(p):
        before = sorted(p.iterdir())
        err = text_io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([a.format(p=p) for a in argv])
        err = err.getvalue()
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert len(err.replace(str(p), "")) < 300  # no pasted paragraph (paths aside)
        assert sorted(p.iterdir()) == before  # refused before any output was written
        raise CliError(err.strip())
    return call


def without_faiss(call):
    """``call`` on a machine where faiss cannot be imported."""
    def run(p):
        with mock.patch.object(knn, "_faiss", lambda: None):
            return call(p)
    return run


CLUSTER = ("cluster", "{p}/x.npy", "--checkpoint", "{p}/model.pt", "--no-progress")

CASES = [
    # data through the pipeline and the kNN graph
    ("NaN feature row", lambda p: cluster(with_value(np.nan), MODEL, ClusterConfig(k=10, **CPU)),
     ValueError, "NaN"),
    ("inf feature row", lambda p: build_knn(with_value(np.inf), k=5), ValueError, "inf"),
    ("all-zero row", lambda p: build_knn(with_value(0.0), k=5), ValueError, "zero"),
    ("integer features", lambda p: build_knn(X.astype(np.int32), k=5), TypeError, "floating"),
    ("1-d features", lambda p: build_knn(X[0], k=5), ValueError, "dimension"),
    ("empty features", lambda p: build_knn(X[:0], k=5), ValueError, "k"),
    ("k >= N", lambda p: build_knn(X[:10], k=10), ValueError, "k"),
    ("k < 2", lambda p: build_knn(X, k=1), ValueError, "k"),
    ("exact not a bool", lambda p: build_knn(X, k=5, exact="yes"), TypeError, "exact"),
    ("ef_search 0", lambda p: build_knn(X, k=5, ef_search=0), ValueError, "ef_search"),
    ("knn_exact a string", lambda p: ClusterConfig(knn_exact="no"), TypeError, "knn_exact"),
    ("distributed_features unknown", lambda p: ClusterConfig(distributed_features="some"),
     ValueError, "distributed_features"),
    ("test set smaller than k",
     lambda p: cluster(X[:8], MODEL, ClusterConfig(k=10, **CPU)), ValueError, "k"),
    ("test set of k samples", lambda p: cluster(X[:10], MODEL, ClusterConfig(k=10, **CPU)),
     ValueError, "k"),
    ("features of another D", lambda p: cluster(X[:, :8], MODEL, ClusterConfig(k=10, **CPU)),
     ValueError, "D = 8"),
    ("NaN in one value of a row",
     lambda p: cluster(with_value(np.nan, row=3, column=0), MODEL, ClusterConfig(k=10, **CPU)),
     ValueError, "NaN"),
    ("config k other than the model's",
     lambda p: cluster(X, MODEL, ClusterConfig(k=8, **CPU)), ValueError,
     "model was built for k = 10"),
    ("kNN table of the wrong shape",
     lambda p: cluster(X, MODEL, ClusterConfig(k=10, **CPU),
                       knn=(np.zeros((len(X), 5), np.int64), np.zeros((len(X), 5), np.float32))),
     ValueError, "knn table"),
    ("kNN index out of range",
     lambda p: cluster(X, MODEL, ClusterConfig(k=10, **CPU),
                       knn=(np.full((len(X), 10), len(X)), np.ones((len(X), 10), np.float32))),
     IndexError, "outside"),
    ("build_knn k = 1", lambda p: build_knn(unit_rows(6, 3), k=1), ValueError,
     r"k must satisfy 2 <= k < N = 6 \(rank 0 is the sample itself\), got k=1"),
    ("build_knn k = N", lambda p: build_knn(unit_rows(6, 3), k=6), ValueError, r"2 <= k < N = 6"),
    ("build_knn fractional k", lambda p: build_knn(unit_rows(6, 3), k=2.5), TypeError,
     "k must be an integer"),
    ("unknown kNN backend", lambda p: build_knn(unit_rows(6, 3), k=3, backend="annoy"),
     ValueError, "backend must be one of"),
    ("unknown kNN precision", lambda p: build_knn(unit_rows(6, 3), k=3, precision="fp16"),
     ValueError, "precision must be one of"),
    ("kNN on the meta device", lambda p: build_knn(unit_rows(6, 3), k=3, device="meta"),
     ValueError, "device must be cpu or cuda"),
    ("NaN row of a kNN input",
     lambda p: build_knn(np.array([[1.0, 0], [np.nan, 1], [0, 1]], np.float32), k=2),
     ValueError, r"rows \[1\] \(1 in all\) hold NaN or inf"),
    ("inf row of a kNN input",
     lambda p: build_knn(np.array([[1.0, 0], [0, 1], [np.inf, 1]], np.float32), k=2),
     ValueError, r"rows \[2\]"),
    ("zero row of a kNN input",
     lambda p: build_knn(np.array([[1.0, 0], [0, 0], [0, 1]], np.float32), k=2),
     ValueError, r"rows \[1\] .* all zero"),
    ("integer kNN input", lambda p: build_knn(np.ones((3, 2), np.int64), k=2), TypeError,
     "must hold floating-point values"),
    ("1-d kNN input", lambda p: build_knn(np.ones(3, np.float32), k=2), ValueError,
     "must have 2 dimension"),
    ("faiss asked for reduced precision",
     lambda p: pytest.importorskip("faiss") and build_knn(unit_rows(6, 3), k=3, backend="faiss",
                                                          precision="bf16"),
     ValueError, "applies to the torch backend"),
    ("faiss asked for but not installed",
     without_faiss(lambda p: build_knn(unit_rows(6, 3), k=3, backend="faiss")), ImportError,
     "pip install faiss-cpu"),
    # the network's inference path
    ("embeddings in train mode", lambda p: PairClassifier(4, 3).node_embeddings(TOY_X, TOY_NBRS),
     RuntimeError, "eval"),
    ("embeddings of features of another D",
     lambda p: PairClassifier(4, 3).eval().node_embeddings(torch.randn(20, 5), TOY_NBRS),
     ValueError, "shape"),
    ("embeddings from lists of another k",
     lambda p: PairClassifier(4, 3).eval().node_embeddings(TOY_X, TOY_NBRS[:, :2]),
     ValueError, "shape"),
    ("embeddings from a list entry beyond N",
     lambda p: PairClassifier(4, 3).eval().node_embeddings(
         TOY_X, torch.where(torch.arange(60).view(20, 3) == 10, 20, TOY_NBRS)),
     IndexError, "20"),
    ("embeddings of a NaN feature",
     lambda p: PairClassifier(4, 3).eval().node_embeddings(
         torch.where(torch.arange(80).view(20, 4) == 0, float("nan"), TOY_X), TOY_NBRS),
     ValueError, "NaN"),
    ("embeddings from float lists",
     lambda p: PairClassifier(4, 3).eval().node_embeddings(TOY_X, TOY_NBRS.float()),
     TypeError, "integer"),
    ("pair scores of a pair end beyond N",
     lambda p: PairClassifier(4, 3).eval().score_pairs(torch.zeros(20, 8), torch.tensor([0, 25]),
                                                       torch.tensor([1, 2])),
     IndexError, "25"),
    ("pair scores of ends of two lengths",
     lambda p: PairClassifier(4, 3).eval().score_pairs(torch.zeros(20, 8), torch.tensor([0, 1]),
                                                       torch.tensor([1])),
     ValueError, "shape"),
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
    (".bin without sidecar or dim", lambda p: io.read_features(p / "headless.bin"), ValueError,
     r"headless\.bin: a \.bin file has no header; give its feature width \(--dim"),
    (".bin of another dim", lambda p: io.read_features(p / "headless.bin", dim=5), ValueError,
     r"headless\.bin: 48 bytes is not a whole number of float32 rows of dim 5"),
    (".bin dim other than its sidecar's", lambda p: io.read_features(p / "f.bin", dim=2),
     ValueError, r"dim 2 \(--dim\) disagrees with f\.bin\.json, which says dim=4"),
    (".bin shorter than its sidecar says", lambda p: io.read_features(p / "shrunk.bin"),
     ValueError, "holds 1 rows of dim 4 but shrunk.bin.json says 2"),
    (".npy of another dim", lambda p: io.read_features(p / "f.npy", dim=3), ValueError,
     r"f\.npy: holds features of dim 4, not 3 \(--dim\)"),
    ("unknown feature format", lambda p: io.read_features(p / "f.txt"), ValueError,
     r"unknown feature format '\.txt'"),
    ("junk .npy", lambda p: io.read_features(p / "junk.npy"), ValueError,
     r"junk\.npy: not a readable \.npy file"),
    ("corrupt .npz features", lambda p: io.read_features(p / "bad.npz"), ValueError,
     r"bad\.npz: not a readable \.npz file"),
    (".npz archive named .npy", lambda p: io.read_features(p / "zip.npy"), ValueError,
     r"zip\.npy: an \.npz archive, not a single \.npy"),
    ("integer features file", lambda p: io.read_features(p / "ints.npy"), TypeError,
     r"ints\.npy: features must be floating point"),
    ("1-d features file", lambda p: io.read_features(p / "flat.npy"), ValueError,
     r"flat\.npy: features must be 2-D"),
    (".npz of two unnamed arrays", lambda p: io.read_features(p / "two.npz"), ValueError,
     r"expected an array named 'features' or a single array"),
    ("labels with an empty line", lambda p: io.read_labels(p / "gap.meta"), ValueError,
     r"gap\.meta: line 2 is empty"),
    ("labels of several columns", lambda p: io.read_labels(p / "wide.csv"), ValueError,
     r"wide\.csv: line 1 has several columns"),
    ("float labels file", lambda p: io.read_labels(p / "floats.npy"), TypeError,
     r"floats\.npy: labels must be integers or strings"),
    ("2-d labels file", lambda p: io.read_labels(p / "m.npy"), ValueError,
     r"m\.npy: labels must be 1-D"),
    ("missing labels file", lambda p: io.read_labels(p / "nope.meta"), FileNotFoundError,
     "nope.meta"),
    ("labels written as .json", lambda p: io.write_labels(p / "l.json", [1]), ValueError,
     r"unknown label format '\.json'"),
    ("learn-to-cluster kNN of 2 dimensions", lambda p: io.read_knn(p / "k-2d.npz"), ValueError,
     r"must have shape \(N, 2, k\)"),
    ("learn-to-cluster kNN index beyond N", lambda p: io.read_knn(p / "k-index-5.npz"),
     ValueError, r"integers in \[0, 1\) or -1"),
    ("learn-to-cluster kNN fractional index", lambda p: io.read_knn(p / "k-index-half.npz"),
     ValueError, r"integers in \[0, 2\) or -1"),
    (".npz that is no kNN file", lambda p: io.read_knn(p / "other.npz"), ValueError,
     r"other\.npz: not a kNN file"),
    (".npy as kNN file", lambda p: io.read_knn(p / "plain.npy"), ValueError,
     r"plain\.npy: not a readable \.npz file"),
    ("sepfl kNN index beyond N", lambda p: io.read_knn(p / "bad-index.npz"), ValueError,
     r"bad-index\.npz: corrupt sepfl kNN file"),
    ("sepfl kNN file without meta", lambda p: io.read_knn(p / "nometa.npz"), ValueError,
     r"nometa\.npz: corrupt sepfl kNN file"),
    ("missing kNN file", lambda p: io.read_knn(p / "gone.npz"), FileNotFoundError, "gone.npz"),
    ("data set of fewer labels", lambda p: io.read_dataset(p / "part.bin", p / "part.meta"),
     ValueError, r"part\.meta has 3 labels but .*part\.bin has 6"),
    ("data set of a shorter kNN graph",
     lambda p: io.read_dataset(p / "part.bin", knn_path=p / "short.npz"), ValueError,
     r"short\.npz: the kNN graph has 2 rows but the features have 6"),
    ("data set of a kNN graph of other features",
     lambda p: io.read_dataset(p / "part.bin", knn_path=p / "g.npz"), ValueError,
     r"g\.npz: the kNN graph was built from other features .*part\.bin"),
    ("data set of a NaN row", lambda p: io.read_dataset(p / "nan-row.npy"), ValueError,
     r"nan-row\.npy: .*rows \[2\] .* hold NaN or inf"),
    ("data set of a zero row", lambda p: io.read_dataset(p / "zero-row.npy"), ValueError,
     r"zero-row\.npy: .*rows \[2\] .* are all zero"),
    ("learn-to-cluster graph of other features",
     lambda p: io.verify_knn(io.read_knn(p / "stale-learn-to-cluster.npz"), X), ValueError,
     "built from other features: .* sampled rows"),
    ("sepfl graph of other features",
     lambda p: io.verify_knn(io.read_knn(p / "stale-sepfl.npz"), X), ValueError,
     "fingerprint differs"),
    # checkpoints
    ("truncated checkpoint", lambda p: load_checkpoint(p / "trunc.pt"), ValueError, "trunc.pt"),
    ("checkpoint cut in half", lambda p: load_checkpoint(p / "cut.pt"), ValueError,
     "truncated or corrupt"),
    ("junk as checkpoint", lambda p: load_checkpoint(p / "junk.pt"), ValueError,
     "truncated or corrupt"),
    ("foreign torch file as checkpoint", lambda p: load_checkpoint(p / "foreign.pt"), ValueError,
     "neither"),
    ("checkpoint asked for another D", lambda p: load_checkpoint(p / "small.pt", dim=16),
     ValueError, "dim = 8"),
    ("checkpoint for another k", lambda p: load_checkpoint(p / "model.pt", k=80), ValueError,
     "k = 10"),
    ("checkpoint of k = 4 asked for k = 80", lambda p: load_checkpoint(p / "small.pt", k=80),
     ValueError, "k = 4"),
    ("missing checkpoint", lambda p: load_checkpoint(p / "missing.pt"), FileNotFoundError,
     "missing.pt"),
    # the estimator and training
    ("checkpoint for another D", lambda p: SEPFL.load(p / "model_d8.pt", **CPU).predict(X),
     ValueError, "D = 16"),
    ("predict before fit", lambda p: SEPFL().predict(X), NotFittedError, "fit"),
    ("predict before fit, with settings", lambda p: SEPFL(k=10, ranks=5, **CPU).predict(X),
     NotFittedError, "call fit"),
    ("save before fit", lambda p: SEPFL(k=10, ranks=5, **CPU).save(p / "never.pt"),
     NotFittedError, "not trained"),
    ("saved model given features of another D",
     lambda p: SEPFL.load(p / "sepfl.pt").predict(X[:, :8]), ValueError, "D = 8"),
    ("saved model of k = 10 loaded for k = 12",
     lambda p: SEPFL.load(p / "sepfl.pt", cluster_config=ClusterConfig(k=12, device="cpu"))
     .predict(X), ValueError, "k = 10"),
    ("estimator from a checkpoint cut in half", lambda p: SEPFL.load(p / "cut.pt"), ValueError,
     "checkpoint"),
    ("estimator from junk", lambda p: SEPFL.load(p / "junk.pt"), ValueError, "checkpoint"),
    ("estimator from an empty file", lambda p: SEPFL.load(p / "empty.pt"), ValueError,
     "checkpoint"),
    ("training labels with one identity",
     lambda p: SEPFL(k=10, ranks=5, **CPU).fit(X, np.zeros(len(X), np.int64)), ValueError,
     "identit"),
    ("NaN training features", lambda p: SEPFL(k=10, ranks=5, **CPU).fit(with_value(np.nan), Y),
     ValueError, "NaN"),
    ("labels / features mismatch in fit", lambda p: SEPFL(k=10, ranks=5, **CPU).fit(X, Y[:-1]),
     ValueError, "labels"),
    ("train on one identity",
     lambda p: train(X, np.zeros(len(X), np.int64), train_config(), k=8), ValueError,
     "two identities"),
    ("train on labels without a positive pair",
     lambda p: train(X, np.arange(len(X)), train_config(), k=8), ValueError, "no positive"),
    ("train on a NaN feature", lambda p: train(with_value(np.nan), Y, train_config(), k=8),
     ValueError, "NaN"),
    ("train with k not above ranks", lambda p: train(X, Y, train_config(), k=7), ValueError,
     "k must be >= 8"),
    ("train with one label too few", lambda p: train(X, Y[:-1], train_config(), k=8),
     ValueError, "shape"),
    ("train on float labels", lambda p: train(X, Y.astype(np.float32), train_config(), k=8),
     TypeError, "integer"),
    ("calibrate a model without an edge head",
     lambda p: calibrate(MODEL, X, Y, train_config()), ValueError, "no edge head"),
    ("calibrate holding out no identity",
     lambda p: calibrate(with_head(PairClassifier(16, 10)), X, Y,
                         train_config(calibration_share=0.0)), ValueError, "holds none out"),
    # settings
    ("threshold above 1", lambda p: SEPFL(threshold=1.2).fit(X, Y), ValueError, "threshold"),
    ("config threshold above 1", lambda p: ClusterConfig(threshold=1.5), ValueError, "threshold"),
    ("config device tpu", lambda p: ClusterConfig(device="tpu"), ValueError, "device"),
    ("negative rho", lambda p: ClusterConfig(rho=-0.1), ValueError, "rho"),
    ("full_cosine above 1", lambda p: ClusterConfig(full_cosine=1.5), ValueError,
     "full_cosine"),
    ("join below 0", lambda p: ClusterConfig(join=-1.0), ValueError, "join"),
    ("join_above above 1", lambda p: ClusterConfig(join_above=1.5), ValueError, "join_above"),
    ("unknown setting", lambda p: SEPFL(n_clusters=4), TypeError, "n_clusters"),
    ("unknown setting, named", lambda p: SEPFL(n_clusters=3), TypeError,
     "unknown SEPFL parameter"),
    ("threshold above 1 checked before the data",
     lambda p: SEPFL(threshold=2.0).fit(np.zeros((4, 2), np.float32), np.arange(4)), ValueError,
     "threshold"),
    ("zero threads", lambda p: SEPFL(threads=0).cluster_config, ValueError, "threads"),
    ("zero epochs", lambda p: TrainConfig(epochs=0), ValueError, "epochs"),
    ("negative batch size", lambda p: TrainConfig(batch_size=-1), ValueError, "batch_size"),
    ("zero learning rate", lambda p: TrainConfig(lr=0.0), ValueError, "lr"),
    ("momentum above 1", lambda p: TrainConfig(momentum=1.5), ValueError, "momentum"),
    ("decreasing milestones", lambda p: TrainConfig(lr_milestones=(0.6, 0.4)), ValueError,
     "lr_milestones"),
    ("milestone at 0", lambda p: TrainConfig(lr_milestones=(0.0,)), ValueError, "lr_milestones"),
    ("thinning share of 1", lambda p: TrainConfig(edge_thinning=(0.1, 1.0)), ValueError,
     "edge_thinning"),
    ("negative weight decay", lambda p: TrainConfig(weight_decay=-1.0), ValueError,
     "weight_decay"),
    ("training device tpu", lambda p: TrainConfig(device="tpu"), ValueError, "device"),
    ("unknown optimizer", lambda p: TrainConfig(optimizer="adam"), ValueError, "optimizer"),
    ("negative warm-up", lambda p: TrainConfig(warmup_steps=-1), ValueError, "warmup_steps"),
    ("zero classifier learning rate", lambda p: TrainConfig(classifier_lr=0.0), ValueError,
     "classifier_lr"),
    # metrics and ops
    ("metrics length mismatch", lambda p: metrics.evaluate(Y, Y[:-1]), ValueError,
     "same length"),
    ("metrics on nothing", lambda p: metrics.evaluate(Y[:0], Y[:0]), ValueError, "0 samples"),
    ("float labels to metrics", lambda p: metrics.evaluate(Y.astype(float), Y), TypeError,
     "integer"),
    ("pairwise of two lengths", lambda p: metrics.pairwise(np.array([0, 1]), np.array([0, 1, 2])),
     ValueError, "same length"),
    ("2-d labels to NMI", lambda p: metrics.nmi(np.zeros((2, 2), np.int64),
                                                np.zeros((2, 2), np.int64)),
     ValueError, "dimension"),
    ("float labels to BCubed", lambda p: metrics.bcubed(np.array([0.0, 1.0]), np.array([0, 1])),
     TypeError, "integer"),
    ("faiss's -1 beyond the graph",
     lambda p: ops.select_pairs(np.array([[0, -7]]), np.ones(1, np.float32)), IndexError, "-7"),
    ("density of integer sims", lambda p: ops.density(np.ones((3, 2), dtype=np.int64)),
     TypeError, "sims must hold floating"),
    ("density of 1-d sims", lambda p: ops.density(np.ones(3, dtype=np.float32)), ValueError,
     "sims must have 2 dim"),
    ("density of NaN sims", lambda p: ops.density(np.array([[1.0, np.nan]], dtype=np.float32)),
     ValueError, "NaN"),
    ("density rho above 1", lambda p: ops.density(np.ones((2, 2), np.float32), rho=1.5),
     ValueError, r"rho must be in \[0, 1\]"),
    ("density rho NaN", lambda p: ops.density(np.ones((2, 2), np.float32), rho=float("nan")),
     ValueError, "rho"),
    ("density of a string", lambda p: ops.density("sims"), TypeError, "sims must hold floating"),
    ("select_pairs of float nbrs",
     lambda p: ops.select_pairs(NBRS.astype(np.float32), np.ones(3, np.float32)), TypeError,
     "nbrs must hold integer"),
    ("select_pairs density of another length",
     lambda p: ops.select_pairs(NBRS, np.ones(4, np.float32)), ValueError,
     "density must have shape"),
    ("select_pairs index beyond N",
     lambda p: ops.select_pairs(np.array([[0, 5], [1, 0]]), np.array([0, 1], np.float32)),
     IndexError, "index 5 outside"),
    ("select_pairs index below -1",
     lambda p: ops.select_pairs(np.array([[0, -2], [1, 0]]), np.array([1, 0], np.float32)),
     IndexError, "index -2"),
    ("select_pairs NaN density",
     lambda p: ops.select_pairs(NBRS, np.array([0, np.nan, 1], np.float32)), ValueError,
     "density holds"),
    ("select_pairs max_per_node 0",
     lambda p: ops.select_pairs(NBRS, np.ones(3, np.float32), max_per_node=0), ValueError,
     "max_per_node must be >= 1"),
    ("select_pairs of bool nbrs",
     lambda p: ops.select_pairs(NBRS.astype(bool), np.ones(3, np.float32)), TypeError,
     "nbrs must hold integer"),
    ("train_pairs labels of another length",
     lambda p: ops.train_pairs(NBRS, np.zeros(2, np.int64), 1), ValueError,
     "labels must have shape"),
    ("train_pairs index beyond N",
     lambda p: ops.train_pairs(np.array([[0, 7], [1, 0]]), np.zeros(2, np.int64), 1),
     IndexError, "index 7"),
    ("train_pairs ranks reaching k",
     lambda p: ops.train_pairs(np.zeros((3, 2), dtype=np.int64), np.zeros(3, dtype=np.int64), 2),
     ValueError, "ranks must be < k"),
    ("balanced_sample of one class", lambda p: ops.balanced_sample(np.zeros(5, dtype=np.int64), 2),
     ValueError, "0 positive"),
    ("gather node id beyond N", lambda p: ops.gather(FEATS, NBRS, np.array([3])), IndexError,
     "node_ids"),
    ("gather node id -1", lambda p: ops.gather(FEATS, NBRS, np.array([-1])), IndexError,
     "node_ids"),
    ("gather index beyond N",
     lambda p: ops.gather(FEATS, np.array([[0, 9], [1, 0], [2, 1]]), np.array([0])), IndexError,
     "index 9"),
    ("gather nbrs of another N", lambda p: ops.gather(FEATS[:2], NBRS, np.array([0])),
     ValueError, "nbrs must have shape"),
    ("gather_add bproj of another width",
     lambda p: ops.gather_add(FEATS, FEATS[:, :3], NBRS, np.array([0])), ValueError,
     "bproj must have shape"),
    ("gather_add bias of another width",
     lambda p: ops.gather_add(FEATS, FEATS, NBRS, np.array([0]), bias=np.ones(2, np.float32)),
     ValueError, "bias must have shape"),
    ("aggregate weights of another width",
     lambda p: ops.aggregate(np.ones((2, 2), np.float32), FEATS, NBRS, np.array([0])),
     ValueError, "weights must have shape"),
    ("shared_neighbours ends of two lengths",
     lambda p: ops.shared_neighbours(NBRS, np.array([0, 1]), np.array([1])), ValueError,
     "dst must have shape"),
    ("shared_neighbours endpoint beyond N",
     lambda p: ops.shared_neighbours(NBRS, np.array([0]), np.array([3])), IndexError,
     "endpoint 3 outside"),
    ("shared_neighbours index beyond N",
     lambda p: ops.shared_neighbours(np.array([[0, 4], [1, 0], [2, 1]]), np.array([0]),
                                     np.array([1])), IndexError, "index 4 outside"),
    ("link ends of two lengths", lambda p: ops.link(np.array([0, 1]), np.array([1]), None, 0.5, 2),
     ValueError, "dst must have shape"),
    ("link threshold above 1", lambda p: ops.link(np.array([0]), np.array([1]), None, 1.5, 2),
     ValueError, "threshold"),
    ("link endpoint beyond N", lambda p: ops.link(np.array([0]), np.array([2]), None, 0.5, 2),
     IndexError, "outside"),
    ("link endpoint -1", lambda p: ops.link(np.array([0]), np.array([-1]), None, 0.5, 2),
     IndexError, "outside"),
    ("link NaN score",
     lambda p: ops.link(np.array([0]), np.array([1]), np.array([np.nan], np.float32), 0.5, 2),
     ValueError, "scores holds"),
    ("link num_nodes -1", lambda p: ops.link(np.array([0]), np.array([1]), None, 0.5, -1),
     ValueError, "num_nodes"),
    # the command line
    ("sepfl: missing features file", cli("cluster", "missing.npy", "--out", "{p}/out.npy"),
     CliError, "missing.npy"),
    ("sepfl: truncated features", cli("cluster", "{p}/trunc.npy", "--checkpoint",
                                      "{p}/model.pt", "--out", "{p}/out.npy", "--k", "10"),
     CliError, "trunc.npy"),
    ("sepfl: threshold above 1", cli(*CLUSTER, "--out", "{p}/out.npy", "--threshold", "1.5"),
     CliError, re.escape("--threshold must be in [0, 1]")),
    ("sepfl: --k other than the model's", cli(*CLUSTER, "--out", "{p}/out.npy", "--k", "30"),
     CliError, "--k 30, but the model was trained for k = 10"),
    ("sepfl: evaluate labels of two lengths", cli("evaluate", "{p}/y.meta", "{p}/short.meta"),
     CliError, "has"),
    ("sepfl: labels given as features", cli("cluster", "{p}/y.npy", "--out", "{p}/out.npy"),
     CliError, "features"),
    ("sepfl: broken checkpoint", cli("cluster", "{p}/x.npy", "--checkpoint", "{p}/trunc.pt",
                                     "--out", "{p}/out.npy"),
     CliError, "not a readable checkpoint"),
    ("sepfl: training labels of another set",
     cli("train", "{p}/x.npy", "{p}/short.meta", "--out", "{p}/m.pt", "--k", "10", "--ranks",
         "5", "--device", "cpu", "--no-progress"), CliError, "labels"),
    ("sepfl: faiss asked for but not installed",
     without_faiss(cli(*CLUSTER, "--out", "{p}/out.npy", "--knn-backend", "faiss")), CliError,
     "needs faiss"),
    ("sepfl: negative --mixture", cli("synth", "--n-ids", "4", "--mixture", "-1", "--out",
                                      "{p}/d"), CliError, "--mixture must be >= 0"),
    ("sepfl: --hard without --mixture", cli("synth", "--n-ids", "4", "--hard", "--out",
                                            "{p}/d"), CliError, "give --mixture too"),
    ("sepfl: more face models than identities",
     cli("synth", "--n-ids", "4", "--mixture", "6", "--out", "{p}/d"), CliError, "got 6"),
    ("sepfl: labels of another set", cli(*CLUSTER, "--labels", "{p}/short.meta", "--out",
                                         "{p}/out.npy"), CliError, "labels but"),
    ("sepfl: unknown labels format", cli(*CLUSTER, "--out", "{p}/out.parquet"), CliError,
     "unknown format '.parquet'"),
    ("sepfl: unknown report format", cli(*CLUSTER, "--out", "{p}/out.npy", "--report",
                                         "{p}/r.pdf"), CliError, "unknown format '.pdf'"),
    ("sepfl: a file where a folder should be", cli(*CLUSTER, "--out", "{p}/blocker/out.npy"),
     CliError, "is a file, not a folder"),
    ("sepfl: a folder as output", cli(*CLUSTER, "--out", "{p}"), CliError, "is a folder"),
    ("sepfl: a wrong --dim that divides the .bin size",
     cli("cluster", "{p}/raw.bin", "--dim", "8", "--labels", "{p}/big.meta", "--out",
         "{p}/out.npy"), CliError,
     re.escape(f"{len(BIG):,} labels but") + ".*" + re.escape(f"{2 * len(BIG):,} rows (is --dim "
                                                              "right?)")),
    ("sepfl: kNN graph of other features (sepfl layout)",
     cli(*CLUSTER, "--knn", "{p}/stale-sepfl.npz", "--out", "{p}/out.npy"), CliError,
     "built from other features"),
    ("sepfl: kNN graph of other features (learn-to-cluster layout)",
     cli(*CLUSTER, "--knn", "{p}/stale-learn-to-cluster.npz", "--out", "{p}/out.npy"), CliError,
     "built from other features"),
]


@pytest.mark.parametrize("name, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(tmp_path, name, call, error, match):
    with pytest.raises(error, match=match):
        call(files(tmp_path))


@pytest.mark.skipif(sepfl.has_cuda(), reason="this build can run CUDA tensors")
def test_cuda_tensors_without_cuda_are_refused():
    with pytest.raises((RuntimeError, ValueError, AssertionError), match="CUDA|cuda"):
        ops.density(torch.ones(3, 2, device="cuda"))
    with pytest.raises(ValueError, match="cuda"):
        cluster(X, MODEL, ClusterConfig(k=10, device="cuda", progress=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_knn_on_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        build_knn(unit_rows(6, 3), k=3, device="cuda")


def test_readonly_and_non_contiguous_inputs_are_fine():
    frozen = X.copy()
    frozen.flags.writeable = False
    strided = np.asfortranarray(X)
    graph = build_knn(X, k=10, progress=False)
    want = cluster(X, MODEL, ClusterConfig(k=10, **CPU), knn=graph).labels
    for features in (frozen, strided):
        got = cluster(features, MODEL, ClusterConfig(k=10, **CPU), knn=graph).labels
        np.testing.assert_array_equal(got, want)
