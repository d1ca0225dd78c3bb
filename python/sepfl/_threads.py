"""How many CPU threads sepfl's torch (and faiss) work uses.

``threads=None`` (the default of :class:`~sepfl.cluster.ClusterConfig` and
:class:`~sepfl.train.TrainConfig`) keeps torch's setting, which follows
``OMP_NUM_THREADS`` or else uses every core, for the large products of the node
embeddings and the kNN search, but runs the small classifier steps of training
(a few MFLOP each) on one thread. Those steps synchronise their threads dozens
of times per step: on a 2-core machine beside one other busy process a
1,024-pair classifier step took 198 ms median (1,002 ms worst) on two threads
and 107 ms on one; on the same machine with no other job, 536 ms against 50 ms.
``threads=N`` uses N threads everywhere.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the body with ``threads`` torch intra-op threads (faiss's too, when it is installed).

    ``None`` changes nothing. The previous counts are restored on exit.
    """
    if threads is None:
        yield
        return
    from sepfl.knn import _faiss

    faiss = _faiss()
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
