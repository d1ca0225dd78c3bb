"""``SEPFL``: the scikit-learn-style face of the package.

>>> from sepfl import SEPFL                                   # doctest: +SKIP
>>> labels = SEPFL.pretrained().fit_predict(features)         # doctest: +SKIP
>>> model = SEPFL(k=80).fit(train_features, train_labels)     # doctest: +SKIP
>>> labels = model.predict(test_features)                     # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from sepfl._validate import Array
from sepfl.cluster import ClusterConfig, ClusterResult, cluster
from sepfl.model import PairClassifier
from sepfl.train import TrainConfig, load_checkpoint, save_checkpoint, train

PathLike = Union[str, Path]

DEFAULT_WEIGHTS = "default_k80_d256.pt"


class NotFittedError(RuntimeError):
    """``predict`` was called before ``fit`` (or ``load`` / ``pretrained``)."""


class SEPFL:
    """Supervised clustering of embeddings with a trained pair classifier.

    ``__init__`` only stores settings; ``fit`` trains, ``predict`` clusters.
    Inputs are numpy arrays or torch tensors [N, D]; labels come back as numpy.

    Parameters
    ----------
    cluster_config : ClusterConfig, optional
        Clustering settings (k, rho, link threshold, device, batch sizes, ...).
    train_config : TrainConfig, optional
        Training settings (epochs, pairs per epoch, optimiser, seed, ...).
    **settings
        Any field of either config by name, e.g. ``SEPFL(k=40, threshold=0.6,
        epochs=20)``; overrides the config objects. ``device``, ``bf16`` and
        ``progress`` exist in both and set both.

    Attributes
    ----------
    model_ : PairClassifier
        The trained network (after ``fit``, ``load`` or ``pretrained``).
    labels_ : int64 ndarray [N]
        Labels of the last ``fit_predict`` / ``predict`` call.
    result_ : ClusterResult
        Everything the last clustering produced, per-stage timings included.
    """

    def __init__(self, cluster_config: Optional[ClusterConfig] = None,
                 train_config: Optional[TrainConfig] = None, **settings: Any):
        self.cluster_config = cluster_config or ClusterConfig()
        self.train_config = train_config or TrainConfig()
        self.set_params(**settings)

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {"cluster_config": self.cluster_config, "train_config": self.train_config}

    def set_params(self, **params: Any) -> "SEPFL":
        """Replace ``cluster_config`` / ``train_config`` or single fields of either
        (a field both define, such as ``device``, is set in both); returns self.

        Raises
        ------
        TypeError
            A name that is neither a config nor a field of one.
        ValueError
            A value the config rejects.
        """
        cluster_fields = {f.name for f in dataclasses.fields(ClusterConfig)}
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        configs = {"cluster_config", "train_config"}
        unknown = set(params) - cluster_fields - train_fields - configs
        if unknown:
            raise TypeError(f"unknown SEPFL setting(s): {sorted(unknown)}")
        self.cluster_config = dataclasses.replace(
            params.get("cluster_config", self.cluster_config),
            **{k: v for k, v in params.items() if k in cluster_fields})
        self.train_config = dataclasses.replace(
            params.get("train_config", self.train_config),
            **{k: v for k, v in params.items() if k in train_fields})
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
            Written atomically after every epoch (and resumed from when it exists).

        Returns
        -------
        self
        """
        self.model_ = train(X, y, self.train_config, k=self.cluster_config.k,
                            validation=validation, checkpoint=checkpoint)
        return self

    def predict(self, X: Array, knn: Optional[tuple] = None) -> np.ndarray:
        """Cluster embeddings (no labels needed).

        Parameters
        ----------
        X : float [N, D]
        knn : (nbrs [N, k], sims [N, k]), optional
            A precomputed kNN graph.

        Returns
        -------
        labels : int64 ndarray [N]
            0..C-1, in order of each cluster's smallest member.
        """
        if not hasattr(self, "model_"):
            raise NotFittedError("this SEPFL has no trained model: call fit(), SEPFL.load() or "
                                 "SEPFL.pretrained() first")
        self.result_: ClusterResult = cluster(X, self.model_, self.cluster_config, knn=knn)
        self.labels_ = self.result_.labels
        return self.labels_

    def fit_predict(self, X: Array, y: Optional[Array] = None) -> np.ndarray:
        """``fit(X, y).predict(X)`` with labels; just ``predict(X)`` for a pretrained model."""
        if y is not None:
            self.fit(X, y)
        return self.predict(X)

    # ------------------------------------------------------------------ persistence

    def save(self, path: PathLike) -> None:
        """Write the model and both configs to ``path`` (atomically)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("nothing to save: the model is not trained")
        save_checkpoint(path, self.model_, self.train_config,
                        extra={"cluster_config": dataclasses.asdict(self.cluster_config)})

    @classmethod
    def load(cls, path: PathLike, cluster_config: Optional[ClusterConfig] = None,
             **settings: Any) -> "SEPFL":
        """A fitted SEPFL from a checkpoint: ``save``'s, a training one, or a bare state_dict.

        Without ``cluster_config`` the stored cluster settings are used (k is
        the model's); ``settings`` override single ClusterConfig fields (e.g.
        ``device="cuda"``).
        """
        checkpoint = load_checkpoint(path)
        if cluster_config is None:
            # fields this version does not know (a checkpoint from another version) are dropped
            known = {f.name for f in dataclasses.fields(ClusterConfig)}
            stored = {name: value for name, value in
                      (checkpoint.get("cluster_config") or {}).items() if name in known}
            cluster_config = ClusterConfig(**{**stored, "k": checkpoint["model"].k})
        estimator = cls(cluster_config=dataclasses.replace(cluster_config, **settings))
        estimator.model_ = checkpoint["model"]
        return estimator

    @classmethod
    def pretrained(cls, cluster_config: Optional[ClusterConfig] = None,
                   **settings: Any) -> "SEPFL":
        """The bundled default model (D = 256, k = 80, trained on synthetic faces).

        Training on your own labelled embeddings gives better clusters; this is
        for trying sepfl out and for data close to the synthetic set.
        """
        weights = resources.files("sepfl") / "weights" / DEFAULT_WEIGHTS
        with resources.as_file(weights) as path:
            return cls.load(path, cluster_config=cluster_config, **settings)
