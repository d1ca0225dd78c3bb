"""Crash safety and run-to-run determinism, checked in child processes."""
import signal
import subprocess
import sys

import numpy as np
import pytest

from sepfl import SEPFL
from sepfl.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # each test trains in child processes

SETUP = """
import os, signal, sys
import numpy as np, torch
from sepfl import SEPFL
from sepfl.datasets import make_faces
data = make_faces(12, dim=16, seed=1)
est = SEPFL(k=10, ranks=5, epochs=2, pairs_per_epoch=128, batch_size=64, warmup_steps=20,
            refit_steps=20, classifier_batch_size=64, edge_steps=300, device="cpu",
            progress=False)
"""


def child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SETUP + code], capture_output=True, text=True,
                          timeout=300)


def test_kill_during_checkpoint_save_keeps_the_previous_one(tmp_path):
    path = tmp_path / "model.pt"
    run = child(f"""
est.fit(data.features, data.labels, checkpoint={str(path)!r})
def dying_save(obj, f, *args, **kwargs):
    with open(f, "wb") as handle:
        handle.write(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
est.save({str(path)!r})
""")
    assert run.returncode == -signal.SIGKILL, run.stderr
    checkpoint = load_checkpoint(path)  # the training checkpoint of the last stage survives
    # 2 epochs, the refit, then the edge head
    assert checkpoint["epoch"] == 4 and checkpoint["k"] == 10
    assert SEPFL.load(path, device="cpu", progress=False).model_.dim == 16


def test_same_inputs_and_seed_give_identical_labels_across_runs():
    code = """
labels = est.fit(data.features, data.labels).predict(data.features)
print(labels.tolist())
"""
    outputs = [child(code) for _ in range(2)]
    for run in outputs:
        assert run.returncode == 0, run.stderr
    first, second = (np.array(eval(run.stdout.strip().splitlines()[-1])) for run in outputs)
    assert len(first) > 100 and np.array_equal(first, second)
