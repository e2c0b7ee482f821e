"""Spectral and geometric label-free metrics: RankMe, alpha-ReQ, NESum, uniformity.

Each is computed on the input's device from a ``D x D`` Gram / covariance matrix (float64), so
the cost is ``O(N D^2)`` and no ``N x N`` matrix is formed (uniformity works in blocks).

References:
    [0] Garrido, Balestriero, Najman, LeCun. RankMe: Assessing the downstream performance of
        pretrained self-supervised representations by their rank, ICML 2023.
        https://arxiv.org/abs/2210.02885
    [1] Agrawal, Mondal, Ghosh, Richards. alpha-ReQ: Assessing representation quality in
        self-supervised learning by measuring eigenspectrum decay, NeurIPS 2022.
    [2] He, Ozay. Exploring the gap between collapsed and whitened features in self-supervised
        learning, ICML 2022. https://arxiv.org/abs/2106.15208
    [3] Wang, Isola. Understanding contrastive representation learning through alignment and
        uniformity on the hypersphere, ICML 2020. https://arxiv.org/abs/2005.10242
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import (
    as_embeddings,
    block_rows,
    check_positive_float,
    check_positive_int,
    generator,
    nan_with_warning,
    subsample,
)

log = logging.getLogger(__name__)

__all__ = ["alpha_req", "covariance_eigenvalues", "nesum", "rankme", "uniformity"]


def covariance_eigenvalues(x: Tensor | np.ndarray) -> Tensor:
    """Eigenvalues of the sample covariance (``N - 1`` normalisation), descending, float64, >= 0.

    Examples:
        >>> import numpy as np
        >>> covariance_eigenvalues(np.array([[1.0, 0.0], [-1.0, 0.0]])).tolist()
        [2.0, 0.0]
    """
    x = as_embeddings(x)
    xc = x.double() - x.double().mean(0)
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)


def rankme(
    x: Tensor | np.ndarray, *, eps: float = 1e-7, max_samples: int | None = 25600, seed: int = 0
) -> float:
    """RankMe: smooth effective rank of the embedding matrix (Garrido et al. 2023).

    ``RankMe = exp(-sum_k p_k log p_k)``, ``p_k = sigma_k / ||sigma||_1 + eps`` with
    ``sigma_k`` the singular values of the (uncentred) ``N x D`` embedding matrix [0]. Range
    ``[1, min(N, D)]`` (up to the ``eps`` term): about ``r`` for data of rank ``r`` with equal
    singular values, 1 for a rank-one (collapsed) matrix. Unitless, scale-invariant. As in [0],
    ``eps = 1e-7`` and at most 25,600 (seeded) rows are used. Singular values come from the
    eigenvalues of the ``D x D`` Gram matrix ``Z^T Z`` in float64. An all-zero matrix has no
    spectrum: NaN with a ``RuntimeWarning``.

    Args:
        x: ``(N, D)`` embeddings.
        eps: Added to each normalised singular value (avoids log 0).
        max_samples: Use at most this many seeded rows (``None`` = all).
        seed: Seed of the row subsample.

    Returns:
        RankMe as a Python float.

    References:
        Garrido, Balestriero, Najman, LeCun. RankMe, ICML 2023, arXiv:2210.02885.

    Examples:
        >>> import numpy as np
        >>> round(rankme(np.eye(3)), 3)  # 3 equal singular values
        3.0
    """
    x = as_embeddings(x)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")
    z = subsample(x, max_samples, generator(seed, x.device)).double()
    gram = z.T @ z
    sigma = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()
    total = float(sigma.sum())
    if total <= 0:
        return nan_with_warning("rankme: all embeddings are zero (no spectrum); returning NaN.")
    p = sigma / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alpha_req(x: Tensor | np.ndarray, *, fit_start: int = 1, fit_end: int | None = None) -> float:
    """alpha-ReQ: power-law decay rate of the covariance eigenspectrum (Agrawal et al. 2022).

    Fits ``log lambda_i = c - alpha log i`` by least squares over the ranks
    ``i = fit_start..fit_end`` (1-based, inclusive) of the descending covariance eigenvalues
    ``lambda_i`` and returns ``alpha`` [1]. ``alpha`` near 1 is the regime [1] links to good
    downstream accuracy; large ``alpha`` means few dominant directions (collapse), small
    ``alpha`` a flat, noise-like spectrum. Unitless, scale-invariant. Eigenvalues that are zero
    (beyond the rank) are left out of the fit; fewer than 2 positive eigenvalues in the range
    (e.g. identical embeddings) give NaN with a ``RuntimeWarning``.

    Args:
        x: ``(N, D)`` embeddings.
        fit_start: First rank of the fit (1 = largest eigenvalue).
        fit_end: Last rank of the fit; ``None`` = ``min(N - 1, D)``.

    Returns:
        The decay exponent ``alpha`` as a Python float.

    Raises:
        ValueError: if ``fit_start < 1`` or ``fit_end <= fit_start``.

    References:
        Agrawal, Mondal, Ghosh, Richards. alpha-ReQ, NeurIPS 2022.

    Examples:
        >>> import numpy as np
        >>> basis = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0]
        >>> x = np.random.default_rng(1).normal(size=(5000, 8)) * np.arange(1, 9) ** -1.0
        >>> round(alpha_req(x @ basis), 1)  # variances i^-2: alpha = 2
        2.0
    """
    x = as_embeddings(x)
    fit_start = check_positive_int(fit_start, "fit_start")
    max_rank = min(x.shape[0] - 1, x.shape[1])
    if fit_end is None:
        fit_end = max_rank
    fit_end = check_positive_int(fit_end, "fit_end")
    if fit_end <= fit_start:
        raise ValueError(
            f"alpha_req needs fit_end > fit_start to fit a slope; got fit_start={fit_start}, "
            f"fit_end={fit_end}."
        )
    lam = covariance_eigenvalues(x)[fit_start - 1 : min(fit_end, max_rank)]
    ranks = torch.arange(fit_start, fit_start + lam.numel(), dtype=torch.float64, device=x.device)
    keep = lam > lam.max().clamp_min(1e-300) * 1e-12 if lam.numel() else lam > 0
    if int(keep.sum()) < 2:
        return nan_with_warning(
            f"alpha_req: fewer than 2 positive covariance eigenvalues in ranks {fit_start}.."
            f"{fit_end} (collapsed or identical embeddings); returning NaN."
        )
    lx = ranks[keep].log()
    ly = lam[keep].log()
    lx_c = lx - lx.mean()
    slope = float((lx_c * (ly - ly.mean())).sum() / (lx_c * lx_c).sum())
    return -slope


def nesum(x: Tensor | np.ndarray) -> float:
    """NESum: sum of covariance eigenvalues normalised by the largest (He & Ozay 2022).

    ``NESum = sum_i lambda_i / lambda_1`` [2]. Range ``[1, D]``: 1 when one direction carries all
    the variance (dimensional collapse), ``D`` for whitened (isotropic) embeddings. Unitless,
    scale-invariant. Identical embeddings (zero covariance) give NaN with a ``RuntimeWarning``.

    Args:
        x: ``(N, D)`` embeddings.

    Returns:
        NESum as a Python float.

    References:
        He, Ozay. ICML 2022, arXiv:2106.15208.

    Examples:
        >>> import numpy as np
        >>> round(nesum(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])), 2)
        1.25
    """
    lam = covariance_eigenvalues(x)
    if float(lam[0]) <= 0:
        return nan_with_warning("nesum: the covariance is zero (identical embeddings); NaN.")
    return float(lam.sum() / lam[0])


def uniformity(
    x: Tensor | np.ndarray, *, t: float = 2.0, max_samples: int | None = 10000, seed: int = 0
) -> float:
    """Uniformity loss of L2-normalised embeddings (Wang & Isola 2020).

    ``L_uniform = log mean_{i < j} exp(-t ||z_i - z_j||^2)`` with ``z = x / ||x||`` [3], over all
    pairs of (a seeded subsample of at most ``max_samples``) points, computed in blocks with a
    log-sum-exp. Range ``[-4t, 0]`` (squared chord distances are at most 4): lower is more
    uniform on the sphere (about ``-2t = -4`` for points spread over a high-dimensional sphere),
    0 for identical embeddings (complete collapse). Unitless. Zero vectors stay zero after
    normalisation.

    Args:
        x: ``(N, D)`` embeddings.
        t: Temperature (2 in [3]).
        max_samples: Use at most this many seeded rows (``None`` = all; ``O(N^2 D)`` time).
        seed: Seed of the row subsample.

    Returns:
        The uniformity loss as a Python float.

    Raises:
        ValueError: for fewer than 2 samples or ``t <= 0``.

    References:
        Wang, Isola. ICML 2020, arXiv:2005.10242.

    Examples:
        >>> import numpy as np
        >>> round(uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])), 6)  # one pair, distance 2: -4t
        -8.0
    """
    x = as_embeddings(x)
    t = check_positive_float(t, "t")
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples", minimum=2)
    if x.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 samples; got {x.shape[0]}.")
    z = subsample(x, max_samples, generator(seed, x.device))
    z = torch.nn.functional.normalize(z.float() if z.dtype != torch.float64 else z, dim=1)
    n = z.shape[0]
    sq = (z * z).sum(1)
    step = block_rows(n, z.device)
    if 4 * t <= 80:
        # exp(-t d^2) >= exp(-4t) >= exp(-80) stays a normal float32: sum the kernel over all
        # pairs in blocks (float64 accumulation), remove the diagonal, halve for pairs i < j.
        total = torch.zeros((), dtype=torch.float64, device=z.device)
        for s in range(0, n, step):
            zb = z[s : s + step]
            d2 = torch.addmm(sq.unsqueeze(0), zb, z.T, alpha=-2.0).add_(sq[s : s + step, None])
            kernel = d2.clamp_min_(0.0).mul_(-t).exp_()
            rows = torch.arange(zb.shape[0], device=z.device)
            total += kernel.sum(dtype=torch.float64) - kernel[rows, rows + s].sum(
                dtype=torch.float64
            )
        n_pairs = n * (n - 1) / 2
        return float(torch.log(total / 2)) - math.log(n_pairs)
    partial = []  # large t: log-sum-exp per block (the kernel would underflow in float32)
    for s in range(0, n, step):
        zb = z[s : s + step]
        d2 = torch.addmm(sq.unsqueeze(0), zb, z.T, alpha=-2.0).add_(sq[s : s + step, None])
        d2.clamp_min_(0.0)
        cols = torch.arange(n, device=z.device)
        rows = torch.arange(s, s + zb.shape[0], device=z.device)
        upper = cols.unsqueeze(0) > rows.unsqueeze(1)  # pairs i < j only
        vals = torch.where(upper, -t * d2, torch.full_like(d2, -math.inf)).double()
        partial.append(torch.logsumexp(vals.reshape(-1), 0))
    n_pairs = n * (n - 1) / 2
    return float(torch.logsumexp(torch.stack(partial), 0)) - math.log(n_pairs)
