"""How hard are the synthetic face sets? Prints the numbers quoted in sepfl.datasets.

For the test split of ``make_splits`` it reports

* the naive baseline: kNN cosine threshold + connected components, pairwise F
  over a sweep of thresholds (and the best);
* the SEPFL oracle: density (SEPFL §2), each sample's nearest denser
  neighbour (§3), a perfect pair classifier (link only same-label pairs),
  connected components;
* how long generating a 600K-sample set takes.

Usage: python benchmarks/calibrate_synth.py [--train-ids 1500] [--test-ids 1500] [--seed 0]

The density / pair code here is a deliberately plain numpy version, independent
of sepfl.ops, so the calibration does not lean on the code it is meant to test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import components_scipy
from sepfl.datasets import make_faces, make_splits
from sepfl.knn import build_knn
from sepfl.metrics import pairwise

RHO = 0.7


def threshold_clusters(nbrs: np.ndarray, sims: np.ndarray, threshold: float) -> np.ndarray:
    rows, cols = np.nonzero(sims[:, 1:] >= threshold)
    return components_scipy(rows, nbrs[rows, cols + 1], len(nbrs))


def density(sims: np.ndarray) -> np.ndarray:
    s = np.clip(sims, 0.0, 1.0)
    a = s.sum(axis=1)
    c = (s >= RHO).sum(axis=1)
    return (a / a.max() + c / c.max()) / 2


def oracle_clusters(nbrs: np.ndarray, sims: np.ndarray, labels: np.ndarray) -> np.ndarray:
    dens = density(sims)
    denser = dens[nbrs[:, 1:]] > dens[:, None]
    src = np.flatnonzero(denser.any(axis=1))
    dst = nbrs[src, 1 + denser[src].argmax(axis=1)]
    same = labels[src] == labels[dst]
    return components_scipy(src[same], dst[same], len(nbrs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-ids", type=int, default=1500)
    parser.add_argument("--test-ids", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--gen-ids", type=int, default=9000,
                        help="identities of the timed generation (~65 samples each)")
    args = parser.parse_args()

    start = time.perf_counter()
    test = make_splits(args.train_ids, args.test_ids, seed=args.seed).test
    print(f"test split: N = {len(test.labels)}, identities = {args.test_ids}, "
          f"D = {test.features.shape[1]} ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    nbrs, sims = build_knn(test.features, k=args.k)
    print(f"kNN k = {args.k}: {time.perf_counter() - start:.1f} s")
    same = test.labels[nbrs[:, 1:]] == test.labels[:, None]
    print(f"kNN edges (ranks 1..{args.k - 1}) joining the same identity: {same.mean():.3f}; "
          f"rank 1 only: {same[:, 0].mean():.3f}")

    print("\nnaive baseline: threshold + connected components")
    print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'F_P':>6} {'clusters':>8}")
    best = (0.0, 0.0)
    for threshold in np.arange(0.30, 0.901, 0.01):
        pred = threshold_clusters(nbrs, sims, threshold)
        precision, recall, f = pairwise(test.labels, pred)
        best = max(best, (f, threshold))
        print(f"{threshold:9.3f} {precision:9.3f} {recall:7.3f} {f:6.3f} {pred.max() + 1:8d}")
    print(f"best naive F_P = {best[0]:.3f} at threshold {best[1]:.3f}")

    pred = oracle_clusters(nbrs, sims, test.labels)
    precision, recall, f = pairwise(test.labels, pred)
    print(f"SEPFL oracle (perfect classifier on nearest-denser pairs): P = {precision:.3f} "
          f"R = {recall:.3f} F_P = {f:.3f}, clusters = {pred.max() + 1}")

    start = time.perf_counter()
    big = make_faces(args.gen_ids, seed=args.seed)
    print(f"\ngenerated {len(big.labels)} samples in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
