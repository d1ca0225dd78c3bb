"""Per-stage time, end-to-end time and peak memory of the pipeline against N.

For each N (synthetic face-like sets) it runs the whole pipeline with both
schemes on one kNN graph and prints the time of every stage (kNN, node
embeddings, the scheme's pair selection, scores and grouping) plus end to
end, peak resident memory, time per sample and F; it stops growing N once a
run exceeds ``--budget`` seconds. In the same run, at the smallest N, the
un-cached per-pair network (both samples of every pair embedded from scratch,
as the authors' test code does) is timed against sepfl's per-sample
embeddings + pair scores on SEPFL's pairs.

    python benchmarks/speed.py [--sizes 10000,30000,100000,300000,600000] [--device cpu]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import faces_of_size, header, per_pair_probability, table, timed  # noqa: E402

from sepfl.cluster import cluster  # noqa: E402
from sepfl.estimator import SEPFL  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402

# the scheme's own stages: candidate edges / pairs, their scores, grouping / union-find
SCHEME_STAGES = {"edges": ("edges", "scores", "group"), "sepfl": ("pairs", "scores", "link")}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000,300000,600000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="network dtype: auto picks bf16 where the CPU runs it faster")
    parser.add_argument("--budget", type=float, default=600,
                        help="stop after the first N whose run takes longer (seconds)")
    args = parser.parse_args()
    bf16 = {"auto": None, "on": True, "off": False}[args.bf16]
    estimator = SEPFL.pretrained(device=args.device, bf16=bf16, progress=False)
    model = estimator.model_
    rows, baseline = [], "per-pair baseline: measured on the CPU only"
    for n in (int(s) for s in args.sizes.split(",")):
        data = faces_of_size(n, seed=7)
        features, gt = data.features, data.labels
        start = time.perf_counter()
        knn = build_knn(features, k=model.k, progress=False)
        knn_s = time.perf_counter() - start
        totals = {}
        for scheme, stages in SCHEME_STAGES.items():
            config = dataclasses.replace(estimator.cluster_config, scheme=scheme)
            start = time.perf_counter()
            result = cluster(features, model, config, knn=knn)
            totals[scheme] = total = time.perf_counter() - start + knn_s
            quality = evaluate(gt, result.labels)
            rows.append([f"{len(gt):,}", scheme, f"{knn_s:.2f}",
                         f"{result.timings['embeddings']:.2f}"]
                        + [f"{result.timings[s]:.2f}" for s in stages]
                        + [f"{total:.1f}", f"{total / len(gt) * 1e6:.0f}",
                           f"{peak_rss_gib():.1f}", f"{quality['pairwise_f']:.3f}",
                           f"{quality['bcubed_f']:.3f}"])
            print(" | ".join(rows[-1]), flush=True)
        print(f"edges / sepfl end to end: {totals['edges'] / totals['sepfl']:.2f}x", flush=True)
        if len(rows) == 2 and args.device == "cpu":
            _, reference = timed(lambda: per_pair_probability(
                model, torch.from_numpy(features), torch.as_tensor(knn[0]),
                torch.as_tensor(result.src), torch.as_tensor(result.dst)), repeat=1, warmup=0)
            cached = result.timings["embeddings"] + result.timings["scores"]
            baseline = (f"per-pair network at N = {len(gt):,}: {reference:.1f} s for "
                        f"{len(result.src):,} pairs; sepfl embeddings + scores: {cached:.1f} s "
                        f"({reference / cached:.1f}x)")
            print(baseline, flush=True)
        if max(totals.values()) > args.budget:
            break
    print()
    print(header(f"speed: pipeline stages vs N, device {args.device}, bf16 {args.bf16}"))
    print(baseline)
    print(table(["N", "scheme", "knn s", "embeddings s", "edges / pairs s", "scores s",
                 "group / link s", "total s", "µs/sample", "peak RSS GiB", "F_P", "F_B"], rows))

if __name__ == "__main__":
    main()
