"""Incremental clustering (sepfl.incremental, SEPFL.add, sepfl cluster --state)."""
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from sepfl import SEPFL
from sepfl.cli import STATE_FILE, main
from sepfl.edges import candidate_edges
from sepfl.incremental import extend_knn, stable_labels
from sepfl.knn import build_knn
from sepfl.model import PairClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


# ~2,000 face-like samples of 30 identities (D = 256, the bundled model's)
MAKE_FACES = dict(n_ids=30, seed=3)


def pretrained(**params):
    return SEPFL.pretrained(device="cpu", progress=False, threads=1, **params)


def never_split(before, after):
    """Old samples sharing a label before still share one."""
    pairs = np.unique(np.stack([before, after[:len(before)]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1]


# ------------------------------------------------------------------ the pieces


def test_node_embeddings_of_some_nodes_are_the_full_rows(faces):
    model = pretrained().model_.eval()
    x = torch.from_numpy(faces.features[:600])
    nbrs, _ = build_knn(x, 80)
    nodes = torch.tensor([5, 0, 599, 42, 300])
    full = model.node_embeddings(x, nbrs, bf16=False)
    got = model.node_embeddings(x, nbrs, bf16=False, nodes=nodes)
    # equal up to float rounding: a node may sit in a tile of another size
    assert float((got - full[nodes]).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="repeat"):
        model.node_embeddings(x, nbrs, nodes=[1, 1])
    with pytest.raises(IndexError, match="nodes"):
        model.node_embeddings(x, nbrs, nodes=[600])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("n_old, n_new, k", [(60, 40, 10), (30, 1, 5), (20, 70, 8),
                                             (900, 300, 30)])
def test_extend_knn_is_the_brute_force_graph_of_all(n_old, n_new, k, precision):
    x = torch.nn.functional.normalize(torch.randn(n_old + n_new, 16,
                                                  generator=torch.Generator().manual_seed(0)))
    nbrs, sims = build_knn(x[:n_old], k, backend="torch", precision="fp32")
    got_nbrs, got_sims, entered = extend_knn(x[:n_old], nbrs, sims, x[n_old:], precision)
    want_nbrs, want_sims = build_knn(x, k, backend="torch", precision="fp32")
    assert torch.allclose(got_sims, want_sims, atol=1e-6)
    assert torch.equal(got_nbrs[:, 0], torch.arange(n_old + n_new))
    assert torch.equal(got_nbrs.sort(1).values, want_nbrs.sort(1).values)
    # entered: the new samples in each old list; k - 1 for a new row
    assert torch.equal(entered[:n_old], (got_nbrs[:n_old] >= n_old).sum(1))
    assert (entered[n_old:] == k - 1).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_extend_knn_finds_entries_just_above_a_floor(precision):
    """New samples a hair closer to an old row than its list's last entry enter it, though
    a bfloat16 product (off by up to 2^-8) puts many of them below that floor."""
    x = torch.nn.functional.normalize(torch.randn(300, 16,
                                                  generator=torch.Generator().manual_seed(1)))
    k = 12
    nbrs, sims = build_knn(x, k, backend="torch", precision="fp32")
    rows = torch.arange(60)
    new = torch.nn.functional.normalize(x[nbrs[rows, k - 1]] + 2e-4 * x[rows])
    assert ((new * x[rows]).sum(1) > sims[rows, k - 1]).all()
    got_nbrs, _, _ = extend_knn(x, nbrs, sims, new, precision)
    want_nbrs, _ = build_knn(torch.cat([x, new]), k, backend="torch", precision="fp32")
    assert torch.equal(got_nbrs.sort(1).values, want_nbrs.sort(1).values)
    assert ((got_nbrs[rows] >= 300).sum(1) >= 1).all()


@pytest.mark.parametrize("old, groups, labels, merged", [
    # nothing new: labels kept as they were
    ([0, 0, 1], [7, 7, 3], [0, 0, 1], {}),
    # old cluster 0 split by the grouping: kept whole, follows its majority group (9)
    ([0, 0, 0, 1], [9, 9, 4, 4], [0, 0, 0, 1], {}),
    # two old clusters in one group merge into the smaller id; the new sample joins
    ([3, 5, 5], [1, 1, 1, 1], [3, 3, 3, 3], {5: 3}),
    # new samples: an old cluster's group, then two new groups numbered by first member
    ([0, 0, 2], [0, 0, 1, 5, 0, 6, 5], [0, 0, 2, 3, 0, 4, 3], {}),
    # a tie follows the smaller group number; new samples of the other group get a new id
    ([0, 0], [2, 1, 2], [0, 0, 1], {}),
])
def test_stable_labels(old, groups, labels, merged):
    got, got_merged = stable_labels(np.array(old), np.array(groups))
    assert got.tolist() == labels and got_merged == merged


# ------------------------------------------------------------------ SEPFL.add


def test_add_needs_a_clustering_and_the_same_width(faces):
    est = pretrained()
    with pytest.raises(ValueError, match="call predict"):
        est.add(faces.features[:10])
    est.predict(faces.features[:300])
    with pytest.raises(ValueError, match="D = 128"):
        est.add(faces.features[:10, :128])
    with pytest.raises(ValueError, match="scheme='edges'"):
        est.set_params(scheme="sepfl").add(faces.features[300:310])


@pytest.mark.parametrize("scheme, added, refresh, some_kept", [
    ("edges", 300, 0.25, True),   # 25 % more samples change every list, not all by 20 entries
    ("edges", 10, 0.0, True),     # a few: most lists and edges untouched
    ("sepfl", 300, 0.25, True),
])
def test_add_reembeds_and_rescores_only_the_affected_samples(faces, monkeypatch, scheme, added,
                                                             refresh, some_kept):
    """Which samples an add touches, checked against the kNN lists before and after:

    * re-embedded: the new samples, and old ones into whose list at least
      max(1, refresh * (k - 1)) entries entered since their last embedding (20 of
      79 for refresh = 0.25); every other embedding is kept bit for bit;
    * re-scored: the pairs (candidate edges or SEPFL's pairs) that are new or have
      a re-embedded end. Every other pair keeps its stored score.
    """
    est = pretrained(scheme=scheme, refresh=refresh)
    x = faces.features
    est.predict(x[:1200])
    before = est.state_
    calls = []
    embed = PairClassifier.node_embeddings

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("nodes"))
        return embed(self, *args, **kwargs)

    monkeypatch.setattr(PairClassifier, "node_embeddings", spy)
    labels = est.add(x[1200:1200 + added])
    after, result = est.state_, est.result_
    n, total = 1200, 1200 + added
    drifted = max(1, int(np.ceil(refresh * 79)))
    assert labels.shape == (total,) and never_split(before.labels, labels)
    # oracle: new entries per old list, from the lists themselves
    entered = np.array([len(set(after.nbrs[i]) - set(before.nbrs[i])) for i in range(n)])
    stale = np.concatenate([np.flatnonzero(entered >= drifted), np.arange(n, total)])
    assert len(calls) == 1 and np.array_equal(np.sort(calls[0].numpy()), stale)
    assert np.array_equal(np.sort(result.reembedded), stale)
    assert 0 < (entered >= drifted).sum() < n  # the test exercises both sides
    kept = np.setdiff1d(np.arange(n), stale)
    assert np.array_equal(after.embeddings[kept], before.embeddings[kept])
    assert np.array_equal(after.drift[kept], entered[kept]) and (after.drift[stale] == 0).all()

    changed = np.concatenate([np.flatnonzero(entered > 0), np.arange(n, total)])
    assert np.array_equal(result.changed, changed)
    touched = np.zeros(total, bool)
    touched[stale] = True
    old_pairs = {(a, b): s for a, b, s in zip(before.src, before.dst, before.scores)}
    fresh = np.array([touched[a] or touched[b] or (a, b) not in old_pairs
                      for a, b in zip(after.src, after.dst)])
    assert np.array_equal(result.rescored, np.flatnonzero(fresh))
    assert fresh.any() and (~fresh).any() == some_kept
    keep = np.flatnonzero(~fresh)
    assert all(after.scores[i] == old_pairs[(after.src[i], after.dst[i])] for i in keep)
    assert np.isfinite(after.scores).all()
    if scheme == "edges":
        src, dst, _ = candidate_edges(torch.from_numpy(after.nbrs), 40)
        assert np.array_equal(after.src, src.numpy()) and np.array_equal(after.dst, dst.numpy())


def test_batches_never_split_old_clusters_and_report_merges(faces):
    x = faces.features
    est = pretrained()
    previous = est.predict(x[:500])
    for start in range(500, len(x), 500):
        labels = est.add(x[start:start + 500])
        assert len(labels) == min(start + 500, len(x)) and never_split(previous, labels)
        merged = est.result_.merged
        for old, now in zip(previous, labels):
            assert now == merged.get(old, old)
        assert all(b < a for a, b in merged.items())
        previous = labels


def test_adding_no_samples_keeps_the_labels(faces):
    est = pretrained()
    before = est.predict(faces.features[:300])
    np.testing.assert_array_equal(est.add(faces.features[:0]), before)
    assert est.result_.merged == {}


@pytest.mark.parametrize("scheme", ["edges", "sepfl"])
def test_merges_follow_the_pairs_above_the_merge_threshold(faces, scheme):
    """At a merge threshold no pair reaches, nothing merges and every new sample starts its
    own cluster; else the labels follow the regrouping above the merge threshold."""
    x = faces.features
    lone = pretrained(scheme=scheme, merge_threshold=1.0)
    before = lone.predict(x[:900])
    labels = lone.add(x[900:])
    assert lone.result_.merged == {}
    np.testing.assert_array_equal(labels[:900], before)
    assert len(np.unique(labels[900:])) == len(x) - 900 and labels[900:].min() > before.max()
    for merge_threshold in (0.0, 0.9):
        est = pretrained(scheme=scheme, merge_threshold=merge_threshold)
        before = est.predict(x[:900])
        labels = est.add(x[900:])
        np.testing.assert_array_equal(labels, stable_labels(before, est.result_.groups)[0])
        assert est.result_.grouping.threshold == max(0.5, merge_threshold)


@pytest.mark.slow
def test_refresh_zero_regroups_like_a_one_shot_run(faces):
    """Re-embedding every changed list and merging as one shot does, the regrouping is the
    one-shot clustering's."""
    x = faces.features
    one_shot = pretrained(scheme="sepfl").predict(x)
    est = pretrained(scheme="sepfl", refresh=0.0, merge_threshold=0.0)
    est.predict(x[:900])
    est.add(x[900:])
    assert np.array_equal(est.result_.groups, one_shot)


def test_saved_state_continues_like_the_one_in_memory(faces, tmp_path):
    x = faces.features
    est = pretrained()
    est.predict(x[:800])
    est.save(tmp_path / "state.pt")
    loaded = SEPFL.load(tmp_path / "state.pt", progress=False, threads=1)
    assert np.array_equal(loaded.labels_, est.labels_)
    assert np.array_equal(loaded.add(x[800:1100]), est.add(x[800:1100]))


# ------------------------------------------------------------------ sepfl cluster --state


def first_state_call(faces, tmp_path):
    """Features a.npy (700 rows, clustered into the state folder) and b.npy (300 more);
    returns the state folder and the common flags."""
    np.save(tmp_path / "a.npy", faces.features[:700])
    np.save(tmp_path / "b.npy", faces.features[700:1000])
    state = tmp_path / "state"
    flags = ["--state", str(state), "--threads", "1", "--no-progress", "-q"]
    assert main(["cluster", str(tmp_path / "a.npy"), "--out", str(tmp_path / "a_pred.npy"),
                 *flags]) == 0
    return state, flags


def test_cli_state_is_created_then_extended(faces, tmp_path):
    state, flags = first_state_call(faces, tmp_path)
    assert main(["cluster", str(tmp_path / "b.npy"), "--out", str(tmp_path / "b_pred.npy"),
                 *flags]) == 0
    first, second = np.load(tmp_path / "a_pred.npy"), np.load(tmp_path / "b_pred.npy")
    assert len(second) == 1000 and never_split(first, second)
    assert np.array_equal(SEPFL.load(state / STATE_FILE).labels_, second)
    assert main(["cluster", str(tmp_path / "b.npy"), "--out", str(tmp_path / "c.npy"),
                 "--knn", str(tmp_path / "x.npz"), *flags]) == 2


def test_cli_killed_while_writing_the_state_keeps_the_previous_one(faces, tmp_path):
    state, flags = first_state_call(faces, tmp_path)
    code = f"""
import os, signal, torch
from sepfl.cli import main
def dying_save(obj, f, *a, **kw):
    with open(f, "wb") as handle:
        handle.write(b"half a state")
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
main(["cluster", {str(tmp_path / "b.npy")!r}, "--out", {str(tmp_path / "b.pred.npy")!r},
      *{flags!r}])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == -signal.SIGKILL, run.stderr
    loaded = SEPFL.load(state / STATE_FILE)
    assert np.array_equal(loaded.labels_, np.load(tmp_path / "a_pred.npy"))
    assert loaded.state_.features.shape[0] == 700
