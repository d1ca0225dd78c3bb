"""Time build_knn on a face-like set and check its recall against fp32 brute force.

Usage: python benchmarks/bench_knn.py [--ids 9000] [--k 80] [--device cuda]
       [--precisions fp32,tf32,bf16] [--chunks 0] [--repeat 3]

Correctness first: every timed configuration's neighbours are compared with the
fp32 torch graph (recall of ranks 1..k-1 over all rows) before its time (the median
of ``--repeat`` runs after one warm-up) is printed. On the CPU the default set is
small; ``--ids 9000`` gives ~585K samples (MS1M part1_test size). ``--chunks 0``
means the automatic block size.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import recall, timed  # noqa: E402

from sepfl.datasets import make_faces  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402


def block_profile(x: torch.Tensor, k: int, chunk: int, dtype: torch.dtype) -> str:
    """Seconds for one block's matrix product and its top-k, scaled to the whole set."""
    base = x.to(dtype)
    q = base[:chunk]
    steps = {"matmul": lambda: q @ base.T}
    scores = steps["matmul"]()
    steps["topk"] = lambda: scores.topk(k + 40, dim=1)
    out = []
    for name, step in steps.items():
        step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        out.append(f"{name} {(time.perf_counter() - start) / 5 * len(x) / chunk:.3f} s")
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=300)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--chunks", default="0")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="",
                        help="CUDA: block sizes at which to time one block's matmul and topk")
    args = parser.parse_args()

    start = time.perf_counter()
    faces = make_faces(args.ids, dim=args.dim, seed=0)
    x = torch.from_numpy(faces.features).to(args.device)
    print(f"{len(x)} x {args.dim} on {args.device} "
          f"({torch.cuda.get_device_name() if x.is_cuda else 'cpu'}), k = {args.k}; "
          f"generated in {time.perf_counter() - start:.1f} s")
    for chunk in (int(c) for c in args.profile.split(",") if c):
        for dtype in (torch.float32, torch.bfloat16):
            print(f"block {chunk} {dtype}: {block_profile(x, args.k, chunk, dtype)}")

    def knn(precision: str, chunk: int):
        return timed(lambda: build_knn(x, k=args.k, backend="torch", precision=precision,
                                       chunk_size=chunk or None, progress=False),
                     repeat=args.repeat)

    (true, _), fp32_time = knn("fp32", 0)
    print(f"{'precision':>9} {'chunk':>6} {'recall':>7} {'seconds':>8}")
    print(f"{'fp32':>9} {'auto':>6} {1.0:7.4f} {fp32_time:8.3f}")
    for precision in args.precisions.split(","):
        for chunk in (int(c) for c in args.chunks.split(",")):
            if precision == "fp32" and chunk == 0:
                continue
            (nbrs, _), seconds = knn(precision, chunk)
            print(f"{precision:>9} {chunk or 'auto':>6} {recall(nbrs, true):7.4f} "
                  f"{seconds:8.3f}")


if __name__ == "__main__":
    main()
