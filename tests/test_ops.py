"""sepfl.ops against the numpy oracles, on numpy, torch CPU and (when present) CUDA."""
import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import oracles
from samples import needs_amx, needs_avx512_bf16
import sepfl
from sepfl import _core, ops
from sepfl._threads import torch_threads

DEVICES = ["numpy", "torch", pytest.param("cuda", marks=pytest.mark.cuda)]


def put(x, device):
    """x (numpy) as the array kind under test."""
    if device == "numpy" or x is None:
        return x
    return torch.from_numpy(np.ascontiguousarray(x)).to("cuda" if device == "cuda" else "cpu")


def get(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


@st.composite
def knn_tables(draw, max_n=24, max_k=8):
    """Random [n, k] kNN tables: self at rank 0 for most rows, duplicates and -1 slots allowed."""
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(1, max_k))
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    nbrs = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(-1, n - 1)))
    keep_self = draw(hnp.arrays(bool, n))
    nbrs[keep_self, 0] = np.arange(n)[keep_self]
    return nbrs


# A small pool of values makes ties in density common.
densities = st.sampled_from([0.0, 0.25, 0.5, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("device", DEVICES)
@given(sims=hnp.arrays(np.float32, st.tuples(st.integers(0, 20), st.integers(1, 8)),
                       elements=st.floats(-1.5, 1.5, width=32)),
       rho=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_density_matches_oracle(device, sims, rho):
    got = get(ops.density(put(sims, device), rho))
    assert got.dtype == np.float32 and got.shape == (sims.shape[0],)
    np.testing.assert_allclose(got, oracles.density(sims, rho), rtol=1e-5, atol=1e-6)


def test_density_hand_computed():
    sims = np.array([[1.0, 0.8, 0.1], [1.0, -0.2, 0.75], [1.0, 0.9, 0.8]], dtype=np.float32)
    # a = [1.9, 1.75, 2.7], c (>= 0.7) = [2, 2, 3]
    expected = ([1.9 / 2.7, 1.75 / 2.7, 1.0] + np.array([2, 2, 3]) / 3) / 2
    np.testing.assert_allclose(ops.density(sims, 0.7), expected, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data(), max_per_node=st.integers(1, 3))
def test_select_pairs_matches_oracle(device, data, max_per_node):
    nbrs = data.draw(knn_tables())
    density = np.array(data.draw(st.lists(densities, min_size=len(nbrs), max_size=len(nbrs))),
                       dtype=np.float32)
    src, dst = ops.select_pairs(put(nbrs, device), put(density, device), max_per_node)
    want_src, want_dst = oracles.select_pairs(nbrs, density, max_per_node)
    np.testing.assert_array_equal(get(src), want_src)
    np.testing.assert_array_equal(get(dst), want_dst)


def test_select_pairs_hand_computed():
    nbrs = np.array([[0, 1, 2], [1, 2, 0], [2, 1, 0], [3, -1, 2]])
    density = np.array([0.2, 0.5, 0.9, 0.5], dtype=np.float32)
    src, dst = ops.select_pairs(nbrs, density)
    # node 2 is a peak; node 3 skips the empty slot and reaches 2
    np.testing.assert_array_equal(src, [0, 1, 3])
    np.testing.assert_array_equal(dst, [1, 2, 2])
    src, dst = ops.select_pairs(nbrs, density, max_per_node=2)
    np.testing.assert_array_equal(src, [0, 0, 1, 3])
    np.testing.assert_array_equal(dst, [1, 2, 2, 2])


def test_select_pairs_all_equal_density_gives_no_pairs():
    nbrs = np.array([[0, 1], [1, 0]])
    src, dst = ops.select_pairs(nbrs, np.full(2, 0.5, dtype=np.float32))
    assert src.size == 0 and dst.size == 0


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_train_pairs_matches_oracle(device, data):
    nbrs = data.draw(knn_tables(max_k=6).filter(lambda t: t.shape[1] >= 2))
    labels = data.draw(hnp.arrays(np.int64, len(nbrs), elements=st.integers(0, 3)))
    ranks = data.draw(st.integers(1, nbrs.shape[1] - 1))
    got = ops.train_pairs(put(nbrs, device), put(labels, device), ranks)
    for g, w in zip(got, oracles.train_pairs(nbrs, labels, ranks)):
        np.testing.assert_array_equal(get(g), w)


def test_balanced_sample_is_balanced_and_seeded():
    target = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 0])
    index = ops.balanced_sample(target, n_per_class=10, seed=3)
    assert np.all(np.diff(index) > 0)
    assert (target[index] == 1).sum() == 3 and (target[index] == 0).sum() == 3
    np.testing.assert_array_equal(index, ops.balanced_sample(target, 10, seed=3))
    assert len(ops.balanced_sample(target, 2, seed=0)) == 4


@st.composite
def gather_inputs(draw, max_dim=12):
    nbrs = draw(knn_tables(max_n=12, max_k=6).filter(len))
    n, k = nbrs.shape
    d = draw(st.integers(1, max_dim))
    values = st.floats(-3, 3, width=32)
    features = draw(hnp.arrays(np.float32, (n, d), elements=values))
    node_ids = draw(hnp.arrays(np.int64, draw(st.integers(0, 10)), elements=st.integers(0, n - 1)))
    return features, nbrs, node_ids, values


@pytest.mark.parametrize("device", DEVICES)
@given(inputs=gather_inputs())
def test_gather_matches_oracle(device, inputs):
    features, nbrs, node_ids, _ = inputs
    got = get(ops.gather(*(put(x, device) for x in (features, nbrs, node_ids))))
    np.testing.assert_array_equal(got, oracles.gather(features, nbrs, node_ids))


@pytest.mark.parametrize("device", DEVICES)
@given(inputs=gather_inputs(), data=st.data(), use_bias=st.booleans(), gelu=st.booleans())
def test_gather_add_matches_oracle(device, inputs, data, use_bias, gelu):
    a, nbrs, node_ids, values = inputs
    bproj = data.draw(hnp.arrays(np.float32, a.shape, elements=values))
    bias = data.draw(hnp.arrays(np.float32, a.shape[1], elements=values)) if use_bias else None
    got = ops.gather_add(*(put(x, device) for x in (a, bproj, nbrs, node_ids)),
                         bias=put(bias, device), gelu=gelu)
    want = oracles.gather_add(a, bproj, nbrs, node_ids, bias, gelu)
    np.testing.assert_allclose(get(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@given(inputs=gather_inputs(), data=st.data())
def test_aggregate_matches_oracle(device, inputs, data):
    features, nbrs, node_ids, values = inputs
    weights = data.draw(hnp.arrays(np.float32, (len(node_ids), nbrs.shape[1]), elements=values))
    got = ops.aggregate(*(put(x, device) for x in (weights, features, nbrs, node_ids)))
    np.testing.assert_allclose(get(got), oracles.aggregate(weights, features, nbrs, node_ids),
                               rtol=1e-5, atol=1e-4)


def test_gelu_matches_torch_over_a_wide_range():
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)[:, None]
    got = ops.gather_add(x, np.zeros_like(x), np.full((len(x), 1), -1), np.arange(len(x)))
    want = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(got[:, 0, :], want, rtol=1e-6, atol=3e-7)


@st.composite
def edge_lists(draw):
    n = draw(st.integers(0, 25))
    e = draw(st.integers(0, 40)) if n else 0
    nodes = st.integers(0, max(n - 1, 0))
    src = draw(hnp.arrays(np.int64, e, elements=nodes))
    dst = draw(hnp.arrays(np.int64, e, elements=nodes))
    scores = draw(hnp.arrays(np.float32, e, elements=st.sampled_from([0.0, 0.3, 0.5, 0.51, 1.0])))
    return n, src, dst, scores


@pytest.mark.parametrize("device", DEVICES)
@given(edges=edge_lists(), threshold=st.sampled_from([0.0, 0.5, 1.0]))
def test_link_matches_oracle(device, edges, threshold):
    n, src, dst, scores = edges
    got = ops.link(put(src, device), put(dst, device), put(scores, device), threshold, n)
    np.testing.assert_array_equal(get(got), oracles.link(src, dst, scores, threshold, n))
    got = ops.connected_components(put(src, device), put(dst, device), n)
    np.testing.assert_array_equal(get(got), oracles.link(src, dst, None, 0.0, n))


def test_link_hand_computed():
    src, dst = np.array([4, 1, 2, 0]), np.array([3, 2, 4, 0])
    scores = np.array([0.9, 0.2, 0.8, 1.0], dtype=np.float32)
    # kept: 4-3, 2-4 (0-0 is a self loop); node 1 stays alone
    np.testing.assert_array_equal(ops.link(src, dst, scores, 0.5, 6), [0, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(ops.link(src, dst, scores, 1.0, 6), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ops.connected_components(src, dst, 6), [0, 1, 1, 1, 1, 2])


def test_link_labels_do_not_depend_on_edge_order():
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 500, 400), rng.integers(0, 500, 400)
    order = rng.permutation(400)
    np.testing.assert_array_equal(ops.connected_components(src, dst, 500),
                                  ops.connected_components(src[order], dst[order], 500))


@st.composite
def edges_over_tables(draw, max_n=30, max_k=8):
    """A kNN table without repeated entries in a row (-1 slots allowed), and random edges."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, min(max_k, n)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    nbrs = np.stack([np.concatenate([[i], rng.choice(np.delete(np.arange(n), i), k - 1,
                                                      replace=False)]) for i in range(n)])
    nbrs[rng.random((n, k)) < draw(st.sampled_from([0.0, 0.2]))] = -1
    e = draw(st.integers(0, 60))
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    if draw(st.booleans()):  # grouped by source, as candidate_edges gives them
        order = np.argsort(src, kind="stable")
        src, dst = src[order], dst[order]
    return nbrs, src, dst


@pytest.mark.parametrize("device", DEVICES)
@given(inputs=edges_over_tables())
def test_shared_neighbours_matches_oracle(device, inputs):
    nbrs, src, dst = inputs
    shared, reverse = ops.shared_neighbours(put(nbrs, device), put(src, device), put(dst, device))
    want_shared, want_reverse = oracles.shared_neighbours(nbrs, src, dst)
    np.testing.assert_array_equal(get(shared), want_shared)
    np.testing.assert_array_equal(get(reverse), want_reverse)


@given(inputs=edges_over_tables())
def test_shared_neighbours_sorted_search_matches_oracle(inputs):
    # the torch implementation CUDA tensors take, run here on CPU tensors
    nbrs, src, dst = (torch.from_numpy(x) for x in inputs)
    shared, reverse = ops._shared_neighbours_sorted(nbrs, src, dst)
    want_shared, want_reverse = oracles.shared_neighbours(*inputs)
    np.testing.assert_array_equal(shared.numpy(), want_shared)
    np.testing.assert_array_equal(reverse.numpy(), want_reverse)


def test_shared_neighbours_hand_computed():
    nbrs = np.array([[0, 1, 2], [1, 0, -1], [2, 3, 0], [3, 2, 1]])
    shared, reverse = ops.shared_neighbours(nbrs, np.array([0, 0, 2, 1]), np.array([1, 2, 3, 3]))
    assert shared.tolist() == [2, 2, 2, 1]
    assert reverse.tolist() == [1, 2, 1, 2]


def test_torch_in_torch_out():
    sims = torch.rand(5, 3)
    assert isinstance(ops.density(sims), torch.Tensor)
    src, dst = ops.select_pairs(torch.zeros(5, 3, dtype=torch.int32), torch.rand(5))
    assert isinstance(src, torch.Tensor) and src.dtype == torch.int64


# --- bad input --------------------------------------------------------------
# The bad-input table of the ops is in test_bad_input.py; here only what must read the
# same on every backend.

FEATS = np.ones((3, 4), dtype=np.float32)


# One message per bad index on every backend: the first bad entry in input order.
BAD_INDEX_CASES = [
    # rows 0 and 2 both hold a bad entry; node 2 is gathered first, row 0 is named
    ("gather", lambda x: ops.gather(x(FEATS), x(np.array([[0, 9], [1, 0], [2, 7]])),
                                    x(np.array([2, 0]))),
     "nbrs row 0 holds index 9 outside [-1, 3)"),
    ("gather-node-id-first", lambda x: ops.gather(x(FEATS), x(np.array([[0, 9], [1, 0], [2, 1]])),
                                                  x(np.array([0, 5, -1]))),
     "node_ids[1] = 5 is outside [0, 3)"),
    ("gather-add", lambda x: ops.gather_add(x(FEATS), x(FEATS), x(np.array([[0, 1], [1, -4], [2, 1]])),
                                            x(np.array([0, 1]))),
     "nbrs row 1 holds index -4 outside [-1, 3)"),
    ("aggregate", lambda x: ops.aggregate(x(np.ones((1, 2), np.float32)), x(FEATS),
                                          x(np.array([[0, 3], [1, 0], [2, 1]])), x(np.array([0]))),
     "nbrs row 0 holds index 3 outside [-1, 3)"),
    ("aggregate-no-columns", lambda x: ops.aggregate(x(np.ones((1, 2), np.float32)), x(FEATS[:, :0]),
                                                     x(np.array([[0, 3], [1, 0], [2, 1]])),
                                                     x(np.array([0]))),
     "nbrs row 0 holds index 3 outside [-1, 3)"),
    ("select-pairs", lambda x: ops.select_pairs(x(np.array([[0, 1, 8], [1, 6, 0], [2, 1, 0]])),
                                                x(np.array([0.1, 0.0, 0.9], np.float32)), 2),
     "nbrs row 0 holds index 8 outside [-1, 3)"),
    ("train-pairs", lambda x: ops.train_pairs(x(np.array([[0, 1, 8], [1, 6, 0], [2, 1, 0]])),
                                              x(np.zeros(3, np.int64)), 2),
     "nbrs row 0 holds index 8 outside [-1, 3)"),
    ("shared-neighbours", lambda x: ops.shared_neighbours(x(np.array([[0, 1], [1, 5], [2, 7]])),
                                                          x(np.array([2, 0])), x(np.array([1, 1]))),
     "nbrs row 1 holds index 5 outside [-1, 3)"),
    ("shared-neighbours-edge", lambda x: ops.shared_neighbours(x(np.array([[0, 1], [1, 5], [2, 7]])),
                                                               x(np.array([0, 3])),
                                                               x(np.array([-1, 1]))),
     "edge 0 has endpoint -1 outside [0, 3)"),
    ("link", lambda x: ops.link(x(np.array([0, 1, 9])), x(np.array([1, 4, 0])), None, 0.5, 3),
     "edge 1 has endpoint 4 outside [0, 3)"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("call, message", [pytest.param(c, m, id=i) for i, c, m in BAD_INDEX_CASES])
def test_bad_index_is_named_alike_on_every_backend(device, call, message):
    with pytest.raises(IndexError) as error:
        call(lambda x: put(x, device))
    assert str(error.value) == message


def test_bad_index_message_does_not_depend_on_threads():
    """Four OpenMP threads gather row 0 over and over; the ones starting mid-row meet its
    second bad entry first, yet the first bad entry in input order is the one named."""
    code = """
import numpy as np
from sepfl import ops
nbrs = np.tile(np.arange(7), (200, 1))
nbrs[0] = [0, -5, 1, 2, 3, -9, 4]
messages = set()
for _ in range(50):
    try:
        ops.gather(np.ones((200, 1), np.float32), nbrs, np.zeros(1001, np.int64))
    except IndexError as error:
        messages.add(str(error))
print(sorted(messages))
"""
    package_root = os.path.dirname(os.path.dirname(sepfl.__file__))
    env = dict(os.environ, OMP_NUM_THREADS="4",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           timeout=120, check=True)
    assert child.stdout.strip() == "['nbrs row 0 holds index -5 outside [-1, 200)']"


def test_density_nan_message_alike_on_every_backend():
    sims = np.array([[1.0, 0.5], [np.nan, 1.0]], np.float32)
    for device in ("numpy", "torch"):
        with pytest.raises(ValueError, match="^sims holds NaN$"):
            ops.density(put(sims, device))


@pytest.mark.cuda
def test_density_nan_message_on_cuda():
    with pytest.raises(ValueError, match="^sims holds NaN$"):
        ops.density(torch.tensor([[1.0, 0.5], [float("nan"), 1.0]], device="cuda"))


def test_flags_are_read_once_and_the_first_set_is_raised(monkeypatch):
    """The CUDA launch path on the CPU: a stand-in kernel writes flags the way the kernels
    do (-1 or a position) and _launch_checked raises the report of the first one set."""
    def kernel(op, device, *args):
        flags = (ctypes.c_int64 * 2).from_address(args[-1])
        flags[1] = 4
    monkeypatch.setattr(ops, "_launch", kernel)
    reports = (lambda p: IndexError(f"first {p}"), lambda p: IndexError(f"second {p}"))
    with pytest.raises(IndexError, match="^second 4$"):
        ops._launch_checked("op", torch.device("cpu"), (), reports)
    monkeypatch.setattr(ops, "_launch", lambda op, device, *args: None)
    ops._launch_checked("op", torch.device("cpu"), (), reports)


@given(data=st.data(), use_alongside=st.booleans())
def test_compact_is_the_same_for_numpy_and_tensors(data, use_alongside):
    """The torch compaction (CUDA tensors) and the native one (numpy) agree."""
    shape = data.draw(st.tuples(st.integers(0, 8), st.integers(0, 4)))
    padded = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-1, 9)))
    alongside = [data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 1)))][:use_alongside]
    want = ops._compact(padded, *alongside)
    got = ops._compact(torch.from_numpy(padded), *map(torch.from_numpy, alongside))
    assert len(got) == len(want) == 2 + use_alongside
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w)


@given(data=st.data())
def test_shared_neighbours_torch_checks_match_the_kernel(data):
    """The index checks of the torch path (CUDA tensors) raise what the CPU kernel raises."""
    n, k = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 4))
    nbrs = data.draw(hnp.arrays(np.int64, (n, k), elements=st.integers(-3, n + 2)))
    src, dst = data.draw(hnp.arrays(np.int64, (2, data.draw(st.integers(0, 6))),
                                    elements=st.integers(-2, n + 1)))

    def message(call):
        try:
            call()
        except IndexError as error:
            return str(error)
        return None

    want = message(lambda: _core.shared_neighbours(nbrs, src, dst))
    got = message(lambda: ops._check_shared_neighbours_inputs(
        *(torch.from_numpy(x) for x in (nbrs, src, dst))))
    assert got == want


def test_core_refuses_unconverted_arrays():
    # The native module never casts silently: a float64 array is refused outright.
    with pytest.raises(TypeError):
        _core.density(np.ones((2, 2)), 0.7)
    with pytest.raises(TypeError):
        _core.gather(np.ones((2, 2), np.float32)[:, ::2], np.zeros((2, 1), np.int64), np.zeros(1, np.int64))


def test_core_rechecks_indices_and_shapes():
    feats = np.ones((2, 3), np.float32)
    with pytest.raises(IndexError):
        _core.gather(feats, np.array([[0, 99], [1, 0]]), np.array([0]))
    with pytest.raises(IndexError):
        _core.aggregate(np.ones((1, 2), np.float32), feats, np.array([[0, 1], [1, 0]]), np.array([5]))
    with pytest.raises(ValueError):
        _core.aggregate(np.ones((1, 3), np.float32), feats, np.array([[0, 1], [1, 0]]), np.array([0]))
    with pytest.raises(IndexError):
        _core.link(np.array([0]), np.array([7]), None, 0.5, 2)
    with pytest.raises(ValueError):
        _core.train_pairs(np.zeros((2, 2), np.int64), np.zeros(2, np.int64), 5)


@st.composite
def score_tiles(draw):
    """Scores [B, C] with many ties (-0.0 and 0.0 are equal), a width, own columns (some
    outside the columns), the column boundaries of the tiles they are offered in, and no
    floors or a floor per row (some between two bfloat16 values: -0.49999 lies just below
    -0.498046875)."""
    b, c = draw(st.integers(1, 40)), draw(st.integers(1, 150))
    scores = draw(hnp.arrays(np.float32, (b, c), elements=st.sampled_from(
        [-2.0, -0.5, -0.498046875, -0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 3.0])))
    own = draw(hnp.arrays(np.int64, b, elements=st.integers(0, c + 3)))
    width = draw(st.integers(1, c + 3))
    cuts = sorted(draw(st.sets(st.integers(1, c - 1), max_size=4))) if c > 1 else []
    above = draw(st.none() | hnp.arrays(np.float32, b, elements=st.sampled_from(
        [-np.inf, -0.5, -0.49999, 0.0, 0.2, 0.75, 5.0])))
    return scores, own, width, [0, *cuts, c], above


@given(score_tiles(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_row_topk_matches_oracle(data, dtype):
    # The values are exact in bfloat16, so both dtypes meet the same oracle; tiles of any
    # width, ties everywhere, and rows whose own column is or is not among those offered.
    scores, own, width, bounds, above = data
    best = ops.RowTopk(torch.from_numpy(own), width, above)
    tiles = torch.from_numpy(scores).to(dtype)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        best.offer(tiles[:, lo:hi].contiguous(), lo)
    idx, vals = best.result()
    want_idx, want_vals = oracles.row_topk(scores, own, width, above)
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    np.testing.assert_array_equal(vals.numpy(), want_vals)


def test_row_topk_long_rows_cross_many_cuts():
    # Rows long enough to fill and cut the candidate store many times, in the vector scan's
    # runs of 16 / 32 entries and a tail; numpy in, numpy out.
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((37, 5000)).astype(np.float32)
    own = rng.integers(0, 5000, 37)
    best = ops.RowTopk(own, 21)
    for lo in range(0, 5000, 777):
        best.offer(scores[:, lo:lo + 777], lo)
    idx, vals = best.result()
    want_idx, want_vals = oracles.row_topk(scores, own, 21)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(vals, want_vals)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk_keeps_scores_just_above_a_floor_between_two_bf16_values(dtype):
    # -0.49999 is no bfloat16 value; -0.498046875 is the next one above it. Whole runs of
    # such scores (the vector scan's 16 / 32 entries) must all pass the floor.
    scores = np.full((3, 100), -0.498046875, np.float32)
    scores[:, ::7] = -0.5
    best = ops.RowTopk(np.array([0, 5, 200]), 30, np.float32([-0.49999, -0.49999, -0.498046875]))
    best.offer(torch.from_numpy(scores).to(dtype), 0)
    idx, vals = best.result()
    want_idx, want_vals = oracles.row_topk(scores, [0, 5, 200], 30, [-0.49999, -0.49999,
                                                                       -0.498046875])
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(vals, want_vals)
    assert (idx[:2, 1:] >= 0).all() and (idx[2, 1:] == -1).all()


@st.composite
def symmetric_scores(draw):
    """A symmetric score matrix [N, N] with ties, the blocks of rows and tiles of columns a
    symmetric search cuts it into (each tile inside a block or past it), and floors."""
    n = draw(st.integers(2, 80))
    values = draw(hnp.arrays(np.float32, (n, n), elements=st.sampled_from(
        [-0.5, -0.498046875, 0.0, 0.25, 0.5, 0.75, 1.0])))
    scores = np.triu(values) + np.triu(values, 1).T
    tile = draw(st.integers(1, n))
    block = tile * draw(st.integers(1, 4))
    width = draw(st.integers(1, n + 2))
    above = draw(st.none() | hnp.arrays(np.float32, n, elements=st.sampled_from(
        [-np.inf, -0.49999, 0.0, 0.5])))
    return scores, block, tile, width, above


@given(symmetric_scores(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_row_topk_mirrored_offers_match_oracle(data, dtype):
    # Each block of rows against the columns from its block on; tiles past the block are
    # mirrored to their columns' rows: every entry offered once per row, in column order.
    scores, block, tile, width, above = data
    n = len(scores)
    best = ops.RowTopk(np.arange(n), width, above)
    tiles = torch.from_numpy(scores).to(dtype)
    for first_row in range(0, n, block):
        after = min(n, first_row + block)
        for first in range(first_row, n, tile):
            piece = tiles[first_row:after, first:first + tile].contiguous()
            best.offer(piece, first, first_row, mirror=first >= after)
    idx, vals = best.result()
    want_idx, want_vals = oracles.row_topk(scores, np.arange(n), width, above)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(vals, want_vals)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk_mirrored_long_lists_cross_many_cuts(dtype):
    # 70 lists filled only through mirrored tiles: whole runs of 16 / 32 lists side by side
    # and a partial one, over tiles longer than a pass between two reads of the floors.
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((5070, 5070)).astype(np.float32)
    scores = torch.from_numpy(np.triu(scores) + np.triu(scores, 1).T).to(dtype)
    best = ops.RowTopk(np.arange(5070), 21)
    for first_row in range(70, 5070, 777):
        best.offer(scores[first_row:first_row + 777, :70].contiguous(), 0, first_row,
                   mirror=True)
    offered = scores[:70].float().numpy()
    offered[:, :70] = -np.inf
    want_idx, want_vals = oracles.row_topk(offered, np.arange(70), 21)
    for start, stop in [(0, 70), (0, 33), (33, 70), (69, 70)]:
        idx, vals = best.result(start, stop)
        np.testing.assert_array_equal(idx, want_idx[start:stop])
        np.testing.assert_array_equal(vals, want_vals[start:stop])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk_mirrored_ties_go_to_the_smaller_column(dtype):
    # Every score equal: the rows' lists must keep the smallest columns, though the scan
    # splits a tile's columns among threads (two runs of columns or more each).
    tile = torch.full((64, 128), 0.5).to(dtype)
    best = ops.RowTopk(np.arange(192), 5)
    best.offer(tile, 64, 0, mirror=True)
    idx, vals = best.result()
    np.testing.assert_array_equal(idx[:64, 1:], np.tile(np.arange(64, 68), (64, 1)))
    np.testing.assert_array_equal(idx[64:, 1:], np.tile(np.arange(4), (128, 1)))
    assert (vals[:, 1:] == 0.5).all()


def test_row_topk_refuses_bad_input():
    best = ops.RowTopk(np.arange(3), 4)
    with pytest.raises(ValueError, match="rows"):
        best.offer(np.zeros((2, 5), np.float32), 0, 2)
    with pytest.raises(ValueError, match="rows apart"):
        best.offer(np.zeros((2, 2), np.float32), 1, 0, mirror=True)
    with pytest.raises(ValueError, match="rows apart"):
        best.offer(np.zeros((1, 3), np.float32), 1, 0, mirror=True)
    with pytest.raises(ValueError, match="rows"):
        best.result(2, 4)
    with pytest.raises(ValueError, match="first_col"):
        best.offer(np.zeros((3, 5), np.float32), 2**32 - 4)
    with pytest.raises(ValueError, match="tile"):
        best.offer(torch.zeros(3, dtype=torch.bfloat16), 0)
    with pytest.raises(ValueError, match="first_col"):
        best.offer(np.zeros((3, 5), np.float32), -1)
    with pytest.raises(ValueError, match="width"):
        ops.RowTopk(np.arange(3), 0)
    with pytest.raises(TypeError):
        ops.RowTopk(np.arange(3.0), 2)
    with pytest.raises(ValueError, match="above"):
        ops.RowTopk(np.arange(3), 2, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ops.RowTopk(np.arange(3), 2, np.array([0, np.nan, 0], np.float32))


def test_list_dots_are_the_dot_products_with_the_same_bits_in_any_call():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((300, 37)).astype(np.float32)  # D not a multiple of 16
    rows = rng.integers(0, 300, 50)
    lists = rng.integers(-1, 300, (50, 9))
    dots = ops.list_dots(features, rows, lists)
    want = np.einsum("id,ijd->ij", features[rows].astype(np.float64),
                     features[np.maximum(lists, 0)].astype(np.float64))
    np.testing.assert_allclose(dots[lists >= 0], want[lists >= 0], rtol=1e-5, atol=1e-5)
    assert np.all(dots[lists < 0] == -np.inf)
    # the same pairs in other calls, shapes and thread counts: the same bits
    singles = np.stack([ops.list_dots(features, rows[i:i + 1], lists[i:i + 1, ::-1])[0, ::-1]
                        for i in range(50)])
    np.testing.assert_array_equal(singles, dots)
    with torch_threads(1):
        np.testing.assert_array_equal(ops.list_dots(torch.from_numpy(features),
                                                    torch.from_numpy(rows),
                                                    torch.from_numpy(lists)).numpy(), dots)


def test_list_dots_refuses_bad_indices():
    features = np.ones((4, 3), np.float32)
    with pytest.raises(IndexError, match=r"rows\[1\] = 4"):
        ops.list_dots(features, np.array([0, 4]), np.zeros((2, 2), np.int64))
    with pytest.raises(IndexError, match="lists row 1 holds index 9"):
        ops.list_dots(features, np.array([0, 1]), np.array([[0, 1], [2, 9]]))
    with pytest.raises(ValueError):
        ops.list_dots(features, np.array([0, 1]), np.zeros((3, 2), np.int64))


def token_mix_reference(tokens, w_in, w_out, scale):
    """float32 of what ops.token_mix_ computes from bfloat16 inputs: the hidden activations
    rounded to bfloat16 once, everything else in float32."""
    t = tokens.float()
    k = t.shape[0] - 1
    hidden = torch.nn.functional.gelu(w_in.float() @ t).bfloat16().float()
    mix = w_out.float() @ torch.cat([hidden, torch.ones(1, t.shape[1])])
    out = t.clone()
    out[:k] += scale.repeat(t.shape[1] // scale.shape[0]) * mix
    return out


def random_token_mix(k, width, nodes, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(k + 1, nodes * width, generator=g).bfloat16()
    tokens[k] = 1
    w_in = (torch.randn(2 * k, k + 1, generator=g) / (k + 1) ** 0.5).bfloat16()
    w_out = (torch.randn(k, 2 * k + 1, generator=g) / (2 * k + 1) ** 0.5).bfloat16()
    return tokens, w_in, w_out, torch.rand(width, generator=g) + 0.5


@needs_amx
@pytest.mark.parametrize("k,width,nodes", [(80, 512, 2), (5, 24, 3), (17, 8, 5), (1, 2, 1)])
def test_fused_token_mix_equals_float32_reference(k, width, nodes):
    # k and widths whose rows and columns are no multiple of the 16-row, 16-column tiles,
    # blocks of 16 columns that span two nodes, a last block of fewer columns
    tokens, w_in, w_out, scale = random_token_mix(k, width, nodes, seed=k)
    want = token_mix_reference(tokens, w_in, w_out, scale)
    got = ops.token_mix_(tokens.clone(), *ops.token_mix_weights(w_in, w_out), scale)
    assert got.dtype == torch.bfloat16 and got.shape == tokens.shape
    assert torch.equal(got[k], tokens[k])
    assert float((want - tokens.float()).abs().max()) > 0.1  # the mix changed the tokens
    # one bfloat16 rounding of each result, float32 sums in another order (and a hidden
    # value's rounding may fall the other way)
    assert torch.allclose(got.float(), want, rtol=2 ** -8, atol=1e-3)


def test_token_mix_rejects_bad_weights_and_dtypes():
    tokens, w_in, w_out, scale = random_token_mix(6, 8, 2, seed=0)
    with pytest.raises(ValueError, match="w_in"):
        ops.token_mix_weights(w_in[:, :-1], w_out)
    tiles = ops.token_mix_weights(w_in, w_out)
    with pytest.raises(TypeError, match="tokens"):
        ops.token_mix_(tokens.float(), *tiles, scale)
    with pytest.raises(TypeError, match="scale"):
        ops.token_mix_(tokens, *tiles, scale.double())
    with pytest.raises(ValueError, match="w_out"):  # checked before any work, AMX or not
        ops.token_mix_(tokens, tiles[0], tiles[1][:, :-1].contiguous(), scale)
    with pytest.raises(ValueError, match="multiple"):
        ops.token_mix_(tokens, *tiles, torch.ones(5))


def random_channel_mix(rows, width, depth, seed):
    """Token and hidden tables of 9 rows, pairs [rows, 2] of them, a mix Linear [width, depth]."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(9, width, generator=g).bfloat16()
    hidden = torch.randn(9, depth, generator=g).bfloat16()
    pairs = torch.randint(0, 9, (rows, 2), generator=g)
    mix = torch.randn(width, depth, generator=g) / depth ** 0.5
    return tokens, hidden, pairs, mix


@needs_amx
@pytest.mark.parametrize("rows,width,depth", [(160, 512, 1024), (70, 48, 96), (33, 40, 50),
                                              (1, 7, 3), (31, 16, 32)])
def test_fused_channel_mix_equals_float32_reference(rows, width, depth):
    # row counts that are no multiple of the 32-row blocks (one thread may get none),
    # widths and depths that are no multiple of the 32-column steps and 32-deep products
    tokens, hidden, pairs, mix = random_channel_mix(rows, width, depth, seed=rows)
    a, b = pairs[:, 0], pairs[:, 1]
    activations = torch.nn.functional.gelu(hidden[a].float() + hidden[b].float())
    want = (tokens[a].float() + tokens[b].float()
            + activations.bfloat16().float() @ mix.bfloat16().float().t())
    out = torch.full((rows, width), float("nan"), dtype=torch.bfloat16)
    got = ops.channel_mix(tokens, hidden, pairs, ops.channel_mix_weights(mix), out)
    assert got is out
    # one bfloat16 rounding of each result, float32 sums in another order
    assert torch.allclose(got.float(), want, rtol=2 ** -8, atol=1e-3)
    assert float((want - tokens[a].float() - tokens[b].float()).abs().max()) > 0.1


def test_channel_mix_weights_are_amx_b_tiles():
    mix = torch.arange(40 * 50, dtype=torch.float32).view(40, 50) % 251
    tiles = ops.channel_mix_weights(mix)
    assert tiles.dtype == torch.bfloat16 and tiles.shape == (4, 2, 16, 32)
    # element [t, c, r, 2j + s] = mix[16t + j, 32c + 2r + s], zero past the edges
    for t, c, r, j, s in [(0, 0, 0, 0, 0), (1, 1, 3, 5, 1), (2, 1, 8, 7, 1), (2, 0, 15, 3, 0)]:
        assert float(tiles[t, c, r, 2 * j + s]) == float(mix[16 * t + j, 32 * c + 2 * r + s])
    assert float(tiles[2, 1, 9, 2 * 7]) == 0  # depth 50 is past the edge
    assert float(tiles[3, 0, 0, 2 * 9]) == 0  # row 57 is past the edge
    assert float(tiles.float().sum()) == float(mix.bfloat16().float().sum())


def test_channel_mix_refuses_bad_input():
    tokens, hidden, pairs, mix = random_channel_mix(4, 8, 40, seed=0)
    tiles = ops.channel_mix_weights(mix)
    out = torch.empty(4, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="weight"):
        ops.channel_mix_weights(mix[0])
    with pytest.raises(TypeError, match="hidden"):
        ops.channel_mix(tokens, hidden.float(), pairs, tiles, out)
    with pytest.raises(TypeError, match="out"):
        ops.channel_mix(tokens, hidden, pairs, tiles, out.t())
    # shapes and pairs checked before any work, AMX or not
    with pytest.raises(ValueError, match="weights"):
        ops.channel_mix(tokens, hidden, pairs, tiles[:, :1].contiguous(), out)
    with pytest.raises(ValueError, match="pairs"):
        ops.channel_mix(tokens, hidden, pairs[:3], tiles, out)
    with pytest.raises(ValueError, match="hidden"):
        ops.channel_mix(tokens, hidden[:8], pairs, tiles, out)
    with pytest.raises(IndexError, match=r"pairs\[0, 1\] = 9"):
        ops.channel_mix(tokens, hidden, torch.tensor([[0, 9]] * 4), tiles, out)


@needs_amx
@pytest.mark.parametrize("rows,width,out", [(160, 512, 256), (70, 24, 12), (33, 40, 50),
                                            (1, 7, 3), (31, 16, 32)])
def test_fused_attention_scores_equal_float32_reference(rows, width, out):
    # rows, widths and outputs that are no multiple of the 32-row blocks, 32-deep products
    # and 32-column steps
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, width, generator=g).bfloat16()
    weight = torch.randn(out, width, generator=g) / width ** 0.5
    bias, out_weight = torch.randn(out, generator=g), torch.randn(out, generator=g)
    want = (torch.nn.functional.gelu(x.float() @ weight.bfloat16().float().t() + bias)
            @ out_weight)
    got = ops.attention_scores(x, ops.channel_mix_weights(weight), bias, out_weight)
    assert got.dtype == torch.float32 and got.shape == (rows,)
    # nothing rounded: float32 sums in another order
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))


def test_attention_scores_refuse_bad_input():
    x, weight = torch.zeros(4, 40, dtype=torch.bfloat16), torch.zeros(12, 40)
    tiles, bias, out_weight = ops.channel_mix_weights(weight), torch.zeros(12), torch.zeros(12)
    with pytest.raises(TypeError, match="bias"):
        ops.attention_scores(x, tiles, bias.double(), out_weight)
    with pytest.raises(TypeError, match="x"):
        ops.attention_scores(x.float(), tiles, bias, out_weight)
    # shapes checked before any work, AMX or not
    with pytest.raises(ValueError, match="out_w"):
        ops.attention_scores(x, tiles, bias, out_weight[:11])
    with pytest.raises(ValueError, match="weights"):
        ops.attention_scores(x[:, :32].contiguous(), tiles, bias, out_weight)
    with pytest.raises(ValueError, match="weights"):
        ops.attention_scores(x, tiles, torch.zeros(40), torch.zeros(40))


@needs_avx512_bf16
@pytest.mark.parametrize("width", [1024, 24, 7])
def test_gather_gelu_is_the_gelu_of_the_float32_sums(width):
    g = torch.Generator().manual_seed(width)
    table = torch.randn(9, width, generator=g).bfloat16()
    pairs = torch.randint(0, 9, (13, 2), generator=g)
    want = torch.nn.functional.gelu(table[pairs[:, 0]].float() + table[pairs[:, 1]].float())
    got = ops.gather_gelu(table, pairs)
    assert got.dtype == torch.bfloat16 and got.shape == (13, width)
    # one bfloat16 rounding of each value
    assert torch.allclose(got.float(), want, rtol=2 ** -8, atol=1e-6)
    assert ops.gather_gelu(table, pairs[:0]).shape == (0, width)


def test_gather_gelu_refuses_bad_input():
    table, pairs = torch.zeros(4, 16, dtype=torch.bfloat16), torch.tensor([[0, 3], [1, 2]])
    with pytest.raises(TypeError, match="table"):
        ops.gather_gelu(table.float(), pairs)
    with pytest.raises(TypeError, match="pairs"):
        ops.gather_gelu(table, pairs.int())
    with pytest.raises(IndexError, match=r"pairs\[1, 1\] = 4"):  # checked before any work
        ops.gather_gelu(table, torch.tensor([[0, 3], [1, 4]]))
    with pytest.raises(IndexError, match="-1"):
        ops.gather_gelu(table, torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="pairs"):
        ops.gather_gelu(table, torch.zeros(2, 3, dtype=torch.int64))
