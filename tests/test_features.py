import numpy as np
import pytest
import torch

from samples import unit_rows
from sepfl.features import fingerprint, l2_normalize, normalize_features


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_sensitive():
    x = unit_rows(50, 8)
    stamp = fingerprint(x)
    assert stamp.startswith("50x8:") and len(stamp.split(":")[1]) == 32
    assert fingerprint(x.copy()) == stamp
    assert fingerprint(torch.from_numpy(x)) == stamp
    assert fingerprint(x.astype(np.float64)) == stamp
    changed = x.copy()
    changed[7, 3] += 1e-3
    assert fingerprint(changed) != stamp
    assert fingerprint(x[:49]) != stamp
    assert fingerprint(x.reshape(100, 4)) != fingerprint(x)


def test_fingerprint_samples_rows_of_large_inputs():
    x = np.zeros((5000, 4), np.float32)
    stamp = fingerprint(x)
    x[4999] = 1.0  # the last row is always sampled
    assert fingerprint(x) != stamp


# --------------------------------------------------------------------------- normalisation


def test_l2_normalize_hand_case():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, -2.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-7)


def test_l2_normalize_torch_stays_torch():
    out = l2_normalize(torch.tensor([[0.0, 5.0]]))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("bad, match", [
    ([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]], r"rows \[1, 3\] \(2 in all\) are all zero"),
    ([[1.0, 0.0], [np.nan, 1.0]], r"rows \[1\] \(1 in all\) hold NaN or inf"),
    ([[np.inf, 0.0], [1.0, 1.0]], r"rows \[0\] \(1 in all\) hold NaN or inf"),
])
def test_l2_normalize_refuses_rows(bad, match):
    with pytest.raises(ValueError, match=match):
        l2_normalize(np.array(bad, dtype=np.float32))


def test_l2_normalize_huge_finite_rows():
    out = l2_normalize(np.array([[3e30, 4e30]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8]], rtol=1e-6)


def test_normalize_features_leaves_unit_rows_alone(recwarn):
    x = unit_rows(20, 5)
    out = normalize_features(x)
    assert out is x
    assert len(recwarn) == 0


def test_normalize_features_warns_and_normalises():
    x = unit_rows(4, 3)
    x[2] *= 7.0
    with pytest.warns(UserWarning, match="1 of 4 features rows were not unit length"):
        out = normalize_features(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[2], x[2] / 7.0, rtol=1e-6)


def test_normalize_features_quiet_and_nan(recwarn):
    normalize_features(np.array([[2.0, 0.0]]), warn=False)
    assert len(recwarn) == 0
    with pytest.raises(ValueError, match="NaN or inf"):
        normalize_features(np.array([[1.0, 0.0], [np.nan, 0.0]]))
