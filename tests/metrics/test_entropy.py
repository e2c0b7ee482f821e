import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from scipy.stats import multivariate_normal

from labelfree.metrics import entropy, gaussian_entropy, histogram_entropy, knn_entropy, to_space

LN2 = math.log(2)


def _gaussian_sample(d, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    x = rng.multivariate_normal(np.zeros(d), cov, size=n)
    exact_bits = multivariate_normal(np.zeros(d), cov).entropy() / LN2  # scipy: nats
    return x, exact_bits


@pytest.mark.parametrize(("d", "tol_bits"), [(1, 0.05), (3, 0.1), (8, 0.3)])
def test_knn_entropy_of_gaussian_matches_closed_form(d, tol_bits):
    # Kozachenko-Leonenko with k=3, N=4000: bias + noise below ~0.04 bits per dimension here.
    x, exact = _gaussian_sample(d, 4000, seed=d)
    assert knn_entropy(x, k=3) == pytest.approx(exact, abs=tol_bits)


@pytest.mark.parametrize("d", [1, 3, 8, 32])
def test_gaussian_entropy_matches_closed_form(d):
    # 0.5 log det of the sample covariance: standard error ~ sqrt(d / (2N)) nats and bias
    # ~ -d^2 / (4N) nats; allow 3 standard errors plus the bias.
    n = 20000
    x, exact = _gaussian_sample(d, n, seed=d)
    tol_bits = (3 * math.sqrt(d / (2 * n)) + d * d / (4 * n)) / LN2
    assert gaussian_entropy(x) == pytest.approx(exact, abs=tol_bits)


def test_knn_and_gaussian_entropy_shift_with_scale():
    x, _ = _gaussian_sample(3, 2000, seed=0)
    # H(cX) = H(X) + d log2 c for differential entropies
    assert knn_entropy(4 * x) - knn_entropy(x) == pytest.approx(3 * 2.0, abs=1e-6)
    assert gaussian_entropy(4 * x) - gaussian_entropy(x) == pytest.approx(3 * 2.0, abs=1e-9)


def _principal_axes(z):
    """numpy reference of the PCA step: centred points in the eigenbasis of the covariance."""
    zc = z - z.mean(0)
    _, vecs = np.linalg.eigh(np.cov(zc, rowvar=False))
    return zc @ vecs[:, ::-1]


def test_histogram_entropy_matches_numpy_histogram2d():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5000, 2)) @ np.array([[2.0, 0.3], [0.0, 0.5]])
    p = _principal_axes(z)  # 2-D input is rotated to its principal axes too
    counts, _, _ = np.histogram2d(p[:, 0], p[:, 1], bins=20)
    expected = scipy_entropy(counts.ravel(), base=2)
    assert histogram_entropy(z, bins=20) == pytest.approx(expected, abs=1e-9)


def _rotation(d, seed):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


@pytest.mark.parametrize("bins", [16, 48])
def test_histogram_entropy_is_rotation_invariant(bins):
    # An elongated 2-D cloud given as is, rotated, with an extra zero column, and rotated in
    # 3-D: the same points, so the same entropy. (2-D input used to skip the PCA, so the
    # axis-aligned grid saw its raw orientation: 8.58 and 8.80 bits for these points as given
    # and rotated, 9.25 with a zero column, at 48 bins.)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(10000, 2)) * [3.0, 1.0] @ _rotation(2, 1)
    h = histogram_entropy(z, bins=bins)
    padded = np.concatenate([z, np.zeros((len(z), 1))], 1)
    for variant in (z @ _rotation(2, 2), padded, padded @ _rotation(3, 3), z + 5.0):
        assert histogram_entropy(variant, bins=bins) == pytest.approx(h, abs=1e-9)
    assert histogram_entropy(z.astype(np.float32), bins=bins) == pytest.approx(h, abs=0.01)


def test_histogram_entropy_closed_forms():
    uniform = np.stack([np.arange(64.0), np.zeros(64)], 1)
    assert histogram_entropy(uniform, bins=8) == pytest.approx(3.0)
    grid = np.stack(np.meshgrid(np.arange(16.0), np.arange(16.0)), -1).reshape(-1, 2)
    assert histogram_entropy(grid, bins=16) == pytest.approx(8.0)  # log2(16 * 16)
    assert histogram_entropy(np.ones((100, 5)), bins=32) == 0.0  # identical embeddings


def test_histogram_entropy_is_bounded_and_scale_free():
    x = np.random.default_rng(0).normal(size=(3000, 64))
    h = histogram_entropy(x, bins=32)
    assert 0 < h <= math.log2(32 * 32)
    assert histogram_entropy(10 * x + 3, bins=32) == pytest.approx(h, abs=1e-9)


def test_histogram_entropy_pca_projection_uses_top_components():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(2000, 2)) * [5.0, 3.0]
    x = np.concatenate([signal, 1e-3 * rng.normal(size=(2000, 30))], 1)
    counts, _, _ = np.histogram2d(signal[:, 0], signal[:, 1], bins=24)
    assert histogram_entropy(x, bins=24) == pytest.approx(
        scipy_entropy(counts.ravel(), base=2), abs=0.05
    )


def test_knn_entropy_duplicates_give_nan_with_warning():
    x = np.repeat(np.random.default_rng(0).normal(size=(50, 2)), 4, axis=0)
    with pytest.warns(RuntimeWarning, match="duplicate"):
        assert math.isnan(knn_entropy(x, k=3))


def test_gaussian_entropy_singular_covariance_gives_nan_with_warning():
    x = np.random.default_rng(0).normal(size=(100, 3))
    x = np.concatenate([x, x[:, :1]], 1)  # rank 3 in 4 dims
    with pytest.warns(RuntimeWarning, match="singular"):
        assert math.isnan(gaussian_entropy(x))


def test_entropy_dispatch_and_spaces():
    x, exact = _gaussian_sample(3, 3000, seed=5)
    assert entropy(x, estimator="gaussian") == pytest.approx(gaussian_entropy(x))
    assert entropy(x, estimator="knn", k=5) == pytest.approx(knn_entropy(x, k=5))
    assert entropy(x, estimator="histogram", bins=16) == pytest.approx(
        histogram_entropy(x, bins=16)
    )
    # PCA keeps all the variance when pca_dim = d: the differential entropy is unchanged.
    assert entropy(x, estimator="gaussian", space="pca", pca_dim=3) == pytest.approx(exact, abs=0.1)
    norms = to_space(x, space="l2").norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert to_space(np.zeros((3, 4)), space="l2").abs().sum() == 0  # zero rows stay zero


def test_entropy_subsample_is_seeded():
    x = np.random.default_rng(0).normal(size=(3000, 8))
    a = entropy(x, estimator="knn", max_samples=500, seed=1)
    assert a == entropy(x, estimator="knn", max_samples=500, seed=1)
    assert a != entropy(x, estimator="knn", max_samples=500, seed=2)


def test_entropy_rejects_bad_options():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="Unknown estimator='kde'. Choose one of: histogram"):
        entropy(x, estimator="kde")
    with pytest.raises(ValueError, match="Unknown space='cosine'"):
        entropy(x, space="cosine")
    with pytest.raises(ValueError, match="k=10 must be smaller than the number of samples"):
        knn_entropy(np.random.default_rng(0).normal(size=(10, 2)), k=10)


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn installed")
def test_umap_projection_without_umap_names_the_extra():
    with pytest.raises(ValueError, match=r"pip install labelfree\[umap\]"):
        histogram_entropy(np.random.default_rng(0).normal(size=(50, 5)), projection="umap")
