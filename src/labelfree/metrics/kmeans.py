"""k-means: Lloyd's algorithm with greedy k-means++ seeding, ``n_runs`` seeded runs at once.

The estimator behind the clustering metrics: its partitions C1..Cn feed the silhouette
(:mod:`labelfree.metrics.silhouette`) and the agreement scores
(:mod:`labelfree.metrics.agreement`). Pure, computes on the device of its input, randomness from
a ``seed`` argument, never from the global RNG.

References:
    [0] Xu, Lowe, Trappenberg. Label-free Monitoring of Self-Supervised Learning Progress, 2024.
        https://arxiv.org/abs/2409.06612
    [1] Arthur, Vassilvitskii. k-means++: the advantages of careful seeding, SODA 2007.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import (
    as_embeddings,
    check_positive_float,
    check_positive_int,
    generator,
)

log = logging.getLogger(__name__)

__all__ = ["KMeansResult", "kmeans"]


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
