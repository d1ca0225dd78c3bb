"""The ``sepfl`` command line: a thin layer over the Python API.

Every option that tunes clustering or training is generated from the fields
of :class:`sepfl.config.ClusterConfig` and :class:`sepfl.config.TrainConfig`,
its help from the field's metadata (:func:`sepfl.config.setting`), so the CLI
and the API share one definition (and one set of defaults).

Each command checks all its inputs and output paths before any work (files
exist, row counts agree, a ``--knn`` graph belongs to the features, outputs
are writable and of a known format) and writes its outputs only at the end;
a user-side error is one line on stderr and exit code 2, Ctrl-C one line and
exit code 130, and neither leaves an output file (``sepfl train`` keeps its
resumable state, so the same command carries on).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sepfl import baselines, io
from sepfl._version import __version__
from sepfl.config import ClusterConfig, TrainConfig, help_of

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

# the options of `sepfl knn`: the kNN settings (ClusterConfig.knn_settings), where, and threads
KNN_FIELDS = tuple(f.name for f in dataclasses.fields(ClusterConfig)
                   if "knn" in f.metadata) + ("device", "threads")
CONFIG_FIELDS = {f.name for cls in (ClusterConfig, TrainConfig) for f in dataclasses.fields(cls)}
INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


# the clustering state inside a --state folder
STATE_FILE = "state.pt"


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


# ---------------------------------------------------------------- config options

def _plain(text: str) -> str:
    """Docstring text without reST markup: ``x`` and :role:`x` become x."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def _field_help(cls: type) -> Dict[str, str]:
    """Each field's help text (:func:`sepfl.config.help_of`) without reST markup."""
    return {name: _plain(text) for name, text in help_of(cls).items()}


def _fields(cls: type, only: Optional[Sequence[str]] = None) -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if only is None or f.name in only]


def _option_type(cls: type, field: dataclasses.Field) -> Optional[type]:
    """bool, int, float or str for a field of that (optional) type; None for others (tuples)."""
    hint = typing.get_type_hints(cls)[field.name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float, str) else None


def _add_config_options(parser: argparse.ArgumentParser, cls: type,
                        only: Optional[Sequence[str]] = None) -> None:
    """One ``--field-name`` option per dataclass field (or those in ``only``).

    Unset options keep the field's default.
    """
    group = parser.add_argument_group(f"{cls.__name__} settings")
    help_text = _field_help(cls)
    for field in _fields(cls, only):
        kind = _option_type(cls, field)
        if kind is None:
            continue
        flag = "--" + field.name.replace("_", "-")
        kwargs: Dict[str, Any] = dict(dest=field.name, default=argparse.SUPPRESS,
                                      help=f"{help_text.get(field.name, '')} "
                                           f"(default: {field.default})")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        group.add_argument(flag, **kwargs)


def _given(cls: type, args: argparse.Namespace,
           only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The fields of ``cls`` (those in ``only``) set on the command line."""
    return {f.name: getattr(args, f.name) for f in _fields(cls, only) if f.name in args}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _in_flags(message: str) -> str:
    """A config error in the CLI's words: a leading field name becomes its flag."""
    return re.sub(r"^(\w+)(?= )",
                  lambda m: _flag(m.group(1)) if m.group(1) in CONFIG_FIELDS else m.group(1),
                  message)


def _user_errors(call: Callable[[], Any]) -> Any:
    """``call()``, its ValueError / TypeError (a rejected setting) turned into a UserError."""
    try:
        return call()
    except (TypeError, ValueError) as err:
        raise UserError(_in_flags(str(err))) from None


# ---------------------------------------------------------------- checks before the work

def _writable(path: str, flag: str, suffixes: Optional[Tuple[str, ...]] = None) -> Path:
    """``path`` once it is known it can be written: a known suffix, no folder in the way,
    and the nearest existing folder above it accepts files (tried, not guessed)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if suffixes and target.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: unknown format {target.suffix or '(no suffix)'!r}; "
                        f"expected {', '.join(suffixes)}")
    _writable_folder(target.parent, flag)
    return target


def _writable_folder(folder: Path, flag: str) -> Path:
    """``folder`` once the nearest existing folder at or above it accepts a new file."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag}: cannot create {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{flag}: cannot write into {existing} ({err.strerror})") from None
    return folder


def _rows_hint(path: str) -> str:
    return " (is --dim right?)" if Path(path).suffix.lower() == ".bin" else ""


def _read(features: str, labels: Optional[str], dim: Optional[int],
          knn: Optional[str] = None) -> io.Dataset:
    """Features with their labels and ``--knn`` graph, read and checked together by
    :func:`sepfl.io.read_dataset` (not normalised: the pipeline does that, warning once)."""
    try:
        return io.read_dataset(features, labels, knn, dim=dim, normalize=False)
    except ValueError as err:
        raise UserError(f"{err}{_rows_hint(features)}") from None


def _first_k(data: io.Dataset, path: str, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``--knn`` graph's first k neighbours per row (nbrs, sims [N, k])."""
    width = data.nbrs.shape[1]
    if width < k:
        raise UserError(f"--knn {path} holds {width} neighbours per row, fewer than --k {k}")
    if width > k:
        log.info("using the first %d of the %d neighbours per row in %s", k, width, path)
    return data.nbrs[:, :k], data.sims[:, :k]


def _check_k(model: Any, args: argparse.Namespace) -> None:
    """``--k``, when given, must be the k the model was trained for."""
    if "k" in args and args.k != model.k:
        raise UserError(f"--k {args.k}, but the model was trained for k = {model.k} "
                        f"(leave --k out to use it)")


def _check_model(model: Any, features: np.ndarray, features_path: str,
                 args: argparse.Namespace) -> None:
    """The features' width and ``--k`` must be those the model was trained for."""
    _check_k(model, args)
    if features.shape[1] != model.dim:
        raise UserError(f"{features_path} has D = {features.shape[1]} columns, but the model was "
                        f"trained for D = {model.dim}{_rows_hint(features_path)}")


def _check_knn_backend(config: ClusterConfig) -> None:
    """An explicit ``--knn-backend`` must be usable here (faiss installed, its precision)."""
    import torch

    from sepfl.knn import choose_backend, resolve_precision

    cpu = torch.device("cpu")
    _user_errors(lambda: choose_backend(config.knn_backend, cpu, resolve_precision(
        config.knn_precision, config.knn_backend, cpu)))


def _write_all(outputs: Sequence[Tuple[Path, Callable[[], None]]]) -> None:
    """Run each writer; when one fails (or Ctrl-C), remove the files already written."""
    written: List[Path] = []
    try:
        for path, write in outputs:
            write()
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- commands

def _summary(labels: np.ndarray, seconds: float, gt: Optional[np.ndarray] = None) -> str:
    sizes = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
    true = f" (true: {len(np.unique(gt)):,})" if gt is not None else ""
    return (f"{len(labels):,} samples -> {len(sizes):,} clusters{true}, "
            f"{int((sizes == 1).sum()):,} singletons, {seconds:.1f} s")


_COLUMNS = (("P_P", "pairwise_precision"), ("R_P", "pairwise_recall"), ("F_P", "pairwise_f"),
            ("P_B", "bcubed_precision"), ("R_B", "bcubed_recall"), ("F_B", "bcubed_f"),
            ("NMI", "nmi"))


def _metrics_table(rows: List[tuple]) -> str:
    """Pairwise and BCubed precision / recall / F and NMI, one line per (name, metrics) row."""
    lines = [f"{'method':<46}" + "".join(f" {title:>6}" for title, _ in _COLUMNS)]
    lines += [f"{name:<46}" + "".join(f" {m[key]:6.4f}" for _, key in _COLUMNS)
              for name, m in rows]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> str:
    from sepfl.datasets import make_faces
    from sepfl.estimator import SEPFL
    from sepfl.knn import build_knn
    from sepfl.metrics import evaluate
    from sepfl.report import write_report

    report = _writable(str(Path(args.out) / "sepfl_demo.png"), "--out")
    estimator = _user_errors(lambda: SEPFL.pretrained(**_given(ClusterConfig, args)))
    config = estimator.cluster_config
    _check_k(estimator.model_, args)
    _check_knn_backend(config)
    data = make_faces(args.n_ids, seed=args.seed)
    print(f"synthetic test set: {len(data.labels):,} face-like embeddings of {args.n_ids} "
          f"identities (seed {args.seed}), unseen in training")
    knn = build_knn(data.features, **config.knn_settings())
    estimator.set_params(scheme="sepfl")
    sepfl_scheme = evaluate(data.labels, estimator.predict(data.features, knn=knn))
    estimator.set_params(scheme=config.scheme)
    labels = estimator.predict(data.features, knn=knn)
    infomap = baselines.best_infomap(*knn, data.labels)
    sweep = baselines.sweep(lambda t: baselines.knn_threshold(*knn, t), data.labels,
                            np.arange(0.30, 0.91, 0.05))
    naive = baselines.best(sweep)
    rows = [(f"sepfl (bundled weights, {config.scheme!r})", evaluate(data.labels, labels)),
            ("sepfl, SEPFL's scheme ('sepfl')", sepfl_scheme),
            (f"Infomap on kNN (best: k={infomap['k']}, >{infomap['floor']:.2f})", infomap),
            (f"naive kNN threshold (best, t={naive['threshold']:.2f})", naive),
            ("oracle of the 'edges' candidates", evaluate(data.labels, baselines.edges_oracle(
                knn[0], data.labels, min(config.candidates, config.k - 1)))),
            ("oracle on sepfl's pairs", evaluate(data.labels,
                                                 baselines.oracle(*knn, data.labels, config.rho)))]
    print(_metrics_table(rows))
    write_report(report, estimator.result_, estimator.result_.threshold, gt=data.labels,
                 title="sepfl demo (synthetic faces)")
    print(f"report written to {report}")
    return _summary(labels, sum(estimator.result_.timings.values()), gt=data.labels)


def cmd_synth(args: argparse.Namespace) -> str:
    from sepfl.datasets import FaceModel, make_splits, random_models, write_learn_to_cluster

    if args.mixture < 0:
        raise UserError(f"--mixture must be >= 0 (0: the calibrated model), got {args.mixture}")
    if args.hard and not args.mixture:
        raise UserError("--hard draws the face models of --mixture N: give --mixture too")
    out = _writable_folder(Path(args.out), "--out")
    splits = _user_errors(lambda: make_splits(
        args.n_ids, args.n_test_ids or args.n_ids, seed=args.seed,
        model=random_models(args.mixture, seed=args.seed, hard=args.hard) if args.mixture
        else FaceModel()))
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
    from sepfl._threads import torch_threads
    from sepfl.knn import build_knn

    out = _writable(args.out, "--out", (".npz",))
    config = _user_errors(lambda: ClusterConfig(**_given(ClusterConfig, args, only=KNN_FIELDS)))
    _check_knn_backend(config)
    features = io.read_features(args.features, dim=args.dim)
    with torch_threads(config.threads):
        nbrs, sims = build_knn(features, device=config.device, **config.knn_settings())
    io.write_knn(out, nbrs, sims, features=features)
    return f"kNN graph of {len(nbrs):,} samples, k = {config.k}, written to {out}"


def _state_path(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else Path(args.out + ".state")


def cmd_train(args: argparse.Namespace) -> str:
    from sepfl.estimator import SEPFL
    from sepfl.features import fingerprint
    from sepfl.checkpoint import load_checkpoint

    out = _writable(args.out, "--out")
    state = _writable(str(_state_path(args)), "--state")
    if args.val_features and not args.val_labels:
        raise UserError("--val-features needs --val-labels")
    estimator = _user_errors(lambda: SEPFL(**_given(ClusterConfig, args, only=("k",)),
                                           **_given(TrainConfig, args)))
    _user_errors(lambda: (estimator.cluster_config, estimator.train_config))
    data = _read(args.features, args.labels, args.dim)
    features, labels = data.features, data.labels
    validation = None
    if args.val_features:
        val = _read(args.val_features, args.val_labels, args.dim)
        if val.features.shape[1] != features.shape[1]:
            raise UserError(f"{args.val_features} has D = {val.features.shape[1]} columns but "
                            f"{args.features} has {features.shape[1]}")
        validation = (val.features, val.labels)
    if out.exists() and not args.force:
        try:
            trained_on = load_checkpoint(out).get("fingerprint")
        except ValueError:
            raise UserError(f"--out {out} exists and is not a sepfl model; pass --force to "
                            "overwrite it") from None
        if trained_on != fingerprint(features):
            raise UserError(f"--out {out} exists and holds a model trained on other data; pass "
                            "--force to retrain over it, or pick another --out")
        return f"{out} already holds the model trained on these features; --force retrains it"
    if args.force:
        state.unlink(missing_ok=True)  # --force starts over
    estimator.fit(features, labels, validation=validation, checkpoint=state)
    _write_all([(out, lambda: estimator.save(out))])
    state.unlink(missing_ok=True)  # the model is written: nothing is left to resume
    return f"trained on {len(labels):,} samples; model written to {out}"


def cmd_cluster(args: argparse.Namespace) -> str:
    from sepfl.distributed import DistributedError, is_rank_zero
    from sepfl.estimator import SEPFL
    from sepfl.metrics import evaluate

    out = _writable(args.out, "--out", io.LABEL_SUFFIXES)
    report = _writable(args.report, "--report", (".png",)) if args.report else None
    state = _writable(str(Path(args.state) / STATE_FILE), "--state") if args.state else None
    extend = state is not None and state.exists()
    if extend:
        for flag in ("checkpoint", "knn", "labels", "report"):
            if getattr(args, flag):
                raise UserError(f"--{flag} applies to the first call with --state {args.state}; "
                                f"this one adds to the clustering held there")
    given = _given(ClusterConfig, args)
    if given.get("distributed"):
        for flag in ("state", "report"):
            if getattr(args, flag):
                raise UserError(f"--{flag} is not supported with --distributed")
    load = ((lambda: SEPFL.load(state if extend else args.checkpoint, **given))
            if extend or args.checkpoint else (lambda: SEPFL.pretrained(**given)))
    estimator = _user_errors(load)
    config = estimator.cluster_config
    _check_knn_backend(config)
    data = _read(args.features, args.labels, args.dim, args.knn)
    features, gt = data.features, data.labels
    _check_model(estimator.model_, features, args.features, args)
    knn = _first_k(data, args.knn, config.k) if args.knn else None
    try:
        labels = estimator.add(features) if extend else estimator.predict(features, knn=knn)
    except DistributedError as err:
        raise UserError(str(err)) from None  # one line, not a traceback per rank
    # rank 0 alone reports and writes the outputs
    if config.distributed and not is_rank_zero():
        return f"rank {os.environ['RANK']}: {len(estimator.result_.rows):,} rows clustered"
    if gt is not None:
        print(_metrics_table([("sepfl", evaluate(gt, labels))]))
    outputs = [(out, lambda: io.write_labels(out, labels))]
    if report is not None:
        from sepfl.report import write_report

        outputs.append((report, lambda: write_report(report, estimator.result_,
                                                     estimator.result_.threshold, gt=gt)))
    # the state last (atomically): a run killed before it leaves the previous state, and
    # rerunning it adds these samples once
    if state is not None:
        outputs.append((state, lambda: estimator.save(state)))
    _write_all(outputs)
    if extend:
        print(f"{len(features):,} samples added to {len(labels) - len(features):,}; "
              f"{len(estimator.result_.merged):,} old clusters merged")
    print(f"labels written to {out}" + (f", report to {report}" if report else ""))
    return _summary(labels, sum(estimator.result_.timings.values()), gt=gt)


def cmd_evaluate(args: argparse.Namespace) -> str:
    from sepfl.metrics import evaluate

    gt, _ = io.read_labels(args.gt)
    pred, _ = io.read_labels(args.pred)
    if len(gt) != len(pred):
        raise UserError(f"{args.gt} has {len(gt):,} labels but {args.pred} has {len(pred):,}")
    print(_metrics_table([(Path(args.pred).name, evaluate(gt, pred))]))
    return f"{len(gt):,} samples evaluated"


# ---------------------------------------------------------------- parser

def _verbosity(default: Any) -> argparse.ArgumentParser:
    """-v / -q, accepted before and after the command (``default`` SUPPRESS after it, so
    an option given before is not reset)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="also log debugging details")
    parent.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only warnings and errors (no stage times)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepfl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Supervised clustering of embeddings with SEPFL.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()), parents=[_verbosity(False)])
    parser.add_argument("--version", action="version", version=f"sepfl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    after = _verbosity(argparse.SUPPRESS)

    def command(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  epilog=f"example:\n  {EXAMPLES[name]}", parents=[after],
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
    synth.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    synth.add_argument("--mixture", type=int, default=0, metavar="N",
                       help="share the identities among N face models with look-alikes, "
                            "sub-modes, spreads, size tails and outliers at random degrees "
                            "(sepfl.datasets.random_models; the bundled weights' training "
                            "set) instead of the calibrated model (default: 0, off)")
    synth.add_argument("--hard", action="store_true",
                       help="with --mixture: every face model with look-alikes and far "
                            "sub-modes at strong degrees (random_models(hard=True))")
    synth.add_argument("--layout", choices=["npy", "learn-to-cluster"], default="npy",
                       help="npy: NAME_features.npy + NAME_labels.npy; learn-to-cluster: "
                            "features/*.bin, labels/*.meta, knns/*/faiss_k_K.npz "
                            "(default: npy)")
    synth.add_argument("--k", type=int, default=80, help="k of the kNN files written by the "
                                                         "learn-to-cluster layout (default: 80)")
    synth.add_argument("--out", required=True, help="output folder")

    features_help = ".npy, .npz or .bin features, one row per sample"
    dim_help = "feature width of a .bin file without its NAME.bin.json sidecar"
    knn = command("knn", cmd_knn, "build and save the kNN graph of a feature file")
    knn.add_argument("features", help=features_help)
    knn.add_argument("--dim", type=int, help=dim_help)
    knn.add_argument("--out", required=True, help="output .npz")
    _add_config_options(knn, ClusterConfig, only=KNN_FIELDS)

    train = command("train", cmd_train, "train the pair classifier on labelled embeddings")
    train.add_argument("features", help=features_help)
    train.add_argument("labels", help=".meta, .txt, .csv or .npy labels, one per row")
    train.add_argument("--dim", type=int, help=dim_help)
    train.add_argument("--val-features", help="validation features (clustered every epoch)")
    train.add_argument("--val-labels", help="labels of --val-features")
    train.add_argument("--out", required=True, help="the trained model; when it exists and "
                                                    "was trained on these features, nothing "
                                                    "is done (see --force)")
    train.add_argument("--state", help="resumable training state, written every epoch, "
                                       "resumed when it exists and removed once the model "
                                       "is written (default: OUT.state)")
    train.add_argument("--force", action="store_true",
                       help="train from scratch over an existing --out (and --state)")
    _add_config_options(train, ClusterConfig, only=("k",))
    _add_config_options(train, TrainConfig)

    clus = command("cluster", cmd_cluster, "cluster embeddings (no labels needed)")
    clus.add_argument("features", help=features_help)
    clus.add_argument("--dim", type=int, help=dim_help)
    clus.add_argument("--checkpoint", help="trained model (default: the bundled weights)")
    clus.add_argument("--knn", help="precomputed kNN graph (.npz) of these features; refused "
                                    "when it was built from other features")
    clus.add_argument("--labels", help="true labels: print precision / recall / F and NMI")
    clus.add_argument("--report", help="write a PNG report here")
    clus.add_argument("--out", required=True, help="labels output: .npy, .meta, .txt or .csv "
                                                   "(with --state: of every sample held)")
    clus.add_argument("--state", help="incremental clustering folder: created on the first call, "
                                      "the new samples added to it on later ones (old clusters "
                                      "keep their ids and are never split)")
    _add_config_options(clus, ClusterConfig)

    evaluate = command("evaluate", cmd_evaluate, "compare predicted labels with true ones")
    evaluate.add_argument("gt", help="true labels (.meta, .txt, .csv or .npy)")
    evaluate.add_argument("pred", help="predicted labels, one per row of gt")
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet
                 else logging.INFO)
    start = time.perf_counter()
    try:
        summary = args.run(args)
    except KeyboardInterrupt:
        print(f"sepfl {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (UserError, OSError, ValueError, TypeError, IndexError, ImportError) as err:
        print(f"sepfl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(f"done: {summary} ({time.perf_counter() - start:.1f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
