"""Synthetic face-like embedding sets for tests, the demo and the benchmarks.

:func:`make_faces` draws identities and their samples; :func:`make_splits`
draws disjoint train / test identities from one population.

The model
---------
* **Identity centres** are uniform on the unit sphere of R^D. A share
  ``lookalike`` of identities are look-alikes: their centre is placed at a
  cosine drawn from ``lookalike_cos`` to an earlier identity's centre (chains
  of look-alikes form families). These are the hard negatives.
* **Sizes** are long-tailed: lognormal with mean ``mean_size`` (MS1M's
  part0_train has 576K samples of 8.5K identities: ~67 each), at least 2.
* **Spread** varies per identity (lognormal around ``spread``): a sample is
  ``normalise(centre + s * z / sqrt(D) + nuisance)`` with ``z ~ N(0, I)``, so
  its cosine to the centre is about ``1 / sqrt(1 + s^2)``. Tight identities
  next to loose ones are what defeats a global similarity threshold.
* **Nuisance** (pose, lighting, image quality) is shared by everyone: each
  sample adds a Gaussian vector of norm ~``nuisance`` in one low-rank subspace
  common to all identities (and to both sides of a split), so photos of
  different people taken alike look alike. This is the broad floor of
  cross-identity similarity along which threshold methods chain clusters.
* **Sub-modes** (pose, age, make-up): with ``modes`` > 0 an identity has
  ``1 + Poisson(modes)`` sub-mode centres at cosine ``mode_cos`` to its
  centre, and each sample is drawn around one of them, so one person's
  photos form several nearby clumps a kNN graph may not join.
* **Hard samples** (share ``hard``) have ``hard_scale`` times the spread;
  **outliers** (share ``outliers``) have 4 times it, close to noise.

All parameters live in :class:`FaceModel`. :func:`random_models` draws
several models with every structure above switched on to a random degree
(``hard=True``: look-alikes and far sub-modes in every model, each strong);
``make_splits(model=[...])`` then gives each model its share of the
identities: the randomised family the bundled weights are trained on (plain
draws), so that they do not learn one generator's settings.

Calibration
-----------
Defaults are set so that simple methods score as they do on MS1M, not higher
(easy data would hide every difference that matters), while SEPFL's ceiling
stays high. Measured on ``make_splits(1500, 1500, seed=0).test`` (N = 93,093,
k = 80, faiss exact) with ``python benchmarks/calibrate_synth.py``:

* kNN graph: 69.4 % of the rank 1..79 edges join the same identity, 95.0 % at rank 1;
* naive baseline, kNN cosine threshold + connected components, best over a
  sweep of thresholds (0.30 to 0.90, step 0.01): pairwise F 0.671 at
  threshold 0.55 (P 0.835, R 0.560; lower thresholds chain look-alikes into
  giant clusters: P 0.55 at 0.53, 0.01 at 0.50);
* SEPFL oracle, a perfect pair classifier on the nearest-denser-neighbour
  pairs (SEPFL §2-3): pairwise F 0.907 (P 1, R 0.830);
* generating 584,908 samples (``make_faces(9000)``): 6-10 s on a 2-core machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np

from sepfl._validate import check_positive_int, check_probability
from sepfl.features import l2_normalize
from sepfl.io import Dataset, learn_to_cluster_paths, write_features, write_knn, write_labels
from sepfl.knn import build_knn

__all__ = ["FaceModel", "make_faces", "make_splits", "random_models", "Splits",
           "write_learn_to_cluster"]


@dataclass
class Splits:
    """Disjoint-identity train and test sets, each a :class:`sepfl.io.Dataset`."""

    train: Dataset
    test: Dataset


@dataclass(frozen=True)
class FaceModel:
    """Parameters of the synthetic face model (defaults: the calibrated ones).

    Attributes
    ----------
    mean_size : float > 2
        Mean samples per identity.
    size_sigma : float >= 0
        Lognormal sigma of the identity sizes (the length of the tail).
    spread : float > 0
        Typical within-identity noise scale: a sample's cosine to its centre is
        about ``1 / sqrt(1 + spread^2)``.
    spread_sigma : float >= 0
        Lognormal sigma of the per-identity spread.
    lookalike : float in [0, 1]
        Share of identities placed near an earlier identity.
    lookalike_cos : (float, float)
        Range of the centre cosine between a look-alike and its model.
    nuisance : float >= 0
        Norm of the shared nuisance component of each sample.
    nuisance_rank : int >= 1
        Dimension of the shared nuisance subspace.
    hard, outliers : float in [0, 1]
        Shares of samples with ``hard_scale`` and 4 times their identity's spread.
    hard_scale : float >= 1
    modes : float >= 0
        Mean number of extra sub-modes per identity (0: one mode, the centre).
    mode_cos : float in [0, 1]
        Cosine between a sub-mode's centre and its identity's centre.
    """

    mean_size: float = 65.0
    size_sigma: float = 0.9
    spread: float = 0.95
    spread_sigma: float = 0.4
    lookalike: float = 0.6
    lookalike_cos: Tuple[float, float] = (0.5, 0.85)
    nuisance: float = 0.7
    nuisance_rank: int = 8
    hard: float = 0.08
    hard_scale: float = 1.6
    outliers: float = 0.01
    modes: float = 0.0
    mode_cos: float = 0.8

    def __post_init__(self) -> None:
        low, high = (check_probability(c, "lookalike_cos") for c in self.lookalike_cos)
        if low > high:
            raise ValueError(f"lookalike_cos must be (low, high) with low <= high, got "
                             f"{self.lookalike_cos}")
        if not (self.mean_size > 2 and self.spread > 0 and self.hard_scale >= 1
                and min(self.size_sigma, self.spread_sigma, self.nuisance) >= 0):
            raise ValueError(f"need mean_size > 2, spread > 0, hard_scale >= 1 and "
                             f"non-negative size_sigma, spread_sigma, nuisance; got {self}")
        check_positive_int(self.nuisance_rank, "nuisance_rank")
        check_probability(self.mode_cos, "mode_cos")
        if not self.modes >= 0:
            raise ValueError(f"modes must be >= 0, got {self.modes}")
        check_probability(self.lookalike, "lookalike")
        if check_probability(self.hard, "hard") + check_probability(self.outliers,
                                                                    "outliers") > 1:
            raise ValueError(f"hard + outliers must be <= 1, got {self.hard} + {self.outliers}")


@dataclass(frozen=True)
class _Population:
    """Identities and the nuisance subspace their samples share."""

    centres: np.ndarray   # float32 [C, D], unit rows
    sizes: np.ndarray     # int64 [C]
    spreads: np.ndarray   # float32 [C]
    nuisance: np.ndarray  # float32 [D, r], orthonormal columns

    def take(self, ids: slice) -> "_Population":
        return _Population(self.centres[ids], self.sizes[ids], self.spreads[ids], self.nuisance)


_OUTLIER_SCALE = 4.0


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return l2_normalize(rng.standard_normal((n, dim), dtype=np.float32))


def _centres(rng: np.random.Generator, n_ids: int, dim: int, p: FaceModel) -> np.ndarray:
    centres = _unit_rows(rng, n_ids, dim)
    lookalikes = np.flatnonzero(rng.random(n_ids) < p.lookalike)
    lookalikes = lookalikes[lookalikes > 0]
    # Sequential on purpose: a look-alike of a look-alike joins the family.
    parents = (rng.random(len(lookalikes)) * lookalikes).astype(np.int64)
    cosines = rng.uniform(*p.lookalike_cos, size=len(lookalikes)).astype(np.float32)
    for child, parent, cos in zip(lookalikes, parents, cosines):
        base = centres[parent]
        away = centres[child] - (centres[child] @ base) * base
        away /= np.linalg.norm(away)
        centres[child] = cos * base + np.sqrt(1.0 - cos * cos) * away
    return centres


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, n)


def _population(rng: np.random.Generator, n_ids: int, dim: int, p: FaceModel) -> _Population:
    sizes = np.maximum(2, np.rint(1.0 + _lognormal(rng, p.mean_size - 1.0, p.size_sigma, n_ids)))
    spreads = _lognormal(rng, p.spread, p.spread_sigma, n_ids).astype(np.float32)
    nuisance = np.linalg.qr(rng.standard_normal((dim, p.nuisance_rank)))[0].astype(np.float32)
    return _Population(_centres(rng, n_ids, dim, p), sizes.astype(np.int64), spreads, nuisance)


def _toward(rng: np.random.Generator, centres: np.ndarray, cos: float) -> np.ndarray:
    """Unit rows [M, D] at cosine ``cos`` to the unit rows of ``centres`` [M, D]."""
    away = rng.standard_normal(centres.shape, dtype=np.float32)
    away -= (away * centres).sum(1, keepdims=True) * centres
    return cos * centres + np.float32(np.sqrt(1.0 - cos * cos)) * l2_normalize(away)


def _sample_centres(rng: np.random.Generator, pop: _Population, labels: np.ndarray,
                    p: FaceModel) -> np.ndarray:
    """The centre [N, D] each sample is drawn around: its identity's, or one of its sub-modes'."""
    if p.modes == 0:
        return pop.centres[labels]
    counts = 1 + rng.poisson(p.modes, len(pop.sizes))
    owner = np.repeat(np.arange(len(pop.sizes)), counts)
    modes = _toward(rng, pop.centres[owner], np.float32(p.mode_cos))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return modes[first[labels] + (rng.random(len(labels)) * counts[labels]).astype(np.int64)]


def _samples(rng: np.random.Generator, pop: _Population, p: FaceModel) -> Dataset:
    labels = rng.permutation(np.repeat(np.arange(len(pop.sizes), dtype=np.int64), pop.sizes))
    n, dim = len(labels), pop.centres.shape[1]
    kind = rng.random(n)
    scale = pop.spreads[labels] / np.float32(np.sqrt(dim))
    scale[kind < p.hard + p.outliers] *= np.float32(p.hard_scale)
    scale[kind < p.outliers] *= np.float32(_OUTLIER_SCALE / p.hard_scale)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= scale[:, None]
    x += _sample_centres(rng, pop, labels, p)
    w = rng.standard_normal((n, pop.nuisance.shape[1]), dtype=np.float32)
    w *= np.float32(p.nuisance / np.sqrt(pop.nuisance.shape[1]))
    x += w @ pop.nuisance.T
    return Dataset(features=l2_normalize(x), labels=labels,
                   classes=np.arange(len(pop.sizes), dtype=np.int64))


def make_faces(n_ids: int = 1500, dim: int = 256, seed: int = 0,
               model: FaceModel = FaceModel()) -> Dataset:
    """A seeded set of face-like embeddings (see the module notes for the model).

    Parameters
    ----------
    n_ids : int
        Number of identities.
    dim : int
        Embedding width D.
    seed : int
        Same seed, same set (numpy's PCG64 stream).
    model : FaceModel
        Sizes, spreads, look-alikes and hard samples; the defaults are calibrated.

    Returns
    -------
    Dataset
        ``features`` float32 [N, D] with unit rows, ``labels`` int64 [N] in
        0..n_ids-1 (samples in random order), ``classes`` = ``arange(n_ids)``.
    """
    rng = np.random.default_rng(seed)
    pop = _population(rng, check_positive_int(n_ids, "n_ids"), check_positive_int(dim, "dim"),
                      model)
    return _samples(rng, pop, model)


def random_models(count: int, seed: int = 0, hard: bool = False) -> List[FaceModel]:
    """``count`` face models with each structure at a random degree (seeded).

    Look-alikes (share 0-0.8, centre cosines from 0.5-0.7 up to 0.15-0.25
    higher), sub-modes (none for a third of the models, else 0.5-2 extra per
    identity at cosine 0.72-0.88), spread 0.75-1.15 varying per identity by a
    lognormal sigma of 0.2-0.6, mean sizes 20-70 with a tail sigma of 0.6-1.3,
    hard samples 3-10 %, outliers 0-4 %, nuisance 0.3-0.9.

    ``hard`` draws every model with both confusions at a strong degree: look-alikes
    for 0.4-0.8 of the identities at centre cosines from 0.55-0.7 up, and 1-2 extra
    sub-modes per identity at cosine 0.72-0.8, so that telling a look-alike from a
    far sub-mode of the same identity is learnt everywhere (the other ranges as above).
    """
    rng = np.random.default_rng(check_positive_int(seed, "seed", minimum=0))
    models = []
    for _ in range(check_positive_int(count, "count")):
        low = rng.uniform(0.55 if hard else 0.5, 0.7)
        models.append(FaceModel(
            mean_size=rng.uniform(20, 70), size_sigma=rng.uniform(0.6, 1.3),
            spread=rng.uniform(0.75, 1.15), spread_sigma=rng.uniform(0.2, 0.6),
            lookalike=rng.uniform(0.4 if hard else 0.0, 0.8),
            lookalike_cos=(low, min(0.92, low + rng.uniform(0.15, 0.25))),
            nuisance=rng.uniform(0.3, 0.9), hard=rng.uniform(0.03, 0.1),
            outliers=rng.uniform(0.0, 0.04),
            modes=_modes(rng, hard), mode_cos=rng.uniform(0.72, 0.8 if hard else 0.88)))
    return models


def _modes(rng: np.random.Generator, hard: bool) -> float:
    """Extra sub-modes per identity of one :func:`random_models` draw."""
    if hard:
        return rng.uniform(1.0, 2.0)
    return 0.0 if rng.random() < 1 / 3 else rng.uniform(0.5, 2.0)


def make_splits(n_train_ids: int = 1500, n_test_ids: int = 1500, dim: int = 256, seed: int = 0,
                model: Union[FaceModel, Sequence[FaceModel]] = FaceModel()) -> Splits:
    """Train and test sets with disjoint identities drawn from one population.

    Look-alikes may cross the split (a test identity resembling a train one),
    as in real data. With a sequence of models, the identities are shared out
    among them as evenly as possible, each model's part is its own population
    (its own seed and nuisance subspace), and the parts are shuffled together.

    Returns
    -------
    Splits
        ``train`` with labels 0..n_train_ids-1, ``test`` with labels
        0..n_test_ids-1 (each numbered within its split).
    """
    n_train = check_positive_int(n_train_ids, "n_train_ids")
    n_test = check_positive_int(n_test_ids, "n_test_ids")
    dim = check_positive_int(dim, "dim")
    if not isinstance(model, FaceModel):
        return _mixed_splits(n_train, n_test, dim, seed, list(model))
    rng = np.random.default_rng(seed)
    pop = _population(rng, n_train + n_test, dim, model)
    train_rng, test_rng = rng.spawn(2)
    return Splits(train=_samples(train_rng, pop.take(slice(0, n_train)), model),
                  test=_samples(test_rng, pop.take(slice(n_train, None)), model))


def _mixed_splits(n_train: int, n_test: int, dim: int, seed: int,
                  models: List[FaceModel]) -> Splits:
    if not models or len(models) > min(n_train, n_test):
        raise ValueError(f"need 1 to {min(n_train, n_test)} models (one identity each at "
                         f"least), got {len(models)}")
    seeds = np.random.SeedSequence(seed).generate_state(len(models) + 1)
    parts = [make_splits(len(train_ids), len(test_ids), dim, int(part_seed), part_model)
             for train_ids, test_ids, part_seed, part_model in zip(
                 np.array_split(np.arange(n_train), len(models)),
                 np.array_split(np.arange(n_test), len(models)), seeds, models)]
    shuffle = np.random.default_rng(int(seeds[-1]))
    return Splits(*(_concatenate([getattr(part, side) for part in parts], shuffle)
                    for side in ("train", "test")))


def _concatenate(sets: List[Dataset], rng: np.random.Generator) -> Dataset:
    """One set of all rows of ``sets`` in a random order, labels offset to stay distinct."""
    offsets = np.cumsum([0] + [len(part.classes) for part in sets[:-1]])
    labels = np.concatenate([part.labels + offset for part, offset in zip(sets, offsets)])
    order = rng.permutation(labels.size)
    return Dataset(features=np.concatenate([part.features for part in sets])[order],
                   labels=labels[order],
                   classes=np.arange(sum(len(part.classes) for part in sets), dtype=np.int64))


def write_learn_to_cluster(dataset: Dataset, root: Union[str, Path], name: str,
                           k: int = 80) -> Tuple[Path, Path, Path]:
    """Write a set in the learn-to-cluster layout, like the public MS1M release.

    ``root/features/NAME.bin`` (with its ``.json`` sidecar), ``root/labels/NAME.meta``
    and ``root/knns/NAME/faiss_k_K.npz``. The kNN graph is ``dataset.nbrs`` /
    ``dataset.sims`` when set (``k`` must then be their width), else built with
    :func:`sepfl.knn.build_knn`.

    Returns
    -------
    (features_path, labels_path, knn_path)
    """
    if dataset.labels is None:
        raise ValueError("the learn-to-cluster layout needs labels; dataset.labels is None")
    paths = learn_to_cluster_paths(root, name, k)
    if dataset.nbrs is None:
        nbrs, sims = build_knn(dataset.features, k=k)
    elif dataset.nbrs.shape[1] != k:
        raise ValueError(f"dataset.nbrs has {dataset.nbrs.shape[1]} neighbours per row, not k={k}")
    else:
        nbrs, sims = dataset.nbrs, dataset.sims
    labels = dataset.labels if dataset.classes is None else dataset.classes[dataset.labels]
    write_features(paths[0], dataset.features)
    write_labels(paths[1], labels)
    write_knn(paths[2], nbrs, sims, layout="learn-to-cluster")
    return paths
