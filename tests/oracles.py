"""Slow, obviously-correct numpy twins of sepfl.ops, used only as test oracles."""
import numpy as np
import torch


def density(sims, rho):
    s = np.clip(np.asarray(sims, dtype=np.float64), 0.0, 1.0)
    a = s.sum(axis=1)
    c = (s >= np.float32(rho)).sum(axis=1).astype(np.float64)
    a_hat = a / a.max() if a.size and a.max() > 0 else np.zeros_like(a)
    c_hat = c / c.max() if c.size and c.max() > 0 else np.zeros_like(c)
    return (a_hat + c_hat) / 2


def select_pairs(nbrs, density, max_per_node=1):
    src, dst = [], []
    for i, row in enumerate(nbrs):
        taken = []
        for j in row:
            if len(taken) == max_per_node:
                break
            if j >= 0 and density[j] > density[i] and j not in taken:
                taken.append(int(j))
        src += [i] * len(taken)
        dst += taken
    return np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)


def train_pairs(nbrs, labels, ranks):
    src, dst, target = [], [], []
    for i, row in enumerate(nbrs):
        for j in row[1:ranks + 1]:
            if j >= 0 and j != i:
                src.append(i)
                dst.append(int(j))
                target.append(int(labels[i] == labels[j]))
    return tuple(np.array(x, dtype=np.int64) for x in (src, dst, target))


def _neighbour_rows(table, nbrs, node_ids):
    """table[nbrs[node_ids]] with zero rows for -1 slots: [B, k, C] float64."""
    idx = nbrs[node_ids]
    rows = np.asarray(table, dtype=np.float64)[np.where(idx >= 0, idx, 0)]
    rows[idx < 0] = 0.0
    return rows


def gather(features, nbrs, node_ids):
    return _neighbour_rows(features, nbrs, node_ids)


def gather_add(a, bproj, nbrs, node_ids, bias=None, gelu=True):
    x = np.asarray(a, dtype=np.float64)[node_ids][:, None, :] + _neighbour_rows(bproj, nbrs, node_ids)
    if bias is not None:
        x = x + np.asarray(bias, dtype=np.float64)
    if gelu:
        x = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    return x


def aggregate(weights, features, nbrs, node_ids):
    rows = _neighbour_rows(features, nbrs, node_ids)
    # an empty slot adds nothing, whatever its weight (NaN included)
    weights = np.where(nbrs[node_ids] >= 0, np.asarray(weights, dtype=np.float64), 0.0)
    return np.einsum("bk,bkd->bd", weights, rows)


def link(src, dst, scores, threshold, num_nodes):
    keep = np.ones(len(src), dtype=bool) if scores is None else np.asarray(scores) > threshold
    comp = np.arange(num_nodes)
    changed = True
    while changed:  # propagate the smallest id along every kept edge until stable
        changed = False
        for u, v in zip(np.asarray(src)[keep], np.asarray(dst)[keep]):
            low = min(comp[u], comp[v])
            if comp[u] != low or comp[v] != low:
                comp[u] = comp[v] = low
                changed = True
    _, labels = np.unique(comp, return_inverse=True)  # smallest members are sorted ids
    return labels.astype(np.int64)


def shared_neighbours(nbrs, src, dst):
    """Per edge: entries (not -1) of dst's row found in src's row, and src's first rank in
    dst's row (k if absent)."""
    k = nbrs.shape[1]
    shared, reverse = [], []
    for a, b in zip(src, dst):
        row_a = {int(j) for j in nbrs[a] if j >= 0}
        shared.append(sum(int(j) in row_a for j in nbrs[b] if j >= 0))
        where = np.flatnonzero(nbrs[b] == a)
        reverse.append(int(where[0]) if where.size else k)
    return np.array(shared, dtype=np.int64), np.array(reverse, dtype=np.int64)


def row_topk(scores, own, width, above=None):
    """Row i: own[i] (value +inf), then the width - 1 best other columns of scores [B, C]
    above ``above[i]`` (all when None) by (larger value, smaller column), padded with
    -1 / -inf."""
    idx = np.full((len(scores), width), -1, dtype=np.int64)
    vals = np.full((len(scores), width), -np.inf, dtype=np.float32)
    idx[:, 0], vals[:, 0] = own, np.inf
    for i, row in enumerate(scores):
        cols = [c for c in range(len(row))
                if c != own[i] and (above is None or row[c] > above[i])]
        cols.sort(key=lambda c: (-float(row[c]), c))
        best = cols[:width - 1]
        idx[i, 1:1 + len(best)] = best
        vals[i, 1:1 + len(best)] = row[best]
    return idx, vals
