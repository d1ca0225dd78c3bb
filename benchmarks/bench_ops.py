"""Native ops against their best pure numpy / scipy / torch equivalents, on the CPU.

Each row checks that the native result equals the equivalent's before timing
both (median of repeated runs) and prints the ratio. Sizes default to the
issue's: N = 1,000,000 samples, k = 80, D = 256, B = 8,192 gathered nodes,
H = 4D hidden channels for gather_add, B / 4 query rows for RowTopk.

    python benchmarks/bench_ops.py [--n 1000000] [--k 80] [--d 256] [--b 8192]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from common import components_scipy, header, table, timed
from sepfl import ops
from sepfl.knn import search_width
from sepfl.model import cpu_tile


def knn_like(n: int, k: int, rng: np.random.Generator):
    """A kNN-shaped table (self at rank 0, random neighbours) and descending similarities."""
    nbrs = rng.integers(0, n, size=(n, k), dtype=np.int64)
    nbrs[:, 0] = np.arange(n)
    sims = np.sort(rng.uniform(0.2, 1.0, size=(n, k)).astype(np.float32), axis=1)[:, ::-1]
    sims[:, 0] = 1.0
    return nbrs, np.ascontiguousarray(sims)


def density_numpy(sims, rho=0.7):
    s = np.clip(sims, 0, 1)
    a, c = s.sum(1), (s >= rho).sum(1)
    return ((a / a.max() + c / c.max()) / 2).astype(np.float32)


def density_torch(sims, rho=0.7):
    s = sims.clamp(0, 1)
    a, c = s.sum(1), (s >= rho).sum(1).float()
    return (a / a.max() + c / c.max()) / 2


def select_numpy(nbrs, density):
    denser = density[nbrs] > density[:, None]
    has = denser.any(1)
    first = denser.argmax(1)
    return np.flatnonzero(has), nbrs[np.arange(len(nbrs)), first][has]


def select_torch(nbrs, density):
    denser = density[nbrs] > density[:, None]
    has = denser.any(1)
    first = denser.to(torch.uint8).argmax(1)
    return has.nonzero()[:, 0], nbrs[torch.arange(len(nbrs)), first][has]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--b", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, k, d, b, h = args.n, args.k, args.d, args.b, 4 * args.d
    rng = np.random.default_rng(0)
    rows = []

    def bench(name, native, baselines, check):
        want = None
        results = {}
        for label, fn in [("native", native)] + baselines:
            out = fn()
            check(out if want is None else want, out)
            want = out if want is None else want
            results[label] = timed(fn, repeat=args.repeat)[1]
        best = min(baselines, key=lambda item: results[item[0]])[0]
        rows.append([name, f"{results['native'] * 1e3:.1f}", best,
                     f"{results[best] * 1e3:.1f}", f"{results[best] / results['native']:.2f}x"])
        print(rows[-1], flush=True)

    def close(rtol=1e-5, atol=1e-5, rows=None):
        """An output check; ``rows`` limits it to the first rows (the [B, k, H] outputs of
        gather_add are 2.7 GB: a float64 comparison of all of them does not fit in memory)."""
        def check(a, b):
            for x, y in zip(*((t if isinstance(t, tuple) else (t,)) for t in (a, b))):
                x, y = (np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)[:rows]
                        for v in (x, y))
                np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
        return check

    nbrs, sims = knn_like(n, k, rng)
    t_nbrs, t_sims = torch.from_numpy(nbrs), torch.from_numpy(sims)
    bench("density", lambda: ops.density(sims),
          [("numpy", lambda: density_numpy(sims)), ("torch", lambda: density_torch(t_sims))],
          close())
    density = ops.density(sims)
    t_density = torch.from_numpy(density)
    bench("select_pairs", lambda: ops.select_pairs(nbrs, density),
          [("numpy", lambda: select_numpy(nbrs, density)),
           ("torch", lambda: select_torch(t_nbrs, t_density))], close())
    del sims, t_sims

    features = rng.standard_normal((n, d), dtype=np.float32)
    t_features = torch.from_numpy(features)
    node_ids = rng.choice(n, b, replace=False)
    t_ids = torch.from_numpy(node_ids)
    bench(f"gather (B={b})", lambda: ops.gather(features, nbrs, node_ids),
          [("numpy", lambda: features[nbrs[node_ids]]),
           ("torch", lambda: t_features[t_nbrs[t_ids]])], close())
    weights = rng.standard_normal((b, k), dtype=np.float32)
    t_weights = torch.from_numpy(weights)
    bench(f"aggregate (B={b})", lambda: ops.aggregate(weights, features, nbrs, node_ids),
          [("numpy", lambda: np.einsum("bk,bkd->bd", weights, features[nbrs[node_ids]])),
           ("torch", lambda: torch.bmm(t_weights[:, None], t_features[t_nbrs[t_ids]])[:, 0])],
          close(rtol=1e-4, atol=1e-4))
    del features, t_features

    a = rng.standard_normal((n, h), dtype=np.float32)
    bproj = rng.standard_normal((n, h), dtype=np.float32)
    bias = rng.standard_normal(h, dtype=np.float32)
    t_a, t_bproj, t_bias = (torch.from_numpy(x) for x in (a, bproj, bias))

    def gather_add_torch():
        hidden = t_bproj[t_nbrs[t_ids]]
        hidden += t_a[t_ids][:, None]
        hidden += t_bias
        return torch.nn.functional.gelu(hidden)

    bench(f"gather_add (B={b}, H={h})",
          lambda: ops.gather_add(a, bproj, nbrs, node_ids, bias=bias, gelu=True),
          [("torch", gather_add_torch)], close(rtol=1e-5, atol=1e-5, rows=64))
    del a, bproj, t_a, t_bproj

    # a kNN search's selection: a [b / 4, 64 * 1024] block of bfloat16 scores, offered to
    # RowTopk in the [rows, 1024] tiles the CPU search computes, against torch.topk of the
    # whole block; the widths of a bf16 search for lists of k (own column first)
    queries = torch.nn.functional.normalize(torch.randn(b // 4, d, generator=torch.Generator()
                                                        .manual_seed(0)))
    columns = torch.nn.functional.normalize(torch.randn(64 * 1024, d))
    block = (queries @ columns.T).to(torch.bfloat16)
    tiles = [block[:, lo:lo + 1024].contiguous() for lo in range(0, block.shape[1], 1024)]
    own = torch.arange(block.shape[0])
    width = search_width(k, "bf16")

    def row_topk():
        best = ops.RowTopk(own, width)
        for number, tile in enumerate(tiles):
            best.offer(tile, number * 1024)
        return best.result()[1][:, 1:]

    def topk_torch():
        scores = block.clone()
        scores[own, own] = -torch.inf
        return scores.topk(width - 1, dim=1).values.float()

    bench(f"RowTopk ({block.shape[0]} x {block.shape[1]:,} bf16 scores, width {width})",
          row_topk, [("torch", topk_torch)], close(rtol=0, atol=0))
    del block, tiles

    # the node embeddings' first hidden activations of one CPU tile: bfloat16 sums of two
    # rows of the [N, 4D] projection table with their GELU (AVX-512 BF16), against torch's
    # embedding_bag and GELU
    if ops.gather_gelu_ready():
        nodes = cpu_tile(d, k, torch.bfloat16)
        g = torch.Generator().manual_seed(0)
        projections = torch.randn(min(n, 100_000) + nodes, h, generator=g).bfloat16()
        slots = projections.shape[0] - nodes
        pairs = torch.stack([torch.randint(0, slots, (k * nodes,), generator=g),
                             (slots + torch.arange(nodes)).repeat(k)], 1)

        def gather_gelu_torch():
            return torch.ops.aten.gelu_(torch.nn.functional.embedding_bag(pairs, projections,
                                                                          mode="sum")).float()

        bench(f"gather_gelu ({nodes} nodes x k, H={h}, bf16)",
              lambda: ops.gather_gelu(projections, pairs).float(), [("torch", gather_gelu_torch)],
              close(rtol=2 ** -5, atol=5e-2))
    else:
        print("gather_gelu: skipped (no AVX-512 BF16 here)")

    # the node embeddings' token mix on one CPU tile of bfloat16 activations, fused (AMX)
    # against the torch ops the path runs without it
    if ops.amx_ready():
        nodes, width = cpu_tile(d, k, torch.bfloat16), 2 * d
        g = torch.Generator().manual_seed(0)
        tokens = torch.randn(k + 1, nodes * width, generator=g).bfloat16()
        tokens[k] = 1
        w_in = (torch.randn(2 * k, k + 1, generator=g) / (k + 1) ** 0.5).bfloat16()
        w_out = (torch.randn(k, 2 * k + 1, generator=g) / (2 * k + 1) ** 0.5).bfloat16()
        scale = torch.rand(width, generator=g) + 0.5
        tiles, gain = ops.token_mix_weights(w_in, w_out), scale.bfloat16()
        mixed = torch.ones(2 * k + 1, nodes * width, dtype=torch.bfloat16)

        def token_mix_torch():
            out = tokens.clone()
            torch.ops.aten.gelu_(torch.mm(w_in, out, out=mixed[:2 * k]))
            out[:k].view(k, nodes, width).addcmul_(torch.mm(w_out, mixed).view(k, nodes, width),
                                                   gain)
            return out.float()

        bench(f"token_mix_ ({nodes} nodes, bf16)",
              lambda: ops.token_mix_(tokens.clone(), *tiles, scale).float(),
              [("torch", token_mix_torch)], close(rtol=2 ** -5, atol=5e-2))
    else:
        print("token_mix_: skipped (no AMX-BF16 here)")

    # the node embeddings' channel mix on one CPU tile, fused (AMX: two token rows and two
    # hidden rows per token, the GELU, the [4D -> 2D] product and the residual) against the
    # torch ops and the native gather the path runs without it
    if ops.amx_ready():
        nodes, width = cpu_tile(d, k, torch.bfloat16), 2 * d
        g = torch.Generator().manual_seed(0)
        rows_total = min(n, 100_000) + nodes
        tokens = torch.randn(rows_total, width, generator=g).bfloat16()
        hidden = torch.randn(rows_total, h, generator=g).bfloat16()
        pairs = torch.stack([torch.randint(0, rows_total - nodes, (k * nodes,), generator=g),
                             (rows_total - nodes + torch.arange(nodes)).repeat(k)], 1)
        mix = (torch.randn(width, h, generator=g) / h ** 0.5).bfloat16()
        mix_tiles = ops.channel_mix_weights(mix)
        out = torch.empty(k * nodes, width, dtype=torch.bfloat16)

        def channel_mix_torch():
            x = torch.nn.functional.embedding_bag(pairs, tokens, mode="sum")
            activations = (ops.gather_gelu(hidden, pairs) if ops.gather_gelu_ready() else
                           torch.ops.aten.gelu_(torch.nn.functional.embedding_bag(
                               pairs, hidden, mode="sum")))
            return x.addmm_(activations, mix.t()).float()

        bench(f"channel_mix ({nodes} nodes x k, {h} -> {width}, bf16)",
              lambda: ops.channel_mix(tokens, hidden, pairs, mix_tiles, out).float(),
              [("torch", channel_mix_torch)], close(rtol=2 ** -5, atol=5e-2))
    else:
        print("channel_mix: skipped (no AMX-BF16 here)")

    for e in (n, 10 * n):
        src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
        bench(f"union-find ({e:,} edges)", lambda: ops.connected_components(src, dst, n),
              [("scipy", lambda: components_scipy(src, dst, n))], close(rtol=0, atol=0))

    print()
    print(header(f"bench_ops: N={n:,}, k={k}, D={d}"))
    print(table(["operation", "native ms", "best equivalent", "its ms", "speed-up"], rows))


if __name__ == "__main__":
    main()
