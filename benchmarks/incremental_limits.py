"""Where never-split labels lose against one shot, with every add's scores made exact.

``incremental.py`` measures ``SEPFL.add`` as shipped. This script asks what any
never-split labelling could reach with the same model: each batch's add is
replaced by a one-shot run over all the samples seen so far (the prefix), so
its scores and candidate edges are exactly what clustering that prefix at once
gives (no stale embedding, no kept score). Each labelling rule then turns the
prefixes' results into never-split labels, as :func:`sepfl.incremental.add`
does with its own:

* **as shipped**: the prefix's edges regrouped above the merge threshold, with
  the model's calibrated joining of modules, and :func:`stable_labels`;
* **no joining in the adds**: the same without joining modules;
* **old clusters never merge**: as shipped, but every old cluster keeps its id
  and only the new samples follow the regrouping (a group followed by several
  old clusters gives its new samples the id of the largest), which shows what
  placing the new samples alone costs;
* each of the first two again from a **perfect first batch** (the first
  batch's true identities instead of its one-shot labels).

Printed: the one-shot F of each prefix (how good the decisions are when made
with part of the data), then each rule's F_P / F_B, pairwise precision and
recall, and the gap to one shot over everything. A population of the project's
generator (``make_splits(1, ids, seed).test``, as ``incremental.py``) by
default; ``--population NAME`` draws one of ``populations.py``'s models whole
instead (``make_faces(ids, D, seed, model)``).

    python benchmarks/incremental_limits.py --ids 300 --threads 2
    python benchmarks/incremental_limits.py --ids 300 --population modes
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table  # noqa: E402
from populations import POPULATIONS  # noqa: E402

from sepfl import edges  # noqa: E402
from sepfl.datasets import make_faces, make_splits  # noqa: E402
from sepfl.estimator import SEPFL  # noqa: E402
from sepfl.incremental import stable_labels  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402
from sepfl.stages import ClusterResult, group  # noqa: E402


def regroup(result: ClusterResult, merge_threshold: float, candidates: int,
            join: bool) -> np.ndarray:
    """A prefix's candidate edges grouped as an add groups its own: above the merge
    threshold, with the calibrated joining or none. int64 [n] labels."""
    nbrs = torch.from_numpy(result.nbrs)
    src, dst, rank = edges.candidate_edges(nbrs, min(candidates, nbrs.shape[1] - 1))
    if not (np.array_equal(src.numpy(), result.src) and np.array_equal(dst.numpy(), result.dst)):
        raise SystemExit("the prefix's pairs are not its candidate edges: run with the "
                         "default scheme ('edges')")
    cosine = torch.from_numpy(result.sims)[src, rank]
    grouping = result.grouping._replace(threshold=max(result.grouping.threshold,
                                                      merge_threshold))
    if not join:
        grouping = grouping._replace(join=0.0)
    return group(result.src, result.dst, result.scores, len(result.labels), grouping, cosine)


def kept_apart(old: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Labels int64 [N + M] where the N old samples keep ``old`` and each new sample takes
    the id of the largest old cluster following its group in ``groups`` (the group holding
    most of that cluster, as :func:`stable_labels` decides), or a new id."""
    n = old.shape[0]
    labels, _ = stable_labels(old, groups)
    # stable_labels gives a followed group the smallest id of its followers; here the largest
    ids, first, rank = np.unique(old, return_index=True, return_inverse=True)
    survivor = labels[first]  # [C]: the id each old cluster's group gives
    by_size = np.argsort(-np.bincount(rank), kind="stable")
    followed, largest = np.unique(survivor[by_size], return_index=True)
    new = labels[n:].copy()
    where = np.searchsorted(followed, new).clip(max=followed.size - 1)
    is_followed = followed[where] == new
    new[is_followed] = ids[by_size[largest[where[is_followed]]]]
    return np.concatenate([old, new])


def never_split(first: np.ndarray, groupings: List[np.ndarray],
                follow: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Labels after following each add's regrouping in turn from the ``first`` batch's."""
    labels = first
    for groups in groupings:
        labels = follow(labels, groups)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1500, help="identities (default 1500)")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--population", default="project",
                        help="'project' (default) or a populations.py name, drawn whole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None,
                        help="a model saved by sepfl train / SEPFL.save (default: bundled)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    if args.population == "project":
        data = make_splits(1, args.ids, seed=args.seed).test
    elif args.population in POPULATIONS:
        dim, _, face_model, _ = POPULATIONS[args.population]
        data = make_faces(args.ids, dim, args.seed, face_model)
    else:
        raise SystemExit(f"unknown population {args.population!r}: 'project' or one of "
                         f"{', '.join(POPULATIONS)}")
    order = np.random.default_rng(0).permutation(len(data.labels))
    x, y = data.features[order], data.labels[order]
    params = dict(threads=args.threads, progress=False)
    estimator = (SEPFL.load(args.checkpoint, **params) if args.checkpoint
                 else SEPFL.pretrained(**params))
    config = estimator.cluster_config

    ends = [part[-1] + 1 for part in np.array_split(np.arange(len(y)), args.batches)]
    prefix_rows, results = [], []
    for end in ends:
        labels = estimator.predict(x[:end])
        results.append(estimator.result_)
        scores = evaluate(y[:end], labels)
        prefix_rows.append([f"{end:,}", f"{end / len(y):.0%}", f"{scores['pairwise_f']:.4f}",
                            f"{scores['bcubed_f']:.4f}"])
    one_shot = evaluate(y, results[-1].labels)
    first, truth = results[0].labels, y[:ends[0]]

    def adds(join: bool) -> List[np.ndarray]:
        return [regroup(result, config.merge_threshold, config.candidates, join)
                for result in results[1:]]

    def follow(old: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return stable_labels(old, groups)[0]

    joined, plain = adds(True), adds(False)
    rules = [("as shipped", first, joined, follow),
             ("no joining in the adds", first, plain, follow),
             ("old clusters never merge", first, joined, kept_apart),
             ("as shipped, perfect first batch", truth, joined, follow),
             ("no joining, perfect first batch", truth, plain, follow)]
    rows = [["one shot, everything", f"{one_shot['pairwise_f']:.4f}",
             f"{one_shot['bcubed_f']:.4f}", f"{one_shot['pairwise_precision']:.3f}",
             f"{one_shot['pairwise_recall']:.3f}", "", ""]]
    for name, start, groupings, rule in rules:
        scores = evaluate(y, never_split(start, groupings, rule))
        rows.append([name, f"{scores['pairwise_f']:.4f}", f"{scores['bcubed_f']:.4f}",
                     f"{scores['pairwise_precision']:.3f}", f"{scores['pairwise_recall']:.3f}",
                     f"{scores['pairwise_f'] - one_shot['pairwise_f']:+.4f}",
                     f"{scores['bcubed_f'] - one_shot['bcubed_f']:+.4f}"])

    print(header(f"never-split labels from exact prefixes, {len(y):,} samples of {args.ids} "
                 f"identities ({args.population}, seed {args.seed}), {args.batches} batches, "
                 f"merge threshold {config.merge_threshold}, "
                 f"{args.checkpoint or 'bundled weights'}"))
    print(table(["prefix samples", "share", "its one-shot F_P", "F_B"], prefix_rows))
    print()
    print(table(["labels", "F_P", "F_B", "pairwise precision", "pairwise recall",
                 "F_P vs one shot", "F_B vs one shot"], rows))


if __name__ == "__main__":
    main()
