"""Peak memory and stage times of ``sepfl cluster`` on a large synthetic set (1M samples by default).

The features (float32 [N, 256] face-like embeddings, ~64 per identity) and
their labels are written to ``--workdir`` as ``.npy`` files (kept for reruns
of the same N); then the command-line tool clusters them in a child process
exactly as a user would run it (the features are memory-mapped by
``sepfl.io.read_features``), and the child's peak resident memory is read
from ``getrusage(RUSAGE_CHILDREN)``, so data generation is not counted.
Options after ``--`` go to ``sepfl cluster`` unchanged.

    python benchmarks/memory.py --workdir /tmp/sepfl-1m -- --no-knn-exact --bf16
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import faces_of_size, header, table  # noqa: E402

# "sepfl: knn          12.345 s" from ``sepfl -v`` (the stages of the scheme that ran, in
# order); the row of --labels: P_P R_P F_P P_B R_B F_B NMI.
STAGE_LINE = re.compile(r"^sepfl: (\w+)\s+([\d.]+) s$")
METRICS_LINE = re.compile(r"^sepfl((?:\s+[\d.]+){7})$")


def write_dataset(workdir: Path, n: int) -> tuple[Path, Path]:
    """``features.npy`` float32 [n, 256] and ``labels.npy`` int64 [n] in ``workdir`` (reused)."""
    features_path, labels_path = workdir / f"features_{n}.npy", workdir / f"labels_{n}.npy"
    if not (features_path.exists() and labels_path.exists()):
        data = faces_of_size(n, seed=11)
        workdir.mkdir(parents=True, exist_ok=True)
        np.save(features_path, data.features)
        np.save(labels_path, data.labels)
    return features_path, labels_path


def run_cluster(features: Path, labels: Path, out: Path, options: list[str]) -> tuple[list[str], float]:
    """Output lines of ``sepfl -v cluster`` (echoed as they come) and its wall time."""
    command = [sys.executable, "-m", "sepfl.cli", "-v", "cluster", str(features),
               "--labels", str(labels), "--out", str(out), "--no-progress", *options]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    if proc.wait() != 0:
        raise RuntimeError(f"sepfl cluster exited with code {proc.returncode}")
    return lines, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples (default: 1,000,000)")
    parser.add_argument("--workdir", default="sepfl-memory", help="folder for the data files")
    parser.add_argument("options", nargs="*", help="options for sepfl cluster (after --)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    features, labels = write_dataset(workdir, args.n)
    lines, wall = run_cluster(features, labels, workdir / f"pred_{args.n}.npy", args.options)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    stages = {m.group(1): float(m.group(2)) for m in map(STAGE_LINE.match, lines) if m}
    found = [m.group(1).split() for m in map(METRICS_LINE.match, lines) if m]
    if not found:
        raise RuntimeError("sepfl cluster printed no metrics row; see its output above")
    f_p, f_b, nmi = found[0][2], found[0][5], found[0][6]
    print()
    print(header(f"memory: sepfl cluster on {args.n:,} synthetic samples, CPU"))
    print(table(["N", "options"] + [f"{s} s" for s in stages]
                + ["wall s", "peak RSS GiB", "bytes / sample", "F_P", "F_B", "NMI"],
                [[f"{args.n:,}", " ".join(args.options) or "(defaults)"]
                 + [f"{seconds:.1f}" for seconds in stages.values()]
                 + [f"{wall:.0f}", f"{peak_gib:.2f}", f"{peak_gib * 2**30 / args.n:,.0f}",
                    f_p, f_b, nmi]]))


if __name__ == "__main__":
    main()
