"""Small inputs, random models and the network's reference path, shared by several
test files."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from sepfl import ops
from sepfl.model import PairClassifier


# the fused bfloat16 token mix (ops.token_mix_) runs on CPUs with AMX-BF16 only
needs_amx = pytest.mark.skipif(not ops.amx_ready(),
                               reason="the fused token mix runs on AMX-BF16 only")
# the bfloat16 gather with its GELU (ops.gather_gelu) runs on CPUs with AVX-512 BF16 only
needs_avx512_bf16 = pytest.mark.skipif(not ops.gather_gelu_ready(),
                                       reason="ops.gather_gelu runs on AVX-512 BF16 only")


def unit_rows(n, d, seed=0):
    """float32 [n, d] of random rows scaled to unit length, seeded."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-trivial BatchNorm affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 1 / math.sqrt(module.in_features), generator=gen)
                module.bias.normal_(0, 0.1, generator=gen)
            elif isinstance(module, nn.BatchNorm1d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0, 0.2, generator=gen)
                module.running_mean.normal_(0, 0.5, generator=gen)
                module.running_var.uniform_(0.3, 3.0, generator=gen)
    return model


def toy_graph(n: int, dim: int, k: int, seed: int, missing: int = 0):
    """Unit-norm features in a few clusters and their exact kNN table (self at rank 0)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 10), dim, generator=gen)
    x = centres[torch.randint(0, len(centres), (n,), generator=gen)]
    x = nn.functional.normalize(x + 0.3 * torch.randn(n, dim, generator=gen), dim=1)
    sims = x @ x.T
    sims.fill_diagonal_(2.0)
    nbrs = sims.topk(k, dim=1).indices
    if missing:
        rows = torch.randint(0, n, (missing,), generator=gen)
        nbrs[rows, torch.randint(1, k, (missing,), generator=gen) if k > 1 else 0] = -1
    return x, nbrs


def reference_embeddings(model: PairClassifier, x, nbrs) -> torch.Tensor:
    """The reference path: ``embed`` over every node's gathered neighbours, float32 [N, 2D]."""
    with torch.no_grad():
        return model.embed(x, ops.gather(x, nbrs, torch.arange(len(x))))
