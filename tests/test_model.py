"""PairClassifier: checkpoint layout, and the inference path against the per-pair reference."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sepfl import model as model_module
from sepfl import ops
from sepfl.device import free_memory
from sepfl.model import PairClassifier

from samples import randomise, reference_embeddings, toy_graph


pytestmark = pytest.mark.usefixtures("one_thread")


class AuthorsLayout(nn.Module):
    """The module tree of the authors' checkpoint for D and k, written out from SEPFL.md §4."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.channel_bn = nn.BatchNorm1d(2 * dim)
        self.token_bn = nn.BatchNorm1d(2 * dim)
        self.attention_bn = nn.BatchNorm1d(2 * dim)
        self.channel_mix = nn.Sequential(nn.Linear(2 * dim, 4 * dim), nn.GELU(), nn.Dropout(),
                                         nn.Linear(4 * dim, 2 * dim), nn.Dropout())
        self.token_mix = nn.Sequential(nn.Linear(k, 2 * k), nn.GELU(), nn.Dropout(),
                                       nn.Linear(2 * k, k), nn.Dropout())
        self.attention_layer = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(),
                                             nn.Linear(dim, 1))
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(4 * dim), nn.Linear(4 * dim, 2 * dim), nn.BatchNorm1d(2 * dim),
            nn.GELU(), nn.Dropout(), nn.Linear(2 * dim, dim), nn.BatchNorm1d(dim), nn.GELU(),
            nn.Dropout(), nn.Linear(dim, 2))


def test_authors_state_dict_loads_strictly():
    reference = randomise(AuthorsLayout(dim=12, k=6), seed=1)
    model = PairClassifier(dim=12, k=6)
    model.load_state_dict(reference.state_dict(), strict=True)
    loaded = PairClassifier.from_state_dict(reference.state_dict())
    assert (loaded.dim, loaded.k) == (12, 6)
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert set(model.state_dict()) == set(reference.state_dict())


def test_from_state_dict_rejects_other_layouts():
    with pytest.raises(ValueError, match="not a PairClassifier"):
        PairClassifier.from_state_dict({"weight": torch.zeros(2, 2)})


def test_initialisation():
    torch.manual_seed(0)
    model = PairClassifier(dim=32, k=10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 9
    for linear in linears:
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))
        assert torch.all(linear.bias == 0)
        assert linear.weight.abs().max() <= bound
        # Uniform on [-bound, bound] has standard deviation bound / sqrt(3).
        if linear.weight.numel() >= 1000:
            assert float(linear.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_layer_widths():
    model = PairClassifier(dim=8, k=5)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["channel_mix.0.weight"] == (32, 16)
    assert shapes["channel_mix.3.weight"] == (16, 32)
    assert shapes["token_mix.0.weight"] == (10, 5)
    assert shapes["token_mix.3.weight"] == (5, 10)
    assert shapes["attention_layer.0.weight"] == (8, 16)
    assert shapes["attention_layer.3.weight"] == (1, 8)
    assert [shapes[f"classifier.{i}.weight"] for i in (0, 1, 2, 5, 6, 9)] == \
        [(32,), (16, 32), (16,), (8, 16), (8,), (2, 8)]


def test_embed_is_structure_enhanced_feature():
    torch.manual_seed(0)
    model = PairClassifier(dim=6, k=4).eval()
    f, nbr_feats = torch.randn(3, 6), torch.randn(3, 4, 6)
    e = model.embed(f, nbr_feats)
    assert e.shape == (3, 12)
    assert torch.equal(e[:, :6], f)
    # The second half is a weighted sum of the neighbour features.
    assert torch.all(model.embed(f, torch.zeros(3, 4, 6))[:, 6:] == 0)


def test_forward_shapes_and_training_gradients():
    torch.manual_seed(0)
    model = PairClassifier(dim=8, k=5).train()
    fa, fb = torch.randn(4, 8), torch.randn(4, 8)
    na, nb = torch.randn(4, 5, 8), torch.randn(4, 5, 8)
    logits = model(fa, na, fb, nb)
    assert logits.shape == (4, 2)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_embed_checks_shapes():
    model = PairClassifier(dim=8, k=5)
    with pytest.raises(ValueError, match=r"\[B, 5, 8\]"):
        model.embed(torch.randn(4, 8), torch.randn(4, 6, 8))
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        model.embed(torch.randn(4, 7), torch.randn(4, 5, 7))


@pytest.mark.parametrize("dim,k,n,missing", [(16, 8, 300, 0), (16, 8, 300, 40), (5, 3, 50, 10),
                                             (7, 1, 20, 0), (32, 20, 120, 25)])
@pytest.mark.parametrize("factorised", [True, False])
def test_inference_path_matches_reference(dim, k, n, missing, factorised):
    model = randomise(PairClassifier(dim, k), seed=dim + k).eval()
    x, nbrs = toy_graph(n, dim, k, seed=n, missing=missing)
    want = reference_embeddings(model, x, nbrs)
    got = model.node_embeddings(x, nbrs, batch_size=37, bf16=False, factorised=factorised)
    assert got.dtype == torch.float32 and got.shape == (n, 2 * dim)
    assert float((got - want).abs().max()) <= 1e-4

    src = torch.arange(n)
    dst = torch.where(nbrs[:, -1] >= 0, nbrs[:, -1], 0)
    with torch.no_grad():
        logits = model(x[src], ops.gather(x, nbrs, src), x[dst], ops.gather(x, nbrs, dst))
    prob = model.score_pairs(got, src, dst, batch_size=29, bf16=False)
    assert float((prob - torch.softmax(logits, 1)[:, 1]).abs().max()) <= 1e-4


@pytest.mark.parametrize("free, factorised", [(1 << 40, True), (1 << 10, False), (None, True)])
def test_projection_table_only_where_it_fits(monkeypatch, caplog, free, factorised):
    """factorised=None keeps the [N, 4D] table unless it would take over half the free
    memory (or the free memory is unknown); the result is the same either way."""
    model = randomise(PairClassifier(16, 8), seed=5).eval()
    x, nbrs = toy_graph(300, 16, 8, seed=5, missing=10)
    built = []
    real = model_module._Tables

    def spy(*args):
        built.append(args[-1])
        return real(*args)

    monkeypatch.setattr(model_module, "free_memory", lambda device: free)
    monkeypatch.setattr(model_module, "_Tables", spy)
    with caplog.at_level("INFO", logger="sepfl"):
        got = model.node_embeddings(x, nbrs, batch_size=37, bf16=False)
    assert built == [factorised]
    assert ("projection table" in caplog.text) == (not factorised)
    want = reference_embeddings(model, x, nbrs)
    assert float((got - want).abs().max()) <= 1e-4


def test_free_memory_reads_memavailable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25000000 kB\nMemAvailable:   2048 kB\n")
    assert free_memory(torch.device("cpu"), str(meminfo)) == 2048 * 1024
    meminfo.write_text("MemTotal:       25000000 kB\n")
    assert free_memory(torch.device("cpu"), str(meminfo)) is None
    assert free_memory(torch.device("cpu"), str(tmp_path / "absent")) is None


def test_inference_after_training_steps():
    """Running statistics learned by train-mode forwards are the ones both paths use."""
    torch.manual_seed(3)
    model = PairClassifier(dim=16, k=6)
    x, nbrs = toy_graph(200, 16, 6, seed=3)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        a, b = torch.randint(0, 200, (64,)), torch.randint(0, 200, (64,))
        logits = model(x[a], ops.gather(x, nbrs, a), x[b], ops.gather(x, nbrs, b))
        loss = nn.functional.cross_entropy(logits, (a % 2 == b % 2).long())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(model.channel_bn.running_var.min()) != 1.0
    model.eval()
    want = reference_embeddings(model, x, nbrs)
    assert float((model.node_embeddings(x, nbrs, bf16=False) - want).abs().max()) <= 1e-4


def test_node_embeddings_accepts_numpy_and_is_batch_invariant():
    model = randomise(PairClassifier(8, 4), seed=0).eval()
    x, nbrs = toy_graph(60, 8, 4, seed=0)
    whole = model.node_embeddings(x.numpy(), nbrs.numpy(), batch_size=1000, bf16=False)
    assert isinstance(whole, torch.Tensor)
    assert torch.allclose(whole, model.node_embeddings(x, nbrs, batch_size=1, bf16=False),
                          atol=1e-6)


def test_bf16_is_close():
    model = randomise(PairClassifier(16, 8), seed=5).eval()
    x, nbrs = toy_graph(100, 16, 8, seed=5)
    exact = model.node_embeddings(x, nbrs, bf16=False)
    fast = model.node_embeddings(x, nbrs, bf16=True)
    assert fast.dtype == torch.float32
    scale = float(exact.abs().max())
    assert float((fast - exact).abs().max()) <= 0.05 * scale
    src, dst = torch.arange(100), nbrs[:, 1]
    assert float((model.score_pairs(fast, src, dst, bf16=True)
                  - model.score_pairs(exact, src, dst, bf16=False)).abs().max()) < 0.1


def test_empty_inputs():
    model = PairClassifier(4, 2).eval()
    e = model.node_embeddings(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.int64))
    assert e.shape == (0, 8)
    assert model.score_pairs(torch.zeros(3, 8), torch.zeros(0, dtype=torch.int64),
                             torch.zeros(0, dtype=torch.int64)).shape == (0,)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    model = randomise(PairClassifier(16, 8), seed=2).eval()
    x, nbrs = toy_graph(150, 16, 8, seed=2, missing=10)
    src, dst = torch.arange(150), nbrs[:, 1].clamp(min=0)
    want = model.node_embeddings(x, nbrs, bf16=False)
    want_prob = model.score_pairs(want, src, dst, bf16=False)
    model.to("cuda")
    got = model.node_embeddings(x.cuda(), nbrs.cuda(), bf16=False)
    assert got.device.type == "cuda"
    assert float((got.cpu() - want).abs().max()) <= 1e-4
    prob = model.score_pairs(got, src.cuda(), dst.cuda(), bf16=False)
    assert float((prob.cpu() - want_prob).abs().max()) <= 1e-4
    fast = model.node_embeddings(x.cuda(), nbrs.cuda(), bf16=True)
    assert fast.dtype == torch.float32
    assert float((fast.cpu() - want).abs().max()) <= 0.05 * float(want.abs().max())
