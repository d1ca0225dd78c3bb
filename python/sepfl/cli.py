"""The ``sepfl`` command line: a thin layer over the Python API.

Every option that tunes clustering or training is generated from the fields
of :class:`sepfl.cluster.ClusterConfig` and :class:`sepfl.train.TrainConfig`,
so the CLI and the API share one definition (and one set of defaults).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import sepfl
from sepfl import baselines, io
from sepfl.cluster import ClusterConfig
from sepfl.train import TrainConfig

log = logging.getLogger("sepfl")

EXAMPLES = {
    "demo": "sepfl demo                      # synthetic faces, bundled weights, report PNG",
    "synth": "sepfl synth --n-ids 1500 --out data/          # train/test .npy + labels",
    "knn": "sepfl knn data/test_features.npy --out data/test_knn.npz",
    "train": "sepfl train data/train_features.npy data/train_labels.npy --out model.pt",
    "cluster": ("sepfl cluster data/test_features.npy --checkpoint model.pt --out pred.npy "
                "--labels data/test_labels.npy --report report.png"),
    "evaluate": "sepfl evaluate data/test_labels.npy pred.npy",
}


KNN_FIELDS = ("k", "device", "knn_backend", "knn_precision", "knn_exact", "progress")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


# ---------------------------------------------------------------- config options

def _field_help(cls: type) -> Dict[str, str]:
    """Each attribute's first description line, read from the numpydoc ``Attributes`` section."""
    doc = cls.__doc__ or ""
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^ {4}(\w+) : .*\n {8}(.+)$", doc, flags=re.M)}


def _fields(cls: type, only: Optional[Sequence[str]] = None) -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if only is None or f.name in only]


def _add_config_options(parser: argparse.ArgumentParser, cls: type,
                        only: Optional[Sequence[str]] = None) -> None:
    """One ``--field-name`` option per dataclass field (or those in ``only``).

    Unset options keep the field's default.
    """
    group = parser.add_argument_group(f"{cls.__name__} settings")
    help_text = _field_help(cls)
    for field in _fields(cls, only):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        kwargs: Dict[str, Any] = dict(dest=field.name, default=argparse.SUPPRESS,
                                      help=f"{help_text.get(field.name, '')} (default: {default})")
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        elif default is None or isinstance(default, str):
            kwargs["type"] = str
        else:
            continue
        group.add_argument(flag, **kwargs)


def _given(cls: type, args: argparse.Namespace,
           only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The fields of ``cls`` (those in ``only``) set on the command line."""
    return {f.name: getattr(args, f.name) for f in _fields(cls, only) if f.name in args}


def _config(cls: type, args: argparse.Namespace, only: Optional[Sequence[str]] = None):
    """``cls`` built from the options given on the command line (those in ``only``)."""
    try:
        return cls(**_given(cls, args, only))
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


# ---------------------------------------------------------------- commands

def _read_features(path: str, dim: Optional[int]) -> np.ndarray:
    return io.read_features(path, dim=dim)


def _summary(labels: np.ndarray, seconds: float) -> str:
    sizes = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
    return (f"{len(labels):,} samples -> {len(sizes):,} clusters, "
            f"{int((sizes == 1).sum()):,} singletons, {seconds:.1f} s")


def _metrics_table(rows: List[tuple]) -> str:
    lines = [f"{'method':<34} {'F_P':>7} {'F_B':>7} {'NMI':>7}"]
    lines += [f"{name:<34} {m['pairwise_f']:7.4f} {m['bcubed_f']:7.4f} {m['nmi']:7.4f}"
              for name, m in rows]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> str:
    from sepfl.datasets import make_faces
    from sepfl.estimator import SEPFL
    from sepfl.knn import build_knn
    from sepfl.metrics import evaluate
    from sepfl.report import write_report

    data = make_faces(args.n_ids, seed=args.seed)
    print(f"synthetic test set: {len(data.labels):,} face-like embeddings of {args.n_ids} "
          f"identities (seed {args.seed}), unseen in training")
    estimator = SEPFL.pretrained(**_given(ClusterConfig, args))
    config = estimator.cluster_config
    knn = build_knn(data.features, k=config.k, progress=config.progress)
    labels = estimator.predict(data.features, knn=knn)
    sweep = baselines.sweep(lambda t: baselines.knn_threshold(*knn, t), data.labels,
                            np.arange(0.30, 0.91, 0.05))
    naive = baselines.best(sweep)
    rows = [("sepfl (bundled weights)", evaluate(data.labels, labels)),
            (f"naive kNN threshold (best, t={naive['threshold']:.2f})", naive),
            ("oracle on sepfl's pairs", evaluate(data.labels,
                                                 baselines.oracle(*knn, data.labels, config.rho)))]
    print(_metrics_table(rows))
    report = write_report(Path(args.out) / "sepfl_demo.png", estimator.result_,
                          config.threshold, gt=data.labels, title="sepfl demo (synthetic faces)")
    print(f"report written to {report}")
    return _summary(labels, sum(estimator.result_.timings.values()))


def cmd_synth(args: argparse.Namespace) -> str:
    from sepfl.datasets import make_splits, write_learn_to_cluster

    splits = make_splits(args.n_ids, args.n_test_ids or args.n_ids, seed=args.seed)
    out = Path(args.out)
    for name, data in (("train", splits.train), ("test", splits.test)):
        if args.layout == "learn-to-cluster":
            paths = write_learn_to_cluster(data, out, f"synth_{name}", k=args.k)
        else:
            paths = (out / f"{name}_features.npy", out / f"{name}_labels.npy")
            io.write_features(paths[0], data.features)
            io.write_labels(paths[1], data.labels)
        print(f"{name}: {len(data.labels):,} samples -> " + ", ".join(str(p) for p in paths))
    return f"wrote {len(splits.train.labels) + len(splits.test.labels):,} samples to {out}"


def cmd_knn(args: argparse.Namespace) -> str:
    from sepfl.knn import build_knn

    config = _config(ClusterConfig, args, only=KNN_FIELDS)
    features = _read_features(args.features, args.dim)
    nbrs, sims = build_knn(features, k=config.k, backend=config.knn_backend,
                           device=config.device, exact=config.knn_exact,
                           precision=config.knn_precision,
                           progress=config.progress)
    io.write_knn(args.out, nbrs, sims, features=features)
    return f"kNN graph of {len(nbrs):,} samples, k = {config.k}, written to {args.out}"


def cmd_train(args: argparse.Namespace) -> str:
    from sepfl.estimator import SEPFL

    features = _read_features(args.features, args.dim)
    labels, _ = io.read_labels(args.labels)
    validation = None
    if args.val_features:
        if not args.val_labels:
            raise UserError("--val-features needs --val-labels")
        validation = (_read_features(args.val_features, args.dim),
                      io.read_labels(args.val_labels)[0])
    # Only k is a clustering setting of training (the rest is chosen at cluster time);
    # device and progress are the training ones.
    cluster_config = _config(ClusterConfig, args, only=("k",))
    train_config = _config(TrainConfig, args)
    cluster_config = dataclasses.replace(cluster_config, device=train_config.device,
                                         progress=train_config.progress)
    estimator = SEPFL(cluster_config=cluster_config, train_config=train_config)
    estimator.fit(features, labels, validation=validation, checkpoint=args.out)
    estimator.save(args.out)
    return f"trained on {len(labels):,} samples; model written to {args.out}"


def cmd_cluster(args: argparse.Namespace) -> str:
    from sepfl.estimator import SEPFL
    from sepfl.metrics import evaluate

    features = _read_features(args.features, args.dim)
    given = _given(ClusterConfig, args)
    estimator = (SEPFL.load(args.checkpoint, **given) if args.checkpoint
                 else SEPFL.pretrained(**given))
    config = estimator.cluster_config
    knn = None
    if args.knn:
        graph = io.read_knn(args.knn)
        knn = (graph.nbrs, graph.sims)
    labels = estimator.predict(features, knn=knn)
    io.write_labels(args.out, labels)
    print(f"labels written to {args.out}")
    gt = None
    if args.labels:
        gt, _ = io.read_labels(args.labels)
        if len(gt) != len(labels):
            raise UserError(f"{args.labels} has {len(gt):,} labels but {args.features} has "
                            f"{len(labels):,} rows")
        print(_metrics_table([("sepfl", evaluate(gt, labels))]))
    if args.report:
        from sepfl.report import write_report

        print(f"report written to {write_report(args.report, estimator.result_, config.threshold, gt=gt)}")
    return _summary(labels, sum(estimator.result_.timings.values()))


def cmd_evaluate(args: argparse.Namespace) -> str:
    from sepfl.metrics import evaluate

    gt, _ = io.read_labels(args.gt)
    pred, _ = io.read_labels(args.pred)
    if len(gt) != len(pred):
        raise UserError(f"{args.gt} has {len(gt):,} labels but {args.pred} has {len(pred):,}")
    print(_metrics_table([(Path(args.pred).name, evaluate(gt, pred))]))
    return f"{len(gt):,} samples evaluated"


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepfl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Supervised clustering of embeddings with SEPFL.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()))
    parser.add_argument("--version", action="version", version=f"sepfl {sepfl.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage's time")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  epilog=f"example:\n  {EXAMPLES[name]}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(run=fn)
        return sub

    demo = command("demo", cmd_demo, "cluster a synthetic face set with the bundled weights "
                                     "and compare with the naive baseline")
    demo.add_argument("--n-ids", type=int, default=250, help="identities (default: 250)")
    demo.add_argument("--seed", type=int, default=2024, help="data seed (default: 2024)")
    demo.add_argument("--out", default=".", help="folder for the report PNG (default: .)")
    _add_config_options(demo, ClusterConfig)

    synth = command("synth", cmd_synth, "write synthetic train / test splits of face-like "
                                        "embeddings")
    synth.add_argument("--n-ids", type=int, default=1500, help="train identities (default: 1500)")
    synth.add_argument("--n-test-ids", type=int, default=None, help="test identities "
                                                                    "(default: --n-ids)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--layout", choices=["npy", "learn-to-cluster"], default="npy")
    synth.add_argument("--k", type=int, default=80, help="k of the kNN files written by the "
                                                         "learn-to-cluster layout")
    synth.add_argument("--out", required=True, help="output folder")

    knn = command("knn", cmd_knn, "build and save the kNN graph of a feature file")
    knn.add_argument("features", help=".npy, .npz or .bin features")
    knn.add_argument("--dim", type=int, help="feature width of a .bin file without sidecar")
    knn.add_argument("--out", required=True, help="output .npz")
    _add_config_options(knn, ClusterConfig, only=KNN_FIELDS)

    train = command("train", cmd_train, "train the pair classifier on labelled embeddings")
    train.add_argument("features")
    train.add_argument("labels", help=".meta, .txt, .csv or .npy labels, one per row")
    train.add_argument("--dim", type=int)
    train.add_argument("--val-features", help="validation features (clustered every epoch)")
    train.add_argument("--val-labels")
    train.add_argument("--out", required=True, help="checkpoint path (resumed when it exists)")
    _add_config_options(train, ClusterConfig, only=("k",))
    _add_config_options(train, TrainConfig)

    clus = command("cluster", cmd_cluster, "cluster embeddings (no labels needed)")
    clus.add_argument("features")
    clus.add_argument("--dim", type=int)
    clus.add_argument("--checkpoint", help="trained model (default: the bundled weights)")
    clus.add_argument("--knn", help="precomputed kNN graph (.npz)")
    clus.add_argument("--labels", help="true labels: print F_P / F_B / NMI")
    clus.add_argument("--report", help="write a PNG report here")
    clus.add_argument("--out", required=True, help="labels output: .npy, .meta, .txt or .csv")
    _add_config_options(clus, ClusterConfig)

    evaluate = command("evaluate", cmd_evaluate, "compare predicted labels with true ones")
    evaluate.add_argument("gt")
    evaluate.add_argument("pred")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    start = time.perf_counter()
    try:
        summary = args.run(args)
    except (UserError, FileNotFoundError, ValueError, TypeError, IndexError) as err:
        print(f"sepfl {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(f"done: {summary} ({time.perf_counter() - start:.1f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
