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
from sepfl.datasets import make_splits, random_models

SEPFL = Path(sys.executable).with_name("sepfl")
TINY_TRAIN = ["--k", "20", "--ranks", "10", "--epochs", "1", "--pairs-per-epoch", "256",
              "--batch-size", "64", "--warmup-steps", "20", "--refit-steps", "20",
              "--classifier-batch-size", "64", "--edge-steps", "300", "--device", "cpu",
              "--no-progress"]
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


@pytest.mark.parametrize("hard", [[], ["--hard"]])
def test_synth_mixture_shares_the_identities_among_random_models(tmp_path, hard):
    assert main(["synth", "--n-ids", "12", "--n-test-ids", "6", "--mixture", "3",
                 "--out", str(tmp_path), *hard]) == 0
    for name, n_ids in (("train", 12), ("test", 6)):
        labels = np.load(tmp_path / f"{name}_labels.npy")
        assert np.array_equal(np.unique(labels), np.arange(n_ids))
        assert np.load(tmp_path / f"{name}_features.npy").shape == (len(labels), 256)
    splits = make_splits(12, 6, seed=0, model=random_models(3, seed=0, hard=bool(hard)))
    np.testing.assert_array_equal(np.load(tmp_path / "test_features.npy"),
                                  splits.test.features)


def test_demo_runs_end_to_end(tmp_path):
    code, out, err = run("demo", "--n-ids", "15", "--out", tmp_path, "--no-progress")
    assert code == 0, err
    for method in ("sepfl (bundled weights, 'edges')", "SEPFL's scheme ('sepfl')",
                   "Infomap on kNN", "naive kNN threshold", "oracle of the 'edges' candidates"):
        assert method in out, out
    assert (tmp_path / "sepfl_demo.png").stat().st_size > 10_000


# ---------------------------------------------------------------- Ctrl-C (item 5)
# (user mistakes, each refused in one line before any work, are rows of test_bad_input.py)


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
