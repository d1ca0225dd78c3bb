"""Node embeddings: the old inference path, the new one, and the GEMM floor, in one run.

On a held-out split of the synthetic face set (``sepfl.datasets.make_splits``)
with the bundled weights, it prints milliseconds per node of

* the **old path**: the algorithm ``PairClassifier.node_embeddings`` ran before
  the fast path (factorised first Linear by ``ops.gather_add``, the remaining
  layers as the reference modules, BatchNorms unfolded, 2048-node batches),
  in float32 (its default) and under bfloat16 autocast; timed on
  ``--old-nodes`` nodes, plus its projections over all N;
* the **new path** (``node_embeddings``) in float32 and in the auto-selected
  compute dtype, over all N; where its bfloat16 steps written out for the CPU run
  (the channel mix, token mix and attention scores fused on AMX,
  ``ops.channel_mix`` / ``ops.token_mix_`` / ``ops.attention_scores``; the hidden
  gather with its GELU on AVX-512 BF16, ``ops.gather_gelu``), also with those
  steps as torch's ops (as on a CPU without them);
* the **GEMM floor**: the same matrix products as the new path (channel mix,
  token mix, attention, projections) as plain ``torch.mm`` calls on node
  tiles with preallocated outputs, at both dtypes' tile sizes of the new path
  and at 256-node tiles (the best of them), the token mix in both orientations,
  best of float32 and bfloat16;

then checks that the decisions agree: links (P(same) > 0.5) of the new default
against the float32 reference path (``embed`` over gathered neighbour features
+ ``classify``) on the nearest-denser-neighbour pairs, and F_P / F_B of both.

    OMP_NUM_THREADS=1 python benchmarks/bench_network.py [--test-ids 320] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import header, table, timed  # noqa: E402

from sepfl import ops  # noqa: E402
from sepfl.checkpoint import load_checkpoint  # noqa: E402
from sepfl.datasets import make_splits  # noqa: E402
from sepfl.knn import build_knn  # noqa: E402
from sepfl.metrics import evaluate  # noqa: E402
from sepfl.model import bf16_autocast, cpu_tile, fast_bf16  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "python/sepfl/weights/default_k80_d256.pt"


@torch.no_grad()
def old_path(model, x, nbrs, ids, bf16, batch=2048):
    """The pre-fast-path ``node_embeddings`` on nodes ``ids``: float32 [len(ids), 2D].

    Returns (embeddings, seconds of the [N, 4D] projections, seconds of the node loop).
    """
    first = model.channel_mix[0]
    start = time.perf_counter()
    with bf16_autocast(x.device, bf16):
        centre = torch.nn.functional.linear(x, first.weight[:, :model.dim]).float()
        neighbour = torch.nn.functional.linear(x, first.weight[:, model.dim:]).float()
    projections = time.perf_counter() - start
    bias = first.bias.float()
    out = torch.empty((len(ids), 2 * model.dim))
    start = time.perf_counter()
    for lo in range(0, len(ids), batch):
        part = ids[lo:lo + batch]
        f, nbr_feats = x[part], ops.gather(x, nbrs, part)
        with bf16_autocast(x.device, bf16):
            hidden = ops.gather_add(centre, neighbour, nbrs, part, bias, gelu=True)
            out[lo:lo + len(part)] = model.embed_hidden(f, nbr_feats, hidden)
    return out, projections, time.perf_counter() - start


@torch.no_grad()
def reference_probability(model, x, nbrs, src, dst, batch=512):
    """float32 reference path: ``embed`` per node over gathered features, then ``classify``."""
    e = torch.empty((len(x), 2 * model.dim))
    for lo in range(0, len(x), batch):
        ids = torch.arange(lo, min(lo + batch, len(x)))
        e[lo:lo + len(ids)] = model.embed(x[ids], ops.gather(x, nbrs, ids))
    return torch.softmax(model.classify(e[src], e[dst]), dim=1)[:, 1]


def gemm_floor(dim, k, tile, dtype, nodes):
    """Seconds per node of the new path's matrix products on ``tile``-node tiles in ``dtype``.

    The token mix is timed as the path runs it (a [2k, k + 1] weight from the
    left of token-major activations) and channels-first (activations [tile · 2D, k]
    from the left), and the faster one counts.
    """
    def r(*shape):
        return torch.randn(*shape, dtype=dtype)

    width, rows = 2 * dim, k * tile
    hidden, mix, x = r(rows, 2 * width), r(width, 2 * width), r(rows, width)
    attention, a = r(dim, width), r(rows, dim)
    token_in, token_out = r(2 * k, k + 1), r(k, 2 * k + 1)
    tokens, mixed, y = r(k + 1, tile * width), r(2 * k + 1, tile * width), r(k, tile * width)
    tokens_cf, w_in, w_out = r(tile * width, k), r(k, 2 * k), r(2 * k, k)
    mixed_cf, y_cf = r(tile * width, 2 * k), r(tile * width, k)
    feats, projection, proj = r(tile, dim), r(4 * width, dim), r(tile, 4 * width)
    tiles = max(1, nodes // tile)

    def loop(step):
        def run():
            for _ in range(tiles):
                step()
        return timed(run)[1] / (tiles * tile)

    def token_left():
        torch.mm(token_in, tokens, out=mixed[:2 * k])
        torch.mm(token_out, mixed, out=y)

    def token_channels_first():
        torch.mm(tokens_cf, w_in, out=mixed_cf)
        torch.mm(mixed_cf, w_out, out=y_cf)

    dense = loop(lambda: (torch.mm(hidden, mix.t(), out=x), torch.mm(x, attention.t(), out=a),
                          torch.mm(feats, projection.t(), out=proj)))
    return dense + min(loop(token_left), loop(token_channels_first))


@contextlib.contextmanager
def torch_ops_only(model):
    """The new path with torch's ops only, as where ``ops.amx_ready()`` and
    ``ops.gather_gelu_ready()`` are False: the model's folded weights are rebuilt
    without the fused steps, and again after."""
    ready = ops.amx_ready, ops.gather_gelu_ready
    ops.amx_ready = ops.gather_gelu_ready = lambda: False
    model.__dict__.pop("_folded", None)
    try:
        yield
    finally:
        ops.amx_ready, ops.gather_gelu_ready = ready
        model.__dict__.pop("_folded", None)


def flops_per_node(dim, k):
    width = 2 * dim
    return 2 * (k * 2 * width * width + width * (2 * k * (k + 1) + k * (2 * k + 1))
                + k * width * dim + 4 * width * dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-ids", type=int, default=300)
    parser.add_argument("--test-ids", type=int, default=320, help="≈ 62 samples per identity")
    parser.add_argument("--old-nodes", type=int, default=2048,
                        help="nodes the old path is timed on (it is slow)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(WEIGHTS)["model"].eval()
    dim, k = model.dim, model.k
    data = make_splits(args.train_ids, args.test_ids, dim=dim, seed=0).test
    x = torch.from_numpy(data.features)
    n = len(x)
    nbrs, sims = (torch.as_tensor(a) for a in build_knn(x, k=k, progress=False))
    src, dst = ops.select_pairs(nbrs, ops.density(sims))
    auto = fast_bf16(torch.device("cpu"))
    auto_name = "bf16" if auto else "fp32"
    ids = torch.arange(min(args.old_nodes, n))
    names = ["old path, fp32 (old default)", "old path, bf16 autocast", "new path, fp32",
             f"new path, {auto_name} (new default)"]
    # the floor in each dtype: the best over both paths' tile sizes and 256 nodes
    floor_tiles = sorted({cpu_tile(dim, k, dtype) for dtype in (torch.float32, torch.bfloat16)}
                         | {256})
    dtypes = (torch.float32, torch.bfloat16)
    names += [f"GEMM floor, {str(dtype)[6:]} (best of tiles of "
              f"{', '.join(map(str, floor_tiles))} nodes)" for dtype in dtypes]
    # the bf16 path with torch's ops only, where native steps run in it
    native = ops.amx_ready() or ops.gather_gelu_ready()
    unfused = "new path, bf16, torch ops only" if auto and native else None
    best = dict.fromkeys(names + [unfused] * (unfused is not None), float("inf"))
    scoring, old_e, new = {}, {}, {}
    # Rounds of every measurement, best of each: the machine is shared, so
    # interleaving keeps a busy spell from landing on one path only.
    for _ in range(args.rounds):
        for name, bf16 in zip(names[:2], (False, True)):
            old_e[bf16], projections, loop = old_path(model, x, nbrs, ids, bf16)
            best[name] = min(best[name], projections / n + loop / len(ids))
        for name, bf16 in zip(names[2:4], (False, auto)):
            start = time.perf_counter()
            e = model.node_embeddings(x, nbrs, bf16=bf16)
            best[name] = min(best[name], (time.perf_counter() - start) / n)
            start = time.perf_counter()
            new[bf16] = e, model.score_pairs(e, src, dst, bf16=bf16)
            scoring[name] = min(scoring.get(name, float("inf")), time.perf_counter() - start)
        if unfused:
            with torch_ops_only(model):
                start = time.perf_counter()
                model.node_embeddings(x, nbrs, bf16=True)
                best[unfused] = min(best[unfused], (time.perf_counter() - start) / n)
        for name, dtype in zip(names[4:], dtypes):
            best[name] = min(best[name], *(gemm_floor(dim, k, t, dtype, 2048)
                                           for t in floor_tiles))
    best_floor = min(best[name] for name in names[4:])
    new_default, old_default = best[names[3]], best[names[0]]

    want = reference_probability(model, x, nbrs, src, dst)
    e_auto, prob_auto = new[auto]
    e_32, prob_32 = new[False]
    gap_old = float((old_e[False] - e_32[ids]).abs().max())
    links, links_ref = prob_auto > 0.5, want > 0.5
    agree = float((links == links_ref).double().mean())
    f_new = evaluate(data.labels, ops.link(src, dst, prob_auto, 0.5, n).numpy())
    f_ref = evaluate(data.labels, ops.link(src, dst, want, 0.5, n).numpy())
    gap_fp32 = float((prob_32 - want).abs().max())

    print(header(f"network inference, N = {n:,} (test split), D = {dim}, k = {k}"))
    print(f"cpu bf16 auto-selection: {auto_name} "
          f"(torch cpu capability {torch.backends.cpu.get_cpu_capability()}); "
          f"{flops_per_node(dim, k) / 1e6:.1f} MFLOP per node in the new path's GEMMs")
    print(table(["path", "ms / node", f"pair scores s ({len(src):,} pairs)"],
                [(name, f"{best[name] * 1e3:.3f}",
                  f"{scoring[name]:.2f}" if name in scoring else "")
                 for name in names[:4] + [unfused] * (unfused is not None) + names[4:]]))
    print(f"new default vs GEMM floor (best of fp32 / bf16): {new_default / best_floor:.2f}x; "
          f"old default vs new default: {old_default / new_default:.1f}x")
    print(f"max |e| difference, old fp32 path vs new fp32 path: {gap_old:.1e}; max |P| "
          f"difference, new fp32 path vs reference: {gap_fp32:.1e}")
    print(f"decisions, new default ({auto_name}) vs float32 reference on {len(src):,} pairs: "
          f"{agree:.2%} agree; links {int(links.sum()):,} vs {int(links_ref.sum()):,}")
    print(table(["path", "F_P", "F_B"],
                [("float32 reference", f"{f_ref['pairwise_f']:.4f}", f"{f_ref['bcubed_f']:.4f}"),
                 (f"new default ({auto_name})", f"{f_new['pairwise_f']:.4f}",
                  f"{f_new['bcubed_f']:.4f}"),
                 ("delta", f"{f_new['pairwise_f'] - f_ref['pairwise_f']:+.4f}",
                  f"{f_new['bcubed_f'] - f_ref['bcubed_f']:+.4f}")]))


if __name__ == "__main__":
    main()
