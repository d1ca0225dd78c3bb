"""Peak memory and stage times of ``sepfl cluster`` on a large synthetic set (1M samples by default).

The features (float32 [N, 256] face-like embeddings, ~64 per identity) and
their labels are written to ``--workdir`` as ``.npy`` files (kept for reruns
of the same N); then the command-line tool clusters them in a child process
exactly as a user would run it (the features are memory-mapped by
``sepfl.io.read_features``), and the child's peak resident memory is read
from ``getrusage(RUSAGE_CHILDREN)``, so data generation is not counted.
Options after ``--`` go to ``sepfl cluster`` unchanged.

With ``--ceiling`` the kNN graph is built first by ``sepfl knn`` (its own
child process, given the kNN options among those after ``--``) and saved, then
``sepfl cluster --knn`` reads it, and the parent scores the ceilings of both
schemes on that graph (:func:`sepfl.baselines.edges_oracle` and
:func:`sepfl.baselines.oracle`: perfect decisions on their own candidates) and
Infomap on the kNN graph at the ``--infomap`` similarity floors (k = 50): how
far sepfl's F is from what its candidates allow at this N, and from the
training-free alternative.

    python benchmarks/memory.py --workdir /tmp/sepfl-1m -- --no-knn-exact --bf16
    python benchmarks/memory.py --n 300000 --ceiling --workdir W -- --no-knn-exact
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

from sepfl import baselines  # noqa: E402
from sepfl.io import read_knn  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402

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


def run_sepfl(arguments: list[str]) -> tuple[list[str], float]:
    """Output lines of ``sepfl -v ARGUMENTS`` (echoed as they come) and its wall time."""
    command = [sys.executable, "-m", "sepfl.cli", "-v", *arguments, "--no-progress"]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    if proc.wait() != 0:
        raise RuntimeError(f"sepfl {arguments[0]} exited with code {proc.returncode}")
    return lines, time.perf_counter() - start


def knn_options(options: list[str]) -> list[str]:
    """The kNN settings among ``sepfl cluster`` options: ``--k``, ``--knn-*``,
    ``--no-knn-exact``, ``--device`` and ``--threads``, each with its value."""
    kept, keep = [], False
    for option in options:
        if option.startswith("--"):
            keep = option in ("--k", "--device", "--threads") or "knn-" in option
        if keep:
            kept.append(option)
    return kept


def ceilings(knn_path: Path, labels: Path, floors: list[float]) -> list[list[str]]:
    """Rows (method, F_P, F_B, NMI, seconds) of both schemes' oracles and Infomap (k 50)
    at each similarity floor, on the saved kNN graph."""
    nbrs, sims = read_knn(knn_path)[:2]
    gt = np.load(labels)
    runs = [("oracle of 'edges' (40 candidates)", lambda: baselines.edges_oracle(nbrs, gt, 40)),
            ("oracle of 'sepfl' (one pair per sample)", lambda: baselines.oracle(nbrs, sims, gt))]
    runs += [(f"Infomap on the kNN graph, k 50, similarity > {floor:.2f}",
              lambda floor=floor: baselines.infomap_knn(nbrs, sims, 50, floor))
             for floor in floors]
    rows = []
    for method, labels_of in runs:
        start = time.perf_counter()
        found = evaluate(gt, labels_of())
        rows.append([method] + [f"{found[key]:.4f}" for key in ("pairwise_f", "bcubed_f", "nmi")]
                    + [f"{time.perf_counter() - start:.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples (default: 1,000,000)")
    parser.add_argument("--workdir", default="sepfl-memory", help="folder for the data files")
    parser.add_argument("--ceiling", action="store_true",
                        help="build the kNN graph with sepfl knn first, then score both "
                             "schemes' oracles and Infomap on it")
    parser.add_argument("--infomap", default="0.0,0.3",
                        help="with --ceiling: Infomap's similarity floors (default: 0.0,0.3; "
                             "empty: no Infomap)")
    parser.add_argument("options", nargs="*", help="options for sepfl cluster (after --)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    features, labels = write_dataset(workdir, args.n)
    cluster = ["cluster", str(features), "--labels", str(labels),
               "--out", str(workdir / f"pred_{args.n}.npy"), *args.options]
    knn_seconds, knn_path = {}, workdir / f"knn_{args.n}.npz"
    if args.ceiling:
        _, knn_seconds["knn (sepfl knn)"] = run_sepfl(
            ["knn", str(features), "--out", str(knn_path), *knn_options(args.options)])
        cluster += ["--knn", str(knn_path)]
    lines, wall = run_sepfl(cluster)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    stages = {**knn_seconds,
              **{m.group(1): float(m.group(2)) for m in map(STAGE_LINE.match, lines) if m}}
    wall += sum(knn_seconds.values())
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
    if args.ceiling:
        rows = ceilings(knn_path, labels, [float(f) for f in args.infomap.split(",") if f])
        print()
        print(header(f"ceilings on the same kNN graph ({args.n:,} samples)"))
        print(table(["method", "F_P", "F_B", "NMI", "seconds"],
                    [["sepfl cluster " + (" ".join(args.options) or "(defaults)"), f_p, f_b, nmi,
                      f"{wall:.0f}"]] + rows))


if __name__ == "__main__":
    main()
