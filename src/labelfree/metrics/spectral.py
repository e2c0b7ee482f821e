"""Spectral and geometric label-free metrics: RankMe, alpha-ReQ, NESum, uniformity, l2-std.

RankMe, alpha-ReQ and NESum are functions of one ``D x D`` float64 matrix product of the
embeddings, computed on the input's device: :func:`spectrum` computes it once (``O(N D^2)``, no
``N x N`` matrix) and each of the three accepts the result as ``spectrum=``, so a suite pays for
one product and two symmetric eigendecompositions instead of three of each. Uniformity works in
blocks of pairs; ``l2_std`` is ``O(N D)``.

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
    [4] Chen, He. Exploring simple Siamese representation learning, CVPR 2021.
        https://arxiv.org/abs/2011.10566
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import blas
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

__all__ = [
    "Spectrum",
    "alpha_req",
    "covariance_eigenvalues",
    "l2_std",
    "nesum",
    "rankme",
    "spectrum",
    "uniformity",
]

# Covariance eigenvalues at or below the noise floor are treated as zero (beyond the rank).
# Relative floor of the float64 eigensolver (error ~ D * 1e-16 * lambda_1):
_EIG_REL_FLOOR = 1e-12
# Rounding noise, as multiples of the unit roundoff u times the rms of the largest feature:
# storing the input (float32: u = 6e-8) adds variance ~u^2/3 * E[x^2] per direction, and the
# float64 centring leaves a residue of up to ~14 u64 * |x| (measured at N = 10,000, identical
# rows); the factors leave margins of about 14x and 4.5x in standard deviation.
_INPUT_NOISE_ULPS = 8.0
_FLOAT64_NOISE_ULPS = 64.0


def _unit_roundoff(x: object) -> float:
    """Unit roundoff of the dtype ``x`` was stored in (float32's for integer and bool input)."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps / 2
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return float(np.finfo(dtype).eps) / 2
    return torch.finfo(torch.float32).eps / 2


def _scatter_upper(z: Tensor) -> Tensor:
    """``z^T z`` (float64, ``D x D``); only its upper triangle is meaningful.

    On the CPU this is scipy's BLAS ``dsyrk``, which computes one triangle: half the flops of
    the general product torch would run (``z^T`` of a C-ordered array is Fortran-ordered, so
    nothing is copied). scipy's BLAS has its own thread pool; it gets as many threads as torch
    is allowed (``torch.set_num_threads``), so one setting still governs both. Elsewhere a plain
    product on the device. Read the result with ``eigvalsh(..., UPLO="U")``.
    """
    if z.device.type != "cpu":
        return z.T @ z
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency; lazy: CPU only

    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        return torch.from_numpy(blas.dsyrk(1.0, z.numpy().T, trans=0))


@dataclass(frozen=True, eq=False)
class Spectrum:
    """The float64 spectra RankMe, alpha-ReQ and NESum need, from one pass over the embeddings.

    Returned by :func:`spectrum`; pass it as ``spectrum=`` to :func:`rankme`, :func:`alpha_req`
    and :func:`nesum`. Tensors stay on the embeddings' device.

    Attributes:
        covariance_eigenvalues: ``(D,)`` eigenvalues of the centred sample covariance
            (``N - 1`` normalisation), descending, clamped at 0 (alpha-ReQ, NESum).
        singular_values: ``(min(N, D),)`` singular values of the uncentred ``N x D`` embedding
            matrix, descending (RankMe).
        noise_floor: Covariance eigenvalues at or below this are rounding noise of the input's
            dtype or of the float64 arithmetic, i.e. zero: ``max(1e-12 lambda_1,
            max(8 u_in, 64 u_64)^2 max_j mean_i x_ij^2)`` with ``u`` the unit roundoff.
        n_samples: Rows the spectra were computed on (``N``).
        n_rows: Rows of the input before the ``max_samples`` subsample.
        n_features: ``D``.
        max_samples: The subsample limit used (``None``: all rows).
        seed: Seed of the subsample.
    """

    covariance_eigenvalues: Tensor
    singular_values: Tensor
    noise_floor: float
    n_samples: int
    n_rows: int
    n_features: int
    max_samples: int | None
    seed: int

    @property
    def rank(self) -> int:
        """Numerical rank of the covariance: eigenvalues above :attr:`noise_floor`."""
        return int((self.covariance_eigenvalues > self.noise_floor).sum())

    @property
    def subsampled(self) -> bool:
        """Whether the spectra come from a seeded subsample rather than all rows."""
        return self.n_samples < self.n_rows


def _rows_key(n_rows: int, max_samples: int | None, seed: int) -> tuple[int, int] | None:
    """Which rows ``subsample`` picks: ``None`` for all of them, else ``(max_samples, seed)``."""
    return None if max_samples is None or n_rows <= max_samples else (max_samples, seed)


def _spectrum(
    x: Tensor | np.ndarray,
    *,
    max_samples: int | None,
    seed: int,
    covariance: bool = True,
    singular: bool = True,
) -> Spectrum:
    """:func:`spectrum`; a single metric asks only for its part (the other one is left empty)."""
    roundoff = _unit_roundoff(x)
    x = as_embeddings(x)
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")
    n_rows, d = x.shape
    z = subsample(x, max_samples, generator(seed, x.device))
    n, seed = z.shape[0], int(seed)
    z = z.to(torch.float64, copy=True)  # our own copy, so it can be centred in place
    empty = z.new_zeros(0)
    if not covariance:  # RankMe alone: the uncentred Z^T Z directly
        gram = _scatter_upper(z)
        del z
        return Spectrum(
            empty, _singular_values(gram, n, d), math.nan, n, n_rows, d, max_samples, seed
        )
    # copy + in-place centring: measured 2x faster than the promoting z32 - mean64 in one op
    mean = z.mean(0)
    scatter = _scatter_upper(z.sub_(mean))  # Xc^T Xc
    del z
    second_moment = float((scatter.diagonal() / n + mean * mean).max())
    cov = torch.linalg.eigvalsh(scatter / max(1, n - 1), UPLO="U").flip(0).clamp_min(0.0)
    noise = max(_INPUT_NOISE_ULPS * roundoff, _FLOAT64_NOISE_ULPS * 2.0**-53) ** 2
    floor = max(_EIG_REL_FLOOR * float(cov[0]), noise * second_moment)
    sigma = empty
    if singular:
        # RankMe's uncentred Z^T Z = Xc^T Xc + N mu mu^T: adding the rank-one term back is free
        # of the cancellation that centring Z^T Z would suffer, and needs no second product.
        sigma = _singular_values(scatter.add_(torch.outer(mean, mean), alpha=n), n, d)
    return Spectrum(cov, sigma, floor, n, n_rows, d, max_samples, seed)


def _singular_values(gram: Tensor, n: int, d: int) -> Tensor:
    """Singular values of ``Z`` from ``Z^T Z`` (upper triangle): only ``min(N, D)`` exist."""
    eig = torch.linalg.eigvalsh(gram, UPLO="U").flip(0)[: min(n, d)]
    return eig.clamp_min(0.0).sqrt()


def spectrum(x: Tensor | np.ndarray, *, max_samples: int | None = None, seed: int = 0) -> Spectrum:
    """Covariance eigenvalues and singular values of ``x`` for RankMe, alpha-ReQ and NESum.

    One float64 pass on the input's device: the centred scatter ``S = Xc^T Xc`` (``D x D``, one
    matrix product: BLAS ``syrk`` on the CPU), the covariance ``S / (N - 1)``, and the uncentred
    Gram matrix ``Z^T Z = S + N mu mu^T`` (a rank-one update, no second product), each reduced
    by a symmetric eigendecomposition. Pass the result as ``spectrum=`` to :func:`rankme`,
    :func:`alpha_req` and :func:`nesum`; each gives the same value as on ``x`` alone.

    Rows: alpha-ReQ and NESum use all rows, RankMe a seeded subsample of at most
    ``rankme(max_samples=25600)`` rows. The default (all rows) serves all three when ``N`` is
    at most RankMe's ``max_samples``; above it, RankMe does not share it and computes its own
    subsample (or pass it ``spectrum(x, max_samples=..., seed=...)`` with its own settings).
    LiDAR needs a within-class covariance of augmented views, a different matrix, so it cannot
    use this.

    Args:
        x: ``(N, D)`` embeddings.
        max_samples: Use at most this many seeded rows (``None`` = all), the rows
            :func:`rankme` with the same ``max_samples`` and ``seed`` uses.
        seed: Seed of the row subsample.

    Returns:
        A frozen :class:`Spectrum`.

    Raises:
        ValueError: for non-2-D, empty or non-finite input or a bad ``max_samples``.

    Examples:
        >>> import numpy as np
        >>> s = spectrum(np.array([[2.0, 0.0], [0.0, 0.0]]))
        >>> s.covariance_eigenvalues.tolist(), s.singular_values.tolist(), s.rank
        ([2.0, 0.0], [2.0, 0.0], 1)
    """
    return _spectrum(x, max_samples=max_samples, seed=seed)


def _resolve(
    x: Tensor | np.ndarray | None,
    given: Spectrum | None,
    *,
    name: str,
    max_samples: int | None = None,
    seed: int = 0,
    singular: bool = False,
) -> Spectrum:
    """The spectrum ``name`` should use: ``given`` if it covers the right rows, else from ``x``.

    ``singular``: RankMe (singular values only); otherwise covariance eigenvalues only.
    """
    if given is None:
        if x is None:
            raise ValueError(f"{name} needs the embeddings x or spectrum=spectrum(x); got neither.")
        return _spectrum(
            x, max_samples=max_samples, seed=seed, covariance=not singular, singular=singular
        )
    if not isinstance(given, Spectrum):
        raise ValueError(
            f"{name}: spectrum must be the result of labelfree.metrics.spectral.spectrum(x); "
            f"got {type(given).__name__}."
        )
    if x is None:
        return given  # the caller vouches for the rows it was computed on
    shape = tuple(x.shape) if isinstance(x, np.ndarray | Tensor) else tuple(as_embeddings(x).shape)
    if shape != (given.n_rows, given.n_features):
        raise ValueError(
            f"{name}: spectrum was computed on a ({given.n_rows}, {given.n_features}) matrix but "
            f"the embeddings have shape {shape}: pass spectrum(x) of these embeddings."
        )
    wanted = _rows_key(given.n_rows, max_samples, seed)
    if _rows_key(given.n_rows, given.max_samples, given.seed) == wanted:
        return given
    log.debug("%s: the given spectrum covers other rows than %s uses; recomputing", name, name)
    return _spectrum(
        x, max_samples=max_samples, seed=seed, covariance=not singular, singular=singular
    )


def covariance_eigenvalues(x: Tensor | np.ndarray) -> Tensor:
    """Eigenvalues of the sample covariance (``N - 1`` normalisation), descending, float64, >= 0.

    Examples:
        >>> import numpy as np
        >>> covariance_eigenvalues(np.array([[1.0, 0.0], [-1.0, 0.0]])).tolist()
        [2.0, 0.0]
    """
    return _spectrum(x, max_samples=None, seed=0, singular=False).covariance_eigenvalues


def rankme(
    x: Tensor | np.ndarray | None = None,
    *,
    eps: float = 1e-7,
    max_samples: int | None = 25600,
    seed: int = 0,
    spectrum: Spectrum | None = None,
) -> float:
    """RankMe: smooth effective rank of the embedding matrix (Garrido et al. 2023).

    ``RankMe = exp(-sum_k p_k log p_k)``, ``p_k = sigma_k / ||sigma||_1 + eps`` with ``sigma_k``,
    ``k = 1..min(N, D)``, the singular values of the (uncentred) ``N x D`` embedding matrix [0].
    Range ``[1, min(N, D)]`` (up to the ``eps`` term): about ``r`` for data of rank ``r`` with
    equal singular values, 1 for a rank-one (collapsed) matrix, e.g. identical non-zero
    embeddings. Unitless, scale-invariant. As in [0], ``eps = 1e-7`` and at most 25,600 (seeded)
    rows are used. Singular values come from the eigenvalues of the ``D x D`` Gram matrix
    ``Z^T Z`` in float64 (see :func:`spectrum`). An all-zero matrix has no spectrum: NaN with a
    ``RuntimeWarning``.

    Args:
        x: ``(N, D)`` embeddings (may be omitted when ``spectrum`` is given).
        eps: Added to each normalised singular value (avoids log 0).
        max_samples: Use at most this many seeded rows (``None`` = all).
        seed: Seed of the row subsample.
        spectrum: Precomputed :func:`spectrum` of ``x``. Used only if it covers the rows RankMe
            uses (all rows when ``N <= max_samples``, else the same ``max_samples`` and
            ``seed``); otherwise RankMe computes its own from ``x``. Without ``x`` it is used
            as given.

    Returns:
        RankMe as a Python float.

    Raises:
        ValueError: for bad options, or a ``spectrum`` of another matrix shape than ``x``.

    References:
        Garrido, Balestriero, Najman, LeCun. RankMe, ICML 2023, arXiv:2210.02885.

    Examples:
        >>> import numpy as np
        >>> round(rankme(np.eye(3)), 3)  # 3 equal singular values
        3.0
    """
    eps = check_positive_float(eps, "eps", allow_zero=True)
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")
    spec = _resolve(x, spectrum, name="rankme", max_samples=max_samples, seed=seed, singular=True)
    sigma = spec.singular_values
    total = float(sigma.sum())
    if total <= 0:
        return nan_with_warning("rankme: all embeddings are zero (no spectrum); returning NaN.")
    p = sigma / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alpha_req(
    x: Tensor | np.ndarray | None = None,
    *,
    fit_start: int = 1,
    fit_end: int | None = None,
    spectrum: Spectrum | None = None,
) -> float:
    """alpha-ReQ: power-law decay rate of the covariance eigenspectrum (Agrawal et al. 2022).

    Fits ``log lambda_i = c - alpha log i`` by least squares over the ranks
    ``i = fit_start..fit_end`` (1-based, inclusive) of the descending covariance eigenvalues
    ``lambda_i`` and returns ``alpha`` [1]. ``alpha`` near 1 is the regime [1] links to good
    downstream accuracy; large ``alpha`` means few dominant directions (collapse), small
    ``alpha`` a flat, noise-like spectrum. Unitless, scale-invariant.

    Eigenvalues beyond the numerical rank ``r`` of the embeddings (at or below
    :attr:`Spectrum.noise_floor`: rounding noise of the input's dtype, e.g. for embeddings
    confined to an ``r``-dimensional subspace) carry no spectrum, and fitting them would fit
    noise. A window reaching past ``r`` is therefore clipped to ranks ``fit_start..r`` with a
    ``RuntimeWarning`` naming ``r``, the window and the fix (``metrics.alpha_req.fit_end <= r``);
    clipping, not NaN, keeps the large ``alpha`` of a dimensionally collapsed encoder visible.
    Fewer than 2 eigenvalues left in the window (e.g. identical embeddings) give NaN with a
    ``RuntimeWarning``.

    Args:
        x: ``(N, D)`` embeddings (may be omitted when ``spectrum`` is given).
        fit_start: First rank of the fit (1 = largest eigenvalue).
        fit_end: Last rank of the fit; ``None`` = ``min(N - 1, D)``.
        spectrum: Precomputed :func:`spectrum` of ``x``; used only if computed on all rows of
            ``x`` (otherwise recomputed from ``x``), or as given without ``x``.

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
    fit_start = check_positive_int(fit_start, "fit_start")
    if fit_end is not None:
        fit_end = check_positive_int(fit_end, "fit_end")
        if fit_end <= fit_start:
            raise ValueError(
                f"alpha_req needs fit_end > fit_start to fit a slope; got "
                f"fit_start={fit_start}, fit_end={fit_end}."
            )
    spec = _resolve(x, spectrum, name="alpha_req")
    max_rank = min(spec.n_samples - 1, spec.n_features)
    if fit_end is None:
        fit_end = max_rank
        if fit_end <= fit_start:
            raise ValueError(
                f"alpha_req needs fit_end > fit_start to fit a slope; with {spec.n_samples} "
                f"samples and {spec.n_features} features the default fit_end is {fit_end} but "
                f"fit_start={fit_start}: lower fit_start or evaluate on more samples."
            )
    rank = spec.rank
    end = min(fit_end, max_rank, rank)
    if end - fit_start + 1 < 2:
        return nan_with_warning(
            f"alpha_req: fewer than 2 positive covariance eigenvalues in ranks {fit_start}.."
            f"{fit_end} (numerical rank {rank}: collapsed or identical embeddings); returning NaN."
        )
    if fit_end > rank:
        warnings.warn(
            f"alpha_req: the fit window ranks {fit_start}..{fit_end} extends past the numerical "
            f"rank {rank} of the embeddings (covariance eigenvalues beyond it are rounding "
            f"noise); fitting ranks {fit_start}..{end} only. Set metrics.alpha_req.fit_end <= "
            f"{rank} to fix the window.",
            RuntimeWarning,
            stacklevel=2,
        )
    lam = spec.covariance_eigenvalues[fit_start - 1 : end]
    lx = torch.arange(fit_start, end + 1, dtype=torch.float64, device=lam.device).log()
    ly = lam.log()
    lx_c = lx - lx.mean()
    slope = float((lx_c * (ly - ly.mean())).sum() / (lx_c * lx_c).sum())
    return -slope


def nesum(x: Tensor | np.ndarray | None = None, *, spectrum: Spectrum | None = None) -> float:
    """NESum: sum of covariance eigenvalues normalised by the largest (He & Ozay 2022).

    ``NESum = sum_i lambda_i / lambda_1`` [2]. Range ``[1, D]``: 1 when one direction carries all
    the variance (dimensional collapse), ``D`` for whitened (isotropic) embeddings. Unitless,
    scale-invariant. Identical embeddings (a covariance at the rounding-noise floor, see
    :class:`Spectrum`) give NaN with a ``RuntimeWarning``.

    Args:
        x: ``(N, D)`` embeddings (may be omitted when ``spectrum`` is given).
        spectrum: Precomputed :func:`spectrum` of ``x``; used only if computed on all rows of
            ``x`` (otherwise recomputed from ``x``), or as given without ``x``.

    Returns:
        NESum as a Python float.

    References:
        He, Ozay. ICML 2022, arXiv:2106.15208.

    Examples:
        >>> import numpy as np
        >>> round(nesum(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])), 2)
        1.25
    """
    spec = _resolve(x, spectrum, name="nesum")
    lam = spec.covariance_eigenvalues
    if float(lam[0]) <= spec.noise_floor:
        return nan_with_warning("nesum: the covariance is zero (identical embeddings); NaN.")
    return float(lam.sum() / lam[0])


def l2_std(x: Tensor | np.ndarray) -> float:
    """Collapse indicator: mean per-dimension standard deviation of L2-normalised embeddings.

    ``l2_std = (1 / D) sum_j std_i(z_ij)`` with ``z_i = x_i / max(||x_i||, 1e-12)`` (zero rows
    stay zero) and ``std`` the sample standard deviation (``N - 1`` normalisation) over the
    rows: SimSiam's collapse monitor [4], as ``lightly.utils.debug.std_of_l2_normalized``
    computes it. Range ``[0, 1/sqrt(D)]`` (the bound times ``sqrt(N / (N - 1))``): 0 when every
    embedding points the same way (complete collapse, also for identical embeddings), about
    ``1/sqrt(D)`` for zero-mean isotropic embeddings (spread over the sphere); the bound
    follows from ``sum_j var_j <= E||z||^2 = 1``. Unitless, scale-invariant. Computed in float64.

    Args:
        x: ``(N, D)`` embeddings.

    Returns:
        The mean standard deviation as a Python float.

    Raises:
        ValueError: for fewer than 2 samples, non-finite or non-2-D input.

    References:
        Chen, He. Exploring simple Siamese representation learning, CVPR 2021, arXiv:2011.10566.

    Examples:
        >>> import numpy as np
        >>> spread = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> round(l2_std(spread), 4)  # the bound: sqrt(4/3) / sqrt(2)
        0.8165
        >>> round(l2_std(np.ones((5, 3))), 6)  # identical embeddings: collapse
        0.0
    """
    x = as_embeddings(x)
    if x.shape[0] < 2:
        raise ValueError(
            f"l2_std needs at least 2 samples for a standard deviation; got {x.shape[0]}."
        )
    z = torch.nn.functional.normalize(x.double(), dim=1)
    return float(z.std(dim=0).mean())


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
