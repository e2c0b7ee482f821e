"""Partition comparison: AMI, ARI, k-means agreement AMI(C1;C2) and AMI(C1;C_GT) to labels.

Pure functions of integer label vectors (numpy or torch, CPU or CUDA), computed on the labels'
device, exact in float64 or integer arithmetic, matching scikit-learn's conventions.

References:
    [0] Xu, Lowe, Trappenberg. Label-free Monitoring of Self-Supervised Learning Progress, 2024.
        https://arxiv.org/abs/2409.06612
    [1] Vinh, Epps, Bailey. Information theoretic measures for clusterings comparison, JMLR 11,
        2010.
    [2] Hubert, Arabie. Comparing partitions, J. Classification 2, 1985.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import as_labels, check_choice, relabel

__all__ = [
    "adjusted_mutual_info",
    "adjusted_rand_index",
    "kmeans_agreement",
    "kmeans_gt_ami",
]

_EPS64 = float(np.finfo(np.float64).eps)
_TAIL_LOG = 60.0  # hypergeometric tail mass skipped in E[MI]: exp(-60) ~ 1e-26 per pair


def _entropy_of_counts(c: Tensor, n: int) -> Tensor:
    c = c[c > 0].double()
    return -((c / n) * (c.log() - math.log(n))).sum()


def _expected_mutual_info(a: Tensor, b: Tensor, n: int) -> Tensor:
    """E[MI] (nats) of two random partitions with marginals ``a``, ``b`` (hypergeometric) [1].

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


def _contingency(
    labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Contingency table ``(ka, kb)`` (int64) of two label vectors, its row and column sums, N.

    The labels are checked (same length, integer ids) and moved to the device of whichever of
    them is a tensor (CPU for two numpy arrays).
    """
    if isinstance(labels_a, Tensor):
        dev = labels_a.device
    elif isinstance(labels_b, Tensor):
        dev = labels_b.device
    else:
        dev = torch.device("cpu")
    shape = getattr(labels_a, "shape", ())
    n = int(shape[0]) if len(shape) else len(labels_a)
    ia, ka = relabel(as_labels(labels_a, n=n, device=dev, name="labels_a"))
    ib, kb = relabel(as_labels(labels_b, n=n, device=dev, name="labels_b"))
    cont = torch.bincount(ia * kb + ib, minlength=ka * kb).view(ka, kb)
    return cont, cont.sum(1), cont.sum(0), n


def adjusted_mutual_info(labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray) -> float:
    """Adjusted mutual information between two partitions (arithmetic normalisation).

    ``AMI = (MI - E[MI]) / (mean(H(U), H(V)) - E[MI])`` [1], with MI and the entropies from the
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
        AMI as a Python float (1.0 for partitions equal up to relabelling).

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
    cont, rows, cols, n = _contingency(labels_a, labels_b)
    ka, kb = cont.shape
    if ka == kb == 1 or n == 0:
        return 1.0
    if ka == 1 or kb == 1:
        return 0.0
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

    ``ARI = (RI - E[RI]) / (max(RI) - E[RI])`` [2], computed from the pair-confusion counts
    exactly as ``sklearn.metrics.adjusted_rand_score`` (exact integer arithmetic): 1 for identical
    partitions, about 0 for random ones, >= -0.5. Symmetric, unitless.

    Args:
        labels_a: ``(N,)`` integer labels.
        labels_b: ``(N,)`` integer labels.

    Returns:
        ARI as a Python float, in ``[-0.5, 1]``.

    References:
        Hubert, Arabie, J. Classification 2, 1985.

    Examples:
        >>> import numpy as np
        >>> adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
    """
    cont, rows, cols, n = _contingency(labels_a, labels_b)
    # Pair confusion matrix (sklearn.metrics.cluster.pair_confusion_matrix), exact in Python ints.
    sum_sq = int((cont * cont).sum())
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
