"""The settings of clustering and training, in one typed place.

:class:`ClusterConfig` configures :func:`sepfl.cluster.cluster` (and
:mod:`sepfl.incremental`), :class:`TrainConfig` configures
:func:`sepfl.train.train`. Both are shared by the Python API (the estimator's
parameters are their fields, flat) and the CLI (one option per field). Each
field carries its help text in its metadata (:func:`setting`), the one source
of the CLI's option help and of each class's ``Attributes`` section (written
by :func:`documented`). ``__post_init__`` checks each value
and asks no hardware: ``device`` is only spelled here and resolved by the
function that runs on it (:func:`sepfl.device.resolve_device`), and ``bf16=None``
is decided there too, so a config can be built, stored and read on any machine.
"""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, Dict, Optional, Tuple

from sepfl._validate import check_device, check_positive_int, check_probability, check_threads

__all__ = ["ClusterConfig", "TrainConfig", "SCHEMES", "GROUPINGS", "DISTRIBUTED_FEATURES",
           "setting", "help_of"]

SCHEMES = ("edges", "sepfl")
GROUPINGS = ("infomap", "components")
DISTRIBUTED_FEATURES = ("auto", "all", "shard")


def setting(default: Any, help: str, knn: Optional[str] = None) -> Any:
    """A config field with ``default`` and its ``help`` text (reST allowed) in its metadata.

    ``knn`` names the :func:`sepfl.knn.build_knn` parameter the field sets, for
    :meth:`ClusterConfig.knn_settings`.
    """
    metadata = {"help": help} if knn is None else {"help": help, "knn": knn}
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls: type) -> Dict[str, str]:
    """Each field's help text (from :func:`setting`), by field name."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


def documented(cls: type) -> type:
    """``cls`` with a numpydoc ``Attributes`` section, one entry per field, appended to
    its docstring from the fields' help texts."""
    entries = [f"    {f.name} : {f.type}\n" + textwrap.fill(
        f.metadata["help"], width=92, initial_indent=" " * 8, subsequent_indent=" " * 8)
        for f in dataclasses.fields(cls)]
    cls.__doc__ = (f"{(cls.__doc__ or '').rstrip()}\n\n    Attributes\n    ----------\n"
                   + "\n".join(entries) + "\n")
    return cls


@documented
@dataclasses.dataclass
class ClusterConfig:
    """Settings of :func:`sepfl.cluster.cluster`, shared by the Python API and the CLI."""

    k: int = setting(80, "Neighbours per sample, self included (80 in SEPFL); must equal the "
                         "model's k.", knn="k")
    rho: float = setting(0.7, 'Similarity counted as "close" by the density (0.7 in SEPFL).')
    scheme: str = setting("edges", '"edges" scores several candidate edges per sample with the '
                          "model's edge head and groups them (:mod:`sepfl.cluster`); \"sepfl\" is "
                          "SEPFL's exact rule, one pair per sample. A model without an edge head "
                          "(e.g. the authors' checkpoint) clusters with \"sepfl\" (logged).")
    threshold: Optional[float] = setting(
        None, "An edge or pair is kept when its P(same identity) is above this; None means 0.5 "
              "(the argmax), or the model's calibrated threshold for \"edges\" grouped by "
              "\"components\".")
    candidates: int = setting(40, 'Candidate edges per sample for "edges" (ranks 1..candidates, '
                                  "capped at k - 1).")
    grouping: Optional[str] = setting(
        None, 'How "edges" groups the kept edges: None means the grouping the model\'s training '
              'calibrated on held-out identities; "infomap" is Infomap weighted by P (connected '
              'components when the infomap package is missing, logged), "components" connected '
              "components, each sample they leave alone then joined by its most probable edge "
              "above 0.5.")
    markov_time: Optional[float] = setting(
        None, "Infomap's Markov time for \"edges\"; None means the model's calibrated one.")
    full_cosine: float = setting(
        0.5, 'Infomap (grouping "infomap" of "edges") weighs each kept edge by P(same identity), '
             "times (cosine / full_cosine)² where its cosine is lower, so likely edges at "
             "chance-level similarity carry the walk less (:mod:`sepfl.edges`); 0 weighs by P "
             "alone.")
    join: Optional[float] = setting(
        None, 'Infomap (grouping "infomap" of "edges") joins two of its modules when at least '
              "this many edges with P above ``join_above`` connect them and the mean P of all "
              "the edges between them is above 0.5 (:func:`sepfl.edges.join_modules`): "
              "Infomap cuts identities made of several pose or age sub-modes that only a few "
              "edges cross; 0 joins none; None means the "
              "model's calibrated value (0 for models calibrated before this joining existed).")
    join_above: Optional[float] = setting(
        None, "The P above which an edge counts towards ``join``; None means the model's "
              "calibrated value.")
    prior_shift: bool = setting(
        False, 'Where the mean P(same identity) of the candidate edges of "edges" is below one '
               "half (identities of a few samples each), re-weight P from the even odds the edge "
               "head was trained at to the share of same-identity edges estimated from the P's "
               "themselves (:func:`sepfl.edges.estimated_prior`) before grouping. It raises "
               "precision on such sets where identities are compact, and cuts apart identities "
               "made of pose or age sub-modes (docs/results.md, \"The re-weighting on every "
               "population\").")
    max_per_node: int = setting(1, "Denser neighbours paired per sample (1 in SEPFL).")
    refresh: float = setting(
        1.0, "Incremental clustering (:mod:`sepfl.incremental`): an old sample is re-embedded "
             "once ``refresh * (k - 1)`` entries (at least one) have entered its kNN list since "
             "it was last embedded; 0 re-embeds every sample whose list changed.")
    merge_threshold: float = setting(
        0.9, "Incremental clustering: each add regroups the pairs above this P(same identity) "
             "(or above ``threshold`` when that is higher), and the never-split labels follow "
             "that grouping: a merge of old clusters is for good, so it takes surer evidence "
             "than one shot; 0 regroups as one shot does.")
    device: Optional[str] = setting(
        None, '"cpu", "cuda" or "cuda:N"; None picks a GPU when sepfl\'s CUDA module and one '
              "are present.")
    knn_backend: str = setting("auto", '"auto", "faiss" or "torch" (see '
                                       ":func:`sepfl.knn.build_knn`).", knn="backend")
    knn_precision: str = setting(
        "auto", '"fp32", "tf32" or "bf16" for the torch kNN backend; "auto" (default) is "bf16" '
                "on a CPU with AMX, where the torch backend's bf16 search runs several times "
                "faster than exact faiss and than faiss's graph index and finds the exact lists, "
                'and "fp32" otherwise (:func:`sepfl.knn.resolve_precision`).', knn="precision")
    knn_exact: Optional[bool] = setting(
        True, "True searches exactly; False lets faiss use its approximate graph index (HNSW; "
              "its estimated recall is logged) where the search is faiss's (not on a CPU "
              "with AMX, see knn_precision); None does so from sepfl.knn.APPROXIMATE_FROM "
              "(500,000) samples up.", knn="exact")
    knn_ef_search: int = setting(160, "Candidate list of the approximate kNN search: larger "
                                      "finds more true neighbours, more slowly.", knn="ef_search")
    node_batch_size: int = setting(2048, "Samples embedded at a time.")
    pair_batch_size: int = setting(65536, "Pairs classified at a time.")
    bf16: Optional[bool] = setting(
        None, "Compute dtype of the network: bfloat16 (True), float32 (False), or None for "
              "whichever the device runs faster (:func:`sepfl.model.fast_bf16`: bfloat16 on "
              "GPUs and on CPUs with AMX or AVX-512 BF16, float32 otherwise).")
    progress: bool = setting(True, "Show progress bars for long stages.", knn="progress")
    threads: Optional[int] = setting(None, "torch threads for the run; None keeps torch's "
                                           "setting (see sepfl._threads).")
    distributed: bool = setting(
        False, "Shard the run over the processes of a torch.distributed job (launched by "
               "torchrun; :mod:`sepfl.distributed`): each process clusters a contiguous share of "
               "the rows and every process gets all the labels.")
    distributed_features: str = setting(
        "auto", 'With ``distributed``, where the normalised features live: "all" copies every '
                "row to every process (the kNN search runs on the configured backend), "
                '"shard" keeps each process to its own rows and the rows its lists name (an '
                "exact brute-force kNN passes each shard to all processes in turn); "
                '"auto" copies them where N x D float32 take at most a quarter of every '
                "process's share of its machine's (or its GPU's) memory.")
    distributed_timeout: float = setting(
        1800.0, "Seconds a process waits on the others at a collective before it fails (a "
                "process that died or failed makes the others stop with an error instead of "
                "hanging).")

    def __post_init__(self) -> None:
        check_positive_int(self.k, "k", minimum=2)
        check_probability(self.rho, "rho")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.grouping is not None and self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.threshold is not None:
            check_probability(self.threshold, "threshold")
        check_positive_int(self.candidates, "candidates")
        if self.markov_time is not None and not self.markov_time > 0:
            raise ValueError(f"markov_time must be > 0, got {self.markov_time}")
        check_probability(self.full_cosine, "full_cosine")
        if self.join is not None and not self.join >= 0:
            raise ValueError(f"join must be >= 0, got {self.join}")
        if self.join_above is not None:
            check_probability(self.join_above, "join_above")
        check_positive_int(self.max_per_node, "max_per_node")
        check_probability(self.refresh, "refresh")
        check_probability(self.merge_threshold, "merge_threshold")
        if self.knn_exact is not None and not isinstance(self.knn_exact, bool):
            raise TypeError(f"knn_exact must be True, False or None, got {self.knn_exact!r}")
        check_positive_int(self.knn_ef_search, "knn_ef_search")
        check_positive_int(self.node_batch_size, "node_batch_size")
        check_positive_int(self.pair_batch_size, "pair_batch_size")
        check_device(self.device)
        check_threads(self.threads)
        if self.distributed_features not in DISTRIBUTED_FEATURES:
            raise ValueError(f"distributed_features must be one of {DISTRIBUTED_FEATURES}, "
                             f"got {self.distributed_features!r}")
        if not self.distributed_timeout > 0:
            raise ValueError(f"distributed_timeout must be > 0 seconds, got "
                             f"{self.distributed_timeout}")

    def knn_settings(self) -> Dict[str, Any]:
        """The keyword arguments of :func:`sepfl.knn.build_knn` these settings give: k,
        backend, precision, exact, ef_search and progress. Where to compute is the caller's to say
        (the pipeline builds the graph where its features are)."""
        return {f.metadata["knn"]: getattr(self, f.name) for f in dataclasses.fields(self)
                if "knn" in f.metadata}


@documented
@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`sepfl.train.train`, shared by the Python API and the CLI."""

    epochs: int = setting(1, "Passes of ``pairs_per_epoch`` pairs each.")
    pairs_per_epoch: int = setting(
        8192, "Class-balanced pairs per epoch, half positive and half negative (capped by the "
              "rarer class among the candidates).")
    resample_pairs: bool = setting(
        True, "Draw a fresh balanced sample every epoch (more distinct pairs for a small "
              "budget); ``False`` draws one sample and reshuffles it each epoch, as the paper "
              "does.")
    ranks: Optional[int] = setting(
        None, "Candidate pairs join each sample to its neighbours at ranks 1..ranks; None means "
              "SEPFL's 39, or k - 1 for a smaller k (:func:`sepfl.train.default_ranks`).")
    batch_size: int = setting(64, "Pairs per optimiser step.")
    optimizer: str = setting("adamw", '"adamw": AdamW (the CPU default), or "sgd": SGD with '
                                      "momentum (the paper).")
    lr: float = setting(1e-3, "Learning rate of the optimiser.")
    momentum: float = setting(0.9, "Momentum of SGD (AdamW ignores it).")
    weight_decay: float = setting(1e-4, "Weight decay of the optimiser.")
    lr_milestones: Tuple[float, ...] = setting(
        (0.5, 0.75), "Fractions of the total steps at which the learning rate is multiplied by "
                     "``lr_gamma``.")
    lr_gamma: float = setting(0.1, "Factor applied to the learning rate at each milestone.")
    warmup_steps: int = setting(
        2000, "Classifier warm-up steps before the first epoch (see :mod:`sepfl.train`); 0 "
              "skips the warm-up and keeps the Xavier initialisation of every layer, as in the "
              "paper.")
    refit_steps: int = setting(2000, "Classifier refit steps after the last epoch "
                                     "(:mod:`sepfl.train`); 0 skips it.")
    classifier_batch_size: int = setting(1024, "Pairs per step of the warm-up and the refit.")
    classifier_lr: float = setting(2e-3, "AdamW learning rate of the warm-up and the refit, "
                                         "each decayed to 0 along a cosine.")
    seed: int = setting(0, "Seeds the weights, the pair sampling, the shuffles and dropout.")
    device: Optional[str] = setting(None, '"cpu", "cuda" or "cuda:N"; None picks a GPU when '
                                          "sepfl can use one.")
    bf16: Optional[bool] = setting(
        None, "Dense layers under bfloat16 autocast; None where the device runs it faster "
              "(:func:`sepfl.model.fast_bf16`): ~1.5x faster on CPUs with bf16 instructions, "
              "more on GPUs.")
    progress: bool = setting(True, "Show a tqdm bar with the running loss and pair accuracy.")
    threads: Optional[int] = setting(
        None, "torch threads for the run; None keeps torch's setting but runs the small "
              "classifier steps of the warm-up and refit on one thread (see sepfl._threads).")
    edge_steps: int = setting(
        24000, "Steps of the edge head (:mod:`sepfl.edges`) after the refit; 0 trains none, and "
               "the model then clusters with SEPFL's scheme only. At 3,000 (the default until "
               "2026-12-05) the head underfits (docs/results.md, \"A longer edge head\").")
    candidates: int = setting(
        40, "Candidate edges per sample the edge head is trained on (ranks 1..candidates, "
            "capped at k - 1); :attr:`ClusterConfig.candidates` should match.")
    edge_thinning: Tuple[float, ...] = setting(
        (0.1, 0.3), "Shares of the training samples drawn at random, each with its own kNN "
                    "graph, whose candidate edges the edge head also learns from: the sparser "
                    "neighbourhoods of a smaller data set (a few samples per identity), "
                    "where the statistics of the full set do not carry over. () trains on "
                    "the full set only.")
    calibration_share: float = setting(
        0.15, "Share of the training identities held out of the edge head's training to choose "
              "its grouping on (Infomap's Markov time or a components threshold, "
              ":mod:`sepfl.edges`); 0 keeps Infomap at Markov time 1 and the threshold at 0.5.")
    rho: float = setting(0.7, "Density's similarity level when training clusters its held-out "
                              "identities and validation split (as :attr:`ClusterConfig.rho`).")

    def __post_init__(self) -> None:
        for name in ("epochs", "pairs_per_epoch", "batch_size", "classifier_batch_size",
                     "candidates"):
            check_positive_int(getattr(self, name), name)
        if self.ranks is not None:
            check_positive_int(self.ranks, "ranks")
        for name in ("seed", "warmup_steps", "refit_steps", "edge_steps"):
            check_positive_int(getattr(self, name), name, minimum=0)
        if not 0 <= self.calibration_share < 1:
            raise ValueError(f"calibration_share must be in [0, 1), got {self.calibration_share}")
        check_probability(self.rho, "rho")
        self.edge_thinning = tuple(float(share) for share in self.edge_thinning)
        if any(not 0 < share < 1 for share in self.edge_thinning):
            raise ValueError(f"edge_thinning must hold shares in (0, 1), got "
                             f"{self.edge_thinning}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for name in ("lr", "classifier_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        check_probability(self.momentum, "momentum")
        check_probability(self.lr_gamma, "lr_gamma")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        if any(not 0 < m < 1 for m in self.lr_milestones) or \
                list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got "
                             f"{self.lr_milestones}")
        check_device(self.device)
        check_threads(self.threads)

    @classmethod
    def paper(cls, **overrides: Any) -> "TrainConfig":
        """The published recipe: SGD from Xavier weights, 100 epochs over one draw of
        1M positive + 1M negative pairs, float32 (a GPU run)."""
        settings = dict(epochs=100, pairs_per_epoch=2_000_000, resample_pairs=False,
                        batch_size=512, optimizer="sgd", lr=0.01,
                        lr_milestones=(0.4, 0.6, 0.8), warmup_steps=0, refit_steps=0,
                        bf16=False)
        return cls(**{**settings, **overrides})
