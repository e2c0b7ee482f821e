"""Silhouette coefficient (S1): per point and its mean, exact or on seeded anchor points.

Distances are reduced block by block (scikit-learn's ``_silhouette_reduce`` idea), never as a
full ``N x N`` matrix. Pure, computes on the device of its input, randomness from a ``seed``
argument, never from the global RNG.

References:
    [0] Xu, Lowe, Trappenberg. Label-free Monitoring of Self-Supervised Learning Progress, 2024.
        https://arxiv.org/abs/2409.06612
    [1] Rousseeuw. Silhouettes: a graphical aid to the interpretation and validation of cluster
        analysis, J. Comput. Appl. Math. 20, 1987.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import (
    as_embeddings,
    as_labels,
    block_rows,
    check_positive_int,
    generator,
    nan_with_warning,
    relabel,
)

log = logging.getLogger(__name__)

__all__ = ["silhouette", "silhouette_samples"]


def silhouette_samples(
    x: Tensor | np.ndarray, labels: Tensor | np.ndarray, *, indices: Tensor | None = None
) -> Tensor:
    """Silhouette value of each point (or of the points ``indices``), exact, in blocks.

    ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean Euclidean distance from ``i`` to
    the other members of its cluster and ``b_i`` the smallest mean distance to another cluster
    [1]. Every value uses all ``N`` points; memory stays ``O(N k + block)`` because distances are
    reduced one block at a time (per-cluster sums via a one-hot matrix product), never as a full
    ``N x N`` matrix. For all points, each off-diagonal block is computed once and reduced both
    ways (the distance matrix is symmetric), about half the work of a row-by-row pass. Points
    alone in their cluster get 0, as do points with ``a_i = b_i = 0`` (scikit-learn's
    conventions).

    Args:
        x: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer cluster ids (any values; at least 2 distinct).
        indices: Optional ``(m,)`` row indices to evaluate (default: all rows).

    Returns:
        ``(m,)`` float64 tensor on the input's device, values in ``[-1, 1]``.

    Raises:
        ValueError: for bad shapes, non-finite values, or fewer than 2 clusters.

    References:
        Rousseeuw, J. Comput. Appl. Math. 20, 1987.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[0.0], [1.0], [10.0], [11.0]], dtype=np.float32)
        >>> silhouette_samples(x, np.array([0, 0, 1, 1])).round(decimals=4).tolist()
        [0.9048, 0.8947, 0.8947, 0.9048]
    """
    x = as_embeddings(x)
    n = x.shape[0]
    y = as_labels(labels, n=n, device=x.device)
    inv, k = relabel(y)
    if k < 2:
        raise ValueError(f"silhouette needs at least 2 clusters; got {k}.")
    work = x if x.dtype == torch.float64 else x.float()
    work = work - work.mean(0)  # centring reduces cancellation in the distance expansion
    sq = (work * work).sum(1)
    counts = torch.bincount(inv, minlength=k).to(work.dtype)
    onehot = torch.nn.functional.one_hot(inv, k).to(work.dtype)  # (N, k)
    if indices is None:
        sums, self_d = _distance_sums_all(work, sq, onehot)
        own = inv
    else:
        indices = indices.to(x.device)
        sums, self_d = _distance_sums_rows(work, sq, onehot, indices)
        own = inv[indices]
    rows = torch.arange(own.numel(), device=x.device)
    own_n = counts[own].double()
    # a: mean distance to the other members of the own cluster (the self-distance, ~0 but not
    # exactly 0 in finite precision, is removed); b: smallest mean distance to another cluster
    a = (sums[rows, own] - self_d.double()) / (own_n - 1).clamp_min(1.0)
    means = sums / counts.double().unsqueeze(0)
    means[rows, own] = math.inf
    b = means.min(1).values
    denom = torch.maximum(a, b)
    s_val = torch.where(denom > 0, (b - a) / denom.clamp_min(1e-300), torch.zeros_like(a))
    return torch.where(own_n > 1, s_val, torch.zeros_like(s_val))


def _distance_sums_all(work: Tensor, sq: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
    """Per-cluster distance sums ``(N, k)`` and self-distances ``(N,)`` for every point.

    Uses the symmetry of the distance matrix: each off-diagonal block ``D_IJ`` (``J > I``) is
    computed once and reduced both ways (``D_IJ @ onehot_J`` for rows ``I``, ``D_IJ^T @ onehot_I``
    for rows ``J``), halving the ``O(N^2 D)`` work; memory stays one block.
    """
    n, k = onehot.shape
    sums = torch.zeros(n, k, dtype=torch.float64, device=work.device)
    self_d = torch.empty(n, dtype=work.dtype, device=work.device)
    size = max(1, math.isqrt(block_rows(1, work.device)))
    for i in range(0, n, size):
        xi = work[i : i + size]
        for j in range(i, n, size):
            d = torch.addmm(sq[j : j + size].unsqueeze(0), xi, work[j : j + size].T, alpha=-2.0)
            d.add_(sq[i : i + size].unsqueeze(1)).clamp_min_(0.0).sqrt_()
            sums[i : i + size] += d @ onehot[j : j + size]
            if j == i:
                self_d[i : i + size] = d.diagonal()
            else:
                sums[j : j + size] += d.T @ onehot[i : i + size]
    return sums, self_d


def _distance_sums_rows(
    work: Tensor, sq: Tensor, onehot: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-cluster distance sums ``(m, k)`` and self-distances ``(m,)`` for the rows ``indices``."""
    n = work.shape[0]
    sums = torch.empty(indices.numel(), onehot.shape[1], dtype=torch.float64, device=work.device)
    self_d = torch.empty(indices.numel(), dtype=work.dtype, device=work.device)
    step = block_rows(n, work.device)
    for s in range(0, indices.numel(), step):
        idx = indices[s : s + step]
        d = torch.addmm(sq.unsqueeze(0), work[idx], work.T, alpha=-2.0)
        d.add_(sq[idx].unsqueeze(1)).clamp_min_(0.0).sqrt_()
        self_d[s : s + step] = d[torch.arange(idx.numel(), device=work.device), idx]
        sums[s : s + step] = d @ onehot
    return sums, self_d


def silhouette(
    x: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    sample_size: int | None = None,
    seed: int = 0,
) -> float:
    """Mean silhouette coefficient S1 of a partition (Euclidean, original embedding space).

    ``S = mean_i (b_i - a_i) / max(a_i, b_i)`` [1]; see :func:`silhouette_samples`. Range
    ``[-1, 1]``: 1 for compact, well separated clusters, about 0 for overlapping clusters,
    negative when points sit closer to another cluster than to their own. Unitless, invariant to
    permuting cluster ids, rotating, translating or uniformly scaling the embeddings. In the
    label-free protocol [0] the partition is the k-means partition C1.

    Exact mode (``sample_size=None`` or ``>= N``) equals ``sklearn.metrics.silhouette_score``
    (up to float32 rounding) in ``O(N^2 D)`` time and ``O(N * block)`` memory. Sampled mode
    averages the *exact* silhouette values of ``sample_size`` seeded random anchor points (each
    still compared with all ``N`` points), an unbiased estimate of the exact mean in
    ``O(sample_size * N * D)`` time. Its standard error is ``std(s_i) / sqrt(m) * sqrt(1 - m/N)``
    (about 0.002 for m = 10,000 on SSL-like data; measured figures in docs/metrics.md). This is
    not scikit-learn's ``silhouette_score(sample_size=m)``, which also drops the non-sampled points
    from the distance sums and is therefore noisier.

    Undefined for a single cluster or one cluster per point: returns NaN with a
    ``RuntimeWarning`` (this is what a collapsed k-means partition gives).

    Args:
        x: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer cluster ids.
        sample_size: Number of anchor points for the sampled estimate; ``None`` = exact.
        seed: Seed of the anchor draw (sampled mode only).

    Returns:
        The mean silhouette as a Python float (NaN if undefined).

    Raises:
        ValueError: for bad shapes, non-finite values or ``sample_size < 1``.

    References:
        Rousseeuw, J. Comput. Appl. Math. 20, 1987.
        Xu, Lowe, Trappenberg 2024 (S1), arXiv:2409.06612.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[0.0], [1.0], [10.0], [11.0]], dtype=np.float32)
        >>> round(silhouette(x, np.array([0, 0, 1, 1])), 4)
        0.8997
    """
    x = as_embeddings(x)
    n = x.shape[0]
    y = as_labels(labels, n=n, device=x.device)
    _, k = relabel(y)
    if k < 2 or k > n - 1:
        return nan_with_warning(
            f"silhouette is undefined for {k} cluster(s) on {n} samples (needs 2 <= k <= N-1); "
            "returning NaN. A single cluster usually means k-means collapsed on "
            "(near-)identical embeddings."
        )
    indices = None
    if sample_size is not None:
        sample_size = check_positive_int(sample_size, "sample_size")
        if sample_size < n:
            gen = generator(seed, x.device)
            indices = torch.randperm(n, generator=gen, device=gen.device)[:sample_size]
    values = silhouette_samples(x, y, indices=indices)
    if indices is not None:
        m = values.numel()
        se = float(values.std()) / math.sqrt(m) * math.sqrt(1 - m / n) if m > 1 else math.nan
        log.debug("sampled silhouette: %d of %d anchors, standard error %.4f", m, n, se)
    return float(values.mean())
