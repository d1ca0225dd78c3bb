"""The edges scheme (sepfl.edges): candidates, statistics, the head, grouping, training."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from sepfl import edges
from sepfl.checkpoint import load_checkpoint, save_checkpoint
from sepfl.cluster import cluster
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.datasets import make_faces
from sepfl.estimator import SEPFL
from sepfl.knn import build_knn
from sepfl.metrics import evaluate
from sepfl.model import PairClassifier
from sepfl.stages import edge_grouping
from sepfl.train import (CALIBRATION_JOIN_ABOVE, CALIBRATION_JOINS, CALIBRATION_MARKOV_TIMES,
                         calibrate, train)

import oracles

K = 10
FAST = dict(epochs=1, pairs_per_epoch=256, warmup_steps=60, refit_steps=60, edge_steps=150,
            classifier_batch_size=128, candidates=6, progress=False, device="cpu")


MAKE_FACES = dict(n_ids=60, dim=16, seed=5)


@pytest.fixture(scope="module")
def trained(faces):
    return train(faces.features, faces.labels, TrainConfig(**FAST), k=K)


def test_candidate_edges_are_the_first_ranks_without_missing_entries():
    nbrs = torch.tensor([[0, 2, 1, -1], [1, 0, -1, -1], [2, 0, 1, 3], [3, 2, 0, 1]])
    src, dst, rank = edges.candidate_edges(nbrs, 2)
    assert src.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert dst.tolist() == [2, 1, 0, 0, 1, 2, 0]
    assert rank.tolist() == [1, 2, 1, 1, 2, 1, 2]
    with pytest.raises(ValueError, match="candidates"):
        edges.candidate_edges(nbrs, 4)


def test_edge_statistics_columns(faces):
    x = torch.from_numpy(faces.features)
    nbrs, sims = (torch.from_numpy(a) for a in build_knn(faces.features, k=K, progress=False))
    summary = torch.randn_like(x)
    e = torch.cat([x, summary], 1)
    src, dst, rank = edges.candidate_edges(nbrs, 4)
    stats = edges.edge_statistics(e, nbrs, sims, src, dst, rank)
    assert stats.shape == (len(src), edges.NUM_STATISTICS) and stats.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity
    np.testing.assert_allclose(stats[:, 0], sims[src, rank], atol=1e-5)  # cos(f_a, f_b)
    np.testing.assert_allclose(stats[:, 1], cos(summary[src], summary[dst]), atol=1e-5)
    np.testing.assert_allclose(stats[:, 2], cos(x[src], summary[dst]), atol=1e-5)
    np.testing.assert_allclose(stats[:, 3], cos(summary[src], x[dst]), atol=1e-5)
    shared, reverse = oracles.shared_neighbours(nbrs.numpy(), src.numpy(), dst.numpy())
    np.testing.assert_allclose(stats[:, 4], shared / K)
    np.testing.assert_allclose(stats[:, 5], rank / K)
    np.testing.assert_allclose(stats[:, 6], reverse / K)
    # local scale: mean similarity at ranks 1..min(NEAR, k-1); far end: rank min(FAR, k-1)
    near, far = min(edges.NEAR, K - 1), min(edges.FAR, K - 1)
    scale = np.array([np.mean(row[1:near + 1]) for row in sims.numpy()])
    for column, ends in ((7, src), (8, dst)):
        np.testing.assert_allclose(stats[:, column], scale[ends], rtol=1e-6)
        np.testing.assert_allclose(stats[:, column + 2], stats[:, 0].numpy() - scale[ends], atol=1e-6)
        np.testing.assert_array_equal(stats[:, column + 4], sims[ends, far])


def test_group_edges_components_and_infomap():
    # two triangles joined by one weak edge, and a sample with no edge
    src = np.array([0, 1, 2, 3, 4, 5, 2])
    dst = np.array([1, 2, 0, 4, 5, 3, 3])
    prob = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6], np.float32)
    np.testing.assert_array_equal(edges.group_edges(src, dst, prob, 7, "components"),
                                  [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(
        edges.group_edges(src, dst, prob, 7, "components", threshold=0.7), [0, 0, 0, 1, 1, 1, 2])
    found = edges.group_edges(src, dst, prob, 7, "infomap")
    np.testing.assert_array_equal(found, [0, 0, 0, 1, 1, 1, 2])  # the weak edge does not merge
    np.testing.assert_array_equal(found, edges.group_edges(src, dst, prob, 7, "infomap"))


def test_infomap_weighs_edges_below_the_full_cosine_less():
    # two 4-cliques at cosine 0.8, every pair across them at cosine 0.2, all at P = 0.9:
    # by P alone the walk has no reason to stay on either side; below full_cosine = 0.5 the
    # cross edges weigh (0.2 / 0.5)² of their P, while cosines above it all weigh P.
    # Components go by P alone.
    left, right = range(4), range(4, 8)
    within = [(i, j) for side in (left, right) for i in side for j in side if i < j]
    across = [(i, j) for i in left for j in right]
    src, dst = (np.array(ends) for ends in zip(*(within + across)))
    prob = np.full(src.size, 0.9, np.float32)
    cosine = np.array([0.8] * len(within) + [0.2] * len(across), np.float32)
    one = np.zeros(8, np.int64)
    np.testing.assert_array_equal(edges.group_edges(src, dst, prob, 8, "infomap"), one)
    np.testing.assert_array_equal(
        edges.group_edges(src, dst, prob, 8, "infomap", cosine=cosine, full_cosine=0.0), one)
    np.testing.assert_array_equal(
        edges.group_edges(src, dst, prob, 8, "infomap", cosine=cosine, full_cosine=0.5),
        [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(
        edges.group_edges(src, dst, prob, 8, "infomap", cosine=np.maximum(cosine, 0.6),
                          full_cosine=0.5), one)
    np.testing.assert_array_equal(
        edges.group_edges(src, dst, prob, 8, "components", cosine=cosine, full_cosine=0.5), one)


def test_join_modules_joins_modules_that_enough_sure_edges_connect():
    # modules a (0), b (1), c (2), d (3) of 5 samples each, numbered by smallest member:
    # a-b 3 sure edges, b-c 2 sure ones and many likely ones, c-d one sure edge
    modules = np.repeat(np.arange(4), 5)
    src = np.array([0, 1, 2, 5, 6] + [5] * 9 + [10])
    dst = np.array([5, 6, 7, 10, 11] + [12] * 9 + [15])
    prob = np.array([0.99, 0.95, 0.91, 0.99, 0.99] + [0.8] * 9 + [0.999], np.float32)
    np.testing.assert_array_equal(edges.join_modules(modules, src, dst, prob, 3, 0.9),
                                  np.repeat([0, 0, 1, 2], 5))
    # joined transitively; swapped directions count the same
    np.testing.assert_array_equal(edges.join_modules(modules, dst, src, prob, 2, 0.9),
                                  np.repeat([0, 0, 0, 1], 5))
    # a higher bar for a sure edge leaves a-b at one (0.99), b-c at two
    np.testing.assert_array_equal(edges.join_modules(modules, src, dst, prob, 2, 0.98),
                                  np.repeat([0, 1, 1, 2], 5))
    np.testing.assert_array_equal(edges.join_modules(modules, src, dst, prob, 1, 0.5),
                                  np.zeros(20, np.int64))
    # edges inside a module count for nothing
    np.testing.assert_array_equal(edges.join_modules(modules, np.arange(4) * 5,
                                                     np.arange(4) * 5 + 1,
                                                     np.ones(4, np.float32), 1, 0.5), modules)


def test_join_modules_keeps_apart_modules_whose_edges_say_different_on_average():
    # a (0) and b (1), 5 samples each: 3 sure edges between them, and 6 more edges whose P
    # decides the mean of all nine
    modules = np.repeat(np.arange(2), 5)
    src = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3])
    dst = np.array([5, 6, 7, 8, 9, 9, 8, 7, 6])
    sure = [0.99, 0.99, 0.99]
    for unsure, joined in (([0.4] * 6, True), ([0.1] * 6, False), ([0.2] * 6, False)):
        prob = np.array(sure + unsure, np.float32)  # means 0.597, 0.397, 0.463
        expected = np.zeros(10, np.int64) if joined else modules
        np.testing.assert_array_equal(edges.join_modules(modules, src, dst, prob, 3, 0.9),
                                      expected)
        # the count alone joins them whatever the rest say
        np.testing.assert_array_equal(
            edges.join_modules(modules, src, dst, prob, 3, 0.9, mean_above=0.0),
            np.zeros(10, np.int64))
    # the mean is over the edges between the two modules only: edges inside a module
    # (however improbable) do not lower it
    inside_src, inside_dst = np.array([0, 1, 5, 6]), np.array([1, 2, 6, 7])
    prob = np.array(sure + [0.4] * 6 + [0.0] * 4, np.float32)
    np.testing.assert_array_equal(
        edges.join_modules(modules, np.concatenate([src, inside_src]),
                           np.concatenate([dst, inside_dst]), prob, 3, 0.9),
        np.zeros(10, np.int64))


def test_infomap_with_join_keeps_what_it_does_not_join():
    # one clique per module and nothing between: joining changes nothing
    cliques = [range(20 * i, 20 * i + 20) for i in range(3)]
    src, dst = (np.array(ends) for ends in zip(*[(i, j) for side in cliques for i in side
                                                 for j in side if i < j]))
    prob = np.full(src.size, 0.9, np.float32)
    plain = edges.group_edges(src, dst, prob, 60, "infomap")
    np.testing.assert_array_equal(plain, np.repeat(np.arange(3), 20))
    np.testing.assert_array_equal(edges.group_edges(src, dst, prob, 60, "infomap", join=1.0),
                                  plain)


def test_components_join_each_sample_left_alone_by_its_most_probable_edge():
    # triangles {0, 1, 2} and {3, 4, 5} of sure edges; 6 leans to both (0.6 / 0.8), 7 and 8
    # only to each other (0.7), 9 only weakly (0.4); 6's 0.6 edge must not merge the triangles
    src = np.array([0, 1, 2, 3, 4, 5, 6, 6, 7, 9])
    dst = np.array([1, 2, 0, 4, 5, 3, 0, 3, 8, 0])
    prob = np.array([0.99] * 6 + [0.6, 0.8, 0.7, 0.4], np.float32)
    np.testing.assert_array_equal(edges.group_edges(src, dst, prob, 10, "components",
                                                    threshold=0.95),
                                  [0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    alone, partner = edges.singleton_edges(np.array([0, 0, 0, 1, 1, 1, 2, 3, 4, 5]),
                                           src, dst, prob, 0.5)
    np.testing.assert_array_equal(alone, [6, 7, 8])
    np.testing.assert_array_equal(partner, [3, 8, 7])
    # at or below the floor, or with a threshold under it, nobody is joined
    assert edges.singleton_edges(np.arange(10), src, dst, prob, 0.99)[0].size == 0
    np.testing.assert_array_equal(
        edges.group_edges(src, dst, prob, 10, "components", threshold=0.3),
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 0])


GROUP_TWICE_AROUND_FAISS = """
import numpy as np
from sepfl import edges
src, dst = np.array([0, 1, 3]), np.array([1, 2, 4])
prob = np.ones(3, np.float32)
first = edges.group_edges(src, dst, prob, 6, "infomap")
import faiss
faiss.IndexFlatIP(4).add(np.eye(4, dtype=np.float32))
np.testing.assert_array_equal(first, edges.group_edges(src, dst, prob, 6, "infomap"))
print(first.tolist())
"""


def test_infomap_runs_again_after_faiss_is_first_imported():
    # In a fresh process: Infomap, then faiss's first import, then Infomap again (a caller's
    # own kNN graph, then one sepfl builds); this order used to crash the process.
    pytest.importorskip("faiss")
    pytest.importorskip("infomap")
    done = subprocess.run([sys.executable, "-c", GROUP_TWICE_AROUND_FAISS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 0, 0, 1, 1, 2]"


def _even_odds_posteriors(prior, n, seed):
    """P(same identity) as a head trained at even odds scores edges of which a share
    ``prior`` join one identity: scores N(+1, 1) for those, N(-1, 1) for the others, whose
    posterior at even odds is sigmoid(2 x); and whether each edge joins one identity."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < prior
    x = rng.normal(np.where(same, 1.0, -1.0), 1.0)
    return torch.from_numpy(1 / (1 + np.exp(-2 * x))).float(), same


@pytest.mark.parametrize("prior", [0.1, 0.25, 0.4])
def test_estimated_prior_is_the_share_of_same_identity_edges(prior):
    prob, same = _even_odds_posteriors(prior, 50_000, seed=int(prior * 100))
    found = edges.estimated_prior(prob)
    assert abs(found - same.mean()) < 0.02
    # the fixed point: P re-weighted to the found prior has that prior as its mean
    assert edges.shifted_prior(prob.numpy(), found).mean() == pytest.approx(found, abs=1e-3)


def test_p_of_mean_above_one_half_is_left_as_scored():
    prob, _ = _even_odds_posteriors(0.7, 10_000, seed=3)
    assert edges.estimated_prior(prob) == edges.EVEN_ODDS
    np.testing.assert_array_equal(edges.shifted_prior(prob.numpy(), edges.EVEN_ODDS),
                                  prob.numpy())


def test_shifted_prior_multiplies_the_odds_by_the_prior_odds():
    prob = np.array([0.0, 0.2, 0.5, 0.8, 1.0], np.float32)
    odds = prob / (1 - prob + 1e-30)
    expected = np.where(prob < 1, odds / 4 / (1 + odds / 4), 1.0)  # prior 0.2: odds 1 / 4
    np.testing.assert_allclose(edges.shifted_prior(prob, 0.2), expected, rtol=1e-6)
    assert edges.shifted_prior(prob, 0.2).dtype == np.float32


def test_sparse_sets_are_grouped_with_p_reweighted_to_their_prior(trained, caplog):
    held_out = make_faces(40, dim=16, seed=9)
    kept = np.random.default_rng(0).random(held_out.labels.size) < 0.2
    settings = dict(k=K, candidates=6, device="cpu", progress=False)
    shifted = cluster(held_out.features[kept], trained,
                      ClusterConfig(**settings, prior_shift=True))
    with caplog.at_level("INFO", logger="sepfl"):
        scored = cluster(held_out.features[kept], trained, ClusterConfig(**settings))
    assert "grouped as scored; prior_shift=True re-weights" in caplog.text
    np.testing.assert_array_equal(shifted.scores, scored.scores)
    assert shifted.scores.mean() < 0.5
    assert shifted.grouping.prior == edges.estimated_prior(torch.from_numpy(shifted.scores))
    assert shifted.grouping.prior < shifted.scores.mean()
    assert scored.grouping.prior == edges.EVEN_ODDS
    assert shifted.grouping._replace(prior=edges.EVEN_ODDS) == scored.grouping
    # lower P keep fewer edges: components above one half cut the set into more clusters
    found = [cluster(held_out.features[kept], trained, ClusterConfig(
        **settings, grouping="components", threshold=0.5, prior_shift=shift)).num_clusters
        for shift in (True, False)]
    assert found[0] > found[1]


def test_training_adds_a_calibrated_edge_head(trained):
    head = trained.edge_head
    assert isinstance(head, edges.EdgeHead) and not head.training
    assert int(head.candidates) == FAST["candidates"]
    # one grouping for the whole graph and one for each of the default two thinned copies
    assert head.same_share.shape == (3,)
    assert set(head.markov_time.tolist()) <= set(CALIBRATION_MARKOV_TIMES)
    assert set(head.join.tolist()) <= set(CALIBRATION_JOINS)
    assert set(head.join_above.tolist()) <= set(np.float32(CALIBRATION_JOIN_ABOVE).tolist())
    assert bool(((head.threshold > 0) & (head.threshold < 1)).all())
    assert bool(((head.same_share > 0) & (head.same_share < 1)).all())
    assert set(head.components.tolist()) <= {0, 1}


def test_the_head_groups_as_calibrated_on_the_graph_whose_mean_p_is_nearest():
    views = [edges.Calibrated("infomap", 0.5, 4.0, 0.0, 0.5, 0.25),
             edges.Calibrated("components", 0.75, 2.0, 3.0, 0.875, 0.5),
             edges.Calibrated("infomap", 0.25, 1.0, 10.0, 0.5, 0.75)]
    head = edges.EdgeHead()
    head.set_calibration(views)
    assert [head.calibrated(share) for share in (0.0, 0.3, 0.4, 0.55, 0.7, 1.0)] == \
        [views[0], views[0], views[1], views[1], views[2], views[2]]
    # saved and loaded with its V graphs
    state = {f"edge_head.{name}": value for name, value in head.state_dict().items()}
    model = PairClassifier(16, K)
    loaded = PairClassifier.from_state_dict({**model.state_dict(), **state}).edge_head
    assert loaded.calibrated(0.45) == views[1]


def test_edges_scheme_beats_one_pair_per_sample(faces, trained):
    held_out = make_faces(40, dim=16, seed=9)
    scores = {}
    for scheme in ("edges", "sepfl"):
        result = cluster(held_out.features, trained,
                         ClusterConfig(k=K, scheme=scheme, candidates=6, device="cpu",
                                       progress=False))
        scores[scheme] = evaluate(held_out.labels, result.labels)["pairwise_f"]
        first = np.unique(result.labels, return_index=True)[1]
        assert np.all(np.diff(first) > 0)
    assert scores["edges"] > scores["sepfl"]
    assert "group" in result.timings or scheme == "sepfl"


def test_edge_head_survives_a_checkpoint_and_a_model_without_one_falls_back(faces, trained,
                                                                           tmp_path, caplog):
    path = tmp_path / "m.pt"
    save_checkpoint(path, trained, TrainConfig(**FAST))
    loaded = load_checkpoint(path)["model"]
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    config = ClusterConfig(k=K, candidates=6, device="cpu", progress=False)
    a = cluster(faces.features, trained, config).labels
    np.testing.assert_array_equal(a, cluster(faces.features, loaded, config).labels)
    bare = PairClassifier.from_state_dict({name: value for name, value in
                                           trained.state_dict().items()
                                           if not name.startswith("edge_head.")})
    assert bare.edge_head is None
    result = cluster(faces.features, bare, config)
    assert "link" in result.timings and "no edge head" in caplog.text


def test_calibrate_chooses_again_what_training_chose(faces, trained):
    model = copy.deepcopy(trained)
    head = model.edge_head
    # a calibration training would never choose, on as many graphs as training calibrated
    head.set_calibration([edges.Calibrated("components", 0.3, 8.0, 99.0, 0.5, 0.0)]
                         * trained.edge_head.join.numel())
    record = calibrate(model, faces.features, faces.labels, TrainConfig(**FAST))
    for name in ("components", "threshold", "markov_time", "join", "join_above", "same_share"):
        torch.testing.assert_close(getattr(head, name), getattr(trained.edge_head, name))
    assert [view["join"] for view in record["calibration"]] == trained.edge_head.join.tolist()
    # the network and the head's weights are left as they were
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_grouping_joins_as_the_head_was_calibrated_unless_told_otherwise(trained):
    head = trained.edge_head
    before = head.join.clone(), head.join_above.clone()
    try:
        head.join.fill_(5.0)
        head.join_above.fill_(0.98)
        grouping = edge_grouping(trained, ClusterConfig(k=K), 0.5)
        assert (grouping.join, grouping.join_above) == (5.0, pytest.approx(0.98))
        grouping = edge_grouping(trained, ClusterConfig(k=K, join=0.0, join_above=0.9), 0.5)
        assert (grouping.join, grouping.join_above) == (0.0, 0.9)
    finally:
        head.join.copy_(before[0])
        head.join_above.copy_(before[1])


@pytest.mark.parametrize("dropped", [(), ("join_above",), ("join", "join_above")])
def test_a_head_saved_with_one_grouping_loads_as_one_calibration_graph(trained, dropped):
    # heads saved before the per-graph calibration hold one grouping in scalar buffers; one
    # saved before modules were joined by sure edges (with or without the older joining's
    # buffer) was calibrated joining none
    scalars = [f"edge_head.{name}" for name in
               ("threshold", "markov_time", "join", "join_above", "components")]
    older = {name: value[0] if name in scalars else value
             for name, value in trained.state_dict().items()
             if name not in ["edge_head.same_share"] + [f"edge_head.{n}" for n in dropped]}
    head = PairClassifier.from_state_dict(older).edge_head
    assert head.same_share.shape == (1,)
    calibrated = head.calibrated(0.9)
    assert calibrated == head.calibrated(0.1)
    assert calibrated.markov_time == float(trained.edge_head.markov_time[0])
    if dropped:
        assert (calibrated.join, calibrated.join_above) == (0.0, pytest.approx(edges.JOIN_ABOVE))
    else:
        assert calibrated.join == float(trained.edge_head.join[0])


def test_small_k_trains_on_clean_data_with_negatives_from_beyond_the_lists(caplog):
    # ten samples per identity, far apart: a 5-NN list holds no other identity
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((32, 32)))[0][:20]
    labels = np.repeat(np.arange(20), 10)
    x = centres[labels] + 0.05 * rng.standard_normal((200, 32))
    with caplog.at_level("INFO", logger="sepfl"):
        est = SEPFL(k=5, **{**FAST, "candidates": 4}).fit(x.astype(np.float32), labels)
    assert "random pairs of different identities" in caplog.text
    found = est.predict(x.astype(np.float32))
    assert evaluate(labels, found)["pairwise_f"] > 0.9


def test_edges_oracle_is_pure_and_infomap_baseline_is_deterministic(faces):
    from sepfl import baselines

    knn = build_knn(faces.features, k=K, progress=False)
    oracle = evaluate(faces.labels, baselines.edges_oracle(knn[0], faces.labels, 6))
    assert oracle["pairwise_precision"] == 1.0 and oracle["pairwise_recall"] > 0.5
    first = baselines.infomap_knn(*knn, K, 0.4)
    np.testing.assert_array_equal(first, baselines.infomap_knn(*knn, K, 0.4))
    assert baselines.infomap_knn(*knn, K, 1.0).max() + 1 == len(faces.labels)  # no edge kept


def test_a_head_over_other_statistics_is_dropped_with_a_warning(trained, caplog):
    state = dict(trained.state_dict())
    state["edge_head.net.0.weight"] = torch.zeros(64, 9)  # an older head's nine statistics
    state["edge_head.mean"] = state["edge_head.std"] = torch.zeros(9)
    model = PairClassifier.from_state_dict(state)
    assert model.edge_head is None
    assert "reads 9 edge statistics" in caplog.text


def test_best_infomap_is_the_best_row_of_its_sweep(faces):
    from sepfl import baselines

    knn = build_knn(faces.features, k=K, progress=False)
    best = baselines.best_infomap(*knn, faces.labels)
    assert best["k"] == K  # the sweep's k values are capped at the table's
    scores = [evaluate(faces.labels, baselines.infomap_knn(*knn, K, floor))["pairwise_f"]
              for floor in baselines.INFOMAP_FLOORS]
    assert best["pairwise_f"] == max(scores)
    assert best["floor"] == baselines.INFOMAP_FLOORS[int(np.argmax(scores))]
