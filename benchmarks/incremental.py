"""Incremental against one-shot clustering: the never-split labels' F, each add's time.

A test population of the project's generator (``make_splits(1, ids, seed).test``:
1,500 identities and, at seed 0, 94,683 samples by default; not the quality tables' split of
``make_splits(1500, 1500, seed=0)``; ``--ids`` for fewer), shuffled, is clustered once whole
and once fed as ``--batches`` equal batches (``predict`` on the first, ``add``
for each other). Printed: F_P / F_B of both, of the incremental regrouping
before the never-split labelling (``result_.groups``), whether any old cluster
was split (it must not be), and per add its time as a share of the one-shot
time, with what it re-embedded and re-scored. ``--seed`` draws another
population of the same generator; ``--checkpoint`` uses a trained model instead
of the bundled weights; ``--merge-threshold`` sets ``ClusterConfig.merge_threshold``
(0 lets the labels follow the regrouping, as before that setting existed).

    python benchmarks/incremental.py --ids 300 --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table  # noqa: E402

from sepfl.datasets import make_splits  # noqa: E402
from sepfl.estimator import SEPFL  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402


def split_kept(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether every old cluster still has one label."""
    pairs = np.unique(np.stack([before, after[:len(before)]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1500, help="test identities (default 1500)")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--scheme", default="edges", choices=["edges", "sepfl"])
    parser.add_argument("--refresh", type=float, default=None,
                        help="ClusterConfig.refresh (default: its default)")
    parser.add_argument("--merge-threshold", type=float, default=None,
                        help="ClusterConfig.merge_threshold (default: its default)")
    parser.add_argument("--seed", type=int, default=0, help="make_splits' seed (default 0)")
    parser.add_argument("--checkpoint", default=None,
                        help="a model saved by sepfl train / SEPFL.save (default: bundled)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    data = make_splits(1, args.ids, seed=args.seed).test
    order = np.random.default_rng(0).permutation(len(data.labels))
    x, y = data.features[order], data.labels[order]
    params = dict(scheme=args.scheme, threads=args.threads, progress=False)
    for name in ("refresh", "merge_threshold"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    estimator = (SEPFL.load(args.checkpoint, **params) if args.checkpoint
                 else SEPFL.pretrained(**params))

    start = time.perf_counter()
    one_shot = estimator.predict(x)
    t_one = time.perf_counter() - start
    one = evaluate(y, one_shot)

    parts = np.array_split(np.arange(len(y)), args.batches)
    start = time.perf_counter()
    labels = estimator.predict(x[parts[0]])
    rows = [["predict", len(parts[0]), f"{time.perf_counter() - start:.1f}", "", "", "", "", ""]]
    whole = True
    for part in parts[1:]:
        previous = labels
        start = time.perf_counter()
        labels = estimator.add(x[part])
        seconds = time.perf_counter() - start
        whole &= split_kept(previous, labels)
        result = estimator.result_
        rows.append(["add", len(part), f"{seconds:.1f}", f"{seconds / t_one:.1%}",
                     len(result.reembedded), f"{len(result.rescored):,} / {len(result.src):,}",
                     len(result.merged),
                     " ".join(f"{k} {v:.1f}" for k, v in result.timings.items() if v >= 0.05)])
    inc, raw = evaluate(y, labels), evaluate(y, estimator.result_.groups)

    print(header(f"incremental clustering, {len(y):,} samples of {args.ids} identities, "
                 f"{args.batches} batches, scheme {args.scheme}, refresh "
                 f"{estimator.cluster_config.refresh}, merge threshold "
                 f"{estimator.cluster_config.merge_threshold}, seed {args.seed}, "
                 f"{args.checkpoint or 'bundled weights'}"))
    print(table(["run", "F_P", "F_B", "seconds", "old clusters kept whole"],
                [["one shot", f"{one['pairwise_f']:.4f}", f"{one['bcubed_f']:.4f}",
                  f"{t_one:.1f}", ""],
                 ["incremental", f"{inc['pairwise_f']:.4f}", f"{inc['bcubed_f']:.4f}", "",
                  "yes" if whole else "NO"],
                 ["incremental regrouping, which the labels follow (may split)",
                  f"{raw['pairwise_f']:.4f}", f"{raw['bcubed_f']:.4f}", "", ""]]))
    print()
    print(table(["step", "samples", "seconds", "of one-shot", "re-embedded", "re-scored pairs",
                 "merged", "stages s"], rows))


if __name__ == "__main__":
    main()
