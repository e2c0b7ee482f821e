"""Clustering metrics: k-means, silhouette (S1), AMI / ARI, k-means agreement and AMI to labels.

All functions are pure, take numpy arrays or torch tensors (CPU or CUDA) and compute on the
device of their input. Randomness comes from a ``seed`` argument, never from the global RNG.

References:
    [0] Xu, Lowe, Trappenberg. Label-free Monitoring of Self-Supervised Learning Progress, 2024.
        https://arxiv.org/abs/2409.06612
    [1] Arthur, Vassilvitskii. k-means++: the advantages of careful seeding, SODA 2007.
    [2] Rousseeuw. Silhouettes: a graphical aid to the interpretation and validation of cluster
        analysis, J. Comput. Appl. Math. 20, 1987.
    [3] Vinh, Epps, Bailey. Information theoretic measures for clusterings comparison, JMLR 11,
        2010.
    [4] Hubert, Arabie. Comparing partitions, J. Classification 2, 1985.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import (
    as_embeddings,
    as_labels,
    block_rows,
    check_choice,
    check_positive_float,
    check_positive_int,
    generator,
    nan_with_warning,
    relabel,
)

log = logging.getLogger(__name__)

__all__ = [
    "KMeansResult",
    "adjusted_mutual_info",
    "adjusted_rand_index",
    "kmeans",
    "kmeans_agreement",
    "kmeans_gt_ami",
    "silhouette",
    "silhouette_samples",
]

_EPS64 = float(np.finfo(np.float64).eps)
_TAIL_LOG = 60.0  # hypergeometric tail mass skipped in E[MI]: exp(-60) ~ 1e-26 per pair


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KMeansResult:
    """Partitions from ``n_runs`` seeded k-means runs.

    Attributes:
        labels: ``(n_runs, N)`` int64 cluster ids; row 0 is C1, row 1 is C2, ...
        centers: ``(n_runs, k, D)`` final centroids (in the input's coordinates).
        inertia: ``(n_runs,)`` float64 sum of squared distances to the assigned centroid.
        n_iter: ``(n_runs,)`` Lloyd iterations each run took.
    """

    labels: Tensor
    centers: Tensor
    inertia: Tensor
    n_iter: Tensor


def _sq_dists_to(xt: Tensor, x_sq: Tensor, c: Tensor) -> Tensor:
    """Squared distances ``(len(c), N)`` between rows of ``c`` and the N columns of ``xt``."""
    c_sq = (c * c).sum(1)
    d = torch.addmm(x_sq.unsqueeze(0), c, xt, alpha=-2.0)
    return d.add_(c_sq.unsqueeze(1)).clamp_min_(0.0)


def _kmeans_plusplus(
    x: Tensor,
    xt: Tensor,
    x_sq: Tensor,
    k: int,
    n_runs: int,
    n_local_trials: int,
    gen: torch.Generator,
) -> Tensor:
    """Greedy k-means++ seeding [1] for ``n_runs`` independent runs at once: ``(n_runs, k, D)``.

    Like scikit-learn's ``_kmeans_plusplus``: each new centre is the best (lowest potential) of
    ``n_local_trials`` candidates drawn with probability proportional to D(x)^2.
    """
    n, d = x.shape
    dev = x.device
    runs = torch.arange(n_runs, device=dev)
    centers = torch.empty(n_runs, k, d, dtype=x.dtype, device=dev)
    first = torch.randint(n, (n_runs,), generator=gen, device=gen.device).to(dev)
    centers[:, 0] = x[first]
    closest = _sq_dists_to(xt, x_sq, centers[:, 0])  # (R, N)
    for c in range(1, k):
        weights = closest.double()
        empty = weights.sum(1) <= 0  # every point sits on a centre already: draw uniformly
        if bool(empty.any()):
            weights[empty] = 1.0
        cand = torch.multinomial(weights, n_local_trials, replacement=True, generator=gen)
        cand = cand.to(dev)  # (R, L)
        d_cand = _sq_dists_to(xt, x_sq, x[cand.reshape(-1)]).view(n_runs, n_local_trials, n)
        new_closest = torch.minimum(closest.unsqueeze(1), d_cand)  # (R, L, N)
        best = new_closest.sum(2).argmin(1)  # (R,)
        closest = new_closest[runs, best]
        centers[:, c] = x[cand[runs, best]]
    return centers


def _cluster_sums(x: Tensor, labels: Tensor, k: int, *, one_hot: bool | None = None) -> Tensor:
    """Per-cluster sums of the rows of ``x``, ``(k, D)``, returned in float64.

    ``index_add_`` on the CPU; on CUDA (``one_hot=None``) a one-hot matrix product, which is
    deterministic where ``index_add_``'s float atomics are not.
    """
    if one_hot if one_hot is not None else x.device.type == "cuda":
        return (torch.nn.functional.one_hot(labels, k).to(x.dtype).T @ x).double()
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    return sums.index_add_(0, labels, x).double()


def _reassign(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """New labels after centres moved, and the indices of the points that changed cluster.

    A point changes cluster only if some centre is now strictly closer than its own (ties keep
    the current cluster); only those points need an argmin (``amin`` over all is ~20x cheaper).
    """
    own = dist.gather(0, labels.unsqueeze(0)).squeeze(0)
    changed = (dist.amin(0) < own).nonzero().flatten()
    new = labels.clone()
    new[changed] = dist[:, changed].argmin(0)
    return new, changed


def _lloyd(
    x: Tensor, xt: Tensor, x_sq: Tensor, centers: Tensor, *, max_iter: int, tol_abs: float
) -> tuple[Tensor, Tensor, Tensor, int]:
    """One run of Lloyd's algorithm from ``centers``: labels, centres, squared distances, steps.

    Exact Lloyd (scikit-learn's ``lloyd_iter`` semantics: stop on unchanged labels or when the
    squared centre shift is at most ``tol_abs``, then one last assignment), computed
    incrementally: a centre moves only if its cluster gained or lost points, so each step
    recomputes the distances to the moved centres only (late steps move a few of k) and updates
    the cluster sums (float64) with the points that changed cluster. ``dist`` (k, N) holds
    ``||c||^2 - 2 c.x``, which has the same argmin over centres as ``||x - c||^2``.
    """
    k = centers.shape[0]
    dist = torch.addmm((centers * centers).sum(1, keepdim=True), centers, xt, alpha=-2.0)
    labels = dist.min(0).indices
    sums = _cluster_sums(x, labels, k)
    counts = torch.bincount(labels, minlength=k).double()
    prev = None
    for it in range(1, max_iter + 1):  # noqa: B007 (the step count is returned)
        if bool((counts == 0).any()):  # sklearn: an empty cluster takes the farthest point
            empties = torch.nonzero(counts == 0).flatten()
            own = dist.gather(0, labels.unsqueeze(0)).squeeze(0) + x_sq
            far = torch.topk(own, int(empties.numel())).indices
            for e, p in zip(empties.tolist(), far.tolist(), strict=True):
                old = int(labels[p])
                sums[old] -= x[p].double()
                counts[old] -= 1
                sums[e], counts[e], labels[p] = x[p].double(), 1.0, e
        new = (sums / counts.clamp_min(1.0).unsqueeze(1)).to(x.dtype)
        moved = (new != centers).any(1).nonzero().flatten()
        shift = float(((new[moved] - centers[moved]) ** 2).sum())
        centers = new
        strict = prev is not None and torch.equal(labels, prev)
        if moved.numel():
            c = centers[moved]
            dist[moved] = torch.addmm((c * c).sum(1, keepdim=True), c, xt, alpha=-2.0)
        if strict or shift <= tol_abs:
            break
        prev = labels
        labels, changed = _reassign(dist, labels)
        if changed.numel():
            xs = x[changed]
            sums += _cluster_sums(xs, labels[changed], k)
            sums -= _cluster_sums(xs, prev[changed], k)
            counts += torch.bincount(labels[changed], minlength=k).double()
            counts -= torch.bincount(prev[changed], minlength=k).double()
    # The last assignment, to the final centres, with ties to the lowest index (scikit-learn's
    # rule) so that duplicate centres collapse. min(0) is ~3x faster than argmin(0) here.
    labels = dist.min(0).indices
    min_d2 = (dist.gather(0, labels.unsqueeze(0)).squeeze(0) + x_sq).clamp_min_(0.0)
    return labels, centers, min_d2, it


def kmeans(
    x: Tensor | np.ndarray,
    *,
    k: int,
    n_runs: int = 5,
    max_iter: int = 300,
    tol: float = 1e-4,
    n_local_trials: int | None = None,
    seed: int = 0,
) -> KMeansResult:
    """Lloyd's k-means with greedy k-means++ seeding, ``n_runs`` seeded runs.

    Minimises the inertia ``sum_i min_j ||x_i - c_j||^2``. Each run starts from its own
    k-means++ initialisation [1] (the runs' seedings share every distance computation). Lloyd
    steps are exact but incremental: only the centres whose cluster changed are moved and have
    their distances recomputed, which in the late steps is a few of the k; memory is one
    ``(k, N)`` distance matrix per run. This is what makes ``n_runs`` partitions C1..Cn cheap. The
    algorithm mirrors scikit-learn's ``KMeans(algorithm="lloyd", n_init=1)``: data centred,
    ``2 + floor(ln k)`` local trials per seeding step, stop when labels no longer change or the
    squared centre shift falls below ``tol * mean(var(x, axis=0))``, empty clusters re-seeded with
    the points farthest from their centre, and a final assignment step.

    Distances use the expansion ``||x||^2 - 2 x.c + ||c||^2`` in the input precision (float32
    for float32 input), so inertia can differ from a float64 computation in the 6th digit.

    Degenerate input: ``k`` larger than the number of samples raises ``ValueError``. Identical
    embeddings (zero variance) cannot be split: a ``RuntimeWarning`` is emitted and every run
    returns the single-cluster partition (all labels 0), on which silhouette is undefined (NaN).
    If the data hold fewer than ``k`` distinct points some clusters stay empty (with a warning).

    Args:
        x: ``(N, D)`` embeddings (numpy or torch, CPU or CUDA).
        k: Number of clusters, ``1 <= k <= N``.
        n_runs: Number of independently seeded initialisations (partitions C1..Cn).
        max_iter: Maximum Lloyd iterations per run.
        tol: Relative tolerance on the squared centre shift (scikit-learn's definition).
        n_local_trials: Candidates per k-means++ step; ``None`` = ``2 + floor(ln k)``.
        seed: Seed of the initialisations (run ``r`` uses the ``r``-th draws of this stream).

    Returns:
        A :class:`KMeansResult` whose tensors live on the input's device.

    Raises:
        ValueError: for non-finite input, ``k > N`` or invalid options.

    References:
        Arthur, Vassilvitskii. k-means++: the advantages of careful seeding, SODA 2007.
        Xu, Lowe, Trappenberg 2024 (k-means partitions C1..Cn), arXiv:2409.06612.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
        >>> res = kmeans(x.astype(np.float32), k=2, n_runs=2, seed=0)
        >>> res.labels.shape
        torch.Size([2, 40])
        >>> bool((res.labels[0, :20] != res.labels[0, 20:]).all())
        True
    """
    x = as_embeddings(x)
    n, _ = x.shape
    k = check_positive_int(k, "k")
    n_runs = check_positive_int(n_runs, "n_runs")
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_positive_float(tol, "tol", allow_zero=True)
    if k > n:
        raise ValueError(
            f"k={k} is larger than the number of samples ({n}): lower k or pass more samples."
        )
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    n_local_trials = check_positive_int(n_local_trials, "n_local_trials")
    gen = generator(seed, x.device)

    mean = x.mean(0)
    xc = x - mean
    sq = xc * xc
    tol_abs = float(sq.mean()) * tol  # tol * mean per-feature variance
    if bool((x == x[0]).all()):  # exact test: a rounded mean can leave xc slightly nonzero
        warnings.warn(
            "k-means got identical embeddings (zero variance): they cannot be split, so every "
            "run returns a single cluster (label 0). Silhouette is undefined for it.",
            RuntimeWarning,
            stacklevel=2,
        )
        labels = torch.zeros(n_runs, n, dtype=torch.long, device=x.device)
        centers = x[:1].expand(n_runs, k, -1).clone()
        zeros = torch.zeros(n_runs, dtype=torch.float64, device=x.device)
        return KMeansResult(labels, centers, zeros, torch.zeros(n_runs, dtype=torch.long))

    x_sq = sq.sum(1)
    del sq
    xt = xc.T.contiguous()  # (D, N): distance products read it in memory order (~1.4x faster)
    seeds = _kmeans_plusplus(xc, xt, x_sq, k, n_runs, n_local_trials, gen)
    runs = [_lloyd(xc, xt, x_sq, c, max_iter=max_iter, tol_abs=tol_abs) for c in seeds]
    labels = torch.stack([r[0] for r in runs])
    centers = torch.stack([r[1] for r in runs])
    inertia = torch.stack([r[2].double().sum() for r in runs])
    n_iter = torch.tensor([r[3] for r in runs])
    n_nonempty = torch.stack([torch.bincount(lab, minlength=k) > 0 for lab in labels]).sum(1)
    if bool((n_nonempty < k).any()):
        warnings.warn(
            f"k-means found only {int(n_nonempty.min())} non-empty clusters for k={k}: the "
            "embeddings hold fewer distinct points than k.",
            RuntimeWarning,
            stacklevel=2,
        )
    log.debug("k-means k=%d runs=%d iterations=%s", k, n_runs, n_iter.tolist())
    return KMeansResult(labels, centers + mean, inertia, n_iter)


# --------------------------------------------------------------------------------------------
# silhouette
# --------------------------------------------------------------------------------------------


def silhouette_samples(
    x: Tensor | np.ndarray, labels: Tensor | np.ndarray, *, indices: Tensor | None = None
) -> Tensor:
    """Silhouette value of each point (or of the points ``indices``), exact, in blocks.

    ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean Euclidean distance from ``i`` to
    the other members of its cluster and ``b_i`` the smallest mean distance to another cluster
    [2]. Every value uses all ``N`` points; memory stays ``O(N k + block)`` because distances are
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

    ``S = mean_i (b_i - a_i) / max(a_i, b_i)`` [2]; see :func:`silhouette_samples`. Range
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


# --------------------------------------------------------------------------------------------
# partition comparison
# --------------------------------------------------------------------------------------------


def _contingency(a: Tensor, b: Tensor) -> Tensor:
    """Contingency table ``(ka, kb)`` (int64) of two label vectors of the same length."""
    ia, ka = relabel(a)
    ib, kb = relabel(b)
    return torch.bincount(ia * kb + ib, minlength=ka * kb).view(ka, kb)


def _entropy_of_counts(c: Tensor, n: int) -> Tensor:
    c = c[c > 0].double()
    return -((c / n) * (c.log() - math.log(n))).sum()


def _expected_mutual_info(a: Tensor, b: Tensor, n: int) -> Tensor:
    """E[MI] (nats) of two random partitions with marginals ``a``, ``b`` (hypergeometric) [3].

    ``E[MI] = sum_ij sum_nij nij/N log(N nij / (a_i b_j)) P(nij | a_i, b_j, N)`` with
    ``nij`` from ``max(1, a_i + b_j - N)`` to ``min(a_i, b_j)``. Vectorised over all (i, j, nij)
    triples (ragged ranges flattened with ``repeat_interleave``), in float64 on the input's device,
    with log-factorials looked up in one ``lgamma`` table; the same sum as scikit-learn's Cython
    ``expected_mutual_information``.
    """
    dev = a.device
    logfact = torch.lgamma(torch.arange(n + 2, dtype=torch.float64, device=dev) + 1)
    ai = a.long().unsqueeze(1).expand(-1, b.numel()).reshape(-1)
    bj = b.long().unsqueeze(0).expand(a.numel(), -1).reshape(-1)
    start = torch.clamp(ai + bj - n, min=1)
    stop = torch.minimum(ai, bj)
    # Skip the far tails of the hypergeometric P(nij): by Bernstein's inequality (valid for
    # sampling without replacement, Hoeffding 1963) P(|nij - mu| >= s) <= 2 exp(-_TAIL_LOG) for
    # s = L/3 + sqrt(L^2/9 + 2 L var) with var the binomial variance; the dropped terms sum to
    # < 1e-25 in absolute value, far below float64 resolution of the result.
    af, bf = ai.double(), bj.double()
    mu = af * bf / n
    var = af * (bf / n) * (1 - bf / n)
    s_tail = _TAIL_LOG / 3 + torch.sqrt(_TAIL_LOG**2 / 9 + 2 * _TAIL_LOG * var)
    start = torch.maximum(start, torch.floor(mu - s_tail).long())
    stop = torch.minimum(stop, torch.ceil(mu + s_tail).long())
    lengths = (stop - start + 1).clamp_min(0)
    # log of the hypergeometric normaliser a! b! (N-a)! (N-b)! / N!, per (i, j)
    const = logfact[ai] + logfact[bj] + logfact[n - ai] + logfact[n - bj] - logfact[n]
    log_ab = ai.double().log() + bj.double().log()
    log_n = math.log(n)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    cum = torch.cumsum(lengths, 0)
    budget = 1 << 22  # triples per piece: bounds the temporary memory
    n_pairs = lengths.numel()
    lo = 0
    while lo < n_pairs:
        base = int(cum[lo - 1]) if lo > 0 else 0
        hi = int(torch.searchsorted(cum, torch.tensor(base + budget, device=dev)))
        hi = min(max(hi, lo + 1), n_pairs)
        ln = lengths[lo:hi]
        t = int(cum[hi - 1]) - base
        if t > 0:
            pair = torch.repeat_interleave(torch.arange(hi - lo, device=dev), ln, output_size=t)
            offsets = torch.cumsum(ln, 0) - ln
            nij = start[lo:hi][pair] + torch.arange(t, device=dev) - offsets[pair]
            aa, bb = ai[lo:hi][pair], bj[lo:hi][pair]
            log_p = (
                const[lo:hi][pair]
                - logfact[nij]
                - logfact[aa - nij]
                - logfact[bb - nij]
                - logfact[n - aa - bb + nij]
            )
            nf = nij.double()
            term = nf / n * (log_n + nf.log() - log_ab[lo:hi][pair]) * log_p.exp()
            total = total + term.sum()
        lo = hi
    return total


def _as_label_pair(a, b) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        dev = a.device
    elif isinstance(b, Tensor):
        dev = b.device
    else:
        dev = torch.device("cpu")
    n = int(a.shape[0]) if hasattr(a, "shape") and len(a.shape) else len(a)
    ta = as_labels(a, n=n, device=dev, name="labels_a")
    tb = as_labels(b, n=n, device=dev, name="labels_b")
    return ta, tb


def adjusted_mutual_info(labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray) -> float:
    """Adjusted mutual information between two partitions (arithmetic normalisation).

    ``AMI = (MI - E[MI]) / (mean(H(U), H(V)) - E[MI])`` [3], with MI and the entropies from the
    contingency table and ``E[MI]`` the expected MI under the hypergeometric model of randomness
    (:func:`_expected_mutual_info`). 1 for identical partitions (up to relabelling), about 0 for
    independent ones, can be slightly negative. Symmetric, unitless. Equals
    ``sklearn.metrics.adjusted_mutual_info_score(a, b)`` (``average_method="arithmetic"``) to
    ~1e-12, including its conventions: two single-cluster partitions give 1.0, a single cluster
    against several gives 0.0, and the numerator / denominator are clamped away from 0 by
    float64 eps. Computed on the labels' device (CUDA labels stay on the GPU).

    Args:
        labels_a: ``(N,)`` integer labels.
        labels_b: ``(N,)`` integer labels.

    Returns:
        AMI as a Python float.

    Raises:
        ValueError: if the label vectors differ in length or are not integer.

    References:
        Vinh, Epps, Bailey, JMLR 11, 2010.

    Examples:
        >>> import numpy as np
        >>> adjusted_mutual_info(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
        >>> a, b = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 2, 2, 2])
        >>> round(adjusted_mutual_info(a, b), 4)
        0.5024
    """
    a, b = _as_label_pair(labels_a, labels_b)
    n = a.numel()
    cont = _contingency(a, b)
    ka, kb = cont.shape
    if ka == kb == 1 or n == 0:
        return 1.0
    if ka == 1 or kb == 1:
        return 0.0
    rows = cont.sum(1)
    cols = cont.sum(0)
    nz = cont > 0
    nij = cont[nz].double()
    outer = (rows.unsqueeze(1).double() * cols.unsqueeze(0).double())[nz]
    # MI term by term in scikit-learn's arrangement (log differences, tiny terms zeroed), so
    # identical partitions give exactly the same MI and entropies.
    p_ij = nij / n
    terms = p_ij * (nij.log() - math.log(n)) + p_ij * (2 * math.log(n) - outer.log())
    terms = torch.where(terms.abs() < _EPS64, torch.zeros_like(terms), terms)
    mi = terms.sum().clamp_min(0.0)
    emi = _expected_mutual_info(rows, cols, n)
    h_a = _entropy_of_counts(rows, n)
    h_b = _entropy_of_counts(cols, n)
    denom = float(0.5 * (h_a + h_b) - emi)
    numer = float(mi - emi)
    denom = min(denom, -_EPS64) if denom < 0 else max(denom, _EPS64)
    numer = min(numer, -_EPS64) if numer < 0 else max(numer, _EPS64)
    return numer / denom


def adjusted_rand_index(labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray) -> float:
    """Adjusted Rand index between two partitions.

    ``ARI = (RI - E[RI]) / (max(RI) - E[RI])`` [4], computed from the pair-confusion counts
    exactly as ``sklearn.metrics.adjusted_rand_score`` (exact integer arithmetic): 1 for identical
    partitions, about 0 for random ones, >= -0.5. Symmetric, unitless.

    Args:
        labels_a: ``(N,)`` integer labels.
        labels_b: ``(N,)`` integer labels.

    Returns:
        ARI as a Python float.

    References:
        Hubert, Arabie, J. Classification 2, 1985.

    Examples:
        >>> import numpy as np
        >>> adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
    """
    a, b = _as_label_pair(labels_a, labels_b)
    n = a.numel()
    cont = _contingency(a, b)
    # Pair confusion matrix (sklearn.metrics.cluster.pair_confusion_matrix), exact in Python ints.
    sum_sq = int((cont * cont).sum())
    rows = cont.sum(1)
    cols = cont.sum(0)
    sum_rows_sq = int((rows * rows).sum())
    sum_cols_sq = int((cols * cols).sum())
    tp = sum_sq - n
    fp = sum_rows_sq - sum_sq
    fn = sum_cols_sq - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def kmeans_agreement(partitions: Tensor | np.ndarray, *, method: str = "ami") -> float:
    """Mean pairwise agreement between k-means partitions from different initialisations.

    ``A = mean_{r < s} AMI(C_r; C_s)`` over the ``n_runs`` partitions (``n_runs (n_runs - 1) / 2``
    pairs); with two runs this is the paper's AMI(C1;C2) [0]. ``method="ari"`` uses the adjusted
    Rand index instead. Range as the underlying index (1 = every initialisation finds the same
    partition, a sign of stable cluster structure; about 0 = unrelated partitions). Two
    single-cluster partitions agree perfectly (1.0) by the AMI/ARI conventions, so a collapsed
    encoder scores 1.0 here: read it together with the silhouette (NaN in that case).

    Args:
        partitions: ``(n_runs, N)`` integer labels, e.g. ``kmeans(...).labels``.
        method: ``"ami"`` (adjusted mutual information, arithmetic) or ``"ari"``.

    Returns:
        Mean pairwise agreement as a Python float.

    Raises:
        ValueError: if fewer than 2 partitions are given or ``method`` is unknown.

    References:
        Xu, Lowe, Trappenberg 2024 (AMI(C1;C2)), arXiv:2409.06612.
        Vinh, Epps, Bailey, JMLR 11, 2010.

    Examples:
        >>> import numpy as np
        >>> kmeans_agreement(np.array([[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]))
        1.0
    """
    method = check_choice(method, "method", ("ami", "ari"))
    if isinstance(partitions, np.ndarray):
        partitions = torch.from_numpy(np.asarray(partitions))
    if not isinstance(partitions, Tensor) or partitions.ndim != 2:
        raise ValueError(
            "partitions must be a 2-D (n_runs, n_samples) array of labels; got "
            f"{getattr(partitions, 'shape', type(partitions).__name__)}."
        )
    if partitions.shape[0] < 2:
        raise ValueError(
            f"kmeans_agreement needs at least 2 partitions (n_runs >= 2); got "
            f"{partitions.shape[0]}. Raise metrics.kmeans.n_runs."
        )
    score = adjusted_mutual_info if method == "ami" else adjusted_rand_index
    pairs = itertools.combinations(range(partitions.shape[0]), 2)
    values = [score(partitions[r], partitions[s]) for r, s in pairs]
    return float(np.mean(values))


def kmeans_gt_ami(partition: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """AMI(C1;C_GT): adjusted mutual information between a k-means partition and the labels.

    ``AMI(C1; C_GT)`` of [0] (see :func:`adjusted_mutual_info` for the formula, range and
    conventions): how well the label-free clusters recover the ground-truth classes.

    Args:
        partition: ``(N,)`` cluster ids (k-means partition C1).
        labels: ``(N,)`` ground-truth class ids.

    Returns:
        AMI as a Python float.

    References:
        Xu, Lowe, Trappenberg 2024 (AMI(C1;C_GT)), arXiv:2409.06612.

    Examples:
        >>> import numpy as np
        >>> kmeans_gt_ami(np.array([2, 2, 0, 0]), np.array([0, 0, 1, 1]))
        1.0
    """
    return adjusted_mutual_info(partition, labels)
