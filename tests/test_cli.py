"""The sepfl command line, run as a user runs it: the ``sepfl`` console script in a subprocess.

The shared fixture (synthetic splits and a tiny model) is made through
``sepfl.cli.main`` in-process, to keep the module fast; every checked command
runs in its own process.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sepfl import io
from sepfl.cli import _field_help, build_parser, main
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.knn import build_knn

SEPFL = Path(sys.executable).with_name("sepfl")
TINY_TRAIN = ["--k", "20", "--ranks", "10", "--epochs", "1", "--pairs-per-epoch", "256",
              "--batch-size", "64", "--warmup-steps", "20", "--refit-steps", "20",
              "--classifier-batch-size", "64", "--device", "cpu", "--no-progress"]
# Sends the process itself a real SIGINT as clustering starts: Ctrl-C at a known point.
CTRL_C = """
import signal, sys
# as in a terminal: a job started in the background by a non-interactive shell inherits an
# ignored SIGINT, which Python then keeps ignoring
signal.signal(signal.SIGINT, signal.default_int_handler)
from sepfl import estimator
from sepfl.cli import main
real_predict = estimator.SEPFL.predict
def predict(self, *args, **kwargs):
    signal.raise_signal(signal.SIGINT)  # in this thread, so it lands here, not mid-library
    return real_predict(self, *args, **kwargs)
estimator.SEPFL.predict = predict
sys.exit(main(sys.argv[1:]))
"""


def run(*argv, env=None, script=None):
    """``sepfl ARGV`` in a subprocess (or ``python -c script ARGV``): (exit code, stdout, stderr)."""
    command = [sys.executable, "-c", script] if script else [str(SEPFL)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command + [str(a) for a in argv], capture_output=True, text=True,
                          env=environment, timeout=300)
    return done.returncode, done.stdout, done.stderr


def one_line_error(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Synthetic splits and a tiny trained model, made through the CLI itself."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["synth", "--n-ids", "25", "--out", str(root / "data")]) == 0
    assert main(["train", str(root / "data/train_features.npy"),
                 str(root / "data/train_labels.npy"), "--out", str(root / "model.pt")]
                + TINY_TRAIN) == 0
    return root


@pytest.fixture
def cluster_args(workdir):
    data = workdir / "data"
    return [data / "test_features.npy", "--checkpoint", workdir / "model.pt", "--no-progress"]


def outputs(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- help (item 10)


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"demo", "synth", "knn", "train", "cluster", "evaluate"}
    for name, sub in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"sepfl {name}" in out
        assert "``" not in out and ":func:" not in out and ":meth:" not in out
        for action in sub._actions:
            assert action.help, f"sepfl {name} {action.option_strings or action.dest} has no help"


def test_option_help_is_whole_sentences():
    for cls in (ClusterConfig, TrainConfig):
        help_text = _field_help(cls)
        for field in cls.__dataclass_fields__:
            if field == "lr_milestones":
                continue  # a tuple: no option
            assert help_text.get(field, "").endswith((".", ")")), (cls.__name__, field)


def test_verbosity_flags_work_after_the_command(workdir):
    data = workdir / "data"
    code, out, err = run("evaluate", data / "test_labels.npy", data / "test_labels.npy", "-v")
    assert code == 0 and "NMI" in out


# ---------------------------------------------------------------- working runs


def test_cluster_writes_labels_and_stage_times(workdir, cluster_args):
    """Item 3: stage times as they finish, without -v; item 10: true cluster count."""
    data = workdir / "data"
    out = workdir / "pred.csv"
    code, stdout, err = run("cluster", *cluster_args, "--out", out,
                            "--labels", data / "test_labels.npy")
    assert code == 0, err
    assert len(io.read_labels(out)[0]) == len(np.load(data / "test_labels.npy"))
    assert "sepfl: embeddings" in err and "sepfl: knn" in err
    assert "clusters (true: 25)" in stdout
    for column in ("P_P", "R_P", "F_P", "P_B", "R_B", "F_B", "NMI"):
        assert column in stdout


def test_cluster_with_report_and_own_knn_then_evaluate(workdir, cluster_args):
    data = workdir / "data"
    assert main(["knn", str(data / "test_features.npy"), "--k", "20", "--out",
                 str(workdir / "knn.npz"), "--no-progress"]) == 0
    code, out, err = run("cluster", *cluster_args, "--knn", workdir / "knn.npz", "--labels",
                         data / "test_labels.npy", "--report", workdir / "report.png",
                         "--out", workdir / "p.npy", "--threads", "1")
    assert code == 0, err
    assert (workdir / "report.png").stat().st_size > 10_000
    code, out, err = run("evaluate", data / "test_labels.npy", workdir / "p.npy")
    assert code == 0 and "R_B" in out


def test_synth_mixture_shares_the_identities_among_random_models(tmp_path):
    assert main(["synth", "--n-ids", "12", "--n-test-ids", "6", "--mixture", "3",
                 "--out", str(tmp_path)]) == 0
    for name, n_ids in (("train", 12), ("test", 6)):
        labels = np.load(tmp_path / f"{name}_labels.npy")
        assert np.array_equal(np.unique(labels), np.arange(n_ids))
        assert np.load(tmp_path / f"{name}_features.npy").shape == (len(labels), 256)


def test_demo_runs_end_to_end(tmp_path):
    code, out, err = run("demo", "--n-ids", "15", "--out", tmp_path, "--no-progress")
    assert code == 0, err
    for method in ("sepfl (bundled weights, 'edges')", "SEPFL's scheme ('sepfl')",
                   "Infomap on kNN", "naive kNN threshold", "oracle of the 'edges' candidates"):
        assert method in out, out
    assert (tmp_path / "sepfl_demo.png").stat().st_size > 10_000


# ---------------------------------------------------------------- a stale kNN graph (item 2)


@pytest.mark.parametrize("layout", ["learn-to-cluster", "sepfl"])
def test_knn_graph_of_other_features_is_refused(workdir, cluster_args, tmp_path, layout):
    """Same N, rows shuffled: before, exit 0 and nonsense clusters."""
    features = np.load(workdir / "data" / "test_features.npy")
    shuffled = features[np.random.default_rng(1).permutation(len(features))]
    nbrs, sims = build_knn(shuffled, k=20, progress=False)
    graph = tmp_path / "stale.npz"
    io.write_knn(graph, nbrs, sims, layout=layout,
                 features=shuffled if layout == "sepfl" else None)
    code, out, err = run("cluster", *cluster_args, "--knn", graph, "--out", tmp_path / "p.npy")
    assert code == 2 and one_line_error(err)
    assert "built from other features" in err
    assert outputs(tmp_path) == ["stale.npz"]


# ---------------------------------------------------------------- checks before work (item 4)


@pytest.mark.parametrize("extra, message", [
    (["--labels", "{data}/train_labels.npy", "--out", "{tmp}/p.npy"], "labels but"),
    (["--out", "{tmp}/p.parquet"], "unknown format '.parquet'"),
    (["--out", "{tmp}/p.npy", "--report", "{tmp}/r.pdf"], "unknown format '.pdf'"),
    (["--out", "{tmp}/blocker/p.npy"], "is a file, not a folder"),
    (["--out", "{tmp}"], "is a folder"),
])
def test_inputs_and_outputs_are_checked_before_any_work(workdir, cluster_args, tmp_path,
                                                        extra, message):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    extra = [a.format(data=workdir / "data", tmp=tmp_path) for a in extra]
    code, out, err = run("-v", "cluster", *cluster_args, *extra)
    assert code == 2 and message in err
    assert "embeddings" not in err  # refused before the network ran
    assert outputs(tmp_path) == ["blocker"]


def test_a_wrong_dim_that_divides_the_bin_size_is_caught_by_the_labels(workdir, tmp_path):
    """Item 10: --dim 128 reads a D = 256 .bin as twice the rows; the labels say otherwise."""
    data = workdir / "data"
    features = tmp_path / "x.bin"
    np.load(data / "test_features.npy").tofile(features)  # raw, no sidecar
    code, out, err = run("cluster", features, "--dim", "128", "--labels",
                         data / "test_labels.npy", "--out", tmp_path / "p.npy")
    assert code == 2 and one_line_error(err) and "(is --dim right?)" in err
    assert "2,032 labels but" in err and "4,064 rows" in err
    assert outputs(tmp_path) == ["x.bin"]


# ---------------------------------------------------------------- one-line errors (item 5)


@pytest.mark.parametrize("argv, message", [
    (["cluster", "missing.npy", "--out", "{tmp}/x.npy"], "missing.npy"),
    (["cluster", "{data}/test_features.npy", "--checkpoint", "{root}/model.pt",
      "--out", "{tmp}/x.npy", "--threshold", "1.5"], "--threshold must be in [0, 1]"),
    (["cluster", "{data}/test_features.npy", "--checkpoint", "{root}/model.pt",
      "--out", "{tmp}/x.npy", "--k", "30"], "--k 30, but the model was trained for k = 20"),
    (["evaluate", "{data}/test_labels.npy", "{data}/train_labels.npy"], "has"),
    (["cluster", "{data}/test_labels.npy", "--out", "{tmp}/x.npy"], "features"),
    (["cluster", "{data}/test_features.npy", "--checkpoint", "{tmp}/broken.pt",
      "--out", "{tmp}/x.npy"], "not a readable checkpoint"),
    (["train", "{data}/train_features.npy", "{data}/test_labels.npy", "--out", "{tmp}/m.pt"]
     + TINY_TRAIN, "labels"),
    (["cluster", "{data}/test_features.npy", "--checkpoint", "{root}/model.pt",
      "--out", "{tmp}/x.npy", "--knn-backend", "faiss"], "needs faiss"),
    (["synth", "--n-ids", "4", "--mixture", "-1", "--out", "{tmp}/d"], "--mixture must be >= 0"),
    (["synth", "--n-ids", "4", "--mixture", "6", "--out", "{tmp}/d"], "got 6"),
])
def test_user_errors_are_one_line_without_traceback(workdir, tmp_path, argv, message):
    (tmp_path / "broken.pt").write_bytes((workdir / "model.pt").read_bytes()[:300])
    argv = [a.format(root=workdir, data=workdir / "data", tmp=tmp_path) for a in argv]
    # a faiss that cannot be imported, as on a machine without it
    (tmp_path / "nofaiss" / "faiss").mkdir(parents=True)
    (tmp_path / "nofaiss" / "faiss" / "__init__.py").write_text("raise ImportError('no faiss')")
    code, out, err = run(*argv, env={"PYTHONPATH": str(tmp_path / "nofaiss")})
    assert code == 2 and message in err and one_line_error(err), err
    assert len(err) < 300  # no pasted paragraph
    assert not (tmp_path / "x.npy").exists()


def test_ctrl_c_is_one_line_and_writes_nothing(workdir, cluster_args, tmp_path):
    code, out, err = run("cluster", *cluster_args, "--out", tmp_path / "p.npy", script=CTRL_C)
    assert code == 130 and one_line_error(err) and "interrupted" in err
    assert "done" not in out
    assert outputs(tmp_path) == []


# ---------------------------------------------------------------- training twice (item 7)


def test_rerunning_a_finished_training_says_so(workdir, tmp_path):
    data = workdir / "data"
    argv = ["train", data / "train_features.npy", data / "train_labels.npy",
            "--out", tmp_path / "model.pt"] + TINY_TRAIN
    code, out, err = run(*argv)
    assert code == 0, err
    assert outputs(tmp_path) == ["model.pt"]  # the resumable state is gone once done
    model = (tmp_path / "model.pt").read_bytes()
    code, out, err = run(*argv)
    assert code == 0 and "already holds the model trained on these features" in out, err
    assert (tmp_path / "model.pt").read_bytes() == model
    code, out, err = run(*argv, "--force", "--seed", "1")
    assert code == 0 and "model written" in out, err
    assert (tmp_path / "model.pt").read_bytes() != model
    other = ["train", data / "test_features.npy", data / "test_labels.npy",
             "--out", tmp_path / "model.pt"] + TINY_TRAIN
    code, out, err = run(*other)
    assert code == 2 and "trained on other data" in err and one_line_error(err)
