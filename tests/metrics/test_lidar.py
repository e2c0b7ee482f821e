import math

import numpy as np
import pytest
import scipy.linalg
import torch

from labelfree.metrics.lidar import lidar


def _lidar_reference(views, delta=1e-4, eps=1e-7):
    """Thilak et al.'s definition written out directly: covariances, sqrtm, eigenvalues."""
    e = np.asarray(views, dtype=np.float64)
    n, q, d = e.shape
    mu_x = e.mean(axis=1)
    mu = mu_x.mean(axis=0)
    sigma_b = sum(np.outer(m - mu, m - mu) for m in mu_x) / (n - 1)
    sigma_w = sum(
        np.outer(e[i, j] - mu_x[i], e[i, j] - mu_x[i]) for i in range(n) for j in range(q)
    )
    sigma_w = sigma_w / (n * (q - 1)) + delta * np.eye(d)
    inv_sqrt = np.linalg.inv(np.real(scipy.linalg.sqrtm(sigma_w)))
    lam = np.clip(np.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt), 0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def _views(n=60, q=5, d=12, *, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n, d)) * np.linspace(signal, 0.1, d)
    noise = rng.normal(size=(n, q, d)) @ rng.normal(size=(d, d)) * 0.5  # correlated views
    return means[:, None, :] + noise


@pytest.mark.parametrize(("n", "q", "d"), [(60, 5, 12), (8, 3, 16), (30, 2, 4)])
def test_lidar_matches_direct_numpy_reference(n, q, d):
    views = _views(n, q, d, seed=n)  # n < d and n > d: both Gram sides of the computation
    assert lidar(views) == pytest.approx(_lidar_reference(views), rel=1e-9)
    assert lidar(views, delta=0.5, eps=1e-5) == pytest.approx(
        _lidar_reference(views, delta=0.5, eps=1e-5), rel=1e-9
    )


def test_lidar_torch_and_float32_inputs():
    views = _views()
    ref = lidar(views)
    assert lidar(torch.from_numpy(views)) == ref
    assert lidar(views.astype(np.float32)) == pytest.approx(ref, rel=1e-5)


def test_lidar_is_invariant_to_rotations_and_orderings():
    views = _views()
    rng = np.random.default_rng(1)
    ref = lidar(views)
    rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    assert lidar(views @ rotation) == pytest.approx(ref, rel=1e-9)  # delta I commutes with R
    assert lidar(views[rng.permutation(60)]) == pytest.approx(ref, rel=1e-9)  # classes
    shuffled = np.stack([v[rng.permutation(5)] for v in views])  # views within each class
    assert lidar(shuffled) == pytest.approx(ref, rel=1e-9)
    assert lidar(views + 7.0) == pytest.approx(ref, rel=1e-9)  # translation


def test_lidar_scaling_acts_through_the_ridge():
    rng = np.random.default_rng(2)
    means = rng.normal(size=(60, 12)) * np.linspace(3.0, 0.5, 12)
    noise = rng.normal(size=(60, 5, 12)) * np.linspace(0.5, 2.0, 12)  # variances 0.25..4
    views = means[:, None, :] + noise
    # Exact: scaling by c is the same as the ridge delta / c^2 ...
    for c in (1e-3, 0.1, 10.0):
        assert lidar(c * views) == pytest.approx(lidar(views, delta=1e-4 / c**2), rel=1e-9)
    # ... so with within-class variances >= 0.25 >> delta the value barely moves,
    assert lidar(10 * views) == pytest.approx(lidar(views), rel=1e-3)
    # but for tiny embeddings delta dominates Sigma_w (-> delta I) and LiDAR tends to the
    # effective rank of Sigma_b alone, no longer whitened by the views: a different value.
    tiny = lidar(1e-4 * views)
    assert tiny != pytest.approx(lidar(views), rel=0.05)
    means = views.mean(1)
    lam = np.clip(np.linalg.eigvalsh(np.cov(means, rowvar=False)), 0, None)
    p = lam / lam.sum() + 1e-7
    assert tiny == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-3)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_lidar_counts_the_separating_directions(k):
    rng = np.random.default_rng(k)
    n, q, d = 400, 4, 16
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:k]  # k orthonormal directions
    means = rng.normal(size=(n, k)) * 100.0 @ basis  # between-class spread only along them
    views = means[:, None, :] + rng.normal(size=(n, q, d))  # isotropic view noise
    assert lidar(views) == pytest.approx(k, abs=0.1 * k)


def test_lidar_range():
    rng = np.random.default_rng(0)
    for n, d in [(5, 40), (200, 10)]:
        value = lidar(rng.normal(size=(n, 3, d)))
        assert 1.0 <= value <= min(n - 1, d) * 1.001
    noise_only = lidar(rng.normal(size=(500, 4, 8)))  # nothing separates the classes
    assert 1.0 < noise_only <= 8.0


def test_lidar_identical_views_within_each_class_are_fine():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(30, 6))
    views = np.repeat(means[:, None, :], 4, axis=1)  # Sigma_w = delta I exactly
    lam = np.clip(np.linalg.eigvalsh(np.cov(means, rowvar=False)), 0, None)
    p = lam / lam.sum() + 1e-7
    assert lidar(views) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)


def test_lidar_collapse_is_nan_with_warning():
    row = np.random.default_rng(0).normal(size=10)  # an arbitrary row: its mean is inexact
    with pytest.warns(RuntimeWarning, match="image means coincide"):
        assert math.isnan(lidar(np.tile(row, (20, 3, 1))))
    with pytest.warns(RuntimeWarning, match="image means coincide"):
        assert math.isnan(lidar(np.zeros((5, 2, 3))))


def test_lidar_rejects_bad_input():
    with pytest.raises(ValueError, match=r"must be a 3-D array of shape \(n_images, n_views"):
        lidar(np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"at least 2 images .* got n=1"):
        lidar(np.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match=r"at least 2 augmented views per image .* got q=1"):
        lidar(np.zeros((10, 1, 3)))
    bad = _views()
    bad[3, 1, 2] = np.nan
    bad[7, 0, 0] = np.inf
    with pytest.raises(ValueError, match="2 non-finite values .* in 2 of 60 images"):
        lidar(bad)
    with pytest.raises(ValueError, match=r"delta=0\.0 must be a finite number > 0"):
        lidar(_views(), delta=0.0)
    with pytest.raises(ValueError, match="views must be a numpy array or a torch tensor"):
        lidar([[[0.0]]])


@pytest.mark.gpu
def test_lidar_on_cuda_matches_cpu(cuda):
    views = _views(n=100, q=10, d=64).astype(np.float32)
    assert lidar(torch.from_numpy(views).to(cuda)) == pytest.approx(lidar(views), rel=1e-6)
