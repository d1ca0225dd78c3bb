"""Bad input to ``sepfl._core``, each case in its own Python process.

A memory error in native code kills the process that makes the call. Running
every call in a child process turns a segfault or abort into the failure of
the one case that caused it, instead of the end of the pytest session. Each
case is an expression evaluated in a child; the child reports what it
returned or which exception it raised, and must exit cleanly. The children
run a few at a time so the table stays quick.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import sepfl

# Names every case can use: small valid inputs (3 nodes, k = 2) and helpers.
PRELUDE = """
import sys

import numpy as np
from sepfl import _core

BIG = np.iinfo(np.int64).max
NBRS = np.array([[0, 1], [1, 0], [2, 1]], np.int64)
DENS = np.array([0.1, 0.5, 0.9], np.float32)
FEATS = np.ones((3, 4), np.float32)
IDS = np.array([0, 2], np.int64)
W = np.zeros((1, 1, 32, 32), np.uint16)  # token_mix's tiled weights for k = 2


def f32(*shape, fill=0.0):
    return np.full(shape, fill, np.float32)


def u16(*shape):
    return np.zeros(shape, np.uint16)


def i64(*values):
    return np.array(values, np.int64)


def nbrs_with(value):
    nbrs = NBRS.copy()
    nbrs[0, 1] = value  # node 0 reads this slot first after itself
    return nbrs


def readonly(x):
    x = x.copy()
    x.flags.writeable = False
    return x


try:
    result = {call}
except Exception as error:
    print(error, file=sys.stderr)
    print("raised", type(error).__name__)
else:
    print("returned", result)
"""

def case(case_id, expression, expected, marks=()):
    """One row of the table: ``expected`` is "raised <ExceptionName>" or
    "returned <the result as print shows it>"."""
    return pytest.param(expression, expected, id=case_id, marks=marks)


CASES = [
    # density: dtype, layout and shape of sims
    case("density-float64", "_core.density(np.ones((2, 2)), 0.7)", "raised TypeError"),
    case("density-int32", "_core.density(np.ones((2, 2), np.int32), 0.7)", "raised TypeError"),
    case("density-float16", "_core.density(np.ones((2, 2), np.float16), 0.7)", "raised TypeError"),
    case("density-big-endian", "_core.density(f32(2, 2).astype('>f4'), 0.7)", "raised TypeError"),
    case("density-non-contiguous", "_core.density(f32(3, 4)[:, ::2], 0.7)", "raised TypeError"),
    case("density-fortran-order", "_core.density(np.asfortranarray(f32(3, 2)), 0.7)",
         "raised TypeError"),
    case("density-zero-strides", "_core.density(np.broadcast_to(np.float32(1), (3, 2)), 0.7)",
         "raised TypeError"),
    case("density-none", "_core.density(None, 0.7)", "raised TypeError"),
    case("density-nested-list", "_core.density([[1.0, 0.5]], 0.7)", "raised TypeError"),
    case("density-0d", "_core.density(np.array(1, np.float32), 0.7)", "raised ValueError"),
    case("density-3d", "_core.density(f32(2, 2, 2), 0.7)", "raised ValueError"),
    case("density-rho-not-a-number", "_core.density(f32(2, 2), 'high')", "raised TypeError"),
    case("density-nan", "_core.density(np.array([[1, np.nan]], np.float32), 0.7)",
         "raised ValueError"),
    case("density-infinities-clipped",
         "_core.density(np.array([[np.inf, -np.inf], [1, 0]], np.float32), 0.7).tolist()",
         "returned [1.0, 1.0]"),
    case("density-read-only", "_core.density(readonly(f32(2, 2, fill=1.0)), 0.7).tolist()",
         "returned [1.0, 1.0]"),
    case("density-empty", "_core.density(f32(0, 0), 0.7).shape", "returned (0,)"),
    # select_pairs
    case("select-index-n", "_core.select_pairs(nbrs_with(3), DENS, 1)", "raised IndexError"),
    case("select-index-minus-2", "_core.select_pairs(nbrs_with(-2), DENS, 1)", "raised IndexError"),
    case("select-index-int64-max", "_core.select_pairs(nbrs_with(BIG), DENS, 1)",
         "raised IndexError"),
    case("select-index-int64-min", "_core.select_pairs(nbrs_with(-BIG - 1), DENS, 1)",
         "raised IndexError"),
    case("select-int32-nbrs", "_core.select_pairs(NBRS.astype(np.int32), DENS, 1)",
         "raised TypeError"),
    case("select-uint64-nbrs", "_core.select_pairs(NBRS.astype(np.uint64), DENS, 1)",
         "raised TypeError"),
    case("select-density-none", "_core.select_pairs(NBRS, None, 1)", "raised TypeError"),
    case("select-density-short", "_core.select_pairs(NBRS, DENS[:2].copy(), 1)", "raised ValueError"),
    case("select-density-2d", "_core.select_pairs(NBRS, DENS[None], 1)", "raised ValueError"),
    case("select-max-per-node-0", "_core.select_pairs(NBRS, DENS, 0)", "raised ValueError"),
    case("select-max-per-node-negative", "_core.select_pairs(NBRS, DENS, -5)", "raised ValueError"),
    case("select-max-per-node-2**63", "_core.select_pairs(NBRS, DENS, 2**63)", "raised TypeError"),
    case("select-max-per-node-wraps",
         "_core.select_pairs(np.zeros((4, 1), np.int64), f32(4), 2**62).shape",
         "returned (4, 1)"),
    case("select-max-per-node-far-above-k",
         "_core.select_pairs(NBRS, DENS, 2**40).tolist()",
         "returned [[1, -1], [-1, -1], [-1, -1]]"),
    case("select-read-only", "_core.select_pairs(readonly(NBRS), readonly(DENS), 1).tolist()",
         "returned [[1], [-1], [-1]]"),
    # train_pairs
    case("train-ranks-k", "_core.train_pairs(NBRS, i64(0, 0, 1), 2)", "raised ValueError"),
    case("train-ranks-0", "_core.train_pairs(NBRS, i64(0, 0, 1), 0)", "raised ValueError"),
    case("train-ranks-negative", "_core.train_pairs(NBRS, i64(0, 0, 1), -1)", "raised ValueError"),
    case("train-ranks-2**63", "_core.train_pairs(NBRS, i64(0, 0, 1), 2**63)", "raised TypeError"),
    case("train-k-0", "_core.train_pairs(np.zeros((3, 0), np.int64), i64(0, 0, 1), 1)",
         "raised ValueError"),
    case("train-int32-labels", "_core.train_pairs(NBRS, np.zeros(3, np.int32), 1)",
         "raised TypeError"),
    case("train-labels-long", "_core.train_pairs(NBRS, i64(0, 0, 1, 1), 1)", "raised ValueError"),
    case("train-index-at-rank-1", "_core.train_pairs(nbrs_with(7), i64(0, 0, 1), 1)",
         "raised IndexError"),
    case("train-no-nodes", "_core.train_pairs(np.zeros((0, 2), np.int64), i64(), 1)[0].shape",
         "returned (0, 1)"),
    case("train-padded", "[x.tolist() for x in _core.train_pairs(NBRS, i64(0, 0, 1), 1)]",
         "returned [[[1], [0], [1]], [[1], [1], [0]]]"),
    # compact
    case("compact-int32", "_core.compact(NBRS.astype(np.int32), None)", "raised TypeError"),
    case("compact-1d", "_core.compact(i64(0, 1), None)", "raised ValueError"),
    case("compact-alongside-shape", "_core.compact(NBRS, NBRS[:2].copy())", "raised ValueError"),
    case("compact-no-entries", "_core.compact(np.full((2**20, 4), -1, np.int64), None)[0].size",
         "returned 0"),
    case("compact-entries",
         "[x.tolist() for x in _core.compact(i64(-1, 4, 5, -1).reshape(2, 2), "
         "i64(7, 8, 9, 6).reshape(2, 2))]",
         "returned [[0, 1], [4, 5], [8, 9]]"),
    # gather
    case("gather-node-id-minus-1", "_core.gather(FEATS, NBRS, i64(-1))", "raised IndexError"),
    case("gather-node-id-n", "_core.gather(FEATS, NBRS, i64(3))", "raised IndexError"),
    case("gather-node-id-int64-min", "_core.gather(FEATS, NBRS, i64(-BIG - 1))",
         "raised IndexError"),
    case("gather-bad-neighbour", "_core.gather(FEATS, nbrs_with(9), i64(0))", "raised IndexError"),
    case("gather-rows-mismatch", "_core.gather(f32(2, 4), NBRS, IDS)", "raised ValueError"),
    case("gather-2d-node-ids", "_core.gather(FEATS, NBRS, IDS[None])", "raised ValueError"),
    case("gather-float64-features", "_core.gather(np.ones((3, 4)), NBRS, IDS)", "raised TypeError"),
    case("gather-empty-graph", "_core.gather(f32(0, 4), np.zeros((0, 2), np.int64), i64()).shape",
         "returned (0, 2, 4)"),
    case("gather-read-only", "_core.gather(readonly(FEATS), readonly(NBRS), readonly(IDS)).sum()",
         "returned 16.0"),
    # gather_add
    case("gather-add-float64-bias", "_core.gather_add(FEATS, FEATS, NBRS, IDS, np.ones(4), True)",
         "raised TypeError"),
    case("gather-add-short-bias", "_core.gather_add(FEATS, FEATS, NBRS, IDS, f32(3), True)",
         "raised ValueError"),
    case("gather-add-narrow-bproj", "_core.gather_add(FEATS, f32(3, 3), NBRS, IDS, None, True)",
         "raised ValueError"),
    case("gather-add-gelu-not-a-bool", "_core.gather_add(FEATS, FEATS, NBRS, IDS, None, 'yes')",
         "raised TypeError"),
    case("gather-add-no-bias", "_core.gather_add(FEATS, FEATS, NBRS, IDS, None, False).sum()",
         "returned 32.0"),
    # aggregate
    case("aggregate-weights-k-mismatch", "_core.aggregate(f32(2, 3), FEATS, NBRS, IDS)",
         "raised ValueError"),
    case("aggregate-weights-rows-mismatch", "_core.aggregate(f32(1, 2), FEATS, NBRS, IDS)",
         "raised ValueError"),
    case("aggregate-bad-neighbour", "_core.aggregate(f32(1, 2), FEATS, nbrs_with(-3), i64(0))",
         "raised IndexError"),
    # link
    case("link-num-nodes-negative", "_core.link(i64(0), i64(1), None, 0.5, -1)", "raised ValueError"),
    case("link-num-nodes-too-big", "_core.link(i64(), i64(), None, 0.5, 2**62)", "raised ValueError"),
    case("link-num-nodes-2**63", "_core.link(i64(), i64(), None, 0.5, 2**63)", "raised TypeError"),
    case("link-src-minus-1", "_core.link(i64(-1), i64(1), None, 0.5, 2)", "raised IndexError"),
    case("link-dst-num-nodes", "_core.link(i64(0), i64(2), None, 0.5, 2)", "raised IndexError"),
    case("link-bad-endpoint-rejected-edge", "_core.link(i64(0), i64(5), f32(1), 0.5, 2)",
         "raised IndexError"),
    case("link-dst-short", "_core.link(i64(0, 1), i64(1), None, 0.5, 2)", "raised ValueError"),
    case("link-scores-long", "_core.link(i64(0), i64(1), f32(2), 0.5, 2)", "raised ValueError"),
    case("link-float64-scores", "_core.link(i64(0), i64(1), np.ones(1), 0.5, 2)", "raised TypeError"),
    case("link-non-contiguous-src", "_core.link(i64(0, 1, 1, 0)[::2], i64(1, 0), None, 0.5, 2)",
         "raised TypeError"),
    case("link-nan-threshold-keeps-nothing",
         "_core.link(i64(0), i64(1), f32(1, fill=1.0), float('nan'), 2).tolist()",
         "returned [0, 1]"),
    case("link-no-nodes", "_core.link(i64(), i64(), None, 0.5, 0).shape", "returned (0,)"),
    # token_mix (k = 2 tokens: w_in, w_out both W = [1, 1, 32, 32]), checked before any AMX work
    case("token-mix-one-row", "_core.token_mix(u16(1, 4), W, W, f32(4))", "raised ValueError"),
    case("token-mix-w-in-untiled", "_core.token_mix(u16(3, 4), u16(4, 3), W, f32(4))",
         "raised ValueError"),
    case("token-mix-w-out-short", "_core.token_mix(u16(3, 4), W, u16(1, 1, 32, 16), f32(4))",
         "raised ValueError"),
    case("token-mix-width-not-dividing", "_core.token_mix(u16(3, 4), W, W, f32(3))",
         "raised ValueError"),
    case("token-mix-empty-scale", "_core.token_mix(u16(3, 0), W, W, f32(0))", "raised ValueError"),
    case("token-mix-float-tokens", "_core.token_mix(f32(3, 4), W, W, f32(4))", "raised TypeError"),
    case("token-mix-read-only-tokens", "_core.token_mix(readonly(u16(3, 4)), W, W, f32(4))",
         "raised ValueError"),
    case("token-mix-shapes-k-0", "_core.token_mix_shapes(0)", "raised ValueError"),
    # channel_mix (out [1, 16], tables of 3 rows, depth 32: weights [2, 1, 16, 32]), every
    # shape and pair checked before any AMX work
    case("channel-mix-row-past-table",
         "_core.channel_mix(u16(1, 16), u16(3, 16), u16(3, 32), i64(0, 3).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised IndexError"),
    case("channel-mix-row-minus-1",
         "_core.channel_mix(u16(1, 16), u16(3, 16), u16(3, 32), i64(-1, 0).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised IndexError"),
    case("channel-mix-pairs-short",
         "_core.channel_mix(u16(2, 16), u16(3, 16), u16(3, 32), i64(0, 1).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised ValueError"),
    case("channel-mix-hidden-rows-differ",
         "_core.channel_mix(u16(1, 16), u16(3, 16), u16(2, 32), i64(0, 1).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised ValueError"),
    case("channel-mix-tokens-narrow",
         "_core.channel_mix(u16(1, 16), u16(3, 8), u16(3, 32), i64(0, 1).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised ValueError"),
    case("channel-mix-weights-too-shallow",
         "_core.channel_mix(u16(1, 16), u16(3, 16), u16(3, 64), i64(0, 1).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised ValueError"),
    case("channel-mix-weights-2d",
         "_core.channel_mix(u16(1, 16), u16(3, 16), u16(3, 32), i64(0, 1).reshape(1, 2), "
         "u16(16, 32))", "raised ValueError"),
    case("channel-mix-read-only-out",
         "_core.channel_mix(readonly(u16(1, 16)), u16(3, 16), u16(3, 32), "
         "i64(0, 1).reshape(1, 2), u16(2, 1, 16, 32))", "raised ValueError"),
    case("channel-mix-float-hidden",
         "_core.channel_mix(u16(1, 16), u16(3, 16), f32(3, 32), i64(0, 1).reshape(1, 2), "
         "u16(2, 1, 16, 32))", "raised TypeError"),
    case("channel-mix-shape-width-0", "_core.channel_mix_shape(0, 32)", "raised ValueError"),
    # attention_scores (x [2, 16], out 3: weights [2, 1, 16, 32]), every shape checked first
    case("attention-scores-no-outputs", "_core.attention_scores(u16(2, 16), u16(2, 1, 16, 32), "
         "f32(0), f32(0))", "raised ValueError"),
    case("attention-scores-out-w-short", "_core.attention_scores(u16(2, 16), u16(2, 1, 16, 32), "
         "f32(3), f32(2))", "raised ValueError"),
    case("attention-scores-weights-too-shallow",
         "_core.attention_scores(u16(2, 48), u16(2, 1, 16, 32), f32(3), f32(3))",
         "raised ValueError"),
    case("attention-scores-weights-3d",
         "_core.attention_scores(u16(2, 16), u16(1, 16, 32), f32(3), f32(3))", "raised ValueError"),
    case("attention-scores-float-x",
         "_core.attention_scores(f32(2, 16), u16(2, 1, 16, 32), f32(3), f32(3))",
         "raised TypeError"),
    # gather_gelu: every pair checked before any work
    case("gather-gelu-row-past-table", "_core.gather_gelu(u16(3, 16), i64(0, 3).reshape(1, 2))",
         "raised IndexError"),
    case("gather-gelu-row-minus-1", "_core.gather_gelu(u16(3, 16), i64(-1, 0).reshape(1, 2))",
         "raised IndexError"),
    case("gather-gelu-row-int64-max", "_core.gather_gelu(u16(3, 16), i64(0, BIG).reshape(1, 2))",
         "raised IndexError"),
    case("gather-gelu-three-columns", "_core.gather_gelu(u16(3, 16), i64(0, 1, 2).reshape(1, 3))",
         "raised ValueError"),
    case("gather-gelu-1d-table", "_core.gather_gelu(u16(16), i64(0, 0).reshape(1, 2))",
         "raised ValueError"),
    case("gather-gelu-float-table", "_core.gather_gelu(f32(3, 16), i64(0, 1).reshape(1, 2))",
         "raised TypeError"),
]


def run_case(expression):
    """Evaluates ``expression`` in a fresh interpreter importing this process's sepfl;
    returns (exit code, stdout, stderr), exit code None if it hung."""
    package_root = os.path.dirname(os.path.dirname(sepfl.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    try:
        child = subprocess.run([sys.executable, "-c", PRELUDE.format(call=expression)],
                               capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return None, "", "timed out after 120 s"
    return child.returncode, child.stdout, child.stderr


@pytest.fixture(scope="module")
def outcomes(request):
    """(exit code, stdout, stderr) of every case selected in this session (so a
    deselected case does not run at all), keyed by expression; children run four
    at a time."""
    selected = sorted({item.callspec.params["expression"] for item in request.session.items
                       if item.module is request.module and hasattr(item, "callspec")})
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(selected, pool.map(run_case, selected)))


def test_cases_are_distinct():
    """Case ids and expressions are unique, so each result belongs to one case."""
    assert len({c.id for c in CASES}) == len({c.values[0] for c in CASES}) == len(CASES) >= 12


@pytest.mark.slow  # a Python process per case: ~15 s for the table
@pytest.mark.parametrize("expression, expected", CASES)
def test_bad_input_is_reported_not_fatal(outcomes, expression, expected):
    """The child exits cleanly (no segfault, abort or hang) and the call raised the
    expected exception, or returned the expected result."""
    code, stdout, stderr = outcomes[expression]
    assert code == 0, f"{expression} killed its process (exit code {code}):\n{stderr}"
    reported = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    assert reported == expected, f"{expression}: {reported}\n{stderr}"
