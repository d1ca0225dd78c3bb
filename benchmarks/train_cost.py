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

The sepfl steps are timed by ``train`` itself (the seconds in its history, the
first step included) on one run of the default configuration cut to ``--steps``
warm-up steps and ``--steps`` end-to-end steps; the reference step is this
script's own loop, the median of ``--reference-steps`` steps after one untimed.

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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import header, per_pair_logits, table, timed  # noqa: E402

from sepfl import ops  # noqa: E402
from sepfl.checkpoint import load_checkpoint  # noqa: E402
from sepfl.config import TrainConfig  # noqa: E402
from sepfl.datasets import make_splits  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402
from sepfl.model import PairClassifier  # noqa: E402
from sepfl.train import default_ranks, train  # noqa: E402


def reference_seconds_per_step(x: torch.Tensor, nbrs: torch.Tensor, labels: np.ndarray,
                                steps: int) -> float:
    """Median seconds of one step of the paper's recipe run per pair (the baseline): every
    pair's two samples embedded by the reference forward, float32, SGD, the paper's batch
    of class-balanced kNN candidate pairs; after one untimed step."""
    paper = TrainConfig.paper()
    src, dst, target = ops.train_pairs(nbrs.numpy(), labels, default_ranks(nbrs.shape[1]))
    model = PairClassifier(x.shape[1], nbrs.shape[1]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=paper.lr, momentum=paper.momentum,
                                weight_decay=paper.weight_decay)
    draws = itertools.count()

    def step() -> None:
        batch = ops.balanced_sample(target, paper.batch_size // 2, seed=next(draws))
        a, b, t = (torch.from_numpy(v[batch]) for v in (src, dst, target))
        loss = torch.nn.functional.cross_entropy(per_pair_logits(model, x, nbrs, a, b), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed(step, repeat=steps)[1]


def sepfl_seconds_per_step(features: np.ndarray, labels: np.ndarray, knn, steps: int,
                           workdir: Path) -> dict:
    """Seconds per step of sepfl's classifier warm-up and end-to-end epoch, from the pairs
    per second ``train`` records in its history: ``steps`` steps of each (fewer in the
    epoch when the candidates hold fewer pairs of a class), the first step included."""
    default = TrainConfig(progress=False)
    config = dataclasses.replace(default, epochs=1, pairs_per_epoch=steps * default.batch_size,
                                 warmup_steps=steps, refit_steps=0, edge_steps=0)
    checkpoint = workdir / "throughput.pt"
    train(features, labels, config, k=knn[0].shape[1], knn=knn, checkpoint=checkpoint)
    history = {record["epoch"]: record for record in load_checkpoint(checkpoint)["history"]}
    return {"warm-up": config.classifier_batch_size / history[0]["pairs_per_s"],
            "epoch": config.batch_size / history[1]["pairs_per_s"]}


def throughput(train_split, args, workdir: Path) -> list:
    """Rows of (path, batch, s/step, pairs/s) for the three training steps."""
    torch.manual_seed(0)
    default, paper = TrainConfig(), TrainConfig.paper()
    knn = build_knn(train_split.features, k=80, progress=False)
    x, nbrs = torch.from_numpy(train_split.features), torch.from_numpy(knn[0])
    reference = reference_seconds_per_step(x, nbrs, train_split.labels, args.reference_steps)
    sepfl = sepfl_seconds_per_step(train_split.features, train_split.labels, knn, args.steps,
                                   workdir)
    rows = [("per-pair reference (paper step: fp32, SGD)", paper.batch_size, reference),
            ("sepfl end to end (shared node embeddings, bf16, AdamW)", default.batch_size,
             sepfl["epoch"]),
            ("sepfl classifier warm-up / refit (precomputed embeddings)",
             default.classifier_batch_size, sepfl["warm-up"])]
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
    history = load_checkpoint(args.checkpoint)["history"]
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
    print(header(f"training cost, {len(splits.train.labels):,} samples of {args.ids} identities,"
                 " D = 256, k = 80"), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        rows = throughput(splits.train, args, Path(workdir))
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
