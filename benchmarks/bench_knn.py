"""Time build_knn on a face-like set and check its recall against fp32 brute force.

Usage: python benchmarks/bench_knn.py [--ids 9000] [--k 80] [--device cuda]
       [--precisions fp32,tf32,bf16] [--chunks 0] [--repeat 3]
       python benchmarks/bench_knn.py --approximate --n 300000 [--indexes ...]

``--approximate`` compares approximate indexes on the CPU with exact faiss
search and with sepfl's brute force in the ``--brute-force`` precisions (``backend="torch"``,
bfloat16 by default, timed whole): for each index (sepfl's own ``build_knn(exact=False)`` and, where
installed, faiss HNSW / IVF, hnswlib and usearch at the settings listed in
``--indexes``), the seconds to build it over all N samples, the seconds to
search the kNN lists of all N rows (timed on ``--query-rows`` sampled rows and
scaled to N, as search time is linear in the queries; sepfl's row is a whole
build_knn call) and recall@k against exact search on those rows. The exact
time is scaled the same way from the same rows.

Without ``--approximate``, the torch backend's precisions are timed beside exact
faiss search (``IndexFlatIP``, on the CPU when faiss is installed), the default
CPU backend. Correctness first: every timed configuration's neighbours are compared with the
fp32 torch graph (recall of ranks 1..k-1 over all rows) before its time (the median
of ``--repeat`` runs after one warm-up) is printed. On the CPU the default set is
small; ``--ids 9000`` gives ~585K samples (MS1M part1_test size). ``--chunks 0``
means the automatic block size.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import faces_of_size, header, recall, table, timed  # noqa: E402

from sepfl._threads import faiss_module  # noqa: E402
from sepfl.datasets import make_faces  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402


def block_profile(x: torch.Tensor, k: int, chunk: int, dtype: torch.dtype) -> str:
    """Seconds for one block's matrix product and its top-k, scaled to the whole set."""
    base = x.to(dtype)
    q = base[:chunk]
    steps = {"matmul": lambda: q @ base.T}
    scores = steps["matmul"]()
    steps["topk"] = lambda: scores.topk(k + 40, dim=1)
    out = []
    for name, step in steps.items():
        step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        out.append(f"{name} {(time.perf_counter() - start) / 5 * len(x) / chunk:.3f} s")
    return ", ".join(out)


# Each index builder takes the features and its integer settings and returns search(queries, k),
# the int64 [Q, k] neighbour ids.
def _faiss_hnsw(x: np.ndarray, links: int, ef_build: int, ef_search: int):
    import faiss
    index = faiss.IndexHNSWFlat(x.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_build
    index.add(x)
    index.hnsw.efSearch = ef_search
    return lambda q, k: index.search(q, k)[1]


def _faiss_ivf(x: np.ndarray, lists: int, probes: int):
    import faiss
    index = faiss.index_factory(x.shape[1], f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 64 * lists), False)])
    index.add(x)
    index.nprobe = probes
    return lambda q, k: index.search(q, k)[1]


def _hnswlib(x: np.ndarray, links: int, ef_build: int, ef_search: int):
    import hnswlib
    index = hnswlib.Index("ip", x.shape[1])
    index.init_index(len(x), M=links, ef_construction=ef_build)
    index.set_num_threads(torch.get_num_threads())
    index.add_items(x)
    index.set_ef(ef_search)
    return lambda q, k: index.knn_query(q, k=k)[0].astype(np.int64)


def _usearch(x: np.ndarray, links: int, ef_build: int, ef_search: int):
    from usearch.index import Index
    index = Index(ndim=x.shape[1], metric="ip", dtype="bf16", connectivity=links,
                  expansion_add=ef_build, expansion_search=ef_search)
    threads = torch.get_num_threads()
    index.add(np.arange(len(x)), x, threads=threads)
    return lambda q, k: index.search(q, k, threads=threads).keys.astype(np.int64)


INDEXES = {"faiss-hnsw": _faiss_hnsw, "faiss-ivf": _faiss_ivf, "hnswlib": _hnswlib,
           "usearch-bf16": _usearch}
BRUTE_FORCE = {"bf16": "bf16 products, float32 re-ranking",
               "fp32": "float32 products (the path of a CPU without bf16 matrix units)"}
MODULES = {"faiss-hnsw": "faiss", "faiss-ivf": "faiss", "hnswlib": "hnswlib",
           "usearch-bf16": "usearch"}


def approximate(args: argparse.Namespace) -> None:
    """The ``--approximate`` table (see the module notes)."""
    import importlib.util

    import faiss

    from sepfl import knn as knn_module
    faces = faces_of_size(args.n, seed=0)
    x = np.ascontiguousarray(faces.features, dtype=np.float32)
    queries = np.sort(np.random.default_rng(1).choice(len(x), args.query_rows, replace=False))
    scale = len(x) / len(queries)
    start = time.perf_counter()
    exact_index = faiss.IndexFlatIP(x.shape[1])
    exact_index.add(x)
    exact_build_s = time.perf_counter() - start

    def exact_search() -> Tuple[np.ndarray, float]:
        start = time.perf_counter()
        found = exact_index.search(x[queries], args.k)[1]
        return found, (time.perf_counter() - start) * scale

    true, exact_search_s = exact_search()
    # only the search is linear in the queries: the index's copy of the features is not scaled
    exact_s = exact_build_s + exact_search_s
    truth = torch.from_numpy(true)

    def hits(found: np.ndarray) -> Tuple[str, str]:
        """recall@k, and the share of the true ranks 1..candidates found anywhere in the list."""
        # Rank 0 of an approximate list may be a duplicate, not the row: compare as sets.
        found = np.where(found[:, :1] == queries[:, None], found, np.c_[queries, found[:, :-1]])
        near = true[:, 1:args.candidates + 1]
        near_found = (near[:, :, None] == found[:, None, :]).any(axis=2).mean()
        return (f"{recall(torch.from_numpy(np.ascontiguousarray(found)), truth):.4f}",
                f"{near_found:.4f}")

    print(header(f"approximate kNN: N = {len(x)}, D = {x.shape[1]}, k = {args.k}, "
                 f"{torch.get_num_threads()} threads, search timed on {len(queries)} rows"))
    rows = [("faiss exact (IndexFlatIP)", f"{exact_build_s:.1f}", f"{exact_search_s:.0f}",
             f"{exact_s:.0f}", "1.0000", "1.0000", "1.0")]
    start = time.perf_counter()
    nbrs, _ = build_knn(x, k=args.k, exact=False, progress=False)
    seconds = time.perf_counter() - start
    cpu = torch.device("cpu")
    backend = knn_module.choose_backend("auto", cpu, knn_module.resolve_precision("auto", "auto",
                                                                                  cpu), False)
    what = (f"faiss HNSW{knn_module.HNSW_LINKS} ef build {knn_module.HNSW_EF_BUILD}, ef_search "
            "160" if backend == "faiss" else "the torch brute force in bf16 (AMX)")
    rows.append((f"sepfl build_knn(exact=False), whole call: {what}", "-", "-",
                 f"{seconds:.0f}", *hits(nbrs[queries]), f"{exact_s / seconds:.1f}"))
    print(rows[-1], flush=True)
    for precision in filter(None, args.brute_force.split(",")):
        start = time.perf_counter()
        nbrs, _ = build_knn(x, k=args.k, backend="torch", precision=precision, progress=False)
        seconds = time.perf_counter() - start
        rows.append((f"sepfl build_knn(backend='torch', precision='{precision}'), whole call: "
                     f"brute force, {BRUTE_FORCE[precision]}", "-", "-", f"{seconds:.0f}",
                     *hits(nbrs[queries]), f"{exact_s / seconds:.1f}"))
        print(rows[-1], flush=True)
    for spec in filter(None, args.indexes.split(",")):
        name, *values = spec.split(":")
        if importlib.util.find_spec(MODULES[name]) is None:
            rows.append((spec, "not installed", "", "", "", "", ""))
            continue
        start = time.perf_counter()
        search = INDEXES[name](x, *map(int, values))
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        found = search(x[queries], args.k)
        search_s = (time.perf_counter() - start) * scale
        total = build_s + search_s
        rows.append((spec, f"{build_s:.0f}", f"{search_s:.0f}", f"{total:.0f}",
                     *hits(found), f"{exact_s / total:.1f}"))
        print(rows[-1], flush=True)
    print(table(["index : settings", "build s", "search s (N rows)", "total s", "recall@k",
                 f"recall of ranks 1..{args.candidates}", "x faster than exact"], rows))
    # The machine's speed can drift during a long run: the exact search timed again, last.
    print(f"exact faiss search timed again after the rows above: {exact_search()[1]:.0f} s "
          f"(first: {exact_search_s:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--approximate", action="store_true",
                        help="compare approximate CPU indexes with exact faiss (module notes)")
    parser.add_argument("--n", type=int, default=300_000, help="--approximate: samples")
    parser.add_argument("--query-rows", type=int, default=2000,
                        help="--approximate: rows whose search is timed and checked")
    parser.add_argument("--candidates", type=int, default=40,
                        help="--approximate: also report the recall of the true ranks "
                             "1..candidates (the edges the default scheme scores)")
    parser.add_argument("--indexes", default="faiss-hnsw:32:100:160,faiss-hnsw:32:100:256,"
                        "hnswlib:32:100:160,usearch-bf16:32:100:160,faiss-ivf:4096:128",
                        help="--approximate: name:settings, comma-separated (faiss-hnsw, "
                             "hnswlib and usearch-bf16: links:ef_build:ef_search; faiss-ivf: "
                             "lists:probes; empty: none beyond sepfl's own rows)")
    parser.add_argument("--brute-force", default="bf16",
                        help="--approximate: precisions of sepfl's torch brute-force rows, "
                             "comma-separated (bf16, fp32; empty: none)")
    parser.add_argument("--ids", type=int, default=300)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--chunks", default="0")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="",
                        help="CUDA: block sizes at which to time one block's matmul and topk")
    args = parser.parse_args()
    if args.approximate:
        specs = filter(None, args.indexes.split(","))
        unknown = {spec.split(":")[0] for spec in specs} - set(INDEXES)
        if unknown:
            parser.error(f"unknown --indexes {sorted(unknown)}; known: {sorted(INDEXES)}")
        unknown = set(filter(None, args.brute_force.split(","))) - set(BRUTE_FORCE)
        if unknown:
            parser.error(f"unknown --brute-force {sorted(unknown)}; known: {sorted(BRUTE_FORCE)}")
        approximate(args)
        return

    start = time.perf_counter()
    faces = make_faces(args.ids, dim=args.dim, seed=0)
    x = torch.from_numpy(faces.features).to(args.device)
    print(f"{len(x)} x {args.dim} on {args.device} "
          f"({torch.cuda.get_device_name() if x.is_cuda else 'cpu'}), k = {args.k}; "
          f"generated in {time.perf_counter() - start:.1f} s")
    for chunk in (int(c) for c in args.profile.split(",") if c):
        for dtype in (torch.float32, torch.bfloat16):
            print(f"block {chunk} {dtype}: {block_profile(x, args.k, chunk, dtype)}")

    def knn(precision: str, chunk: int):
        return timed(lambda: build_knn(x, k=args.k, backend="torch", precision=precision,
                                       chunk_size=chunk or None, progress=False),
                     repeat=args.repeat)

    (true, _), fp32_time = knn("fp32", 0)
    print(f"{'precision':>9} {'chunk':>6} {'recall':>7} {'seconds':>8}")
    if faiss_module() is not None and not x.is_cuda:
        (nbrs, _), seconds = timed(lambda: build_knn(x, k=args.k, backend="faiss", exact=True,
                                                     progress=False), repeat=args.repeat)
        print(f"{'faiss':>9} {'-':>6} {recall(nbrs, true):7.4f} {seconds:8.3f}")
    print(f"{'fp32':>9} {'auto':>6} {1.0:7.4f} {fp32_time:8.3f}")
    for precision in args.precisions.split(","):
        for chunk in (int(c) for c in args.chunks.split(",")):
            if precision == "fp32" and chunk == 0:
                continue
            (nbrs, _), seconds = knn(precision, chunk)
            print(f"{precision:>9} {chunk or 'auto':>6} {recall(nbrs, true):7.4f} "
                  f"{seconds:8.3f}")


if __name__ == "__main__":
    main()
