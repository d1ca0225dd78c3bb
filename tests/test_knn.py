import importlib.util
import logging

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sepfl import knn as knn_module
from sepfl.features import fingerprint
from sepfl.io import read_knn, write_knn
from sepfl.knn import build_knn, estimate_recall
from samples import unit_rows

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="faiss is not installed")

# (backend, precision) pairs that must all give the exact graph.
EXACT = [pytest.param("faiss", "fp32", marks=needs_faiss), ("torch", "fp32"),
         ("torch", "tf32"), ("torch", "bf16")]


def circle(degrees):
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def check_rows(nbrs, sims):
    n = len(nbrs)
    np.testing.assert_array_equal(nbrs[:, 0], np.arange(n))
    np.testing.assert_array_equal(sims[:, 0], 1.0)
    assert np.all(np.diff(sims, axis=1) <= 0), "rows must be sorted by decreasing similarity"
    assert sims.max() <= 1.0 and sims.min() >= -1.0
    assert all(len(set(row)) == len(row) for row in nbrs.tolist())


def same_up_to_ties(a, b, atol=1e-5):
    """Same similarities, and the same neighbours wherever no near-tie allows a swap."""
    (na, sa), (nb, sb) = a, b
    np.testing.assert_allclose(sa, sb, atol=atol)
    for row in range(len(na)):
        kth = sa[row, -1]
        clear_a = set(na[row][sa[row] > kth + atol].tolist())
        clear_b = set(nb[row][sb[row] > kth + atol].tolist())
        assert clear_a == clear_b, f"row {row}: {na[row]} vs {nb[row]}"


# Points on the unit circle at 0, 30, 100 and 250 degrees; cosines by hand:
# cos 30 = .8660, cos 70 = .3420, cos 100 = -.1736, cos 110 = -.3420, cos 140 = -.7660,
# cos 150 = -.8660.
HAND_NBRS = [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 0, 1]]
HAND_SIMS = [[1, .8660, -.1736], [1, .8660, .3420], [1, .3420, -.1736], [1, -.3420, -.7660]]


@pytest.mark.parametrize("backend, precision", EXACT)
def test_hand_computed_circle(backend, precision):
    nbrs, sims = build_knn(circle([0, 30, 100, 250]), k=3, backend=backend, precision=precision)
    assert nbrs.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(nbrs, HAND_NBRS)
    np.testing.assert_allclose(sims, HAND_SIMS, atol=1e-4)


def test_unnormalised_rows_are_normalised_with_a_warning():
    x = circle([0, 30, 100, 250]) * np.array([[1.0], [3.0], [0.5], [2.0]], np.float32)
    with pytest.warns(UserWarning, match="3 of 4 features rows were not unit length"):
        nbrs, sims = build_knn(x, k=3, backend="torch")
    np.testing.assert_array_equal(nbrs, HAND_NBRS)
    np.testing.assert_allclose(sims, HAND_SIMS, atol=1e-4)


@pytest.mark.parametrize("backend, precision", EXACT)
@pytest.mark.parametrize("copies", [2, 5])
def test_duplicates_keep_self_first(backend, precision, copies):
    base = unit_rows(30, 8)
    x = np.concatenate([base] * copies)  # row i duplicates rows i + 30, i + 60, ...
    nbrs, sims = build_knn(x, k=4, backend=backend, precision=precision, chunk_size=7)
    check_rows(nbrs, sims)
    twins = min(copies - 1, 3)  # the other copies fill the next ranks, similarity 1
    np.testing.assert_allclose(sims[:, 1:1 + twins], 1.0, atol=1e-6)
    same_base = nbrs[:, 1:1 + twins] % 30 == np.arange(len(x))[:, None] % 30
    assert same_base.all()


@pytest.mark.parametrize("backend", [pytest.param("faiss", marks=needs_faiss), "torch"])
def test_all_rows_identical(backend):
    nbrs, sims = build_knn(np.full((9, 3), 3 ** -0.5, np.float32), k=5, backend=backend)
    check_rows(nbrs, sims)
    np.testing.assert_allclose(sims, 1.0, atol=1e-6)


def test_finish_rows_moves_and_inserts_self():
    nbrs = np.array([[1, 0, 2], [0, 2, 3], [2, 3, -1]])
    sims = np.array([[1.0, 1.0, 0.5], [1.0, 0.9, 0.2], [1.0000001, 0.3, -3e38]], np.float32)
    knn_module._finish_rows(nbrs, sims)
    np.testing.assert_array_equal(nbrs, [[0, 1, 2], [1, 0, 2], [2, 3, -1]])
    np.testing.assert_allclose(sims, [[1, 1, .5], [1, 1, .9], [1, .3, -1]])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), group=st.integers(1, 7), stride=st.integers(1, 40),
       width=st.integers(1, 12), padding=st.integers(0, 6), ties=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_grouped_topk_matches_topk(rows, group, stride, width, padding, ties, seed):
    n = group * stride
    assume(width <= stride and padding < n - width)
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((rows, n)).astype(np.float32)
    if ties:
        scores = np.round(scores)  # many equal values
    scores[:, n - padding:] = -np.inf
    scores = torch.from_numpy(scores)
    vals, idx = knn_module._grouped_topk(scores, width, stride)
    want = scores.topk(width, dim=1).values
    torch.testing.assert_close(vals, want)  # the same values, sorted ...
    torch.testing.assert_close(scores.gather(1, idx), want)  # ... found at these columns
    assert all(len(set(r)) == width for r in idx.tolist())


@pytest.mark.parametrize("n, width", [(4, 3), (100, 10), (1000, 120), (584908, 120)])
def test_groups_cover_all_columns(n, width):
    group, stride = knn_module._groups(n, width)
    assert group * stride >= n and stride % 64 == 0 and stride >= width
    assert group * stride - n < 64 * group


@needs_faiss
def test_faiss_and_torch_agree():
    x = unit_rows(700, 24, seed=3)
    faiss_graph = build_knn(x, k=20, backend="faiss", chunk_size=128)
    torch_graph = build_knn(x, k=20, backend="torch", chunk_size=100)
    for graph in (faiss_graph, torch_graph):
        check_rows(*graph)
    same_up_to_ties(faiss_graph, torch_graph)


def test_torch_blocks_do_not_matter():
    x = unit_rows(300, 16, seed=4)
    whole = build_knn(x, k=10, backend="torch")
    for chunk in (1, 37, 299):
        parts = build_knn(x, k=10, backend="torch", chunk_size=chunk)
        same_up_to_ties(whole, parts, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_tiles_do_not_matter(monkeypatch, precision):
    # Tiles narrower than a row's candidates, and a last tile of another width.
    x = unit_rows(300, 16, seed=6)
    whole = build_knn(x, k=10, backend="torch", precision=precision)
    for tile in (7, 64):
        monkeypatch.setattr(knn_module, "_CPU_TILE", tile)
        tiled = build_knn(x, k=10, backend="torch", precision=precision, chunk_size=41)
        check_rows(*tiled)
        same_up_to_ties(whole, tiled, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_row_search_equals_searches_of_row_ranges(monkeypatch, precision):
    # The search of every row multiplies each pair once and offers it to both rows; ranges
    # of rows are searched on their own, every product of theirs computed.
    monkeypatch.setattr(knn_module, "_CPU_TILE", 16)
    x = unit_rows(333, 16, seed=3)
    whole = build_knn(x, k=12, backend="torch", precision=precision, chunk_size=48)
    check_rows(*whole)
    parts = [build_knn(x, k=12, backend="torch", precision=precision,
                       rows=range(a, min(a + 100, 333))) for a in range(0, 333, 100)]
    np.testing.assert_array_equal(whole[0], np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(whole[1], np.concatenate([p[1] for p in parts]))


@pytest.mark.parametrize("amx, backend, device, want", [
    (True, "auto", "cpu", "bf16"), (True, "torch", "cpu", "bf16"), (True, "faiss", "cpu", "fp32"),
    (False, "auto", "cpu", "fp32"), (True, "auto", "cuda", "fp32")])
def test_auto_precision_is_bf16_on_amx_cpus_only(monkeypatch, amx, backend, device, want):
    monkeypatch.setattr(knn_module, "cpu_has_amx", lambda: amx)
    where = torch.device(device)
    assert knn_module.resolve_precision("auto", backend, where) == want
    assert knn_module.resolve_precision("tf32", backend, where) == "tf32"


def test_auto_precision_reaches_the_search(monkeypatch):
    seen = []
    real = knn_module._torch_knn
    monkeypatch.setattr(knn_module, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(knn_module, "_torch_knn",
                        lambda x, k, precision, *rest: seen.append(precision) or real(
                            x, k, precision, *rest))
    build_knn(unit_rows(50, 8), k=5)
    assert seen == ["bf16"]
    # an approximate request gets the same search, which is faster than faiss's graph index
    build_knn(unit_rows(50, 8), k=5, exact=False)
    assert seen == ["bf16", "bf16"]
    monkeypatch.setattr(knn_module, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(knn_module, "_faiss", lambda: None)
    build_knn(unit_rows(50, 8), k=5, exact=False)
    assert seen == ["bf16", "bf16", "fp32"]


MAKE_FACES = dict(n_ids=25, dim=64, seed=5)


def recall(found, true):
    hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), true.tolist())]
    return sum(hits) / true.size


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_reduced_precision_recall(faces, precision):
    x = faces.features
    exact = build_knn(x, k=40, backend="torch", precision="fp32")
    nbrs, sims = build_knn(x, k=40, backend="torch", precision=precision)
    check_rows(nbrs, sims)
    assert recall(nbrs, exact[0]) >= 0.99
    # Re-ranked in float32: every returned similarity is the exact dot product.
    np.testing.assert_allclose(sims[:, 1:], np.einsum("id,ijd->ij", x, x[nbrs[:, 1:]]),
                               atol=1e-5)


def test_torch_input_gives_torch_output():
    x = torch.from_numpy(circle([0, 30, 100, 250]))
    nbrs, sims = build_knn(x, k=3)
    assert isinstance(nbrs, torch.Tensor) and nbrs.dtype == torch.int64
    assert isinstance(sims, torch.Tensor) and sims.dtype == torch.float32
    np.testing.assert_array_equal(nbrs.numpy(), HAND_NBRS)


@pytest.mark.parametrize("backend", [pytest.param("faiss", marks=needs_faiss), "torch"])
def test_read_only_memory_map_input(tmp_path, backend):
    x = unit_rows(50, 6)
    x.tofile(tmp_path / "f.bin")
    mapped = np.memmap(tmp_path / "f.bin", dtype=np.float32, mode="r", shape=(50, 6))
    same_up_to_ties(build_knn(mapped, k=5, backend=backend), build_knn(x, k=5, backend="torch"))


@pytest.mark.parametrize("exact, device, precision, has_faiss, want", [
    (True, "cpu", "fp32", True, "torch"), (False, "cpu", "fp32", True, "faiss"),
    (False, "cpu", "fp32", False, "torch"), (False, "cpu", "bf16", True, "torch"),
    (False, "cuda", "fp32", True, "torch")])
def test_auto_backend_is_faiss_for_approximate_float32_cpu_searches_only(
        monkeypatch, exact, device, precision, has_faiss, want):
    # Every exact search is the brute force (half the products of exact faiss on the CPU);
    # faiss's graph index serves approximate float32 searches on the CPU when installed.
    monkeypatch.setattr(knn_module, "_faiss", lambda: object() if has_faiss else None)
    assert knn_module.choose_backend("auto", torch.device(device), precision, exact) == want


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    monkeypatch.setattr(knn_module, "_faiss", lambda: None)
    nbrs, _ = build_knn(circle([0, 30, 100, 250]), k=3)
    np.testing.assert_array_equal(nbrs, HAND_NBRS)


@needs_faiss
def test_approximate_faiss_logs_recall(faces, caplog):
    with caplog.at_level(logging.INFO, logger="sepfl"):
        nbrs, sims = build_knn(faces.features, k=30, backend="faiss", exact=False)
    check_rows(nbrs, sims)
    exact_nbrs, _ = build_knn(faces.features, k=30, backend="faiss")
    logged = [r.getMessage() for r in caplog.records if "estimated recall" in r.getMessage()]
    assert len(logged) == 1
    estimate = float(logged[0].split("recall@30 ")[1].split()[0])
    assert abs(estimate - recall(nbrs, exact_nbrs)) < 0.01  # 1000 of 1291 rows sampled
    assert recall(nbrs, exact_nbrs) >= 0.95


@needs_faiss
@pytest.mark.parametrize("size_from, approximate", [(1000, True), (10**9, False)])
def test_exact_none_is_approximate_from_a_size(faces, caplog, monkeypatch, size_from,
                                               approximate):
    monkeypatch.setattr(knn_module, "APPROXIMATE_FROM", size_from)  # faces: 1,291 rows
    with caplog.at_level(logging.INFO, logger="sepfl"):
        nbrs, sims = build_knn(faces.features, k=30, backend="faiss", exact=None)
    check_rows(nbrs, sims)
    assert any("estimated recall" in r.getMessage() for r in caplog.records) == approximate
    if not approximate:
        same_up_to_ties((nbrs, sims), build_knn(faces.features, k=30, backend="faiss"))


def test_torch_backend_stays_exact_when_approximate_is_asked(faces):
    x = faces.features[:300]
    same_up_to_ties(build_knn(x, k=20, backend="torch", exact=False),
                    build_knn(x, k=20, backend="torch"))


def test_estimate_recall(faces):
    x = faces.features
    nbrs, _ = build_knn(x, k=10, backend="torch")
    assert estimate_recall(x, nbrs, rows=200) == 1.0
    broken = nbrs.copy()
    broken[:, 5:] = (broken[:, 5:] + 1) % len(x)  # half the neighbours now (mostly) wrong
    assert 0.5 <= estimate_recall(x, broken, rows=200) < 0.6


def test_cache_reuse_and_rebuild(tmp_path, caplog, monkeypatch):
    x = unit_rows(40, 5)
    cache = tmp_path / "cache" / "knn.npz"
    first = build_knn(x, k=4, backend="torch", cache=cache)
    stored = read_knn(cache)
    assert stored.fingerprint == fingerprint(x) and stored.meta["exact"] is True
    np.testing.assert_array_equal(stored.nbrs, first[0])

    def no_build(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(knn_module, "_torch_knn", no_build)
    with caplog.at_level(logging.INFO, logger="sepfl"):
        again = build_knn(x, k=4, backend="torch", cache=cache)
    np.testing.assert_array_equal(again[0], first[0])
    assert "reusing kNN cache" in caplog.text
    monkeypatch.undo()

    caplog.clear()
    changed = x.copy()
    changed[0] = -changed[0]
    with caplog.at_level(logging.WARNING, logger="sepfl"):
        rebuilt = build_knn(changed, k=4, backend="torch", cache=cache)
    assert "built on other features" in caplog.text
    assert read_knn(cache).fingerprint == fingerprint(changed)
    np.testing.assert_array_equal(rebuilt[0], build_knn(changed, k=4, backend="torch")[0])

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sepfl"):
        wider = build_knn(changed, k=6, backend="torch", cache=cache)
    assert "holds (40, 4), not (40, 6)" in caplog.text and wider[0].shape == (40, 6)


def test_cache_approximate_not_reused_for_exact(tmp_path, caplog):
    x = unit_rows(40, 5)
    cache = tmp_path / "knn.npz"
    nbrs, sims = build_knn(x, k=4, backend="torch")
    write_knn(cache, nbrs, sims, features=x, meta={"exact": False})
    with caplog.at_level(logging.WARNING, logger="sepfl"):
        build_knn(x, k=4, backend="torch", cache=cache)
    assert "approximate and an exact graph was asked for" in caplog.text
    assert read_knn(cache).meta["exact"] is True


def test_corrupt_cache_is_rebuilt(tmp_path, caplog):
    cache = tmp_path / "knn.npz"
    cache.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="sepfl"):
        nbrs, _ = build_knn(circle([0, 30, 100, 250]), k=3, backend="torch", cache=cache)
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(nbrs, HAND_NBRS)
    np.testing.assert_array_equal(read_knn(cache).nbrs, HAND_NBRS)


@pytest.mark.parametrize("progress, shown", [(True, True), (False, False), (None, False)])
def test_progress_bar(capsys, progress, shown):
    build_knn(unit_rows(30, 4), k=3, backend="torch", progress=progress)
    assert ("kNN" in capsys.readouterr().err) == shown


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_matches_cpu(faces, precision):
    x = torch.from_numpy(faces.features).cuda()
    nbrs, sims = build_knn(x, k=40, backend="torch", precision=precision)
    assert nbrs.device.type == "cuda" and sims.device.type == "cuda"
    check_rows(nbrs.cpu().numpy(), sims.cpu().numpy())
    exact = build_knn(faces.features, k=40, backend="torch")
    if precision == "fp32":
        same_up_to_ties((nbrs.cpu().numpy(), sims.cpu().numpy()), exact)
    else:
        assert recall(nbrs.cpu().numpy(), exact[0]) >= 0.99


@pytest.mark.cuda
def test_cuda_numpy_input_returns_numpy():
    nbrs, sims = build_knn(circle([0, 30, 100, 250]), k=3, device="cuda")
    assert isinstance(nbrs, np.ndarray)
    np.testing.assert_array_equal(nbrs, HAND_NBRS)
