"""Shared helpers of the benchmark scripts: timing and the table header."""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch

import sepfl
from sepfl.datasets import make_faces
from sepfl.io import Dataset

# mean samples per identity of the synthetic population (93,093 of 1,500 identities)
SAMPLES_PER_ID = 62


def timeit(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls.

    CUDA work is synchronised before each clock read.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
