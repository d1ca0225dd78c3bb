"""The settings of clustering and training, in one typed place.

:class:`ClusterConfig` configures :func:`sepfl.cluster.cluster` (and
:mod:`sepfl.incremental`), :class:`TrainConfig` configures
:func:`sepfl.train.train`. Both are shared by the Python API (the estimator's
parameters are their fields, flat) and the CLI (one option per field, its help
read from the ``Attributes`` sections below). ``__post_init__`` checks each value
and asks no hardware: ``device`` is only spelled here and resolved by the
function that runs on it (:func:`sepfl.device.resolve_device`), and ``bf16=None``
is decided there too, so a config can be built, stored and read on any machine.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

from sepfl._validate import check_device, check_positive_int, check_probability, check_threads

__all__ = ["ClusterConfig", "TrainConfig", "SCHEMES", "GROUPINGS"]

SCHEMES = ("edges", "sepfl")
GROUPINGS = ("infomap", "components")


@dataclasses.dataclass
class ClusterConfig:
    """Settings of :func:`sepfl.cluster.cluster`, shared by the Python API and the CLI.

    Attributes
    ----------
    k : int
        Neighbours per sample, self included (80 in SEPFL); must equal the model's k.
    rho : float
        Similarity counted as "close" by the density (0.7 in SEPFL).
    scheme : {"edges", "sepfl"}
        "edges" scores several candidate edges per sample with the model's edge
        head and groups them (:mod:`sepfl.cluster`); "sepfl" is SEPFL's exact rule, one
        pair per sample. A model without an edge head (e.g. the authors'
        checkpoint) clusters with "sepfl" (logged).
    threshold : float or None
        An edge or pair is kept when its P(same identity) is above this; None
        means 0.5 (the argmax), or the model's calibrated threshold for "edges"
        grouped by "components".
    candidates : int
        Candidate edges per sample for "edges" (ranks 1..candidates, capped at k - 1).
    grouping : {None, "infomap", "components"}
        How "edges" groups the kept edges: None means the grouping the model's
        training calibrated on held-out identities; "infomap" is Infomap weighted
        by P (connected components when the infomap package is missing, logged),
        "components" connected components.
    markov_time : float or None
        Infomap's Markov time for "edges"; None means the model's calibrated one.
    max_per_node : int
        Denser neighbours paired per sample (1 in SEPFL).
    refresh : float
        Incremental clustering (:mod:`sepfl.incremental`): an old sample is
        re-embedded once ``refresh * (k - 1)`` entries (at least one) have
        entered its kNN list since it was last embedded; 0 re-embeds every
        sample whose list changed.
    device : str or None
        "cpu", "cuda" or "cuda:N"; None picks a GPU when sepfl's CUDA module and one are present.
    knn_backend : str
        "auto", "faiss" or "torch" (see :func:`sepfl.knn.build_knn`).
    knn_precision : str
        "fp32", "tf32" or "bf16" for the torch kNN backend.
    knn_exact : bool
        False lets faiss use an approximate IVF index (for millions of samples; recall is logged).
    node_batch_size : int
        Samples embedded at a time.
    pair_batch_size : int
        Pairs classified at a time.
    bf16 : bool or None
        Compute dtype of the network: bfloat16 (True), float32 (False), or None for
        whichever the device runs faster (:func:`sepfl.model.fast_bf16`: bfloat16 on
        GPUs and on CPUs with AMX or AVX-512 BF16, float32 otherwise).
    progress : bool
        Show progress bars for long stages.
    threads : int or None
        torch threads for the run; None keeps torch's setting (see sepfl._threads).
    distributed : bool
        Shard the run over the processes of a torch.distributed job (launched
        by torchrun; :mod:`sepfl.distributed`): each process clusters a
        contiguous share of the rows and every process gets all the labels.
    distributed_timeout : float
        Seconds a process waits on the others at a collective before it fails
        (a process that died or failed makes the others stop with an error
        instead of hanging).
    """

    k: int = 80
    rho: float = 0.7
    scheme: str = "edges"
    threshold: Optional[float] = None
    candidates: int = 40
    grouping: Optional[str] = None
    markov_time: Optional[float] = None
    max_per_node: int = 1
    refresh: float = 1.0
    device: Optional[str] = None
    knn_backend: str = "auto"
    knn_precision: str = "fp32"
    knn_exact: bool = True
    node_batch_size: int = 2048
    pair_batch_size: int = 65536
    bf16: Optional[bool] = None
    progress: bool = True
    threads: Optional[int] = None
    distributed: bool = False
    distributed_timeout: float = 1800.0

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
        check_positive_int(self.max_per_node, "max_per_node")
        check_probability(self.refresh, "refresh")
        check_positive_int(self.node_batch_size, "node_batch_size")
        check_positive_int(self.pair_batch_size, "pair_batch_size")
        check_device(self.device)
        check_threads(self.threads)
        if not self.distributed_timeout > 0:
            raise ValueError(f"distributed_timeout must be > 0 seconds, got "
                             f"{self.distributed_timeout}")


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`sepfl.train.train`, shared by the Python API and the CLI.

    Attributes
    ----------
    epochs : int
        Passes of ``pairs_per_epoch`` pairs each.
    pairs_per_epoch : int
        Class-balanced pairs per epoch, half positive and half negative (capped
        by the rarer class among the candidates).
    resample_pairs : bool
        Draw a fresh balanced sample every epoch (more distinct pairs for a
        small budget); ``False`` draws one sample and reshuffles it each epoch,
        as the paper does.
    ranks : int or None
        Candidate pairs join each sample to its neighbours at ranks 1..ranks;
        None means SEPFL's 39, or k - 1 for a smaller k
        (:func:`sepfl.train.default_ranks`).
    batch_size : int
        Pairs per optimiser step.
    optimizer : {"adamw", "sgd"}
        AdamW (the CPU default) or SGD with momentum (the paper).
    lr, momentum, weight_decay : float
        Optimiser settings (``momentum`` is SGD's only).
    lr_milestones : tuple of float
        Fractions of the total steps at which the learning rate is multiplied
        by ``lr_gamma``.
    lr_gamma : float
        Factor applied to the learning rate at each milestone.
    warmup_steps : int
        Classifier warm-up steps before the first epoch (see
        :mod:`sepfl.train`); 0 skips the warm-up and keeps the Xavier initialisation of
        every layer, as in the paper.
    refit_steps : int
        Classifier refit steps after the last epoch (:mod:`sepfl.train`); 0 skips it.
    classifier_batch_size : int
        Pairs per step of the warm-up and the refit.
    classifier_lr : float
        AdamW learning rate of the warm-up and the refit, each decayed to 0
        along a cosine.
    seed : int
        Seeds the weights, the pair sampling, the shuffles and dropout.
    device : str or None
        "cpu", "cuda" or "cuda:N"; None picks a GPU when sepfl can use one.
    bf16 : bool or None
        Dense layers under bfloat16 autocast; None where the device runs it
        faster (:func:`sepfl.model.fast_bf16`): ~1.5x faster on CPUs with bf16
        instructions, more on GPUs.
    progress : bool
        Show a tqdm bar with the running loss and pair accuracy.
    threads : int or None
        torch threads for the run; None keeps torch's setting but runs the small
        classifier steps of the warm-up and refit on one thread (see sepfl._threads).
    edge_steps : int
        Steps of the edge head (:mod:`sepfl.edges`) after the refit; 0 trains
        none, and the model then clusters with SEPFL's scheme only.
    candidates : int
        Candidate edges per sample the edge head is trained on (ranks 1..candidates,
        capped at k - 1); :attr:`ClusterConfig.candidates` should match.
    calibration_share : float
        Share of the training identities held out of the edge head's training to
        choose its grouping on (Infomap's Markov time or a components threshold,
        :mod:`sepfl.edges`); 0 keeps Infomap at Markov time 1 and the threshold at 0.5.
    rho : float
        Density's similarity level when training clusters its held-out identities
        and validation split (as :attr:`ClusterConfig.rho`).
    """

    epochs: int = 4
    pairs_per_epoch: int = 8192
    resample_pairs: bool = True
    ranks: Optional[int] = None
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: Tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    warmup_steps: int = 3000
    refit_steps: int = 3000
    classifier_batch_size: int = 1024
    classifier_lr: float = 2e-3
    seed: int = 0
    device: Optional[str] = None
    bf16: Optional[bool] = None
    progress: bool = True
    threads: Optional[int] = None
    edge_steps: int = 3000
    candidates: int = 40
    calibration_share: float = 0.15
    rho: float = 0.7

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
