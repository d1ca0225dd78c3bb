"""Small inputs shared by several test files."""
import numpy as np


def unit_rows(n, d, seed=0):
    """float32 [n, d] of random rows scaled to unit length, seeded."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
