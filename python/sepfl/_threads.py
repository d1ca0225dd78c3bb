"""How many CPU threads sepfl's torch (and faiss) work uses.

``threads=None`` (the default of :class:`~sepfl.config.ClusterConfig` and
:class:`~sepfl.config.TrainConfig`) keeps torch's setting, which follows
``OMP_NUM_THREADS`` or else uses every core, for the large products of the node
embeddings and the kNN search, but runs the small classifier steps of training
(a few MFLOP each) on one thread.
Those steps synchronise their threads dozens of times per step, which a busy
core stalls. Measured on this project's 2-core CPU while other jobs kept it
loaded (load average 4-5), a short ``sepfl train`` (100 warm-up and 100 refit
steps of 1,024 pairs, torch's default of 2 threads): the classifier steps ran
at 22,740 pairs/s on one thread and 3,833 pairs/s on two, 20 s against 60 s
wall; the end-to-end epoch ran at 56 pairs/s either way.
``threads=N`` uses N threads everywhere.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Optional

import torch


@functools.lru_cache(maxsize=None)
def faiss_module() -> Any:
    """The ``faiss`` module, or None when it is not installed (an optional dependency)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the body with ``threads`` torch intra-op threads (faiss's too, when it is installed).

    ``None`` changes nothing. The previous counts are restored on exit.
    """
    if threads is None:
        yield
        return
    faiss = faiss_module()
    saved = torch.get_num_threads()
    saved_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        if faiss is not None:
            faiss.omp_set_num_threads(saved_faiss)
