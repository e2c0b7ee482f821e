import math
import warnings

import numpy as np
import pytest
import torch
from lightly.utils.debug import std_of_l2_normalized

from labelfree.metrics import alpha_req, covariance_eigenvalues, nesum, rankme, spectral, uniformity
from labelfree.metrics.spectral import Spectrum, l2_std, spectrum


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


# --- RankMe with fewer samples than dimensions ------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(20, 64), (3, 10), (64, 64)])
def test_rankme_with_fewer_samples_than_dimensions_matches_svd(n, d):
    # An N x D matrix has min(N, D) singular values; D - N phantom zeros would each add eps.
    z = np.random.default_rng(n).normal(size=(n, d)) * np.linspace(0.5, 2, d)
    assert rankme(z) == pytest.approx(_rankme_reference(z), rel=1e-9)


# --- the shared spectrum ----------------------------------------------------------------------


def _alpha_reference(x, start, end):
    lam = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][start - 1 : end]
    return -np.polyfit(np.log(np.arange(start, end + 1)), np.log(lam), 1)[0]


@pytest.mark.parametrize(("n", "d"), [(500, 24), (10, 30)])
def test_spectrum_matches_numpy(n, d):
    rng = np.random.default_rng(d)
    z = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0  # offset: centring matters
    s = spectrum(z)
    cov = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(s.covariance_eigenvalues.numpy(), cov, rtol=1e-9, atol=1e-9 * cov[0])
    sv = np.linalg.svd(z, compute_uv=False)
    assert s.singular_values.shape == (min(n, d),)
    np.testing.assert_allclose(s.singular_values.numpy(), sv, rtol=1e-9, atol=1e-9 * sv[0])
    assert (s.n_samples, s.n_rows, s.n_features, s.rank) == (n, n, d, min(n - 1, d))


def test_metrics_from_a_shared_spectrum_equal_the_standalone_values():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(3000, 48)) * np.linspace(0.2, 2, 48) + 0.5, 0).astype(
        np.float32
    )
    s = spectrum(x)
    assert rankme(x, spectrum=s) == pytest.approx(rankme(x), rel=1e-10)
    assert rankme(x, spectrum=s) == pytest.approx(_rankme_reference(x.astype(np.float64)), rel=1e-9)
    assert alpha_req(x, spectrum=s) == alpha_req(x)
    assert alpha_req(x, spectrum=s, fit_start=2, fit_end=30) == alpha_req(
        x, fit_start=2, fit_end=30
    )
    assert nesum(x, spectrum=s) == nesum(x)
    # without x the spectrum is used as given
    assert (rankme(spectrum=s), alpha_req(spectrum=s), nesum(spectrum=s)) == (
        rankme(x, spectrum=s),
        alpha_req(x, spectrum=s),
        nesum(x, spectrum=s),
    )


def test_a_matching_spectrum_is_used_and_not_recomputed(monkeypatch):
    x = np.random.default_rng(0).normal(size=(400, 16))
    s = spectrum(x)
    calls = []
    real = spectral._spectrum
    monkeypatch.setattr(spectral, "_spectrum", lambda *a, **k: calls.append(k) or real(*a, **k))
    rankme(x, spectrum=s)
    alpha_req(x, spectrum=s)
    nesum(x, spectrum=s)
    assert calls == []
    nesum(x)
    assert len(calls) == 1


def test_rankme_subsample_is_not_shared_with_an_all_rows_spectrum():
    x = np.random.default_rng(0).normal(size=(3000, 16)) * np.arange(1, 17)
    full = spectrum(x)  # all rows: right for alpha-ReQ and NESum, not for RankMe's 1000 rows
    sub = rankme(x, max_samples=1000, seed=3)
    assert rankme(x, max_samples=1000, seed=3, spectrum=full) == sub  # recomputed on its rows
    assert sub == pytest.approx(_rankme_reference(x[_perm_rows(3000, 1000, 3)]), rel=1e-9)
    same_rows = spectrum(x, max_samples=1000, seed=3)
    assert same_rows.subsampled
    assert same_rows.n_samples == 1000
    assert rankme(x, max_samples=1000, seed=3, spectrum=same_rows) == pytest.approx(sub, rel=1e-10)
    # alpha-ReQ and NESum use all rows: a subsampled spectrum is not theirs, so x is used
    assert nesum(x, spectrum=same_rows) == nesum(x)
    assert alpha_req(x, spectrum=same_rows) == alpha_req(x)
    # a spectrum of all rows serves RankMe when N <= max_samples
    assert rankme(x, spectrum=full) == pytest.approx(rankme(x), rel=1e-10)


def test_spectrum_arguments_are_checked():
    x = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(ValueError, match="needs the embeddings x or spectrum=spectrum"):
        rankme()
    with pytest.raises(ValueError, match=r"spectrum was computed on a \(50, 4\) matrix but the "):
        nesum(x[:40], spectrum=spectrum(x))
    with pytest.raises(ValueError, match="spectrum must be the result of"):
        alpha_req(x, spectrum=np.ones(4))
    with pytest.raises(ValueError, match="max_samples=0 must be an integer >= 1"):
        spectrum(x, max_samples=0)
    assert isinstance(spectrum(torch.from_numpy(x)), Spectrum)


def test_identical_embeddings_with_inexact_mean_are_degenerate():
    # The float64 mean of copies of an arbitrary row is not exactly that row: the centred
    # residue (~1e-17) used to pass as a covariance (NESum 1.0, alpha-ReQ a fit of noise).
    x = np.tile(np.random.default_rng(3).normal(size=6), (1000, 1))
    assert spectrum(x).rank == 0
    with pytest.warns(RuntimeWarning, match="identical embeddings"):
        assert math.isnan(nesum(x))
    with pytest.warns(RuntimeWarning, match="numerical rank 0"):
        assert math.isnan(alpha_req(x))
    assert rankme(x) == pytest.approx(1.0, abs=1e-3)  # rank one, as documented


# --- alpha-ReQ with a fit window past the rank -------------------------------------------------


def _rank_five(dtype, offset):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 32)))[0][:5]
    x = (rng.normal(size=(2000, 5)) * np.arange(1, 6) ** -1.0) @ basis * 0.01 + offset
    return x.astype(dtype)


@pytest.mark.parametrize(("dtype", "offset"), [(np.float32, 10.0), (np.float64, 0.0)])
def test_alpha_req_window_past_the_rank_warns_and_clips(dtype, offset):
    x = _rank_five(dtype, offset)  # rank 5 in 32 dims; float32 rounding fills the other 27
    assert spectrum(x).rank == 5
    expected = _alpha_reference(x.astype(np.float64), 1, 5)
    assert expected == pytest.approx(2.0, abs=0.1)
    with pytest.warns(RuntimeWarning, match=r"ranks 1\.\.32 extends past the numerical rank 5"):
        assert alpha_req(x) == pytest.approx(expected, rel=1e-9)
    with pytest.warns(RuntimeWarning, match=r"metrics\.alpha_req\.fit_end <= 5"):
        assert alpha_req(x, fit_start=2, fit_end=20) == pytest.approx(
            _alpha_reference(x.astype(np.float64), 2, 5), rel=1e-9
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the rank: no warning
        assert alpha_req(x, fit_end=5) == pytest.approx(expected, rel=1e-9)


def test_alpha_req_full_rank_float32_does_not_warn():
    x = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32) * 0.01 + 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert alpha_req(x) == pytest.approx(_alpha_reference(x.astype(np.float64), 1, 64))


def test_alpha_req_window_with_one_eigenvalue_left_is_nan():
    x = _rank_five(np.float64, 0.0)
    with pytest.warns(RuntimeWarning, match="fewer than 2 positive covariance eigenvalues"):
        assert math.isnan(alpha_req(x, fit_start=5, fit_end=10))


# --- l2-std ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_l2_std_matches_lightly(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 32)) * np.linspace(0.1, 3, 32) + 0.7).astype(dtype)
    ref = float(std_of_l2_normalized(torch.from_numpy(x)))
    assert l2_std(x) == pytest.approx(ref, rel=1e-5 if dtype == np.float32 else 1e-12)
    with_zero_row = np.concatenate([x, np.zeros((1, 32), dtype)])  # zero rows stay zero
    assert l2_std(with_zero_row) == pytest.approx(
        float(std_of_l2_normalized(torch.from_numpy(with_zero_row))), rel=1e-5
    )


def test_l2_std_extremes():
    collapsed = (
        np.tile(np.random.default_rng(0).normal(size=16), (200, 1))
        * np.linspace(1, 5, 200)[:, None]
    )  # one direction, any norms: complete collapse after normalisation
    assert l2_std(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert float(std_of_l2_normalized(torch.from_numpy(collapsed))) == pytest.approx(0.0, abs=1e-12)
    d = 256
    spread = np.random.default_rng(1).normal(size=(20000, d))
    assert l2_std(spread) == pytest.approx(1 / math.sqrt(d), rel=0.01)
    assert l2_std(spread) <= 1 / math.sqrt(d) * math.sqrt(20000 / 19999)  # the bound
    assert l2_std(10 * spread) == pytest.approx(l2_std(spread), rel=1e-12)  # scale-invariant
    with pytest.raises(ValueError, match="l2_std needs at least 2 samples"):
        l2_std(np.ones((1, 4)))


@pytest.mark.gpu
def test_spectrum_and_l2_std_on_cuda_match_cpu(cuda):
    x = np.maximum(np.random.default_rng(0).normal(size=(2000, 64)) + 0.3, 0).astype(np.float32)
    gx = torch.from_numpy(x).to(cuda)
    s = spectrum(gx)
    assert s.covariance_eigenvalues.is_cuda
    assert s.singular_values.is_cuda
    ref = spectrum(x)
    torch.testing.assert_close(s.covariance_eigenvalues.cpu(), ref.covariance_eigenvalues)
    torch.testing.assert_close(s.singular_values.cpu(), ref.singular_values)
    assert s.rank == ref.rank
    for fn in (rankme, alpha_req, nesum):
        assert fn(gx, spectrum=s) == pytest.approx(fn(x), rel=1e-6)
    assert l2_std(gx) == pytest.approx(l2_std(x), rel=1e-9)
