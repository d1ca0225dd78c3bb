"""The fast inference path: folded weights and their cache, the compute dtype, the progress bar.

Its agreement with the reference path for many D, k and missing neighbours is
``test_model.py::test_inference_path_matches_reference``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sepfl import device as device_module
from sepfl import model as model_module
from sepfl import ops
from sepfl.model import PairClassifier, fast_bf16

from samples import needs_amx, needs_avx512_bf16, randomise, reference_embeddings, toy_graph


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_probability(model, x, nbrs, src, dst):
    with torch.no_grad():
        logits = model(x[src], ops.gather(x, nbrs, src), x[dst], ops.gather(x, nbrs, dst))
    return torch.softmax(logits, dim=1)[:, 1]


def assert_matches_reference(model, x, nbrs):
    src = torch.arange(len(x))
    dst = nbrs[:, 1].clamp(min=0)
    e = model.node_embeddings(x, nbrs, batch_size=13, bf16=False)
    assert float((e - reference_embeddings(model, x, nbrs)).abs().max()) <= 1e-4
    prob = model.score_pairs(e, src, dst, bf16=False)
    assert float((prob - reference_probability(model, x, nbrs, src, dst)).abs().max()) <= 1e-4


@pytest.mark.parametrize("dim,k", [(24, 12), (9, 5)])
def test_folded_float32_path_equals_reference_with_batchnorm_statistics(dim, k):
    model = randomise(PairClassifier(dim, k), seed=11).eval()
    assert float(model.token_bn.running_var.min()) < 1 < float(model.token_bn.running_var.max())
    x, nbrs = toy_graph(90, dim, k, seed=4, missing=15)
    assert_matches_reference(model, x, nbrs)


def test_cache_is_reused_and_rebuilt_after_weights_change():
    model = randomise(PairClassifier(12, 6), seed=1).eval()
    x, nbrs = toy_graph(60, 12, 6, seed=1)
    folded = model._folded_weights(torch.float32)
    assert model._folded_weights(torch.float32) is folded
    before = model.node_embeddings(x, nbrs, bf16=False)
    assert model._folded_weights(torch.float32) is folded

    with torch.no_grad():  # an in-place change, as an optimiser step makes
        model.attention_layer[0].weight.mul_(1.5)
    assert model._folded_weights(torch.float32) is not folded
    after = model.node_embeddings(x, nbrs, bf16=False)
    assert float((after - before).abs().max()) > 1e-3
    assert_matches_reference(model, x, nbrs)

    model.load_state_dict(randomise(PairClassifier(12, 6), seed=2).state_dict())
    assert_matches_reference(model, x, nbrs)

    model.train()  # new BatchNorm running statistics
    a, b = torch.arange(30), torch.arange(30, 60)
    model(x[a], ops.gather(x, nbrs, a), x[b], ops.gather(x, nbrs, b))
    model.eval()
    assert_matches_reference(model, x, nbrs)


def test_cache_follows_the_compute_dtype():
    model = randomise(PairClassifier(8, 4), seed=3).eval()
    assert model._folded_weights(torch.bfloat16).mix.dtype == torch.bfloat16
    assert model._folded_weights(torch.float32).mix.dtype == torch.float32


def test_optimiser_steps_rebuild_the_cache():
    torch.manual_seed(0)
    model = PairClassifier(8, 4)
    x, nbrs = toy_graph(50, 8, 4, seed=5)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        model.train()
        a, b = torch.randint(0, 50, (32,)), torch.randint(0, 50, (32,))
        logits = model(x[a], ops.gather(x, nbrs, a), x[b], ops.gather(x, nbrs, b))
        nn.functional.cross_entropy(logits, (a % 2 == b % 2).long()).backward()
        optimiser.step()
        model.eval()
        assert_matches_reference(model, x, nbrs)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_none_picks_the_dtype_the_cpu_runs_fastest(monkeypatch, fast):
    monkeypatch.setattr(model_module, "_cpu_has_fast_bf16", lambda: fast)
    assert fast_bf16(torch.device("cpu")) is fast
    model = randomise(PairClassifier(8, 4), seed=4).eval()
    x, nbrs = toy_graph(40, 8, 4, seed=2)
    auto = model.node_embeddings(x, nbrs)
    assert torch.equal(auto, model.node_embeddings(x, nbrs, bf16=fast))
    src, dst = torch.arange(40), nbrs[:, 1]
    assert torch.equal(model.score_pairs(auto, src, dst),
                       model.score_pairs(auto, src, dst, bf16=fast))
    if fast:
        assert not torch.equal(auto, model.node_embeddings(x, nbrs, bf16=False))


@pytest.mark.parametrize("flags,capability,fast,amx", [
    ("fpu sse avx2 avx512f avx512_bf16", "AVX512", True, False),
    ("fpu avx2 avx512f amx_tile amx_bf16", "AVX512", True, True),
    ("fpu avx2 avx512f amx_bf16", "AVX2", False, False),  # torch kept to AVX2 kernels
    ("fpu sse avx avx2 fma", "AVX2", False, False),  # e.g. an AVX2-only AMD
])
def test_cpu_bf16_detection(monkeypatch, tmp_path, flags, capability, fast, amx):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {cpu}\nflags\t\t: {flags}\n\n" for cpu in (0, 1)))
    assert device_module.cpu_flags(str(cpuinfo)) == frozenset(flags.split())
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags.split()))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    onednn = torch.backends.mkldnn.is_available()
    assert model_module._cpu_has_fast_bf16() is (fast and onednn)
    assert device_module.cpu_has_amx() is (amx and onednn)


@needs_amx
@needs_avx512_bf16
def test_bf16_embeddings_take_the_native_steps(monkeypatch):
    model = randomise(PairClassifier(12, 7), seed=8).eval()
    x, nbrs = toy_graph(70, 12, 7, seed=8, missing=10)
    folded = model._folded_weights(torch.bfloat16)
    assert folded.token_tiles is not None and folded.mix_tiles is not None
    folded = model._folded_weights(torch.float32)
    assert folded.token_tiles is None and folded.mix_tiles is None
    native = model.node_embeddings(x, nbrs, batch_size=16, bf16=True)
    for name in ("amx_ready", "gather_gelu_ready"):
        monkeypatch.setattr(ops, name, lambda: False)
    model.__dict__.pop("_folded")
    folded = model._folded_weights(torch.bfloat16)
    assert folded.token_tiles is None and folded.mix_tiles is None
    torch_ops = model.node_embeddings(x, nbrs, batch_size=16, bf16=True)
    exact = model.node_embeddings(x, nbrs, bf16=False)
    scale = float(exact.abs().max())
    assert not torch.equal(native, torch_ops)
    # both bfloat16 paths within bfloat16 error of float32, the native steps no further
    assert float((native - exact).abs().max()) <= 0.05 * scale
    assert float((native - exact).abs().mean()) <= 1.5 * float((torch_ops - exact).abs().mean())


def test_unreadable_cpuinfo_means_float32(tmp_path):
    assert device_module.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_progress_bar_on_stderr(capsys):
    model = PairClassifier(8, 4).eval()
    x, nbrs = toy_graph(30, 8, 4, seed=0)
    model.node_embeddings(x, nbrs, batch_size=10, progress=True)
    assert "embeddings" in capsys.readouterr().err
    model.node_embeddings(x, nbrs)
    assert capsys.readouterr().err == ""
