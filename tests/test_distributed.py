"""Sharded clustering (sepfl.distributed) in two gloo CPU processes against one process.

Each test spawns two processes (rank 0 and 1) that set torchrun's environment
variables and call :func:`sepfl.cluster.cluster` with ``distributed=True``;
they report back through a queue, so a rank that hangs fails the test at the
join's timeout instead of hanging the suite.
"""
import multiprocessing
import socket
import time

import numpy as np
import pytest
import torch
from sklearn.metrics.cluster import contingency_matrix

from sepfl import distributed
from sepfl.cluster import cluster
from sepfl.config import ClusterConfig
from sepfl.estimator import SEPFL
from sepfl.model import PairClassifier

WORLD = 2
JOIN_SECONDS = 240
HANG_SECONDS = 120  # a hung rank: long past the 15 s timeout of the failure test
MAKE_FACES = dict(n_ids=60, seed=5)  # 3,185 samples (the conftest's faces fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, port, features, model, settings, fail, queue):
    """One rank: cluster its shard and put (rank, outcome) on ``queue``."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if fail == "tight":  # too little memory to hold every row: nothing may gather them
        def refused(*args, **kwargs):
            raise AssertionError("the features were all-gathered")
        distributed._memory_share = lambda device: 1 << 20
        def bounded(e, *args):
            assert e.shape[0] <= 50 * 41, "an edge chunk held too many rows"
            return statistics(e, *args)
        statistics = distributed.edges.edge_statistics
        distributed._memory_share = lambda device: 1 << 20
        distributed._NAMED_CHUNK = 500  # several rounds of fetches per shard
        # room for 50 x (1 + 40 candidates) held rows (D = 256, k = 80): 50 source rows a chunk
        distributed._EDGE_BYTES = 50 * 41 * (8 * 512 + 20 * 80)
        distributed._Group.all_rows = refused
        distributed.edges.edge_statistics = bounded
    if fail in ("raise", "hang") and rank == 1:
        def broken(*args, **kwargs):
            if fail == "hang":
                time.sleep(HANG_SECONDS)
            raise ValueError("rank 1 broke before the density all-reduce")
        distributed.unit_knn = broken
    try:
        result = cluster(features, model, ClusterConfig(distributed=True, **settings))
    except Exception as err:  # reported to the test, which checks it
        queue.put((rank, "error", type(err).__name__, str(err), time.monotonic()))
        return
    shapes = {name: getattr(result, name).shape
              for name in ("features", "nbrs", "sims", "density", "embeddings")}
    queue.put((rank, "ok", result.rows, shapes, result.labels, result.density, result.nbrs,
               result.src, result.timings, result.collectives, result.dst, result.scores,
               result.grouping, result.sims))


def _spawn(features, model, settings, fail=None, ranks=range(WORLD)):
    """Run the two ranks; the reports of ``ranks`` by rank (the other ranks are killed)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_rank, args=(r, port, features, model, settings, fail, queue))
             for r in range(WORLD)]
    for proc in procs:
        proc.start()
    reports = {}
    try:
        while set(reports) < set(ranks):
            report = queue.get(timeout=JOIN_SECONDS)
            reports[report[0]] = report
    finally:
        for rank, proc in enumerate(procs):
            proc.join(timeout=30 if rank in ranks else 0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return reports


@pytest.fixture(scope="module")
def runs(faces):
    model = SEPFL.pretrained().model_
    settings = dict(device="cpu", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = cluster(faces.features, model, ClusterConfig(**settings))
    finally:
        torch.set_num_threads(threads)
    return single, _spawn(faces.features, model, settings)


def _moved(expected, found):
    """Samples that must move to turn partition ``found`` into ``expected`` (each cluster
    of one matched to the cluster of the other holding most of it, whichever way gives
    more): 0 for the same partition under any numbering, 1 when one sample left its
    cluster, whatever the size of that cluster."""
    table = contingency_matrix(expected, found, sparse=True)
    n = len(expected)
    return max(n - table.max(axis=1).sum(), n - table.max(axis=0).sum())


def _assert_scores_match(single, ranks):
    """Each rank's candidate edges and scores are the single process's edges from its rows,
    the scores up to an embedding's last bits, except where an end's kNN list differs
    from the single process's (by exact ties: another order, or another last entry)."""
    n = len(single.labels)
    differ = (np.concatenate([ranks[r][6] for r in range(WORLD)]) != single.nbrs).any(1)
    for report in ranks.values():
        rows = report[2]
        mine = (single.src >= rows.start) & (single.src < rows.stop)
        exact = mine & ~differ[single.src] & ~differ[single.dst]
        expected = single.src[exact] * n + single.dst[exact]
        found = report[7] * n + report[10]
        common, at_expected, at_found = np.intersect1d(expected, found, return_indices=True)
        assert len(common) == len(expected) and len(found) == mine.sum()
        np.testing.assert_allclose(report[11][at_found], single.scores[exact][at_expected],
                                   atol=1e-4)


def test_same_partition_as_one_process(runs):
    single, ranks = runs
    assert all(report[1] == "ok" for report in ranks.values()), ranks
    for report in ranks.values():
        labels = report[4]
        # an embedding's last bits depend on the node tile it shares (see
        # sepfl.distributed), so an Infomap partition can move a sample or two
        assert _moved(single.labels, labels) <= 3
    np.testing.assert_array_equal(ranks[0][4], ranks[1][4])
    _assert_scores_match(single, ranks)


def test_each_rank_holds_its_shard(runs, faces):
    single, ranks = runs
    n, k = single.nbrs.shape
    bounds = distributed.shard_bounds(n, WORLD)
    for r, report in ranks.items():
        rows, shapes = report[2], report[3]
        assert rows == range(bounds[r], bounds[r + 1])
        m = len(rows)
        assert m < n
        assert shapes == {"features": (m, 256), "nbrs": (m, k), "sims": (m, k), "density": (m,),
                          "embeddings": (m, 512)}
        # kNN lists and densities are the single process's rows, bit for bit
        np.testing.assert_array_equal(report[6], single.nbrs[rows.start:rows.stop])
        np.testing.assert_array_equal(report[5], single.density[rows.start:rows.stop])
        assert ((report[7] >= rows.start) & (report[7] < rows.stop)).all()


def test_time_in_collectives_is_part_of_each_stage(runs):
    _, ranks = runs
    for report in ranks.values():
        timings, collectives = report[8], report[9]
        # the features' all-gather, the density's all-reduce, the fetch of the far ends,
        # the scores' sum (their mean picks the calibrated grouping), the pairs' gather and
        # the labels' broadcast
        assert set(collectives) == {"normalize", "density", "edges", "scores", "group"}
        assert all(0 < collectives[stage] <= timings[stage] for stage in collectives)


def test_sharded_features_give_the_one_process_lists_and_partition(runs, faces):
    single = runs[0]
    model = SEPFL.pretrained().model_
    # "auto" with 1 MiB of memory per rank: the [3185, 256] rows (3.3 MB) do not fit
    ranks = _spawn(faces.features, model, dict(device="cpu", progress=False), fail="tight")
    assert all(report[1] == "ok" for report in ranks.values()), ranks
    for report in ranks.values():
        rows, shapes, labels, nbrs = report[2], report[3], report[4], report[6]
        assert shapes["features"] == (len(rows), 256)
        # the ring search finds the single process's lists; their similarities are summed
        # as its faiss search sums them, so the order matches too (up to exact ties)
        expected = single.nbrs[rows.start:rows.stop]
        assert (nbrs == expected).mean() > 0.999
        np.testing.assert_array_equal(np.sort(nbrs, 1), np.sort(expected, 1))
        np.testing.assert_array_equal(report[5], single.density[rows.start:rows.stop])
        # the shards' broadcasts and the named rows' fetch, no all-gather of features
        assert "knn" in report[9]
    np.testing.assert_array_equal(ranks[0][4], ranks[1][4])
    # the edges' statistics, fetched in chunks of 50 source rows, are the single process's
    _assert_scores_match(single, ranks)
    # A list that differs by an exact tie can move a whole cluster in Infomap's partition
    # (one such row moved 35 samples here), so the partition is compared with one process
    # clustering the ranks' own lists.
    lists = tuple(np.concatenate([ranks[r][i] for r in range(WORLD)]) for i in (6, 13))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        same_lists = cluster(faces.features, model, ClusterConfig(device="cpu", progress=False),
                             knn=lists)
    finally:
        torch.set_num_threads(threads)
    assert _moved(same_lists.labels, ranks[0][4]) <= 3


def test_sepfl_scheme_matches_one_process(faces):
    torch.manual_seed(0)
    model = PairClassifier(256, 10).eval()
    settings = dict(device="cpu", progress=False, k=10, scheme="sepfl")
    features = faces.features[:1200]
    single = cluster(features, model, ClusterConfig(**settings))
    ranks = _spawn(features, model, settings)
    assert all(report[1] == "ok" for report in ranks.values()), ranks
    for report in ranks.values():
        assert _moved(single.labels, report[4]) <= 3


def test_prior_shift_estimates_the_prior_over_every_rank(faces):
    # a few samples per identity: the candidates' mean P is below one half, and each rank
    # re-weights its P to the prior estimated from all ranks' P, as one process does
    model = SEPFL.pretrained().model_
    settings = dict(device="cpu", progress=False, prior_shift=True)
    features = faces.features[::8]
    single = cluster(features, model, ClusterConfig(**settings))
    assert single.grouping.prior < single.scores.mean() < 0.5
    ranks = _spawn(features, model, settings)
    assert all(report[1] == "ok" for report in ranks.values()), ranks
    for report in ranks.values():
        assert report[12].prior == pytest.approx(single.grouping.prior, rel=1e-6)
        assert _moved(single.labels, report[4]) <= 3


@pytest.mark.parametrize("fail", ["raise", "hang"])
def test_a_failing_rank_stops_the_other_with_a_clear_error(faces, fail):
    torch.manual_seed(0)
    model = PairClassifier(256, 10).eval()
    # 15 s: both processes must also form the group within it, and on a loaded 2-core
    # machine 5 s was sometimes too short for that
    settings = dict(device="cpu", progress=False, k=10, distributed_timeout=15.0)
    start = time.monotonic()
    # a hung rank 1 is killed once rank 0 has reported
    ranks = _spawn(faces.features[:400], model, settings, fail=fail,
                   ranks=range(WORLD) if fail == "raise" else [0])
    if fail == "raise":
        assert ranks[1][1:3] == ("error", "ValueError")
    status, kind, message, when = ranks[0][1:5]
    assert (status, kind) == ("error", "DistributedError")
    assert "stage 'density'" in message and "another rank failed" in message
    # rank 0 gave up at the timeout (plus process start-up), long before rank 1 woke up
    assert when - start < 60


def test_without_torchrun_environment(monkeypatch, faces):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    model = PairClassifier(256, 10).eval()
    with pytest.raises(ValueError, match="runs under torchrun"):
        cluster(faces.features[:100], model, ClusterConfig(k=10, device="cpu", distributed=True))
