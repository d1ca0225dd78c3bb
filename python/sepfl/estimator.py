"""``SEPFL``: the scikit-learn-style face of the package.

>>> from sepfl import SEPFL                                   # doctest: +SKIP
>>> labels = SEPFL.pretrained().fit_predict(features)         # doctest: +SKIP
>>> model = SEPFL(k=80).fit(train_features, train_labels)     # doctest: +SKIP
>>> labels = model.predict(test_features)                     # doctest: +SKIP

The estimator's parameters are the fields of :class:`~sepfl.config.ClusterConfig`
and :class:`~sepfl.config.TrainConfig`, flat (``SEPFL(k=40, threshold=0.6,
epochs=2)``), read from the dataclasses themselves: a field added there is a
parameter here, an option of the CLI, and survives ``get_params`` / ``clone``.
"""
from __future__ import annotations

import dataclasses
import inspect
from importlib import resources
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from sepfl import incremental
from sepfl._threads import torch_threads
from sepfl._validate import Array, as_values, to_numpy
from sepfl.checkpoint import load_checkpoint, save_checkpoint
from sepfl.cluster import ClusterResult, cluster
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.features import fingerprint
from sepfl.train import train

PathLike = Union[str, Path]

DEFAULT_WEIGHTS = "default_k80_d256.pt"
_CONFIGS = (ClusterConfig, TrainConfig)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _defaults() -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """Each config field's default, and the fields the two configs default differently.

    Such a field (``bf16``, on by default for training) defaults to None here,
    meaning "each config's own default"; a value sets both.
    """
    defaults: Dict[str, Any] = {}
    per_config = set()
    for cls in _CONFIGS:
        for field in dataclasses.fields(cls):
            default = _default(field)
            if field.name in defaults and defaults[field.name] != default:
                per_config.add(field.name)
            defaults.setdefault(field.name, default)
    return {**defaults, **dict.fromkeys(per_config)}, frozenset(per_config)


_DEFAULTS, _PER_CONFIG = _defaults()
# settings of one run that a saved model does not carry over to the next
_RUN_TIME = ("progress", "threads")


def _build(cls: type, params: Mapping[str, Any]):
    """``cls`` from the flat parameters (validated by the dataclass)."""
    return cls(**{f.name: params[f.name] for f in dataclasses.fields(cls)
                  if not (f.name in _PER_CONFIG and params[f.name] is None)})


def _check(params: Mapping[str, Any]) -> None:
    """ValueError / TypeError when the flat parameters make an invalid config."""
    for cls in _CONFIGS:
        _build(cls, params)


def _changed(config: Any) -> Dict[str, Any]:
    """The fields of a config object that differ from their defaults."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != _default(f)}


def _from_configs(configs: Iterable[Any]) -> Dict[str, Any]:
    """Flat parameters from config objects; ValueError when two set one field differently."""
    params: Dict[str, Any] = {}
    for config in configs:
        for name, value in _changed(config).items():
            if name in params and params[name] != value:
                raise ValueError(f"cluster_config and train_config disagree on {name} "
                                 f"({params[name]!r} vs {value!r}); pass {name}=... instead")
            params[name] = value
    return params


class NotFittedError(RuntimeError):
    """``predict`` was called before ``fit`` (or ``load`` / ``pretrained``)."""


class SEPFL:
    """Supervised clustering of embeddings with a trained pair classifier.

    ``__init__`` only stores its parameters; ``fit`` validates and trains,
    ``predict`` clusters. Inputs are numpy arrays or torch tensors [N, D];
    labels come back as numpy.

    Parameters
    ----------
    **params
        Every field of :class:`~sepfl.config.ClusterConfig` (k, rho, threshold,
        device, kNN and batch settings, ...) and :class:`~sepfl.config.TrainConfig`
        (epochs, pairs per epoch, optimiser, seed, ...) by name, with the same
        defaults. A field both define (``device``, ``bf16``, ``progress``,
        ``threads``) sets both; ``bf16=None`` (its default) leaves each config
        its own default (ClusterConfig's; on for training).
    cluster_config, train_config : optional
        Config objects whose non-default fields become parameters (explicit
        parameters win); kept for code that builds configs first.

    Attributes
    ----------
    cluster_config : ClusterConfig
        The clustering settings the parameters make (built on access).
    train_config : TrainConfig
        The training settings the parameters make.
    model_ : PairClassifier
        The trained network (after ``fit``, ``load`` or ``pretrained``).
    labels_ : int64 ndarray [N]
        Labels of the last ``fit_predict`` / ``predict`` call, or of every sample
        held after an ``add``.
    result_ : ClusterResult
        Everything the last clustering produced, per-stage timings included
        (an :class:`~sepfl.incremental.AddResult` after ``add``).
    state_ : sepfl.incremental.State
        The clustering ``add`` continues (after ``predict`` or ``add``).
    """

    def __init__(self, *, cluster_config: Optional[ClusterConfig] = None,
                 train_config: Optional[TrainConfig] = None, **params: Any):
        unknown = set(params) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown SEPFL parameter(s) {sorted(unknown)}; the parameters are "
                            "the fields of ClusterConfig and TrainConfig")
        given = {**_from_configs(c for c in (cluster_config, train_config) if c is not None),
                 **params}
        for name, default in _DEFAULTS.items():
            setattr(self, name, given.get(name, default))

    def __repr__(self) -> str:
        changed = ", ".join(f"{name}={value!r}" for name, value in self.get_params().items()
                            if value != _DEFAULTS[name])
        return f"SEPFL({changed})"

    def __sklearn_tags__(self) -> Any:
        """What scikit-learn >= 1.6 asks of an estimator (sklearn is imported only then)."""
        from sklearn.utils import Tags, TargetTags

        # a clusterer that learns from labels: fit needs y, predict does not
        return Tags(estimator_type="clusterer", target_tags=TargetTags(required=True))

    @property
    def cluster_config(self) -> ClusterConfig:
        return _build(ClusterConfig, self.get_params())

    @property
    def train_config(self) -> TrainConfig:
        return _build(TrainConfig, self.get_params())

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """Every parameter by name (flat; ``deep`` changes nothing: no nested estimators)."""
        return {name: getattr(self, name) for name in _DEFAULTS}

    def set_params(self, **params: Any) -> "SEPFL":
        """Change single parameters, keeping a fitted model; returns self.

        Raises
        ------
        ValueError
            A name that is not a parameter, or a value a config rejects (the
            estimator is then left unchanged).
        TypeError
            A value of the wrong type.
        """
        unknown = set(params) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"invalid SEPFL parameter(s) {sorted(unknown)}; the parameters "
                             "are the fields of ClusterConfig and TrainConfig")
        _check({**self.get_params(), **params})
        for name, value in params.items():
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ learning

    def fit(self, X: Array, y: Array, validation: Optional[tuple] = None,
            checkpoint: Optional[PathLike] = None) -> "SEPFL":
        """Train the pair classifier on labelled embeddings.

        Parameters
        ----------
        X : float [N, D]
            Training embeddings.
        y : int [N]
            Identity of each row.
        validation : (X_val, y_val), optional
            A labelled split clustered after every epoch (F_P / F_B logged).
        checkpoint : path, optional
            The resumable training state: written atomically after every epoch
            and resumed from when it exists (:meth:`save` writes the model).

        Returns
        -------
        self
        """
        cluster_config, train_config = self.cluster_config, self.train_config
        with torch_threads(train_config.threads):
            self.model_ = train(X, y, train_config, k=cluster_config.k,
                                validation=validation, checkpoint=checkpoint)
        self.fingerprint_ = fingerprint(X)
        return self

    def predict(self, X: Array, knn: Optional[tuple] = None) -> np.ndarray:
        """Cluster embeddings (no labels needed).

        Parameters
        ----------
        X : float [N, D]
        knn : (nbrs [N, k], sims [N, k]), optional
            A precomputed kNN graph.

        With ``distributed=True`` every process of a torchrun job calls this
        with the same X (:mod:`sepfl.distributed`); each gets all the labels,
        and ``result_`` holds its shard's rows (no ``state_``: ``add`` is not
        supported).

        Returns
        -------
        labels : int64 ndarray [N]
            0..C-1, in order of each cluster's smallest member.
        """
        if not hasattr(self, "model_"):
            raise NotFittedError("this SEPFL has no trained model: call fit(), SEPFL.load() or "
                                 "SEPFL.pretrained() first")
        config = self.cluster_config
        with torch_threads(config.threads):
            self.result_: ClusterResult = cluster(X, self.model_, config, knn=knn)
        if config.distributed:
            # a rank holds its shard's rows only: nothing for add() to continue from
            self.__dict__.pop("state_", None)
        else:
            self.state_ = incremental.State.of(self.result_)
        self.labels_ = self.result_.labels
        return self.labels_

    def add(self, X_new: Array) -> np.ndarray:
        """Cluster new samples into the clustering held (:mod:`sepfl.incremental`).

        Old clusters are never split and keep their ids; two merge only when
        the new samples join them (``result_.merged`` says which). New samples
        take an existing id or a new one.

        Parameters
        ----------
        X_new : float [M, D]
            New embeddings; they become rows N..N+M-1.

        Returns
        -------
        labels : int64 ndarray [N + M]
            Stable cluster ids of every sample held, old ones first.

        Raises
        ------
        ValueError
            No clustering held yet (call ``predict`` first), or D not the model's.
        """
        if self.distributed:
            raise ValueError("add() does not run distributed: set distributed=False")
        if not hasattr(self, "state_"):
            raise ValueError("add() continues a clustering: call predict() (or load a state "
                             "saved after one) first")
        X_new = as_values(X_new, "X_new", 2)
        dim = self.state_.features.shape[1]
        if X_new.shape[1] != dim:
            raise ValueError(f"X_new has D = {X_new.shape[1]} but the clustering held has "
                             f"D = {dim}")
        config = self.cluster_config
        with torch_threads(config.threads):
            self.state_, self.result_ = incremental.add(
                self.state_, to_numpy(X_new), self.model_, config)
        self.labels_ = self.result_.labels
        return self.labels_

    def fit_predict(self, X: Array, y: Optional[Array] = None) -> np.ndarray:
        """``fit(X, y).predict(X)`` with labels; just ``predict(X)`` for a pretrained model."""
        if y is not None:
            self.fit(X, y)
        return self.predict(X)

    # ------------------------------------------------------------------ persistence

    def save(self, path: PathLike) -> None:
        """Write the model, both configs, the training data's fingerprint and the
        clustering state ``add`` continues (when one is held) to ``path``, atomically."""
        if not hasattr(self, "model_"):
            raise NotFittedError("nothing to save: the model is not trained")
        state = self.state_.to_dict() if hasattr(self, "state_") else None
        save_checkpoint(path, self.model_, self.train_config,
                        extra={"cluster_config": dataclasses.asdict(self.cluster_config),
                               "fingerprint": getattr(self, "fingerprint_", None),
                               "state": state})

    @classmethod
    def load(cls, path: PathLike, cluster_config: Optional[ClusterConfig] = None,
             **params: Any) -> "SEPFL":
        """A fitted SEPFL from a checkpoint: ``save``'s, a training one, or a bare state_dict.

        The stored settings come first (k is the model's), then the non-default
        fields of ``cluster_config``, then ``params``; only then are they
        validated, so ``SEPFL.load(path, device="cpu")`` reads a model saved
        with ``device="cuda"`` on a machine without a GPU. ``progress`` and
        ``threads`` are not taken from the file: how visibly and on how many
        threads to run is this run's choice, not the one of the run that saved it.
        """
        checkpoint = load_checkpoint(path)
        trained = checkpoint["config"]  # None for a bare state_dict
        stored = _changed(trained) if trained is not None else {}
        known = {f.name: _default(f) for f in dataclasses.fields(ClusterConfig)}
        # a field this version does not know (a checkpoint from another version) is dropped
        stored.update({name: value for name, value in
                       (checkpoint.get("cluster_config") or {}).items()
                       if name in known and value != known[name]})
        stored["k"] = checkpoint["model"].k
        for name in _RUN_TIME:
            stored.pop(name, None)
        overrides = _from_configs([cluster_config]) if cluster_config is not None else {}
        estimator = cls(**{**stored, **overrides, **params})
        _check(estimator.get_params())  # only now that every override is applied
        estimator.model_ = checkpoint["model"]
        if checkpoint.get("fingerprint"):
            estimator.fingerprint_ = checkpoint["fingerprint"]
        if checkpoint.get("state"):
            estimator.state_ = incremental.State.from_dict(checkpoint["state"])
            estimator.labels_ = estimator.state_.labels
        return estimator

    @classmethod
    def pretrained(cls, cluster_config: Optional[ClusterConfig] = None,
                   **params: Any) -> "SEPFL":
        """The bundled default model (D = 256, k = 80, trained on synthetic faces).

        Training on your own labelled embeddings gives better clusters; this is
        for trying sepfl out and for data close to the synthetic set.
        """
        weights = resources.files("sepfl") / "weights" / DEFAULT_WEIGHTS
        with resources.as_file(weights) as path:
            return cls.load(path, cluster_config=cluster_config, **params)


SEPFL.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
       for name in ("cluster_config", "train_config")]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
       for name, default in _DEFAULTS.items()])
