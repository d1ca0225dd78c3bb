"""Time per stage and per-rank peak memory of sharded clustering against the number of processes.

The synthetic face-like features (100K by default) and their labels are
written to ``--workdir`` as ``.npy`` files (memory.py's, kept for reruns of the
same N). For each process count P, ``torchrun --standalone --nproc-per-node=P``
runs this script's worker as a user's job would: every rank memory-maps the
features and clusters them with the bundled model and
``SEPFL(distributed=True)`` (gloo on the CPU; on a CUDA machine NCCL, one GPU
per rank), then writes its stage times, the seconds of each stage spent in
collectives (``ShardResult.collectives``), its peak memory and, on rank 0, the
labels. The table has a row per rank, with F_P / F_B of each run and whether
its partition is the first run's. The driver's torch threads are split evenly
over the ranks of a run (OMP_NUM_THREADS and ``threads``).

    python benchmarks/distributed.py [--n 100000] [--procs 1,2] [--workdir sepfl-distributed]
        [--distributed-features auto|all|shard]

By default P is 1 and 2 on the CPU, 1 and every GPU on a CUDA machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table  # noqa: E402
from memory import write_dataset  # noqa: E402

from sepfl.estimator import SEPFL  # noqa: E402
from sepfl.io import read_features  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(features: Path, out: Path, device: str, threads: int, placement: str) -> None:
    """One rank of the torchrun job: cluster, then write ``rank_R.json`` (and, on rank 0,
    ``labels.npy``) to ``out``."""
    estimator = SEPFL.pretrained(distributed=True, distributed_features=placement,
                                 device=device, threads=threads, progress=False)
    x = read_features(features, mmap=True)
    start_gib = peak_rss_gib()
    start = time.perf_counter()
    labels = estimator.predict(x)
    seconds = time.perf_counter() - start
    result, rank = estimator.result_, int(os.environ["RANK"])
    gpu_gib = (torch.cuda.max_memory_allocated(int(os.environ["LOCAL_RANK"])) / 2**30
               if torch.cuda.is_initialized() else None)
    if rank == 0:
        np.save(out / "labels.npy", labels)
    (out / f"rank_{rank}.json").write_text(json.dumps(dict(
        rank=rank, rows=len(result.rows), threads=torch.get_num_threads(), seconds=seconds,
        timings=result.timings, collectives=result.collectives, start_gib=start_gib,
        peak_gib=peak_rss_gib(), gpu_gib=gpu_gib)))


def launch(procs: int, features: Path, out: Path, device: str, threads: int,
           placement: str) -> float:
    """Run ``procs`` ranks of the worker under torchrun; its wall time in seconds."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank_*.json"):
        old.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", os.path.abspath(__file__), "--worker",
               "--features", str(features), "--out", str(out), "--device", device,
               "--threads", str(threads), "--distributed-features", placement]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="samples (default: 100,000)")
    parser.add_argument("--procs", help="process counts, e.g. 1,2 (default: 1 and 2 on the "
                                        "CPU, 1 and all GPUs on a CUDA machine)")
    parser.add_argument("--workdir", default="sepfl-distributed", help="folder for the files")
    parser.add_argument("--distributed-features", default="auto",
                        choices=["auto", "all", "shard"],
                        help="where the features live (ClusterConfig.distributed_features; "
                             "default auto)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.features, args.out, args.device, args.threads, args.distributed_features)
        return
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    default = sorted({1, torch.cuda.device_count() if cuda else 2})
    procs = [int(p) for p in args.procs.split(",")] if args.procs else default
    workdir = Path(args.workdir)
    features, labels_path = write_dataset(workdir, args.n)
    gt = np.load(labels_path)
    rows, first, stages = [], None, None
    for p in procs:
        threads = max(1, torch.get_num_threads() // p)
        out = workdir / f"procs_{p}"
        load = os.getloadavg()[0]  # other jobs on the machine share its cores
        wall = launch(p, features, out, device, threads, args.distributed_features)
        ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in range(p)]
        labels = np.load(out / "labels.npy")
        if first is None:
            first, stages, same = labels, list(ranks[0]["timings"]), "(reference)"
        elif np.array_equal(labels, first):
            same = "yes"
        else:
            agreement = evaluate(first, labels)["pairwise_f"]
            same = f"no: pairwise F {agreement:.5f} against P={procs[0]}"
        quality = evaluate(gt, labels)
        run = [f"{load:.1f}", f"{wall:.0f}", f"{quality['pairwise_f']:.4f}",
               f"{quality['bcubed_f']:.4f}", same]
        for r in ranks:
            memory = [f"{r['start_gib']:.2f}", f"{r['peak_gib']:.2f}"]
            if cuda:
                memory.append(f"{r['gpu_gib']:.2f}")
            rows.append([p, r["threads"], r["rank"], f"{r['rows']:,}"]
                        + [f"{r['timings'][s]:.2f} ({r['collectives'].get(s, 0.0):.2f})"
                           for s in stages]
                        + [f"{r['seconds']:.1f}"] + memory
                        + (run if r["rank"] == 0 else [""] * len(run)))
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(header(f"distributed: sharded clustering of {args.n:,} synthetic samples, "
                 f"{device}, P processes on this machine, features "
                 f"{args.distributed_features!r}"))
    print(f"threads per process: this process's {torch.get_num_threads()} torch threads split "
          f"over the P processes; stage cells: seconds (of which in collectives, waiting for "
          f"other ranks included); load before: the machine's 1-minute load average at "
          f"launch; wall: torchrun start to exit")
    print(table(["P", "threads", "rank", "rows"] + [f"{s} s" for s in stages]
                + ["predict s", "RSS before GiB", "peak RSS GiB"]
                + (["peak CUDA GiB"] if cuda else [])
                + ["load before", "wall s", "F_P", "F_B", "same partition"], rows))


if __name__ == "__main__":
    main()
