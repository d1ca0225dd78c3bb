"""Quality across synthetic populations that differ in structure, against Infomap and the oracles.

For every population: the default scheme ("edges"), SEPFL's exact scheme
("sepfl") with the same model, the default without joining Infomap's modules where
the model's calibration chose to join them (and, with ``--prior-shift``, with its P
re-weighted to each set's estimated prior), each scheme's oracle (perfect decisions on its
own candidates), Infomap on the kNN graph swept over k in {50, 80} and the
similarity floor 0.0-0.65 (the best point, as its users tune it) and the best
kNN cosine threshold. F_P / F_B, pairwise precision and recall, NMI and seconds on each
test split.

The model is the bundled one (trained on a mixture of eight randomised face
models, ``sepfl synth --mixture 8``: none of these populations is one of
them) or, with ``--train``, one trained on each population's own training
split with the default ``TrainConfig``.

Populations and what they change (``base`` is the project's calibrated one):
the design was tuned looking at base, twins, modes, wide and mix; clean,
tail and the other widths were only ever reported until the cosine factor of
Infomap's weights (2026-12-03), which was chosen looking at all seven and at
four randomised face models (seeds 7001-7004). The ``drawn`` populations are
more randomised models: 7005-7007 first clustered after that choice was made;
7008-7010 first clustered on 2026-12-04, after a model trained on a hard mixture
(``random_models(hard=True)``) had been chosen looking at the other ten; 7011-7012 first
clustered on 2026-12-05 and 7013-7015 later that day, after the bundled weights of that day
were shipped; these five run only when ``--only`` names them.

``--thin S`` clusters a random share S of each test split instead (the same
identities with fewer samples each, as in a smaller data set). ``--whole`` clusters
a whole population of each model instead of its test split (a fresh one, as many
identities): a test split lacks the look-alikes whose model identity fell in the
training split, so its look-alike families are thinner than a real data set's,
where every member of a family is there.

    python benchmarks/populations.py                          # bundled weights, D = 256 sets
    python benchmarks/populations.py --train --only d128,d512
    python benchmarks/populations.py --train --train-ids 100 --only base  # 100 labelled ids
    python benchmarks/populations.py --thin 0.1               # ~6 samples per identity
    python benchmarks/populations.py --thin 0.05 --prior-shift  # and with prior_shift=True
    python benchmarks/populations.py --whole                  # whole look-alike families
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table  # noqa: E402

from sepfl import baselines, edges  # noqa: E402
from sepfl.datasets import FaceModel, make_faces, make_splits, random_models  # noqa: E402
from sepfl.estimator import SEPFL  # noqa: E402
from sepfl.io import Dataset  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402

# name: (D, train and test identities each, model, what it stresses)
POPULATIONS = {
    "base": (256, 1500, FaceModel(), "the project's calibrated generator (test split of the "
             "quality table in docs/results.md)"),
    "twins": (256, 1000, FaceModel(lookalike=0.8, lookalike_cos=(0.7, 0.9), modes=1.0,
                                   mode_cos=0.8, spread=0.85),
              "look-alike families everywhere, sub-modes"),
    "modes": (256, 1000, FaceModel(modes=1.5, mode_cos=0.75), "2.5 sub-modes per identity"),
    "wide": (256, 1000, FaceModel(spread=1.1, spread_sigma=0.6, size_sigma=1.3, outliers=0.04,
                                  lookalike=0.4, lookalike_cos=(0.6, 0.9)),
             "loose and varied spreads, long size tail, 4 % outliers"),
    "clean": (256, 1000, FaceModel(lookalike=0.0, nuisance=0.3, hard=0.03, outliers=0.005),
              "no look-alikes, little nuisance"),
    "tail": (256, 2000, FaceModel(mean_size=20, size_sigma=1.4, modes=0.5, mode_cos=0.8),
             "small identities (mean 20) with a heavy tail, some sub-modes"),
    "d128": (128, 1000, FaceModel(spread=0.8, modes=1.0, mode_cos=0.8), "D = 128, sub-modes"),
    "d512": (512, 1000, FaceModel(spread=1.2, lookalike=0.7, nuisance=0.5),
             "D = 512, more look-alikes"),
    "mix": (256, 1500, FaceModel(mean_size=39, size_sigma=1.2, spread=0.95, spread_sigma=0.6,
                                 lookalike=0.6, lookalike_cos=(0.6, 0.9), modes=1.5,
                                 mode_cos=0.78, outliers=0.02),
            "everything at once: look-alikes, sub-modes, varied spreads, a long size tail, "
            "outliers"),
}
# drawn as random_models draws face models, with seeds no model of the project was trained or
# tuned on: 7005-7007 after the grouping of 2026-12-03 was fixed, 7008-7010 after a model
# trained on a hard mixture (random_models(hard=True)) was chosen on 2026-12-04; 7011-7012,
# after prior_shift was built on 2026-12-05, 7013-7015 after that day's bundled weights were
# shipped: only run when --only names them
DRAWN_SEEDS = range(7005, 7011)
LATER_SEEDS = range(7011, 7016)
POPULATIONS.update({f"drawn{seed}": (256, 1000, random_models(1, seed=seed)[0],
                                     f"one randomised face model, seed {seed}")
                    for seed in (*DRAWN_SEEDS, *LATER_SEEDS)})
COSINE_THRESHOLDS = np.round(np.arange(0.30, 0.91, 0.025), 3)
#: --whole: a population's whole set is drawn with its seed plus this (not its splits' stream)
WHOLE_SEED_OFFSET = 5000


#: the estimator's settings each run starts from (a run's own params override them)
DEFAULT_PARAMS = dict(join=None, prior_shift=False)


def _model(args, dim: int, train) -> SEPFL:
    settings = dict(device="cpu", progress=False)
    if args.train:
        if args.train_ids:  # make_splits numbers the training identities 0..n-1
            kept = train.labels < args.train_ids
            train = Dataset(train.features[kept], train.labels[kept])
        return SEPFL(**settings).fit(train.features, train.labels)
    if dim != 256:
        raise SystemExit("the bundled weights are for D = 256: use --train for d128 / d512")
    return SEPFL.load(args.checkpoint, **settings) if args.checkpoint else \
        SEPFL.pretrained(**settings)


def _grouping_note(grouping) -> str:
    """How a run grouped (a :class:`sepfl.stages.Grouping`)."""
    prior = (f", P re-weighted to prior {grouping.prior:.3f}"
             if grouping.prior != edges.EVEN_ODDS else "")
    if grouping.how == "infomap":
        return f"infomap, markov time {grouping.markov_time:g}" + (
            f", joined at {grouping.join:g} edges P > {grouping.join_above:.2g}"
            if grouping.join > 0 else "") + prior
    if grouping.how == "components":
        return f"components, threshold {grouping.threshold:g}" + prior
    return f"links, threshold {grouping.threshold:g}"


def best_infomap(knn, gt):
    """The best Infomap setting's metrics and a note naming it."""
    best = baselines.best_infomap(*knn, gt)
    return best, f"k {best['k']}, similarity > {best['floor']:.2f}"


def run(name: str, seed: int, args) -> list:
    dim, n_ids, face_model, _ = POPULATIONS[name]
    if args.whole:  # its own population, never trained on (main refuses --whole --train)
        train, test = None, make_faces(n_ids, dim, seed + WHOLE_SEED_OFFSET, face_model)
    else:
        splits = make_splits(n_ids, n_ids, dim=dim, seed=seed, model=face_model)
        train, test = splits.train, splits.test
    started = time.perf_counter()
    estimator = _model(args, dim, train)
    trained = time.perf_counter() - started
    if args.train and args.save:
        estimator.save(Path(args.save) / f"{name}.pt")
    if args.thin < 1:  # a smaller data set of the same identities: fewer samples each
        kept = np.random.default_rng(1).random(len(test.labels)) < args.thin
        test = Dataset(test.features[kept], test.labels[kept])
    gt = test.labels
    start = time.perf_counter()
    knn = build_knn(test.features, k=80, progress=False)
    t_knn = time.perf_counter() - start
    rows = []

    def add(method, metrics, seconds, note=""):
        rows.append([name, method, f"{metrics['pairwise_f']:.4f}", f"{metrics['bcubed_f']:.4f}",
                     f"{metrics['pairwise_precision']:.3f}", f"{metrics['pairwise_recall']:.3f}",
                     f"{metrics['nmi']:.4f}", f"{seconds:.1f}", note])
        print(" | ".join(rows[-1]), flush=True)

    print(f"[{name}] D {dim}, test {len(gt):,} samples of {len(np.unique(gt)):,} identities, "
          f"kNN {t_knn:.1f} s" + (f", trained in {trained:.0f} s" if args.train else ""))
    runs = [dict(scheme="edges"), dict(scheme="sepfl")]
    for params in runs:
        estimator.set_params(**{**DEFAULT_PARAMS, **params})
        start = time.perf_counter()
        labels = estimator.predict(test.features, knn=knn)
        grouping = estimator.result_.grouping
        add(f"sepfl scheme={params['scheme']!r}" + (", no joining" if "join" in params else "")
            + (", prior_shift" if "prior_shift" in params else ""),
            evaluate(gt, labels), time.perf_counter() - start + t_knn, _grouping_note(grouping))
        if len(params) == 1 and params["scheme"] == "edges":
            # what the calibrated joining added, and the prior's re-weighting would, in the
            # same run
            if grouping.how == "infomap" and grouping.join > 0:
                runs.append(dict(scheme="edges", join=0.0))
            if args.prior_shift:
                runs.append(dict(scheme="edges", prior_shift=True))
    candidates = estimator.cluster_config.candidates
    add(f"oracle of 'edges' ({candidates} candidates)",
        evaluate(gt, baselines.edges_oracle(knn[0], gt, candidates)), t_knn)
    add("oracle of 'sepfl' (one pair per sample)", evaluate(gt, baselines.oracle(*knn, gt)), t_knn)
    start = time.perf_counter()
    metrics, note = best_infomap(knn, gt)
    seconds = (time.perf_counter() - start) / (len(baselines.INFOMAP_KS)
                                              * len(baselines.INFOMAP_FLOORS)) + t_knn
    add("Infomap on the kNN graph (best of sweep)", metrics, seconds, note)
    start = time.perf_counter()
    top = baselines.best(baselines.sweep(lambda t: baselines.knn_threshold(*knn, t), gt,
                                         COSINE_THRESHOLDS))
    add("kNN cosine threshold (best of sweep)", top,
        (time.perf_counter() - start) / len(COSINE_THRESHOLDS) + t_knn,
        f"t = {top['threshold']:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="base,twins,modes,wide,clean,tail,mix,"
                                          + ",".join(f"drawn{seed}" for seed in DRAWN_SEEDS),
                        help="comma-separated populations (all: " + ",".join(POPULATIONS) + ")")
    parser.add_argument("--checkpoint", help="model to use (default: the bundled weights)")
    parser.add_argument("--train", action="store_true",
                        help="train on each population's own training split")
    parser.add_argument("--train-ids", type=int, default=None, metavar="N",
                        help="with --train, train on the first N identities of the training "
                             "split only (how much labelled data a user needs)")
    parser.add_argument("--save", metavar="DIR",
                        help="with --train, save each population's model as DIR/NAME.pt (to "
                             "cluster it again with --checkpoint)")
    parser.add_argument("--whole", action="store_true",
                        help="cluster a whole population of each model (every member of each "
                             "look-alike family) instead of its test split")
    parser.add_argument("--thin", type=float, default=1.0,
                        help="cluster this share of each test set, drawn at random (fewer "
                             "samples per identity, as in a smaller data set; default 1: all)")
    parser.add_argument("--prior-shift", action="store_true",
                        help="also run the default with prior_shift=True (P re-weighted to each "
                             "set's estimated share of same-identity edges)")
    args = parser.parse_args()
    if not 0 < args.thin <= 1:
        parser.error(f"--thin must be in (0, 1], got {args.thin}")
    if args.train_ids is not None and (not args.train or args.train_ids < 2):
        parser.error("--train-ids needs --train and at least 2 identities")
    if args.whole and args.train:
        parser.error("--whole clusters a fresh population of each model, whose nuisance "
                     "subspace is not its training split's: use it with the bundled weights "
                     "or --checkpoint")
    unknown = sorted(set(args.only.split(",")) - set(POPULATIONS))
    if unknown:
        parser.error(f"unknown population(s) {', '.join(unknown)}; "
                     f"choose from {','.join(POPULATIONS)}")
    rows = []
    for name in args.only.split(","):
        # base is the project's split (make_splits(1500, 1500, seed=0)); the others get their own
        seed = 0 if name == "base" else 100 + list(POPULATIONS).index(name)
        # one fresh process per population: Infomap's sweeps leave memory behind in a process
        # (a nine-population run in one process grew past 23 GiB)
        with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
            rows += pool.submit(run, name, seed, args).result()
    print()
    sets = "whole populations" if args.whole else "test splits"
    print(header(f"quality across populations ({sets}, identities unseen in training"
                 + (f"; a random {args.thin:g} of each)" if args.thin < 1 else ")")))
    if args.train:
        model = "trained on each population's own training split" + (
            f" (its first {args.train_ids} identities)" if args.train_ids else "")
    else:
        model = (args.checkpoint or "bundled weights") + ", trained on a randomised mixture of " \
            "face models"
    print("model: " + model)
    for name in dict.fromkeys(row[0] for row in rows):
        print(f"- {name}: {POPULATIONS[name][3]}")
    print(table(["population", "method", "F_P", "F_B", "P", "R", "NMI", "seconds", "note"], rows))


if __name__ == "__main__":
    main()
