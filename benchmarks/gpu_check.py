"""The whole pipeline on one GPU at the size of MS1M's first test split, against baselines.

Measures, on a synthetic face-like set (default ~584K samples, D = 256, k = 80):
kNN (torch brute force in fp32, tf32 and bf16-with-fp32-re-ranking, recall
against fp32), density, pairs, node embeddings (fp32, bf16), pair scores,
union-find and end to end, with peak GPU memory; in the same run, a
straightforward torch pipeline (chunked bf16 matmul + topk kNN, vectorised
density and pairs, node-cached network in bf16, scipy union-find) and the
per-pair (un-cached) network as baselines; and checks that the GPU and CPU
paths give identical labels in fp32 on a subset. Prints a table last and
writes it (with JSON) under ``--out``.

    python benchmarks/gpu_check.py [--n-ids 9000] [--out DIR]
    python benchmarks/gpu_check.py --device cpu --n-ids 60   # rehearsal on a CPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_ops import density_torch, select_torch  # noqa: E402
from common import (components_scipy, header, per_pair_probability, recall,  # noqa: E402
                    table, timed)

from sepfl import ops  # noqa: E402
from sepfl.cluster import cluster  # noqa: E402
from sepfl.config import ClusterConfig  # noqa: E402
from sepfl.datasets import make_faces  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402
from sepfl.model import PairClassifier  # noqa: E402


def load_model(dim, k, device):
    """The bundled default weights when they fit, else a seeded random classifier."""
    try:
        from sepfl.estimator import SEPFL
        model = SEPFL.pretrained().model_
        if (model.dim, model.k) == (dim, k):
            return model.to(device).eval(), "bundled default weights"
    except Exception as err:  # a missing or mismatched checkpoint falls back to random weights
        print(f"default weights not used ({err!r})")
    torch.manual_seed(0)
    model = PairClassifier(dim, k)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return model.to(device).eval(), "random weights (seed 0)"


# ---------------------------------------------------------------- straightforward baseline

def knn_plain(x, k, chunk=8192):
    """Chunked bf16 matmul + topk, self forced first."""
    n = x.shape[0]
    xb = x.to(torch.bfloat16)
    nbrs = torch.empty((n, k), dtype=torch.int64, device=x.device)
    sims = torch.empty((n, k), dtype=torch.float32, device=x.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=x.device)
        scores = xb[rows] @ xb.T
        scores[torch.arange(len(rows), device=x.device), rows] = math.inf
        vals, idx = scores.topk(k, dim=1)
        vals[:, 0] = 1.0
        nbrs[rows], sims[rows] = idx, vals.float()
    return nbrs, sims


@torch.no_grad()
def embed_plain(model, x, nbrs, batch=2048, bf16=True):
    out = torch.empty((x.shape[0], 2 * model.dim), device=x.device)
    for start in range(0, x.shape[0], batch):
        ids = torch.arange(start, min(start + batch, x.shape[0]), device=x.device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out[ids] = model.embed(x[ids], x[nbrs[ids]]).float()
    return out


def link_scipy(src, dst, scores, n, threshold=0.5):
    """``ops.link`` by scipy: the components of the pairs scored above ``threshold``."""
    keep = scores > threshold
    return components_scipy(src[keep], dst[keep], n)


# ---------------------------------------------------------------- checks

def cpu_gpu_labels(model, x_gpu, n_sub, k):
    """Run the fp32 pipeline on the first n_sub samples on both devices; count differences."""
    sub = x_gpu[:n_sub].contiguous()
    nbrs, sims = build_knn(sub, k=k, backend="torch", precision="fp32", progress=False)
    cfg = dict(k=k, progress=False)
    gpu = cluster(sub, model, ClusterConfig(device=str(x_gpu.device), **cfg), knn=(nbrs, sims))
    cpu_model = PairClassifier(model.dim, model.k)
    cpu_model.load_state_dict({k_: v.cpu() for k_, v in model.state_dict().items()})
    cpu = cluster(sub.cpu(), cpu_model.eval(), ClusterConfig(device="cpu", **cfg),
                  knn=(nbrs.cpu(), sims.cpu()))
    model.to(x_gpu.device)
    same_density = np.array_equal(gpu.density, cpu.density)
    same_pairs = np.array_equal(gpu.src, cpu.src) and np.array_equal(gpu.dst, cpu.dst)
    # the network's float rounding differs by device: compare decisions too
    flips = int(((gpu.scores > 0.5) != (cpu.scores > 0.5)).sum())
    return dict(n=n_sub, density_identical=same_density, pairs_identical=same_pairs,
                max_score_diff=float(np.abs(gpu.scores - cpu.scores).max()),
                decision_flips=flips, labels_identical=bool(np.array_equal(gpu.labels, cpu.labels)),
                labels_differing=int((gpu.labels != cpu.labels).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ids", type=int, default=9000)
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--subset", type=int, default=20000, help="samples for the CPU = GPU check")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows, results = [], {}

    def row(stage, seconds, baseline=None, base_seconds=None, note=""):
        ratio = f"{base_seconds / seconds:.1f}x" if base_seconds else ""
        rows.append([stage, f"{seconds:.3f}", baseline or "",
                     f"{base_seconds:.3f}" if base_seconds else "", ratio, note])
        results[stage] = dict(seconds=seconds, baseline=baseline, baseline_seconds=base_seconds,
                              note=note)
        print(" | ".join(rows[-1]), flush=True)

    start = time.perf_counter()
    data = make_faces(args.n_ids, seed=0)
    n = len(data.labels)
    print(f"{n:,} samples generated in {time.perf_counter() - start:.1f} s", flush=True)
    x = torch.from_numpy(data.features).to(device)
    model, weights = load_model(x.shape[1], args.k, device)

    # kNN
    (nbrs32, sims32), t32 = timed(lambda: build_knn(x, k=args.k, backend="torch",
                                                    precision="fp32", progress=False), repeat=1)
    (plain_nbrs, plain_sims), t_plain = timed(lambda: knn_plain(x, args.k), repeat=1)
    row("knn fp32 (exact)", t32, "plain bf16 topk", t_plain,
        f"plain recall {recall(plain_nbrs, nbrs32):.4f}")
    for precision in ("tf32", "bf16"):
        (nb, _), t = timed(lambda: build_knn(x, k=args.k, backend="torch", precision=precision,
                                             progress=False), repeat=1)
        row(f"knn {precision}", t, "plain bf16 topk", t_plain, f"recall {recall(nb, nbrs32):.4f}")
        results[f"knn {precision}"]["recall"] = recall(nb, nbrs32)

    # graph stages on the exact graph
    dens, t = timed(lambda: ops.density(sims32), repeat=1)
    _, tb = timed(lambda: density_torch(sims32), repeat=1)
    row("density", t, "torch", tb)
    (src, dst), t = timed(lambda: ops.select_pairs(nbrs32, dens), repeat=1)
    (psrc, pdst), tb = timed(lambda: select_torch(nbrs32, dens), repeat=1)
    assert torch.equal(src, psrc) and torch.equal(dst, pdst), "pairs differ from torch"
    row("pairs", t, "torch", tb, f"{len(src):,} pairs")

    # network
    e32, t = timed(lambda: model.node_embeddings(x, nbrs32, bf16=False), repeat=1)
    e_plain, tb = timed(lambda: embed_plain(model, x, nbrs32, bf16=True), repeat=1)
    row("embeddings fp32", t, "node-cached bf16", tb)
    e16, t = timed(lambda: model.node_embeddings(x, nbrs32, bf16=True), repeat=1)
    rel = float((e16 - e32).norm() / e32.norm())
    row("embeddings bf16", t, "node-cached bf16", tb, f"rel. diff to fp32 {rel:.1e}")
    scores, t = timed(lambda: model.score_pairs(e16, src, dst, bf16=True), repeat=1)
    row("pair scores bf16", t)
    _, t_pp = timed(lambda: per_pair_probability(model, x, nbrs32, src, dst, bf16=True),
                    repeat=1, warmup=0)
    row("per-pair network bf16 (baseline)", t_pp, note="un-cached, both samples per pair")
    labels, t = timed(lambda: ops.link(src, dst, scores, 0.5, n), repeat=1)
    s_np, d_np, sc_np = (v.cpu().numpy() for v in (src, dst, scores))
    _, tb = timed(lambda: link_scipy(s_np, d_np, sc_np, n), repeat=1)
    row("union-find", t, "scipy (CPU)", tb, f"{int(labels.max()) + 1:,} clusters")

    # end to end, warm, with peak memory
    straightforward = (t_plain + results["density"]["baseline_seconds"]
                       + results["pairs"]["baseline_seconds"] + tb
                       + results["embeddings fp32"]["baseline_seconds"]
                       + results["pair scores bf16"]["seconds"])
    for name, cfg in [("end to end bf16", dict(knn_precision="bf16", bf16=True)),
                      ("end to end fp32", dict(knn_precision="fp32", bf16=False))]:
        config = ClusterConfig(device=str(device), k=args.k, progress=False, **cfg)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result, t = timed(lambda: cluster(x, model, config), repeat=1)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        quality = evaluate(data.labels, result.labels)
        row(name, t, "straightforward torch", straightforward,
            f"peak {peak:.1f} GiB, F_P {quality['pairwise_f']:.4f}, F_B {quality['bcubed_f']:.4f}")
        results[name]["stages"] = result.timings

    if device.type == "cuda":
        results["cpu_vs_gpu"] = cpu_gpu_labels(model, x, min(args.subset, n), args.k)
        print("CPU vs GPU (fp32):", results["cpu_vs_gpu"], flush=True)

    report = "\n".join([
        header(f"gpu_check: {n:,} synthetic samples, D={x.shape[1]}, k={args.k}, {weights}"),
        table(["stage", "sepfl s", "baseline", "baseline s", "speed-up", "note"], rows)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(report + "\n")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print()
    print(report)


if __name__ == "__main__":
    main()
