"""Training: schedule, sampling, determinism, checkpoints and resumption."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import sepfl
from sepfl import edges, ops
from sepfl import train as training
from sepfl.checkpoint import load_checkpoint, save_checkpoint
from sepfl.config import ClusterConfig, TrainConfig
from sepfl.features import fingerprint
from sepfl.knn import build_knn
from sepfl.model import PairClassifier
from sepfl.train import learning_rate, train


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_faces(n_ids=40, per_id=6, dim=16, noise=0.4, seed=0):
    """Gaussian identities on the sphere, noisy enough that some kNN pairs are negatives."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n_ids), per_id)
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


K, RANKS = 8, 7


def small_config(**overrides):
    # A short warm-up, 80 SGD steps at a higher rate than the paper's (enough for the loss to
    # fall on the toy set) and a short refit.
    settings = dict(epochs=4, pairs_per_epoch=640, batch_size=32, ranks=RANKS, optimizer="sgd",
                    lr=0.1, lr_milestones=(0.8,), warmup_steps=20, refit_steps=20,
                    classifier_batch_size=64, edge_steps=300,
                    device="cpu", bf16=False, progress=False)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def toy():
    return toy_faces()


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "model.pt"
    model = train(*toy, small_config(), k=K, checkpoint=path)
    return model, path


def test_learning_rate_schedule_of_the_paper():
    config = TrainConfig.paper()
    assert (config.epochs, config.pairs_per_epoch, config.batch_size) == (100, 2_000_000, 512)
    assert (config.lr, config.momentum, config.weight_decay) == (0.01, 0.9, 1e-4)
    assert (config.optimizer, config.warmup_steps, config.bf16) == ("sgd", 0, False)
    total = 100 * 10  # 10 steps per epoch
    rates = [learning_rate(config, epoch * 10, total) for epoch in (0, 39, 40, 59, 60, 79, 80, 99)]
    assert rates == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert learning_rate(config, 399, total) == 1e-2
    assert learning_rate(config, 400, total) == pytest.approx(1e-3)


def test_epoch_pairs_are_balanced(toy):
    x, labels = toy
    graph = training._training_graph(x, labels, K, RANKS, None, torch.device("cpu"), 0)
    config = small_config(pairs_per_epoch=60)
    first, second = (training._epoch_pairs(graph, config, epoch) for epoch in (0, 1))
    for chosen in (first, second):
        assert len(chosen) == 60 and len(np.unique(chosen)) == 60
        assert graph.target[chosen].sum() == 30
    assert set(first) != set(second)
    fixed = small_config(pairs_per_epoch=60, resample_pairs=False)
    a, b = (training._epoch_pairs(graph, fixed, epoch) for epoch in (0, 1))
    assert set(a) == set(b) and not np.array_equal(a, b)
    # Candidates are ranks 1..RANKS of every row, with the right targets.
    assert np.array_equal(graph.src, np.repeat(np.arange(len(x)), RANKS))
    assert np.array_equal(graph.dst, graph.nbrs[:, 1:RANKS + 1].numpy().ravel())
    assert np.array_equal(graph.target, (labels[graph.src] == labels[graph.dst]).astype(np.int64))


def test_shared_node_logits_match_per_pair_forward(toy):
    torch.manual_seed(0)
    x, labels = toy
    graph = training._training_graph(x, labels, K, RANKS, None, torch.device("cpu"), 0)
    model = PairClassifier(16, K).eval()
    src = torch.from_numpy(graph.src[:50])
    dst = torch.from_numpy(graph.dst[:50])
    with torch.no_grad():
        shared = training._pair_logits(model, graph, src, dst)
        per_pair = model(graph.features[src], ops.gather(graph.features, graph.nbrs, src),
                         graph.features[dst], ops.gather(graph.features, graph.nbrs, dst))
    assert float((shared - per_pair).abs().max()) <= 1e-5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mean_attention_embeds_the_neighbour_mean(toy, mode):
    torch.manual_seed(0)
    x, labels = toy
    graph = training._training_graph(x, labels, K, RANKS, None, torch.device("cpu"), 0)
    model = PairClassifier(16, K).init_mean_attention()
    getattr(model, mode)()
    ids = torch.arange(len(x))
    with torch.no_grad():
        e = model.embed(graph.features, ops.gather(graph.features, graph.nbrs, ids))
    expected = training._initial_embeddings(graph, batch_size=37)
    assert float((e - expected).abs().max()) <= 1e-6
    mean = graph.features[graph.nbrs].mean(dim=1)
    assert float((expected[:, 16:] - mean).abs().max()) <= 1e-6


def test_thinned_graph_is_the_knn_of_the_kept_samples(toy):
    graph = training._training_graph(*toy, K, RANKS, None, torch.device("cpu"), seed=0)
    inside = np.arange(len(toy[1])) % 3 != 0
    thinned = training._thinned_graph(graph, inside, 0.5, seed=3)
    kept = np.flatnonzero(inside & (np.random.default_rng(3).random(inside.size) < 0.5))
    assert 2 * K <= kept.size < inside.sum()
    np.testing.assert_array_equal(thinned.labels, toy[1][kept])
    np.testing.assert_array_equal(thinned.nbrs[:, 0].numpy(), np.arange(kept.size))
    expected, _ = build_knn(toy[0][kept], K)
    np.testing.assert_array_equal(thinned.nbrs.numpy(), expected)
    assert training._thinned_graph(graph, inside, 2 * K / len(toy[1]) / 4, seed=3) is None


def test_edge_head_learns_from_the_thinned_views(toy):
    graph = training._training_graph(*toy, K, RANKS, None, torch.device("cpu"), seed=0)
    model = PairClassifier(toy[0].shape[1], K).eval()
    e = model.embed_graph(graph.features, graph.nbrs, bf16=False)
    inside = np.ones(len(toy[1]), bool)
    full, full_target = training._head_views(model, graph, inside, e, K - 1,
                                             small_config(edge_thinning=()))
    views, target = training._head_views(model, graph, inside, e, K - 1,
                                         small_config(edge_thinning=(0.5,)))
    # the whole graph's edges first (the same draw), then the thinned graph's
    torch.testing.assert_close(views[:len(full)], full)
    np.testing.assert_array_equal(target[:len(full)], full_target)
    assert len(views) > len(full) and target[len(full):].any()


def test_calibration_groups_the_whole_graph_and_each_thinned_copy(toy):
    graph = training._training_graph(*toy, K, RANKS, None, torch.device("cpu"), seed=0)
    model = PairClassifier(toy[0].shape[1], K).eval()
    model.edge_head = edges.EdgeHead().eval()
    e = model.embed_graph(graph.features, graph.nbrs, bf16=False)
    held_out = np.isin(toy[1], [0, 5, 9])
    config = small_config(edge_thinning=(0.5,), candidates=K - 1)
    views = training._calibration_views(model, graph, held_out, e, config,
                                        ClusterConfig(k=K, candidates=K - 1, device="cpu"))
    assert len(views) == 2
    (src, dst, _, cosine, labels, anchors), thinned = views
    np.testing.assert_array_equal(labels, toy[1])
    np.testing.assert_array_equal(anchors, held_out)
    # each edge's cosine is its similarity in the kNN lists, i.e. the features' dot product
    np.testing.assert_allclose(cosine, (toy[0][src] * toy[0][dst]).sum(1), atol=1e-5)
    # the thinned copy: the head's draw over every sample, held-out identities anchored
    kept = np.random.default_rng(training._seed(config.seed, 8, 1)).random(len(toy[1])) < 0.5
    np.testing.assert_array_equal(thinned[4], toy[1][kept])
    np.testing.assert_array_equal(thinned[5], np.isin(toy[1][kept], [0, 5, 9]))
    assert thinned[0].max() < kept.sum()


@pytest.mark.parametrize("joining", [(0.0, edges.JOIN_ABOVE)] + [
    (join, above) for join in training.CALIBRATION_JOINS[1:]
    for above in training.CALIBRATION_JOIN_ABOVE])
def test_calibration_stores_per_graph_the_grouping_that_groups_its_held_out_identities_best(
        toy, monkeypatch, joining):
    # stand-ins right only with one joining of Infomap's modules at one Markov time on the
    # whole graph, and with another on its thinned copy (every other grouping leaves each
    # sample alone), so the head must store exactly those, one per graph
    pytest.importorskip("infomap")
    graph = training._training_graph(*toy, K, RANKS, None, torch.device("cpu"), seed=0)
    model = PairClassifier(toy[0].shape[1], K).eval()
    model.edge_head = edges.EdgeHead().eval()
    e = model.embed_graph(graph.features, graph.nbrs, bf16=False)
    config = small_config(edge_thinning=(0.5,), candidates=K - 1)
    held_out = np.isin(toy[1], [0, 5, 9])
    views = training._calibration_views(model, graph, held_out, e, config,
                                        ClusterConfig(k=K, candidates=K - 1, device="cpu"))
    wanted = {views[0][4].size: (*joining, 2.0), views[1][4].size: (0.0, edges.JOIN_ABOVE, 4.0)}
    right = {view[4].size: view[4].copy() for view in views}

    def infomap_modules(src, dst, scores, num_nodes, markov_time=1.0, **unused):
        if wanted[num_nodes][::2] == (0.0, markov_time):
            return right[num_nodes]
        return np.arange(num_nodes) + int(markov_time * 10) * num_nodes  # Markov time in [0]

    def join_modules(modules, src, dst, scores, count, join_above):
        if wanted[modules.size] == (count, join_above, modules[0] / modules.size / 10):
            return right[modules.size]
        return np.arange(modules.size)

    monkeypatch.setattr(training.edges, "group_edges",
                        lambda src, dst, scores, num_nodes, *args, **kw: np.arange(num_nodes))
    monkeypatch.setattr(training.edges, "infomap_modules", infomap_modules)
    monkeypatch.setattr(training.edges, "join_modules", join_modules)
    record = training._calibrate(model, graph, held_out, e, config)
    shares = [float(np.mean(view[2])) for view in views]
    head = model.edge_head
    want = np.array(list(wanted.values()))
    np.testing.assert_allclose(torch.stack([head.join, head.join_above, head.markov_time], 1),
                               want, rtol=1e-6)
    np.testing.assert_allclose(head.same_share, shares, rtol=1e-6)
    assert head.components.tolist() == [0, 0]
    assert [r["grouping"] for r in record["calibration"]] == ["infomap", "infomap"]
    np.testing.assert_allclose([[r[name] for name in ("join", "join_above", "markov_time",
                                                      "same_share")]
                                for r in record["calibration"]],
                               np.column_stack([want, shares]), rtol=1e-6)
    # a graph to cluster is grouped as the calibration graph of the nearest mean P
    for share, choice in zip(shares, want):
        calibrated = head.calibrated(share)
        np.testing.assert_allclose([calibrated.join, calibrated.join_above,
                                    calibrated.markov_time], choice, rtol=1e-6)


@pytest.mark.parametrize("thinned_f, grouping", [(0.1, "infomap"), (0.5, "components")])
def test_calibration_picks_components_for_every_graph_only_where_they_win_on_average(
        toy, monkeypatch, thinned_f, grouping):
    # components above 0.9 score 0.9 on the whole graph and thinned_f on its thinned copy;
    # Infomap (unjoined) 0.6 on both: components win the whole graph either way, but only
    # with 0.5 on average, and then on both graphs
    pytest.importorskip("infomap")
    graph = training._training_graph(*toy, K, RANKS, None, torch.device("cpu"), seed=0)
    model = PairClassifier(toy[0].shape[1], K).eval()
    model.edge_head = edges.EdgeHead().eval()
    e = model.embed_graph(graph.features, graph.nbrs, bf16=False)
    whole = len(toy[1])
    score = {(whole, 900): 0.9, (whole, -1): 0.6, ("thinned", 900): thinned_f,
             ("thinned", -1): 0.6}
    monkeypatch.setattr(training.edges, "group_edges",
                        lambda src, dst, scores, n, how, threshold: np.full(n, threshold * 1000))
    monkeypatch.setattr(training.edges, "infomap_modules", lambda src, dst, scores, n, **kw:
                        np.full(n, -1))
    monkeypatch.setattr(training.edges, "join_modules", lambda modules, *args: modules - 1)
    monkeypatch.setattr(training, "_held_out_f", lambda view, found: score.get(
        (whole if view[4].size == whole else "thinned", int(round(found[0]))), 0.0))
    training._calibrate(model, graph, np.isin(toy[1], [0, 5, 9]), e,
                        small_config(edge_thinning=(0.5,), candidates=K - 1))
    head = model.edge_head
    assert head.components.tolist() == [int(grouping == "components")] * 2
    assert head.threshold.tolist() == pytest.approx([0.9, 0.9])
    assert head.join.tolist() == [0.0, 0.0]


def test_warm_up_trains_only_the_classifier(toy):
    torch.manual_seed(0)
    x, labels = toy
    graph = training._training_graph(x, labels, K, RANKS, None, torch.device("cpu"), 0)
    model = PairClassifier(16, K)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    record = training._warm_up(model, graph, small_config(warmup_steps=200))
    for name, value in model.state_dict().items():
        changed = not torch.equal(before[name], value)
        expected = name.startswith(("classifier.", "attention_layer.3."))
        assert changed == expected or name.endswith("num_batches_tracked"), name
    assert record["epoch"] == 0
    e = training._initial_embeddings(graph)
    with torch.no_grad():
        same = model.eval().classify(e[graph.src], e[graph.dst]).argmax(1).numpy() == 1
    positive = graph.target == 1
    balanced_accuracy = (same[positive].mean() + (~same[~positive]).mean()) / 2
    assert balanced_accuracy > 0.75  # chance is 0.5


def test_training_learns_and_writes_a_checkpoint(toy, trained):
    x, _ = toy
    model, path = trained
    assert not model.training
    checkpoint = load_checkpoint(path, dim=16, k=K)
    assert checkpoint["epoch"] == 6
    assert checkpoint["sepfl_version"] == sepfl.__version__
    assert (checkpoint["dim"], checkpoint["k"]) == (16, K)
    assert checkpoint["fingerprint"] == fingerprint(x)
    assert checkpoint["config"] == small_config()
    history = checkpoint["history"]
    # 0 and 5: the classifier alone; 6: the edge head
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4, 5, 6]
    assert [h["lr"] for h in history[1:5]] == pytest.approx([0.1, 0.1, 0.1, 0.01])
    assert history[4]["loss"] < history[1]["loss"] - 0.05
    # balanced pairs: chance is 0.5
    assert history[4]["accuracy"] > 0.58 and history[5]["accuracy"] > 0.58
    for name, value in model.state_dict().items():
        assert torch.equal(checkpoint["model"].state_dict()[name], value), name


@pytest.mark.slow
def test_training_is_deterministic(toy, trained, tmp_path):
    again = train(*toy, small_config(), k=K)
    for name, value in trained[0].state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    other = train(*toy, small_config(seed=1), k=K)
    assert not torch.equal(other.channel_mix[0].weight, again.channel_mix[0].weight)


@pytest.mark.parametrize("crash_in", ["epoch 2", "refit"])
def test_resume_is_bit_identical(toy, trained, tmp_path, monkeypatch, crash_in):
    path = tmp_path / "interrupted.pt"
    real_epoch, real_refit = training._train_epoch, training._refit

    def crash_in_second_epoch(model, optimizer, graph, config, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(model, optimizer, graph, config, epoch, *args)

    def crash(*args):
        raise KeyboardInterrupt

    if crash_in == "refit":
        monkeypatch.setattr(training, "_refit", crash)
    else:
        monkeypatch.setattr(training, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(*toy, small_config(), k=K, checkpoint=path)
    assert load_checkpoint(path)["epoch"] == (4 if crash_in == "refit" else 1)
    monkeypatch.setattr(training, "_train_epoch", real_epoch)
    monkeypatch.setattr(training, "_refit", real_refit)
    resumed = train(*toy, small_config(progress=True), k=K, checkpoint=path)
    for name, value in trained[0].state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert [h["epoch"] for h in load_checkpoint(path)["history"]] == [0, 1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_data_or_settings(toy, trained):
    x, labels = toy
    _, path = trained
    with pytest.raises(ValueError, match="other data"):
        train(x[::-1].copy(), labels[::-1].copy(), small_config(), k=K, checkpoint=path)
    with pytest.raises(ValueError, match="lr"):
        train(x, labels, small_config(lr=0.5), k=K, checkpoint=path)


def test_finished_checkpoint_returns_without_training(toy, trained, monkeypatch):
    monkeypatch.setattr(training, "_train_epoch", None)
    model = train(*toy, small_config(), k=K, checkpoint=trained[1])
    assert torch.equal(model.classifier[9].weight, trained[0].classifier[9].weight)


def test_validation_history(toy, tmp_path):
    x, labels = toy
    val_x, val_labels = toy_faces(n_ids=10, seed=1)
    path = tmp_path / "v.pt"
    train(x, labels, small_config(epochs=2), k=K, validation=(val_x, val_labels + 100),
          checkpoint=path)
    history = load_checkpoint(path)["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    for record in history:
        assert 0 < record["pairwise_f"] <= 1 and 0 < record["bcubed_f"] <= 1
        assert set(record) >= {"pairwise_precision", "bcubed_recall", "nmi", "pairs_per_s"}


def test_checkpoint_round_trip_and_extras(tmp_path):
    model = PairClassifier(8, 4)
    save_checkpoint(tmp_path / "m.pt", model, small_config(), extra={"cluster_config": {"k": 4}})
    loaded = load_checkpoint(tmp_path / "m.pt", dim=8, k=4)
    assert loaded["cluster_config"] == {"k": 4}
    assert loaded["config"] == small_config()
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]  # no temporary file left behind


def test_load_bare_state_dict(tmp_path):
    model = PairClassifier(8, 4)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    loaded = load_checkpoint(tmp_path / "bare.pt")
    assert loaded["config"] is None and (loaded["dim"], loaded["k"]) == (8, 4)


def test_config_is_a_plain_dataclass():
    stored = dataclasses.asdict(TrainConfig())
    assert TrainConfig(**stored) == TrainConfig()
