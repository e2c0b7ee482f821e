"""LiDAR: effective rank of the LDA matrix of a surrogate "which image?" task (Thilak et al.).

Each clean image is a surrogate class whose samples are ``q`` augmented views of it; LiDAR is the
effective rank of that task's linear-discriminant matrix: how many directions separate images
relative to the spread of their own views [0]. Unlike RankMe, directions that vary as much
within an image's views as between images (augmentation noise) do not count.

References:
    [0] Thilak, Huang, Saremi, Dinh, Goh, Nakkiran, Susskind, Littwin. LiDAR: Sensing linear
        probing performance in joint embedding SSL architectures, ICLR 2024.
        https://arxiv.org/abs/2312.04000
    [1] Garrido, Balestriero, Najman, LeCun. RankMe, ICML 2023 (the smooth effective rank).
        https://arxiv.org/abs/2210.02885
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import (
    as_views,
    check_positive_float,
    check_positive_int,
    nan_with_warning,
)

log = logging.getLogger(__name__)

__all__ = ["lidar", "lidar_views"]

# Class means that agree to within this many float64 units of roundoff (times the rms of the
# largest feature) are "equal": their scatter is rounding residue, not between-class variance.
_MEAN_NOISE_ULPS = 64.0


def lidar(views: Tensor | np.ndarray, *, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR: smooth effective rank of the LDA matrix of images vs. their views [0].

    For ``n`` clean images (surrogate classes), each with ``q`` augmented views embedded as
    ``e_ij`` (``views[i, j]``), with class means ``mu_i = mean_j e_ij`` and
    ``mu = mean_i mu_i``::

        Sigma_b = sum_i (mu_i - mu)(mu_i - mu)^T / (n - 1)
        Sigma_w = sum_ij (e_ij - mu_i)(e_ij - mu_i)^T / (n (q - 1)) + delta I
        Sigma_lidar = Sigma_w^(-1/2) Sigma_b Sigma_w^(-1/2)
        LiDAR = exp(-sum_k p_k log p_k),  p_k = lambda_k / ||lambda||_1 + eps

    with ``lambda_k``, ``k = 1..d``, the eigenvalues of ``Sigma_lidar``. Range about
    ``[1, min(n - 1, d)]``: ``Sigma_b`` has rank at most ``n - 1``, so at most that many
    eigenvalues are non-zero; ``k`` equally separated directions give about ``k``; 1 when the
    images differ along a single direction. Unitless. Invariant to rotations of the embedding
    space and to the order of the images and of the views. The ridge ``delta`` breaks exact
    scale invariance: ``LiDAR(c * views, delta) = LiDAR(views, delta / c^2)``, so the value is
    scale-free only while ``delta`` is small against the within-class variances (with the
    default 1e-4, embeddings of variance ~1 per direction); for tiny embeddings ``Sigma_w``
    tends to ``delta I`` and LiDAR to the effective rank of ``Sigma_b``.

    Choices the paper leaves open [0], which writes expectations: the sample normalisations
    ``1 / (n - 1)`` and ``1 / (n (q - 1))`` (unbiased), as in stable-pretraining's LiDAR
    callback, whose defaults ``n = 100`` images, ``q = 10`` views and ``delta = 1e-4`` this
    follows. ``delta`` is added to ``Sigma_w`` only, and ``eps`` to each normalised eigenvalue
    as in RankMe [1] and [0] (stable-pretraining instead normalises ``lambda + eps``); the sum
    runs over all ``d`` eigenvalues of the ``d x d`` matrix, so with ``n - 1 < d`` the zero
    eigenvalues each add ``eps`` (at most ``d eps ln(1/eps)``, 8e-4 nats for ``d = 512``).
    Computed in float64 on the input's device: ``Sigma_w = V diag(w) V^T`` by ``eigh``
    (eigenvalues clamped at ``delta``, their exact lower bound), then the non-zero eigenvalues
    of ``Sigma_lidar`` as those of the smaller Gram matrix of ``A = M V diag(w)^(-1/2)``
    (``M`` the centred class means; ``A^T A / (n - 1)`` is ``Sigma_lidar`` in the basis
    ``V``), by ``eigvalsh``.

    Degenerate input: if the class means coincide (between-class covariance zero up to float64
    rounding, e.g. every view of every image embedded identically: complete collapse), the
    spectrum is empty and NaN is returned with a ``RuntimeWarning``. Views identical within each
    image but different across images are fine (``Sigma_w = delta I``).

    Args:
        views: ``(n, q, d)`` embeddings: ``n`` images, ``q >= 2`` augmented views of each,
            ``d`` features (numpy or torch, CPU or CUDA).
        delta: Ridge added to the within-class covariance (> 0), in squared embedding units.
        eps: Added to each normalised eigenvalue (avoids log 0), as in RankMe.

    Returns:
        LiDAR as a Python float (NaN for collapsed input).

    Raises:
        ValueError: if ``views`` is not 3-D, has ``n < 2`` or ``q < 2``, holds NaN or inf, or
            ``delta <= 0`` or ``eps < 0``.

    References:
        Thilak et al. LiDAR, ICLR 2024, arXiv:2312.04000.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> means = np.zeros((50, 8))
        >>> means[:, :3] = 10 * rng.normal(size=(50, 3))  # images differ in 3 directions
        >>> views = means[:, None, :] + rng.normal(size=(50, 4, 8))  # 4 noisy views of each
        >>> round(lidar(views), 1)  # 3 directions, unequally spread
        2.9
    """
    delta = check_positive_float(delta, "delta")
    eps = check_positive_float(eps, "eps", allow_zero=True)
    x = as_views(views).to(torch.float64)
    n, q, d = x.shape
    means = x.mean(1)  # (n, d)
    centred_means = means - means.mean(0)
    within = (x - means[:, None, :]).reshape(n * q, d)
    second_moment = float(x.square().mean((0, 1)).max())
    between_trace = float(centred_means.square().sum()) / (n - 1)
    if between_trace <= d * (_MEAN_NOISE_ULPS * 2.0**-53) ** 2 * second_moment:
        return nan_with_warning(
            f"lidar: the {n} image means coincide (between-class covariance zero: every view "
            "embedded alike, a complete collapse); returning NaN."
        )
    sigma_w = within.T @ within / (n * (q - 1))
    sigma_w.diagonal().add_(delta)
    w, v = torch.linalg.eigh(sigma_w)
    # Sigma_w >= delta I exactly; rounding can push its smallest eigenvalues a little below.
    a = centred_means @ v * w.clamp_min(delta).rsqrt()  # (n, d): M Sigma_w^(-1/2), basis V
    a = a / (n - 1) ** 0.5
    gram = a @ a.T if n <= d else a.T @ a  # same non-zero eigenvalues, smaller matrix
    lam = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    total = float(lam.sum())
    if total <= 0:
        return nan_with_warning("lidar: the LDA matrix is zero (no between-class spread); NaN.")
    p = lam / total + eps
    entropy = float(-(p * p.log()).sum())
    if lam.numel() < d and eps > 0:  # the d - n eigenvalues left out are 0: each has p = eps
        entropy -= (d - lam.numel()) * eps * math.log(eps)
    return math.exp(entropy)


def lidar_views(*, n_images: int = 100, n_views: int = 10) -> tuple[int, int]:
    """How LiDAR's input is made: ``n_images`` fixed evaluation images, ``n_views`` views each.

    Not a metric: the caller that embeds the views (the training evaluator, ``labelfree.monitor``)
    reads these two keys of the ``metrics.lidar`` node through
    :func:`labelfree.metrics.suite.input_options`, draws ``n_images`` images of the evaluation
    split once (seeded: the same images at every evaluation), embeds ``n_views`` augmented views
    of each and passes the ``(n_images, n_views, d)`` array to :func:`lidar`. The defaults are
    stable-pretraining's LiDAR callback's (100 images, 10 views; [0] used more of both).

    Args:
        n_images: Surrogate classes (clean images), at least 2.
        n_views: Augmented views per image, at least 2.

    Returns:
        ``(n_images, n_views)``, checked.

    Raises:
        ValueError: for a value below 2.

    Examples:
        >>> lidar_views(), lidar_views(n_images=50)
        ((100, 10), (50, 10))
    """
    return (
        check_positive_int(n_images, "n_images", minimum=2),
        check_positive_int(n_views, "n_views", minimum=2),
    )
