"""Checkpoints: a trained :class:`~sepfl.model.PairClassifier` with its training settings.

A checkpoint is a ``torch.save`` file holding a dict: ``format``
(``"sepfl-checkpoint"``), ``sepfl_version``, ``dim``, ``k``, the model's
``state_dict`` and its :class:`~sepfl.config.TrainConfig` as a plain dict, plus
whatever the writer adds (:func:`sepfl.train.train` stores its resumable
state, :class:`~sepfl.estimator.SEPFL` its clustering settings and fitted
state). Only tensors and plain Python values are stored, so files load with
``weights_only=True``. A bare ``PairClassifier`` ``state_dict`` (the authors'
weights) loads too, without a config.
"""
from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from sepfl._version import __version__
from sepfl.config import TrainConfig
from sepfl.io import atomic_write
from sepfl.model import PairClassifier

__all__ = ["save_checkpoint", "load_checkpoint"]

PathLike = Union[str, Path]

_FORMAT = "sepfl-checkpoint"


def save_checkpoint(path: PathLike, model: PairClassifier, config: TrainConfig,
                    extra: Optional[Mapping[str, Any]] = None) -> None:
    """Write the model and its training settings to ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        Written through a temporary file in the same directory and
        ``os.replace``, so a crash never leaves a half-written checkpoint.
    model : PairClassifier
    config : TrainConfig
    extra : mapping, optional
        More entries to store (training state, other settings); plain Python
        values and tensors only.
    """
    payload = {"format": _FORMAT, "sepfl_version": __version__, "dim": model.dim,
               "k": model.k, "model": model.state_dict(),
               "config": dataclasses.asdict(config), **(extra or {})}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def _read(path: Path) -> Any:
    """What ``torch.load`` finds in ``path`` (tensors and plain values only), on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError) as err:
        if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        # torch's own message is a paragraph about weights_only; the file is simply damaged
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?: "
                         f"{type(err).__name__})") from None


def load_checkpoint(path: PathLike, dim: Optional[int] = None,
                    k: Optional[int] = None) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or a bare ``state_dict``.

    Parameters
    ----------
    path : str or Path
    dim, k : int, optional
        When given, the checkpoint's D / k must match (ValueError otherwise).

    Returns
    -------
    dict
        ``model`` (a :class:`PairClassifier` in eval mode), ``config`` (a
        :class:`TrainConfig`, or None for a bare state_dict), ``dim``, ``k``,
        and every other stored entry (``epoch``, ``fingerprint``,
        ``sepfl_version``, ``history``, ...).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        A truncated, corrupt or foreign file, or a D / k mismatch.
    """
    path = Path(path)
    stored = _read(path)
    if isinstance(stored, Mapping) and stored.get("format") == _FORMAT:
        checkpoint = dict(stored)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = {name: value for name, value in stored["config"].items() if name in fields}
        checkpoint["config"] = TrainConfig(**config)
        state_dict = stored["model"]
    elif isinstance(stored, Mapping) and "channel_mix.0.weight" in stored:
        checkpoint, state_dict = {"config": None}, stored
    else:
        raise ValueError(f"{path} holds neither a sepfl checkpoint nor a PairClassifier "
                         "state_dict")
    try:
        model = PairClassifier.from_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit a PairClassifier: {err}") from None
    checkpoint.update(model=model.eval(), dim=model.dim, k=model.k)
    for name, want in (("dim", dim), ("k", k)):
        if want is not None and checkpoint[name] != want:
            raise ValueError(f"{path} was trained for {name} = {checkpoint[name]}, but "
                             f"{name} = {want} was asked for")
    return checkpoint
