import math

import numpy as np
import pytest
import torch

from labelfree.metrics import alpha_req, covariance_eigenvalues, nesum, rankme, uniformity


def _rankme_reference(z, eps=1e-7):
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("r", [1, 5, 20])
def test_rankme_of_rank_r_data_is_close_to_r(r):
    rng = np.random.default_rng(r)
    q = np.linalg.qr(rng.normal(size=(64, 64)))[0]
    # N x 64 matrix of rank r with equal singular values: RankMe = r (up to eps)
    u = np.linalg.qr(rng.normal(size=(1000, r)))[0]
    z = u @ q[:r] * 3.0
    assert rankme(z) == pytest.approx(r, rel=1e-3)


def test_rankme_matches_numpy_svd_reference():
    z = np.random.default_rng(0).normal(size=(500, 40)) * np.linspace(0.1, 3, 40)
    assert rankme(z) == pytest.approx(_rankme_reference(z), rel=1e-9)


def test_rankme_subsample_limit_and_seed():
    z = np.random.default_rng(0).normal(size=(3000, 16)) * np.arange(1, 17)
    full = rankme(z, max_samples=None)
    sub = rankme(z, max_samples=1000, seed=0)
    assert sub == pytest.approx(_rankme_reference(z[_perm_rows(3000, 1000, 0)]), rel=1e-9)
    assert sub == pytest.approx(full, rel=0.02)


def _perm_rows(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:m].numpy()


def test_rankme_zero_matrix_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="all embeddings are zero"):
        assert math.isnan(rankme(np.zeros((10, 4))))


def test_covariance_eigenvalues_match_numpy():
    z = np.random.default_rng(0).normal(size=(300, 12)) @ np.random.default_rng(1).normal(
        size=(12, 12)
    )
    expected = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(covariance_eigenvalues(z).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_power_law(alpha):
    rng = np.random.default_rng(0)
    d = 32
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    # exact power-law covariance: whiten a sample, then scale axis i by i^(-alpha/2)
    x = rng.normal(size=(4000, d))
    x = (x - x.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    x = x * np.arange(1, d + 1) ** (-alpha / 2) @ basis
    assert alpha_req(x) == pytest.approx(alpha, abs=1e-6)
    assert alpha_req(x, fit_start=3, fit_end=20) == pytest.approx(alpha, abs=1e-6)


def test_alpha_req_matches_numpy_polyfit():
    x = np.random.default_rng(0).normal(size=(800, 20)) * np.linspace(3, 0.2, 20)
    lam = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][1:15]
    slope = np.polyfit(np.log(np.arange(2, 16)), np.log(lam), 1)[0]
    assert alpha_req(x, fit_start=2, fit_end=15) == pytest.approx(-slope, rel=1e-9)


def test_alpha_req_degenerate_and_bad_range():
    with pytest.warns(RuntimeWarning, match="fewer than 2 positive"):
        assert math.isnan(alpha_req(np.ones((20, 5))))
    with pytest.raises(ValueError, match="fit_end > fit_start"):
        alpha_req(np.random.default_rng(0).normal(size=(20, 5)), fit_start=3, fit_end=3)


def test_nesum_closed_forms():
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    x = rng.normal(size=(2000, 8))
    x = (x - x.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    assert nesum(x @ q) == pytest.approx(8.0, rel=1e-9)  # whitened: D
    assert nesum(x[:, :1] * [[1.0, 2.0, 3.0]]) == pytest.approx(1.0, rel=1e-9)  # rank one: 1
    lam = np.array([4.0, 2.0, 1.0, 1.0])
    q4 = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    assert nesum(x[:, :4] * np.sqrt(lam) @ q4) == pytest.approx(lam.sum() / 4, rel=1e-9)
    with pytest.warns(RuntimeWarning, match="identical embeddings"):
        assert math.isnan(nesum(np.ones((10, 3))))


def _uniformity_reference(x, t=2.0):
    # Wang & Isola's reference code: torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
    z = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1)
    return float(torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log())


def test_uniformity_matches_wang_isola_reference():
    x = np.random.default_rng(0).normal(size=(700, 16)) + 0.5
    assert uniformity(x, max_samples=None) == pytest.approx(_uniformity_reference(x), abs=1e-5)
    assert uniformity(x, t=0.5, max_samples=None) == pytest.approx(
        _uniformity_reference(x, t=0.5), abs=1e-5
    )


def test_uniformity_extremes():
    assert uniformity(np.ones((50, 4))) == pytest.approx(0.0, abs=1e-6)  # collapse
    antipodal = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal) == pytest.approx(-8.0)
    # Isotropic Gaussian in d dims: cos ~ N(0, 1/d), so E exp(-t (2 - 2 cos)) = exp(-2t + 2t^2/d)
    spread = np.random.default_rng(0).normal(size=(2000, 256))
    assert uniformity(spread) == pytest.approx(-4.0 + 8.0 / 256, abs=0.005)


def test_uniformity_subsample_is_seeded():
    x = np.random.default_rng(0).normal(size=(3000, 8))
    idx = _perm_rows(3000, 500, 4)
    assert uniformity(x, max_samples=500, seed=4) == pytest.approx(
        _uniformity_reference(x[idx]), abs=1e-5
    )
