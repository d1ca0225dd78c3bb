"""The sepfl command line, driven through ``sepfl.cli.main`` as a user would type it."""
import numpy as np
import pytest

from sepfl import io
from sepfl.cli import build_parser, main

TINY_TRAIN = ["--k", "20", "--ranks", "10", "--epochs", "1", "--pairs-per-epoch", "256",
              "--batch-size", "64", "--warmup-steps", "20", "--refit-steps", "20",
              "--classifier-batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Synthetic splits and a tiny trained model, made through the CLI itself."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["synth", "--n-ids", "25", "--out", str(root / "data")]) == 0
    assert main(["train", str(root / "data/train_features.npy"),
                 str(root / "data/train_labels.npy"), "--out", str(root / "model.pt")]
                + TINY_TRAIN) == 0
    return root


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"demo", "synth", "knn", "train", "cluster", "evaluate"}
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"sepfl {name}" in out


def test_cluster_writes_labels_and_reports(workdir, capsys):
    data = workdir / "data"
    for suffix in (".npy", ".csv", ".meta"):
        out = workdir / f"pred{suffix}"
        assert main(["cluster", str(data / "test_features.npy"), "--checkpoint",
                     str(workdir / "model.pt"), "--out", str(out), "--no-progress"]) == 0
        labels, _ = io.read_labels(out)
        assert len(labels) == len(np.load(data / "test_labels.npy"))
    text = capsys.readouterr().out
    assert "clusters" in text and "singletons" in text


def test_cluster_with_labels_report_and_knn(workdir, capsys):
    data = workdir / "data"
    assert main(["knn", str(data / "test_features.npy"), "--k", "20", "--out",
                 str(workdir / "knn.npz"), "--no-progress"]) == 0
    assert main(["cluster", str(data / "test_features.npy"), "--checkpoint",
                 str(workdir / "model.pt"), "--knn", str(workdir / "knn.npz"),
                 "--labels", str(data / "test_labels.npy"), "--report",
                 str(workdir / "report.png"), "--out", str(workdir / "p.npy")]) == 0
    out = capsys.readouterr().out
    assert "F_P" in out and (workdir / "report.png").stat().st_size > 10_000
    assert main(["evaluate", str(data / "test_labels.npy"), str(workdir / "p.npy")]) == 0
    assert "NMI" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["cluster", "missing.npy", "--out", "x.npy"], "missing.npy"),
    (["cluster", "{data}/test_features.npy", "--checkpoint", "{root}/model.pt",
      "--out", "{root}/x.npy", "--threshold", "1.5"], "threshold must be in [0, 1]"),
    (["cluster", "{data}/test_features.npy", "--checkpoint", "{root}/model.pt",
      "--out", "{root}/x.npy", "--k", "30"], "k = 20"),
    (["evaluate", "{data}/test_labels.npy", "{data}/train_labels.npy"], "has"),
    (["cluster", "{data}/test_labels.npy", "--out", "{root}/x.npy"], "features"),
    (["train", "{data}/train_features.npy", "{data}/test_labels.npy", "--out", "{root}/m.pt"]
     + TINY_TRAIN, "labels"),
])
def test_user_errors_are_one_line_without_traceback(workdir, capsys, argv, message):
    argv = [a.format(root=workdir, data=workdir / "data") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "x.npy").exists()


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--n-ids", "15", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sepfl (bundled weights)" in out and "naive kNN threshold" in out
    assert (tmp_path / "sepfl_demo.png").stat().st_size > 10_000
