"""Training cost: pairs per second of each training path, and time to plateau.

Part 1 times, on the 1,500-identity synthetic training split and in one run:

* the per-pair reference step: both samples of every pair embedded by the
  reference forward (SEPFL.md §4 as written), float32, SGD, batch 512 — the
  published recipe's step;
* sepfl's end-to-end step: every distinct sample of a batch embedded once and
  shared by its pairs, bfloat16 autocast where the CPU has it, AdamW, the
  default batch;
* sepfl's classifier warm-up / refit step: the classifier alone on
  precomputed embeddings (see ``sepfl.train``).

Part 2 (``--plateau``) trains with the default configuration and clusters a
held-out validation set (the first ``--val-ids`` identities of the test split)
after the warm-up, every epoch and the refit, printing the elapsed time and
F_P / F_B each time: the time to plateau is where F stops rising.

    python benchmarks/train_cost.py                 # part 1, a few minutes on 2 cores
    python benchmarks/train_cost.py --plateau       # + part 2, the default training run
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table  # noqa: E402

from sepfl import ops  # noqa: E402
from sepfl import train as training  # noqa: E402
from sepfl.config import TrainConfig  # noqa: E402
from sepfl.datasets import make_splits  # noqa: E402
from sepfl.model import PairClassifier  # noqa: E402
from sepfl.train import train  # noqa: E402

CPU = torch.device("cpu")


def _seconds_per_step(optimizer, graph, batch_size: int, config: TrainConfig, logits_of,
                      steps: int, seed: int) -> float:
    """Seconds per step of sepfl's optimiser loop (``sepfl.train._optimise``) on
    class-balanced batches at ``config.lr``, after one untimed step."""
    batches = training._balanced_batches(graph, batch_size, np.random.default_rng(seed))

    def run(n: int) -> float:
        return training._optimise(optimizer, graph, itertools.islice(batches, n), n, "timing",
                                  config, CPU, lambda step: config.lr, logits_of)["seconds"]

    run(1)
    return run(steps) / steps


def throughput(graph, args) -> list:
    """Rows of (path, batch, s/step, pairs/s) for the three training steps."""
    torch.manual_seed(0)
    default, paper = TrainConfig(progress=False), TrainConfig.paper(progress=False)
    features, nbrs = graph.features, graph.nbrs
    rows = []

    model = PairClassifier(features.shape[1], nbrs.shape[1]).train()
    seconds = _seconds_per_step(
        torch.optim.SGD(model.parameters(), lr=paper.lr, momentum=paper.momentum), graph,
        paper.batch_size, paper,
        lambda s, d: model(features[s], ops.gather(features, nbrs, s),
                           features[d], ops.gather(features, nbrs, d)),
        args.reference_steps, seed=1)
    rows.append(("per-pair reference (paper step: fp32, SGD)", paper.batch_size, seconds))

    model = PairClassifier(features.shape[1], nbrs.shape[1]).train()
    seconds = _seconds_per_step(
        torch.optim.AdamW(model.parameters(), lr=default.lr), graph, default.batch_size,
        default, lambda s, d: training._pair_logits(model, graph, s, d), args.steps, seed=2)
    rows.append(("sepfl end to end (shared node embeddings, bf16, AdamW)",
                 default.batch_size, seconds))

    model = PairClassifier(features.shape[1], nbrs.shape[1]).init_mean_attention().train()
    e = training._initial_embeddings(graph)
    seconds = _seconds_per_step(
        torch.optim.AdamW(model.classifier.parameters(), lr=default.classifier_lr), graph,
        default.classifier_batch_size, dataclasses.replace(default, lr=default.classifier_lr),
        lambda s, d: model.classify(e[s], e[d]), args.steps, seed=3)
    rows.append(("sepfl classifier warm-up / refit (precomputed embeddings)",
                 default.classifier_batch_size, seconds))
    return [(name, batch, f"{s:.3f}", f"{batch / s:,.0f}") for name, batch, s in rows]


def plateau(splits, args) -> list:
    """Rows of (stage, elapsed s, train accuracy, validation F_P, F_B) of a default run."""
    keep = splits.test.labels < args.val_ids  # the first test identities
    val_features, val_labels = splits.test.features[keep], splits.test.labels[keep]
    config = TrainConfig(progress=False)
    started = time.perf_counter()
    train(splits.train.features, splits.train.labels, config,
          checkpoint=args.checkpoint, validation=(val_features, val_labels))
    total = time.perf_counter() - started
    history = torch.load(args.checkpoint, weights_only=False)["history"]
    rows, elapsed = [], 0.0
    for record in history:
        elapsed += record["seconds"]
        stage = {0: "classifier warm-up", config.epochs + 1: "classifier refit"}.get(
            record["epoch"], f"epoch {record['epoch']}")
        rows.append((stage, f"{elapsed:.0f}", f"{record['accuracy']:.3f}",
                     f"{record['pairwise_f']:.3f}", f"{record['bcubed_f']:.3f}"))
    print(f"whole run incl. kNN and validation: {total:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1500, help="training identities")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the sepfl paths")
    parser.add_argument("--reference-steps", type=int, default=2,
                        help="timed steps of the per-pair reference (batch 512 each)")
    parser.add_argument("--plateau", action="store_true", help="also run part 2")
    parser.add_argument("--val-ids", type=int, default=200)
    parser.add_argument("--checkpoint", default="train_cost.pt")
    args = parser.parse_args()

    splits = make_splits(args.ids, args.ids, seed=0)
    graph = training._training_graph(splits.train.features, splits.train.labels, 80, 39,
                                     None, CPU, 0, progress=False)
    print(header(f"training cost, {len(splits.train.labels):,} samples of {args.ids} identities,"
                 " D = 256, k = 80"), flush=True)
    rows = throughput(graph, args)
    print(table(["training step", "pairs / step", "s / step", "pairs / s"], rows), flush=True)
    paper = TrainConfig.paper()
    reference_rate = float(rows[0][3].replace(",", ""))
    hours = paper.epochs * paper.pairs_per_epoch / reference_rate / 3600
    print(f"\nthe paper's {paper.epochs} x {paper.pairs_per_epoch:,} pairs at the reference "
          f"rate: {hours:,.0f} h on this machine", flush=True)
    if args.plateau:
        print(f"\n## default TrainConfig, validation: {args.val_ids} unseen identities", flush=True)
        print(table(["stage", "elapsed training s", "train pair accuracy", "val F_P", "val F_B"],
                    plateau(splits, args)), flush=True)


if __name__ == "__main__":
    main()
