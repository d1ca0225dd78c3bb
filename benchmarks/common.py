"""Shared helpers of the benchmark scripts: timing, the table header, recall and the
baselines more than one script measures against."""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence, Tuple, TypeVar

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

import sepfl
from sepfl.datasets import make_faces
from sepfl.io import Dataset

# mean samples per identity of the synthetic population (93,093 of 1,500 identities)
SAMPLES_PER_ID = 62


T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int = 3, warmup: int = 1) -> Tuple[T, float]:
    """The last result of ``fn()`` and the median wall time in seconds of ``repeat`` calls,
    after ``warmup`` untimed calls.

    CUDA work is synchronised before each clock read.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        result = fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def header(title: str) -> str:
    """Date, machine, versions and command line, printed above every table."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return "\n".join([
        f"# {title}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {cpu}, {os.cpu_count()} cores, GPU: {gpu}",
        f"versions: sepfl {sepfl.__version__}, python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}",
        f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}",
    ])


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def faces_of_size(n: int, seed: int) -> Dataset:
    """Exactly ``n`` synthetic face-like samples: a population large enough, cut to ``n``.

    The samples come in random order, so the cut keeps a random subset.
    """
    n_ids = math.ceil(1.1 * n / SAMPLES_PER_ID)
    data = make_faces(n_ids, seed=seed)
    while len(data.labels) < n:  # small populations vary more around the mean
        n_ids = math.ceil(1.2 * n_ids)
        data = make_faces(n_ids, seed=seed)
    return Dataset(features=data.features[:n], labels=data.labels[:n], classes=data.classes)


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the exact neighbours at ranks 1..k-1 that ``found`` lists in the same row.

    Both int64 [N, k] with self at rank 0, on one device.
    """
    rows = torch.arange(len(exact), device=exact.device)[:, None] * len(exact)
    hits = torch.isin(rows + found[:, 1:], rows + exact[:, 1:])
    return float(hits.float().mean())


def components_scipy(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """scipy's connected components of the undirected edges (src, dst), int64 [n], numbered
    in order of each component's smallest member as ``ops.connected_components`` does."""
    graph = scipy.sparse.coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    remap = np.empty(len(first), dtype=np.int64)
    remap[np.argsort(first)] = np.arange(len(first))
    return remap[labels]


def per_pair_logits(model: torch.nn.Module, x: torch.Tensor, nbrs: torch.Tensor,
                    src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The un-cached network, as the authors' code runs it: both samples of every pair
    embedded from scratch. x float32 [N, D], nbrs int64 [N, k] without -1 slots, src / dst
    int64 [P]; logits [P, 2]."""
    return model(x[src], x[nbrs[src]], x[dst], x[nbrs[dst]])


@torch.no_grad()
def per_pair_probability(model: torch.nn.Module, x: torch.Tensor, nbrs: torch.Tensor,
                         src: torch.Tensor, dst: torch.Tensor, batch: int = 2048,
                         bf16: bool = False) -> torch.Tensor:
    """P(same) float32 [P] of ``per_pair_logits`` in batches of ``batch`` pairs, under
    bfloat16 autocast when ``bf16``."""
    prob = torch.empty(len(src), device=x.device)
    for start in range(0, len(src), batch):
        a, b = src[start:start + batch], dst[start:start + batch]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = per_pair_logits(model, x, nbrs, a, b)
        prob[start:start + batch] = torch.softmax(logits.float(), 1)[:, 1]
    return prob
