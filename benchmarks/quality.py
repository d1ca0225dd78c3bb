"""Clustering quality on the synthetic splits: sepfl against the oracle and untrained baselines.

One table of F_P / F_B / NMI and wall time on the test split (identities
disjoint from training) for: sepfl's default scheme ("edges") and SEPFL's
("sepfl"); each scheme's oracle (perfect decisions on its own candidates);
Infomap on the kNN graph (best of its sweep, see populations.py); the kNN cosine-threshold baseline (whole
sweep and best point); nearest-denser links with a cosine threshold (sweep,
best point, and all accepted); HDBSCAN and MiniBatchKMeans given the true
number of clusters, each in a subprocess stopped after ``--limit`` seconds.

    python benchmarks/quality.py --checkpoint python/sepfl/weights/default_k80_d256.pt
    python benchmarks/quality.py --train          # train on the split first (slow on a CPU)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table  # noqa: E402
from populations import best_infomap  # noqa: E402

from sepfl import baselines  # noqa: E402
from sepfl.config import ClusterConfig  # noqa: E402
from sepfl.datasets import make_splits  # noqa: E402
from sepfl.estimator import SEPFL  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402

THRESHOLDS = np.round(np.arange(0.30, 0.91, 0.025), 3)


def _sklearn_worker(name, features, n_clusters, queue):
    from sklearn.cluster import HDBSCAN, MiniBatchKMeans

    start = time.perf_counter()
    if name == "hdbscan":
        labels = HDBSCAN(min_cluster_size=2).fit_predict(features)
        noise = labels < 0  # every noise point is its own cluster
        labels[noise] = labels.max() + 1 + np.arange(noise.sum())
    else:
        labels = MiniBatchKMeans(n_clusters, random_state=0, n_init=1,
                                 batch_size=4096).fit_predict(features)
    queue.put((labels, time.perf_counter() - start))


def sklearn_run(name, features, n_clusters, limit):
    """(labels, seconds), or None when it did not finish within ``limit`` seconds.

    The result is read before joining: a child holding a large queued result
    only exits once the parent has read it.
    """
    context = mp.get_context("spawn")  # fork after OpenMP use (faiss, torch) can hang the child
    results = context.Queue()
    proc = context.Process(target=_sklearn_worker, args=(name, features, n_clusters, results))
    proc.start()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            found = results.get(timeout=1.0)
        except queue.Empty:
            if proc.is_alive():
                continue
            try:
                found = results.get(timeout=5.0)
            except queue.Empty:
                raise RuntimeError(f"{name} exited with code {proc.exitcode}") from None
        proc.join()
        return found
    proc.kill()
    proc.join()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="trained model (default: the bundled weights)")
    parser.add_argument("--train", action="store_true", help="train on the train split first")
    parser.add_argument("--train-ids", type=int, default=1500)
    parser.add_argument("--test-ids", type=int, default=1500)
    parser.add_argument("--limit", type=float, default=600, help="seconds allowed per sklearn run")
    args = parser.parse_args()

    splits = make_splits(args.train_ids, args.test_ids, seed=0)
    test = splits.test
    gt = test.labels
    config = ClusterConfig(device="cpu", progress=False)
    if args.train:
        start = time.perf_counter()
        estimator = SEPFL(cluster_config=config).fit(splits.train.features, splits.train.labels)
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    elif args.checkpoint:
        estimator = SEPFL.load(args.checkpoint, cluster_config=config)
    else:
        estimator = SEPFL.pretrained(cluster_config=config)

    rows = []

    def add(name, metrics, seconds, note=""):
        rows.append([name, f"{metrics['pairwise_f']:.4f}", f"{metrics['bcubed_f']:.4f}",
                     f"{metrics['nmi']:.4f}", f"{seconds:.1f}", note])
        print(" | ".join(rows[-1]), flush=True)

    start = time.perf_counter()
    knn = build_knn(test.features, k=config.k, progress=False)
    t_knn = time.perf_counter() - start
    print(f"test split: {len(gt):,} samples, {len(np.unique(gt)):,} identities; kNN {t_knn:.1f} s")

    for scheme in ("edges", "sepfl"):
        estimator.set_params(scheme=scheme)
        start = time.perf_counter()
        labels = estimator.predict(test.features, knn=knn)
        add(f"sepfl scheme={scheme!r}", evaluate(gt, labels),
            time.perf_counter() - start + t_knn, f"threshold {estimator.result_.threshold:g}")
    candidates = estimator.cluster_config.candidates
    add(f"oracle of 'edges' ({candidates} candidates)",
        evaluate(gt, baselines.edges_oracle(knn[0], gt, candidates)), t_knn)
    start = time.perf_counter()
    add("oracle of SEPFL's pairs", evaluate(gt, baselines.oracle(*knn, gt)),
        time.perf_counter() - start + t_knn, "perfect decisions, one pair per sample")
    start = time.perf_counter()
    metrics, note = best_infomap(knn, gt)
    add("Infomap on the kNN graph (best of sweep)", metrics,
        (time.perf_counter() - start)
        / (len(baselines.INFOMAP_KS) * len(baselines.INFOMAP_FLOORS)) + t_knn, note)

    for name, labels_at in [("kNN cosine threshold", lambda t: baselines.knn_threshold(*knn, t)),
                            ("nearest-denser cosine threshold",
                             lambda t: baselines.denser_threshold(*knn, t))]:
        start = time.perf_counter()
        sweep = baselines.sweep(labels_at, gt, THRESHOLDS)
        seconds = (time.perf_counter() - start) / len(THRESHOLDS) + t_knn
        top = baselines.best(sweep)
        add(f"{name} (best)", top, seconds, f"t = {top['threshold']:.3f}")
        print("  sweep F_P: " + ", ".join(f"{r['threshold']:.3f}:{r['pairwise_f']:.3f}"
                                          for r in sweep))
    start = time.perf_counter()
    add("nearest-denser, all accepted", evaluate(gt, baselines.denser_threshold(*knn, 0.0)),
        time.perf_counter() - start + t_knn)

    n_ids = len(np.unique(gt))
    for name in ("minibatch_kmeans", "hdbscan"):
        found = sklearn_run(name, test.features, n_ids, args.limit)
        if found is None:
            rows.append([name, "-", "-", "-", f"> {args.limit:.0f}", "did not finish"])
            print(" | ".join(rows[-1]), flush=True)
        else:
            add(name, evaluate(gt, found[0]), found[1],
                f"k = {n_ids} (true count)" if name == "minibatch_kmeans" else "min_cluster_size 2")

    print()
    print(header(f"quality: synthetic test split, {len(gt):,} samples, {n_ids:,} identities"))
    print(table(["method", "F_P", "F_B", "NMI", "seconds", "note"], rows))


if __name__ == "__main__":
    main()
