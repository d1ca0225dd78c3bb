"""Fuzzing of the native module ``sepfl._core``, called directly (bypassing sepfl.ops).

test_ops.py already checks valid input against the oracles through sepfl.ops.
This file checks what ops normally shields ``_core`` from: the exception
contract of each entry point on adversarial input (NaN / inf values, indices
anywhere in [-5, n + 5] and at the int64 extremes, empty arrays, k = 0 and 1,
wrong shapes, dtypes, layouts and ``None``). Every example either must equal
the oracle or must raise one specific exception:

- TypeError: an array argument that is not a C-contiguous numpy array of the
  exact dtype (float32 values, int64 indices); pybind11 refuses to convert.
- ValueError: array shapes that disagree with each other, an invalid scalar
  (``max_per_node < 1``, ``ranks`` outside [1, k), ``num_nodes < 0``) or NaN
  similarities in ``density``.
- IndexError: an index the kernel reads that is outside its range (-1 is an
  empty slot in ``nbrs``; ``node_ids`` and edge endpoints have no empty value).

``select_pairs`` and ``train_pairs`` return padded ``[n, m]`` tables (-1 where
there is no pair), the layout the CUDA kernels write; ``compact`` turns them
into the pairs the oracles give, and is fuzzed on its own too.

The kernels check neighbour entries where they read them, so an out-of-range
entry the kernel never reads (a row no ``node_id`` selects, a rank past
``ranks``, a slot after ``select_pairs`` found its partners) may either raise
IndexError or be ignored; ignoring it must then give the oracle's result.

Run with SEPFL_HYPOTHESIS_PROFILE=fuzz for 10,000 examples per test.
"""
import numpy as np
import pytest
import torch
from hypothesis import event, given, strategies as st
from hypothesis.extra import numpy as hnp

import oracles
from sepfl import _core

INT64 = np.iinfo(np.int64)
INDEX_EXTREMES = [INT64.min, INT64.min + 1, -(2**31), 2**31, INT64.max]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 1.0, -1.0]
# Bounded finite values keep float32 sums comparable with the float64 oracles;
# overflow is exercised through the infinities instead.
FINITE_VALUES = st.floats(-100, 100, width=32)

# The oracles see the same NaN / inf inputs and warn about them.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# --- pure helpers -------------------------------------------------------------

def outcome(call):
    """The call's result, or the exception it raised (so it can be compared); its
    kind is a hypothesis event, counted by ``--hypothesis-show-statistics``."""
    try:
        result = call()
    except Exception as error:  # noqa: BLE001 - the test asserts on its type
        result = error
    event(type(result).__name__)
    return result


def out_of_range(x, low, high):
    """Mask of the entries of ``x`` outside [low, high)."""
    return (x < low) | (x >= high)


def assert_raised(got, error):
    assert isinstance(got, error), f"expected {error.__name__}, got {got!r}"


def assert_values(got, want, scale):
    """``got`` (float32) equals the float64 oracle ``want``: NaN and inf exactly where
    it has them, finite entries up to float32 rounding of terms summing to ``scale``."""
    assert not isinstance(got, Exception), f"expected a result, got {got!r}"
    assert got.dtype == np.float32 and got.shape == want.shape
    got = got.astype(np.float64)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    error = np.abs(got[finite] - want[finite])
    bound = 2e-6 * (1.0 + np.broadcast_to(scale, want.shape)[finite])
    assert np.all(error <= bound), f"max error {np.max(error - bound, initial=0)} over bound"


def assert_indices(got, want):
    assert not isinstance(got, Exception), f"expected a result, got {got!r}"
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def check_index_contract(got, must_raise, may_raise, compare):
    """IndexError when an out-of-range entry is read; when one exists but is never
    read, either IndexError or the result for the table with it ignored."""
    event("out-of-range entry: " + ("read" if must_raise else "not read" if may_raise else "none"))
    if must_raise:
        assert_raised(got, IndexError)
    elif not (may_raise and isinstance(got, IndexError)):
        compare(got)


def unpad(padded, *alongside):
    """The pairs of a padded table, in numpy: (row, entry, *alongside value) of every
    entry >= 0 in row-major order, which ``_core.compact`` must also give."""
    rows, slots = np.nonzero(padded >= 0)
    return (rows, padded[rows, slots], *(x[rows, slots] for x in alongside))


def select_pairs_reads_bad(nbrs, density, max_per_node):
    """Whether select_pairs' walk must reach an out-of-range entry: some row's first
    bad entry comes before that row has found ``max_per_node`` partners."""
    bad = out_of_range(nbrs, -1, len(nbrs))
    before_first_bad = np.where(np.cumsum(bad, axis=1) > 0, -1, nbrs)
    src, _ = oracles.select_pairs(before_first_bad, density, max_per_node)
    found = np.bincount(src, minlength=len(nbrs))
    return bool(np.any(bad.any(axis=1) & (found < max_per_node)))


# --- strategies -----------------------------------------------------------------

def sizes(most):
    """Sizes 0..most, uniformly (hypothesis's integers favour the smallest)."""
    return st.sampled_from(range(most + 1))


def arrays(dtype, shape, elements):
    """Arrays whose every entry is drawn (hypothesis otherwise repeats one fill value)."""
    return hnp.arrays(dtype, shape, elements=elements, fill=st.nothing())


def values(nonfinite):
    """float32 elements in [-100, 100], with NaN, ±inf and signed zeros when ``nonfinite``."""
    return st.one_of(FINITE_VALUES, st.sampled_from(SPECIAL_VALUES)) if nonfinite else FINITE_VALUES


@st.composite
def index_arrays(draw, shape, low, high):
    """int64 ``shape`` array with entries in [low, high), then (half the time) 1 to 3
    entries overwritten by anything in [low - 5, high + 5] or an int64 extreme."""
    anything = st.one_of(st.integers(low - 5, high + 5), st.sampled_from([-1, low - 1, high]),
                         st.sampled_from(INDEX_EXTREMES))
    base = st.integers(low, high - 1) if high > low else anything
    x = draw(arrays(np.int64, shape, elements=base))
    if x.size:
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
            x.flat[draw(st.integers(0, x.size - 1))] = draw(anything)
    return x


@st.composite
def knn_inputs(draw, ks=sizes(6)):
    """(n, k, nbrs) with adversarial entries; n and k down to 0."""
    n, k = draw(sizes(12)), draw(ks)
    return n, k, draw(index_arrays((n, k), -1, n))


@st.composite
def node_inputs(draw):
    """(nbrs, node_ids, nonfinite) for the gathers; node_ids may hold duplicates and bad ids."""
    n, k, nbrs = draw(knn_inputs())
    node_ids = draw(index_arrays((draw(sizes(8)),), 0, n))
    return nbrs, node_ids, draw(st.booleans())


def gather_contract(nbrs, node_ids):
    """(must_raise, may_raise, sanitized nbrs) for gather / gather_add / aggregate."""
    n = len(nbrs)
    bad = out_of_range(nbrs, -1, n)
    if out_of_range(node_ids, 0, n).any():
        return True, True, nbrs
    return bool(bad[node_ids].any()), bool(bad.any()), np.where(bad, -1, nbrs)


# --- per entry point: adversarial values and indices ---------------------------

@given(sims=arrays(np.float32, st.tuples(sizes(12), sizes(6)), elements=values(nonfinite=True)),
       rho=st.one_of(st.floats(-0.5, 1.5, width=32), st.sampled_from(SPECIAL_VALUES)))
def test_density_nan_raises_and_infinities_are_clipped(sims, rho):
    """NaN anywhere -> ValueError; ±inf clip to 1 / 0; any rho (even NaN) follows the oracle."""
    got = outcome(lambda: _core.density(sims, rho))
    if np.isnan(sims).any():
        assert_raised(got, ValueError)
    else:
        assert_values(got, oracles.density(sims, rho), 1.0)


# max_per_node stays small: values with n * max_per_node past int64 are in
# test_native_crash.py.
@given(data=st.data(), inputs=knn_inputs(),
       max_per_node=st.sampled_from(["k", "k+1", 1, 2, 3, 1000, 0, -1, INT64.min]))
def test_select_pairs_index_contract(data, inputs, max_per_node):
    """Bad entries on a node's walk -> IndexError; max_per_node < 1 -> ValueError;
    NaN / inf densities never compare denser; otherwise the oracle's pairs, each
    row's partners first and -1 after them, max_per_node capped at k."""
    n, k, nbrs = inputs
    max_per_node = {"k": k, "k+1": k + 1}.get(max_per_node, max_per_node)
    density = data.draw(arrays(np.float32, n, elements=st.one_of(
        st.sampled_from([0.0, 0.5, 0.5, 1.0]), st.sampled_from(SPECIAL_VALUES))))
    got = outcome(lambda: _core.select_pairs(nbrs, density, max_per_node))
    if max_per_node < 1:
        assert_raised(got, ValueError)
        return
    sanitized = np.where(out_of_range(nbrs, -1, n), -1, nbrs)

    def compare(result):
        assert not isinstance(result, Exception), f"expected a result, got {result!r}"
        assert result.shape == (n, min(max_per_node, max(k, 1)))
        empty = result < 0
        assert np.all(empty[:, :-1] <= empty[:, 1:]), "a partner after an empty slot"
        for g, w in zip(unpad(result), oracles.select_pairs(sanitized, density, max_per_node)):
            assert_indices(g, w)

    check_index_contract(got, select_pairs_reads_bad(nbrs, density, max_per_node),
                         bool(out_of_range(nbrs, -1, n).any()), compare)


@given(data=st.data(), inputs=knn_inputs(ks=st.sampled_from([0, 1, 2, 3, 3, 4, 4, 5, 6])))
def test_train_pairs_index_and_ranks_contract(data, inputs):
    """ranks outside [1, k) -> ValueError (before any index check); a bad entry at
    ranks 1..ranks -> IndexError; otherwise the oracle's pairs and targets."""
    n, k, nbrs = inputs
    valid = [st.integers(1, k - 1)] if k >= 2 else []
    ranks = data.draw(st.one_of(*valid, st.sampled_from([-1, 0, k, k + 1, INT64.min, INT64.max])))
    labels = data.draw(arrays(np.int64, n, elements=st.one_of(
        st.integers(0, 3), st.sampled_from(INDEX_EXTREMES))))
    got = outcome(lambda: _core.train_pairs(nbrs, labels, ranks))
    if not 1 <= ranks < k:
        assert_raised(got, ValueError)
        return
    bad = out_of_range(nbrs, -1, n)

    def compare(result):
        assert not isinstance(result, Exception), f"expected a result, got {result!r}"
        dst, target = result
        assert dst.shape == target.shape == (n, ranks)
        assert not target[dst < 0].any(), "a target without a pair"
        for g, w in zip(unpad(dst, target),
                        oracles.train_pairs(np.where(bad, -1, nbrs), labels, ranks)):
            assert_indices(g, w)

    check_index_contract(got, bool(bad[:, 1:ranks + 1].any()), bool(bad.any()), compare)


@given(data=st.data(), inputs=node_inputs(), d=sizes(5))
def test_gather_index_contract(data, inputs, d):
    """Bad node_ids (including -1) or bad entries in the selected rows -> IndexError;
    otherwise exact copies, NaN and inf included, zeros for -1 slots."""
    nbrs, node_ids, nonfinite = inputs
    features = data.draw(arrays(np.float32, (len(nbrs), d), elements=values(nonfinite)))
    got = outcome(lambda: _core.gather(features, nbrs, node_ids))
    must, may, clean = gather_contract(nbrs, node_ids)
    check_index_contract(got, must, may, lambda result: assert_values(
        result, oracles.gather(features, clean, node_ids), 0.0))


@given(data=st.data(), inputs=node_inputs(), h=sizes(5), use_bias=st.booleans(),
       gelu=st.booleans())
def test_gather_add_index_contract(data, inputs, h, use_bias, gelu):
    """gather's index contract; values equal the oracle's, NaN / inf propagated as in torch."""
    nbrs, node_ids, nonfinite = inputs
    a, bproj = (data.draw(arrays(np.float32, (len(nbrs), h), elements=values(nonfinite)))
                for _ in range(2))
    bias = data.draw(arrays(np.float32, h, elements=values(nonfinite))) if use_bias else None
    got = outcome(lambda: _core.gather_add(a, bproj, nbrs, node_ids, bias, gelu))
    must, may, clean = gather_contract(nbrs, node_ids)

    def compare(result):
        absolute = None if bias is None else np.abs(bias)
        scale = oracles.gather_add(np.abs(a), np.abs(bproj), clean, node_ids, absolute, False)
        assert_values(result, oracles.gather_add(a, bproj, clean, node_ids, bias, gelu), scale)

    check_index_contract(got, must, may, compare)


def test_gather_add_gelu_of_special_values():
    """GELU of NaN, ±inf, huge, tiny and far-negative sums, as torch computes it in float64."""
    x = np.array(SPECIAL_VALUES + [3e38, -3e38, -87.5, -1e4, 1e-30, -1e-30], np.float32)[:, None]
    got = _core.gather_add(x, np.zeros_like(x), np.full((len(x), 1), -1), np.arange(len(x)),
                           None, True)
    want = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    assert_values(got[:, 0, :], want, np.abs(x))


@given(data=st.data(), inputs=node_inputs(), d=sizes(5))
def test_aggregate_index_contract(data, inputs, d):
    """gather's index contract; a -1 slot adds nothing even when its weight is NaN or inf."""
    nbrs, node_ids, nonfinite = inputs
    features = data.draw(arrays(np.float32, (len(nbrs), d), elements=values(nonfinite)))
    weights = data.draw(arrays(np.float32, (len(node_ids), nbrs.shape[1]),
                               elements=values(nonfinite)))
    got = outcome(lambda: _core.aggregate(weights, features, nbrs, node_ids))
    must, may, clean = gather_contract(nbrs, node_ids)

    def compare(result):
        # The oracle multiplies the zero row of an empty slot by its weight (NaN * 0 = NaN);
        # the contract is that the slot adds nothing, so its weight is zeroed here.
        used = np.where(clean[node_ids] >= 0, weights, 0).astype(np.float32)
        scale = oracles.aggregate(np.abs(used), np.abs(features), clean, node_ids)
        assert_values(result, oracles.aggregate(used, features, clean, node_ids), scale)

    check_index_contract(got, must, may, compare)


@given(data=st.data(), inputs=knn_inputs(), e=sizes(20))
def test_shared_neighbours_index_contract(data, inputs, e):
    """An endpoint outside [0, n) or a bad entry in an endpoint's row -> IndexError;
    a bad entry in a row no edge touches may raise or be ignored; else the oracle."""
    n, k, nbrs = inputs
    src, dst = data.draw(index_arrays((2, e), 0, n))
    got = outcome(lambda: _core.shared_neighbours(nbrs, src, dst))
    bad = out_of_range(nbrs, -1, n)
    if out_of_range(src, 0, n).any() or out_of_range(dst, 0, n).any():
        assert_raised(got, IndexError)
        return

    def compare(result):
        assert not isinstance(result, Exception), f"expected a result, got {result!r}"
        for g, w in zip(result, oracles.shared_neighbours(nbrs, src, dst)):
            assert_indices(g, w)

    touched = np.concatenate([src, dst])
    check_index_contract(got, bool(bad[touched].any()), bool(bad.any()), compare)


@given(data=st.data(), num_nodes=st.sampled_from(range(-3, 21)), e=sizes(30),
       use_scores=st.booleans(),
       threshold=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(-1, 2, width=32),
                           st.sampled_from(SPECIAL_VALUES)))
def test_link_index_contract(data, num_nodes, e, use_scores, threshold):
    """num_nodes < 0 -> ValueError; any endpoint outside [0, num_nodes) -> IndexError,
    whatever its score (-1 is not an empty value here); NaN scores never pass."""
    src, dst = data.draw(index_arrays((2, e), 0, max(num_nodes, 0)))
    scores = None
    if use_scores:
        scores = data.draw(arrays(np.float32, e, elements=st.sampled_from(
            [0.0, 0.5, 0.51, 1.0] + SPECIAL_VALUES)))
    got = outcome(lambda: _core.link(src, dst, scores, threshold, num_nodes))
    if num_nodes < 0:
        assert_raised(got, ValueError)
    elif out_of_range(src, 0, num_nodes).any() or out_of_range(dst, 0, num_nodes).any():
        assert_raised(got, IndexError)
    else:
        assert_indices(got, oracles.link(src, dst, scores, threshold, num_nodes))


@given(data=st.data(), n=sizes(8), m=sizes(4), use_alongside=st.booleans())
def test_compact_keeps_every_entry_in_row_major_order(data, n, m, use_alongside):
    """Every entry >= 0 (also after a -1, as train_pairs leaves them), with its row and
    its alongside value; any negative entry is dropped."""
    padded = data.draw(arrays(np.int64, (n, m), elements=st.one_of(
        st.integers(-2, 9), st.sampled_from(INDEX_EXTREMES))))
    alongside = (data.draw(arrays(np.int64, (n, m), elements=st.integers(-3, 3)))
                 if use_alongside else None)
    got = _core.compact(padded, alongside)
    want = unpad(padded, *([] if alongside is None else [alongside]))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_indices(g, w)


# --- every entry point: argument types, layouts and shapes ---------------------

# Array arguments of each entry point, in call order: (kind, dims), kind "f" for
# float32 or "i" for int64, "?" when None is allowed; dims name sizes that must agree.
ARRAY_ARGS = {
    "density": [("f", "nk")],
    "select_pairs": [("i", "nk"), ("f", "n")],
    "train_pairs": [("i", "nk"), ("i", "n")],
    "gather": [("f", "nd"), ("i", "nk"), ("i", "b")],
    "gather_add": [("f", "nh"), ("f", "nh"), ("i", "nk"), ("i", "b"), ("f?", "h")],
    "aggregate": [("f", "bk"), ("f", "nd"), ("i", "nk"), ("i", "b")],
    "link": [("i", "e"), ("i", "e"), ("f?", "e")],
    "shared_neighbours": [("i", "nk"), ("i", "e"), ("i", "e")],
    "compact": [("i", "nm"), ("i?", "nm")],
}
# Valid scalars passed after the arrays (link's zero endpoints need num_nodes >= 1).
SCALAR_ARGS = {"density": (0.7,), "select_pairs": (1,), "train_pairs": (1,), "gather": (),
               "gather_add": (True,), "aggregate": (), "link": (0.5, 1),
               "shared_neighbours": (), "compact": ()}
DTYPES = {"f": np.dtype(np.float32), "i": np.dtype(np.int64)}
MUTATIONS = ["shape", "float64", "int32", "uint64", "float16", "bool", "other kind",
             "byteswapped", "strided", "fortran", "broadcast", "readonly", "None", "list",
             "scalar", "tensor"]


def mutate(x, how):
    """``x`` (zeros) changed in one way the binding must refuse or (readonly,
    and layouts that stay C-contiguous) accept."""
    if how in ("float64", "int32", "uint64", "float16", "bool"):
        return x.astype(how)
    if how == "other kind":
        return x.astype(np.int64 if x.dtype.kind == "f" else np.float32)
    if how == "byteswapped":
        return x.astype(x.dtype.newbyteorder())
    if how == "strided":
        return np.repeat(x, 2, axis=-1)[..., ::2] if x.ndim else x
    if how == "fortran":
        return np.asfortranarray(x)
    if how == "broadcast":
        return np.broadcast_to(np.zeros((), x.dtype), x.shape)
    if how == "readonly":
        x = x.copy()
        x.flags.writeable = False
        return x
    return {"None": None, "list": x.tolist(), "scalar": x.dtype.type(0),
            "tensor": torch.from_numpy(x)}[how]


def accepted(x, kind):
    """Whether pybind11 (noconvert, c_style) takes ``x`` for an argument of ``kind``."""
    if x is None:
        return kind.endswith("?")
    return (isinstance(x, np.ndarray) and x.dtype == DTYPES[kind[0]]
            and x.flags.c_contiguous)


def shapes_agree(args, dims):
    """Whether every array has its ndim and equal-named sizes agree."""
    extent = {}
    for x, names in zip(args, dims):
        if x is None:
            continue
        if x.ndim != len(names):
            return False
        for name, size in zip(names, x.shape):
            if extent.setdefault(name, size) != size:
                return False
    return True


@st.composite
def argument_sets(draw, op):
    """Zero-filled arguments of ``op`` with consistent sizes in 0..3, then up to two
    of them mutated (a random shape of ndim 0..3 counts as one mutation)."""
    specs = ARRAY_ARGS[op]
    extent = {name: draw(st.integers(0, 3)) for _, dims in specs for name in dims}
    args = [np.zeros([extent[name] for name in dims], DTYPES[kind[0]]) for kind, dims in specs]
    for i in draw(st.sets(st.integers(0, len(specs) - 1), max_size=2)):
        how = draw(st.sampled_from(MUTATIONS))
        if how == "shape":
            args[i] = np.zeros(draw(st.lists(st.integers(0, 3), max_size=3)), args[i].dtype)
        else:
            args[i] = mutate(args[i], how)
    return args


def expected_error(op, args):
    """The exception ``op`` must raise on zero-filled ``args``, or None."""
    specs = ARRAY_ARGS[op]
    if not all(accepted(x, kind) for x, (kind, _) in zip(args, specs)):
        return TypeError
    if not shapes_agree(args, [dims for _, dims in specs]):
        return ValueError
    if op == "train_pairs" and args[0].shape[1] < 2:  # ranks = 1 needs k >= 2
        return ValueError
    if op == "shared_neighbours" and args[1].size and not args[0].shape[0]:
        return IndexError  # endpoint 0 with no nodes
    node_ids = {"gather": 2, "gather_add": 3, "aggregate": 3}.get(op)
    if node_ids is not None and args[node_ids].size and not args[node_ids - 1].shape[0]:
        return IndexError  # node id 0 with no nodes
    return None


@pytest.mark.parametrize("op", sorted(ARRAY_ARGS))
@given(data=st.data())
def test_argument_types_and_shapes(op, data):
    """Wrong dtype / layout / None / non-array -> TypeError; disagreeing shapes,
    including 0-d arrays -> ValueError; read-only and otherwise valid -> the oracle."""
    args = data.draw(argument_sets(op)) + list(SCALAR_ARGS[op])
    got = outcome(lambda: getattr(_core, op)(*args))
    error = expected_error(op, args)
    if error is not None:
        assert_raised(got, error)
        return
    assert not isinstance(got, Exception), f"expected a result, got {got!r}"
    if op == "compact":
        want = unpad(*(x for x in args if x is not None))
    else:
        want = getattr(oracles, op)(*args)
    if op in ("select_pairs", "train_pairs"):
        got = unpad(*(got if isinstance(got, tuple) else (got,)))
    pairs = zip(got, want) if isinstance(want, tuple) else [(got, want)]
    for g, w in pairs:
        assert g.dtype in DTYPES.values()
        np.testing.assert_array_equal(g, w)
