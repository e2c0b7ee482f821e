"""Label-based references: linear probe, weighted kNN and few-shot probe accuracy.

All three train on a labelled split (``train_x``, ``train_y``) and report top-1 accuracy, a
fraction in ``[0, 1]``, on another split (``x``, ``y``). They run on the input's device; the
probe is full-batch L-BFGS with analytic gradients (no autograd, so it also works under
``torch.inference_mode``).

References:
    [0] Xu, Lowe, Trappenberg. Label-free Monitoring of Self-Supervised Learning Progress, 2024.
        https://arxiv.org/abs/2409.06612
    [1] Wu, Xiong, Yu, Lin. Unsupervised feature learning via non-parametric instance
        discrimination, CVPR 2018 (weighted kNN evaluation). https://arxiv.org/abs/1805.01978
    [2] da Costa et al. solo-learn: a library of self-supervised methods for visual
        representation learning, JMLR 2022 (``WeightedKNNClassifier``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from labelfree.metrics._checks import (
    as_embeddings,
    as_labels,
    block_rows,
    check_positive_float,
    check_positive_int,
    generator,
)

log = logging.getLogger(__name__)

__all__ = ["fewshot_probe_acc", "knn_acc", "linear_probe_acc"]


def _splits(train_x, train_y, x, y) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Checked tensors, labels mapped to ``0..C-1`` by the train classes (unseen classes -> -1)."""
    tx = as_embeddings(train_x, name="train_embeddings")
    ex = as_embeddings(x, name="embeddings")
    if ex.device != tx.device:
        raise ValueError(
            f"embeddings are on {ex.device} but train_embeddings on {tx.device}: "
            "move both to the same device."
        )
    if ex.shape[1] != tx.shape[1]:
        raise ValueError(
            f"embeddings have {ex.shape[1]} features but train_embeddings {tx.shape[1]}: "
            "both splits must come from the same encoder output."
        )
    ty = as_labels(train_y, n=tx.shape[0], device=tx.device, name="train_labels")
    ey = as_labels(y, n=ex.shape[0], device=tx.device, name="labels")
    classes = torch.unique(ty)
    ty_m = torch.searchsorted(classes, ty)
    pos = torch.searchsorted(classes, ey).clamp_max(classes.numel() - 1)
    ey_m = torch.where(classes[pos] == ey, pos, torch.full_like(pos, -1))
    return tx, ty_m, ex, ey_m, int(classes.numel())


# Preconditioner damping, in units of the mean feature second moment: with delta = tr(S) / D
# L-BFGS reached the objective of 100 plain iterations in about 50 (docs/metrics.md).
_PRECOND_DAMPING = 1.0


def _fit_softmax(
    x: Tensor, y: Tensor, n_classes: int, *, l2: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: weights ``(D, C)``, bias ``(C,)``.

    Minimises ``mean_i CE(x_i W + b, y_i) + l2 / 2 ||W||_F^2`` (bias not penalised) with
    analytic gradients, in preconditioned coordinates: with ``S = x^T x / N``,
    ``delta = tr(S) / D`` and the Cholesky factor ``S + delta I = L L^T``, it optimises
    ``V = L^T W`` on the features ``x L^{-T}``. The objective, and so its minimiser, is
    unchanged (``x W = (x L^{-T}) V``, ``||W|| = ||L^{-T} V||``), but its curvature is far more
    even across directions, so L-BFGS converges in about half the iterations on correlated
    embeddings. Logits are kept class-major, ``(C, N)``, with the features stored both ways, so
    every product reads its operands in memory order (several times faster on a CPU than the
    sample-major layout for small C).
    """
    n, d = x.shape
    gram = x.T @ x / n
    damping = _PRECOND_DAMPING * float(gram.diagonal().mean())
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky(gram + (damping if damping > 0 else 1.0) * eye)  # L
    chol_t = chol.T.contiguous()
    xt = torch.linalg.solve_triangular(chol, x.T, upper=False)  # (x L^{-T})^T, (D, N)
    xp = xt.T.contiguous()  # (N, D)
    vt = torch.zeros(n_classes, d, dtype=x.dtype, device=x.device)  # V^T
    b = torch.zeros(n_classes, 1, dtype=x.dtype, device=x.device)
    cols = torch.arange(n, device=x.device)

    def weights(vt: Tensor) -> Tensor:
        return torch.linalg.solve_triangular(chol_t, vt.T, upper=True)  # W = L^{-T} V, (D, C)

    def closure() -> Tensor:
        logp = torch.log_softmax(torch.addmm(b, vt, xt), 0)  # (C, N)
        w = weights(vt)
        loss = -logp[y, cols].mean() + 0.5 * l2 * (w * w).sum()
        grad = logp.exp_()  # softmax probabilities, in place
        grad[y, cols] -= 1.0
        grad /= n  # d loss / d logits, (C, N)
        penalty = torch.linalg.solve_triangular(chol, w, upper=False).T  # d ||W||^2 / 2 dV
        vt.grad = torch.addmm(penalty, grad, xp, beta=l2)
        b.grad = grad.sum(1, keepdim=True)
        return loss

    opt = torch.optim.LBFGS(
        [vt, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    with torch.no_grad():
        opt.step(closure)
    return weights(vt), b.squeeze(1)


# A train feature whose standard deviation is at most this many units of roundoff of its mean is
# constant: rows that agree exactly still leave a residue t - mean(t) of a few roundoffs.
_CONSTANT_FEATURE_ULPS = 16


def _standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Scale by the train split's mean and std; features constant on the train split become 0.

    A constant feature's rounding residue ``t - mean`` is not signal: divided by its (tiny or
    zero) std it became O(1) values that the preconditioner then amplified, and a probe on
    identical embeddings predicted class 0 instead of the majority class. Set exactly to 0
    (train and evaluation rows alike), such a feature carries nothing, and the probe falls back
    to the class prior through the bias.
    """
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    constant = std <= _CONSTANT_FEATURE_ULPS * torch.finfo(train.dtype).eps * mean.abs()
    std = torch.where(constant, torch.ones_like(std), std)
    return [((t - mean) / std).masked_fill_(constant, 0.0) for t in (train, *others)]


def linear_probe_acc(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    l2: float = 1e-4,
    max_iter: int = 50,
    standardize: bool = True,
) -> float:
    """Top-1 accuracy of a linear (softmax) probe trained on ``train_x`` and tested on ``x``.

    Protocol: features standardised with the train split's mean and standard deviation
    (``standardize=True``), then multinomial logistic regression minimising
    ``mean_i CE(W x_i + b, y_i) + (l2 / 2) ||W||_F^2`` (bias unpenalised) by full-batch L-BFGS
    (strong-Wolfe line search, history 10, preconditioned by the features' second moments) for
    at most ``max_iter`` iterations from zero weights.
    This is scikit-learn's ``LogisticRegression(C=1 / (l2 * n_train))`` objective; with the
    defaults it matches that model to within 1 accuracy point. Accuracy = fraction of
    ``argmax_c`` predictions equal to ``y``; test classes absent from the train split count as
    errors. Range ``[0, 1]``. Deterministic (no randomness). The "linear probe" of [0].

    Args:
        train_x: ``(M, D)`` labelled training embeddings.
        train_y: ``(M,)`` training labels.
        x: ``(N, D)`` evaluation embeddings.
        y: ``(N,)`` evaluation labels.
        l2: L2 penalty on the weights (mean-loss scale; ``>= 0``).
        max_iter: Maximum L-BFGS iterations.
        standardize: Standardise features with train statistics first.

    Returns:
        Accuracy in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: for mismatched shapes or devices, non-finite values, or bad options.

    References:
        Xu, Lowe, Trappenberg 2024 (linear probe reference), arXiv:2409.06612.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200)
        >>> x = (rng.normal(size=(200, 5)) + 3 * y[:, None]).astype(np.float32)
        >>> linear_probe_acc(x[:100], y[:100], x[100:], y[100:])
        1.0
    """
    l2 = check_positive_float(l2, "l2", allow_zero=True)
    max_iter = check_positive_int(max_iter, "max_iter")
    tx, ty, ex, ey, n_classes = _splits(train_x, train_y, x, y)
    if n_classes < 2:
        log.warning("linear probe: the train split has a single class; accuracy is trivial.")
    dtype = torch.float64 if tx.dtype == torch.float64 else torch.float32
    tx, ex = tx.to(dtype), ex.to(dtype)
    if standardize:
        tx, ex = _standardize(tx, ex)
    w, b = _fit_softmax(tx, ty, n_classes, l2=l2, max_iter=max_iter)
    pred = torch.addmm(b, ex, w).argmax(1)
    return float((pred == ey).double().mean())


def knn_acc(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of a temperature-weighted cosine kNN classifier (InstDisc / solo-learn).

    Embeddings are L2-normalised; each evaluation point takes its ``k`` most cosine-similar
    training points and votes ``score_c = sum_{j in kNN, y_j = c} exp(s_j / temperature)`` [1, 2];
    the prediction is ``argmax_c score_c``. Range ``[0, 1]``. Deterministic (ties in the top-k
    resolved by ``torch.topk``). Computed in blocks of evaluation rows (``O(N M D)`` time).

    Args:
        train_x: ``(M, D)`` labelled reference embeddings.
        train_y: ``(M,)`` reference labels.
        x: ``(N, D)`` evaluation embeddings.
        y: ``(N,)`` evaluation labels.
        k: Number of neighbours (``<= M``).
        temperature: Softmax temperature of the votes (> 0).

    Returns:
        Accuracy in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: for mismatched inputs, ``k > M`` or ``temperature <= 0``.

    References:
        Wu, Xiong, Yu, Lin. Instance discrimination, CVPR 2018, arXiv:1805.01978.
        da Costa et al. solo-learn, JMLR 2022 (WeightedKNNClassifier).

    Examples:
        >>> import numpy as np
        >>> ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> knn_acc(ref, np.array([0, 0, 1, 1]), np.array([[1.0, 0.2]]), np.array([0]), k=2)
        1.0
    """
    k = check_positive_int(k, "k")
    temperature = check_positive_float(temperature, "temperature")
    tx, ty, ex, ey, n_classes = _splits(train_x, train_y, x, y)
    if k > tx.shape[0]:
        raise ValueError(
            f"knn k={k} is larger than the number of labelled train samples ({tx.shape[0]}): "
            "lower metrics.knn_acc.k."
        )
    tx = torch.nn.functional.normalize(tx.float(), dim=1)
    ex = torch.nn.functional.normalize(ex.float(), dim=1)
    correct = torch.zeros((), dtype=torch.float64, device=tx.device)
    step = min(block_rows(tx.shape[0], tx.device), block_rows(k * n_classes, tx.device))
    for s in range(0, ex.shape[0], step):
        sim = ex[s : s + step] @ tx.T
        top, idx = sim.topk(k, dim=1)
        weights = (top / temperature).exp()  # (b, k)
        # votes via a one-hot product (deterministic on CUDA, unlike scatter_add_'s atomics)
        onehot = torch.nn.functional.one_hot(ty[idx], n_classes).to(weights.dtype)  # (b, k, C)
        votes = torch.bmm(weights.unsqueeze(1), onehot).squeeze(1)
        correct += (votes.argmax(1) == ey[s : s + step]).sum()
    return float(correct / ex.shape[0])


def _fewshot_draw(y: Tensor, n_classes: int, fraction: float, gen: torch.Generator) -> Tensor:
    """Indices of ``max(1, round(fraction * n_c))`` random points of every class ``c``.

    ``y`` holds class ids ``0..n_classes-1``. Vectorised: a random permutation, stably sorted by
    class, gives each class's points in random order; the first ones of each class are kept.
    """
    counts = torch.bincount(y, minlength=n_classes)
    keep = torch.clamp(torch.round(counts.double() * fraction).long(), min=1)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.randperm(y.numel(), generator=gen, device=gen.device).to(y.device)
    order = order[torch.sort(y[order], stable=True).indices]
    rank = torch.arange(y.numel(), device=y.device) - starts[y[order]]
    return order[rank < keep[y[order]]]


def fewshot_probe_acc(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    fraction: float = 0.01,
    n_draws: int = 3,
    l2: float = 1e-2,
    max_iter: int = 50,
    seed: int = 0,
) -> float:
    """Accuracy of a linear probe trained on a small labelled fraction, mean of seeded draws.

    Each draw keeps ``max(1, round(fraction * n_c))`` random training points of every class
    ``c`` (``n_c`` its size), trains :func:`linear_probe_acc` on them (same protocol, penalty
    ``l2``) and tests on ``x``; the result is the mean accuracy of ``n_draws`` draws with seeds
    derived from ``seed``. The "check with a few labels" that makes label-free monitoring
    usable: 1% of CIFAR-10's train split is 500 labels. Range ``[0, 1]``.

    Args:
        train_x: ``(M, D)`` labelled training embeddings (the pool to draw from).
        train_y: ``(M,)`` training labels.
        x: ``(N, D)`` evaluation embeddings.
        y: ``(N,)`` evaluation labels.
        fraction: Fraction of each class to keep, in ``(0, 1]``.
        n_draws: Number of seeded draws averaged.
        l2: L2 penalty of the probe (stronger than the full probe's: far fewer samples).
        max_iter: Maximum L-BFGS iterations per draw.
        seed: Seed of the draws.

    Returns:
        Mean accuracy in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: for mismatched inputs or ``fraction`` outside ``(0, 1]``.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 1000)
        >>> x = (rng.normal(size=(1000, 5)) + 4 * y[:, None]).astype(np.float32)
        >>> fewshot_probe_acc(x[:800], y[:800], x[800:], y[800:], fraction=0.05) > 0.95
        True
    """
    fraction = check_positive_float(fraction, "fraction")
    if fraction > 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1].")
    n_draws = check_positive_int(n_draws, "n_draws")
    tx, ty, ex, ey, n_classes = _splits(train_x, train_y, x, y)
    gen = generator(seed, tx.device)
    accs = []
    for _ in range(n_draws):
        chosen = _fewshot_draw(ty, n_classes, fraction, gen)
        accs.append(linear_probe_acc(tx[chosen], ty[chosen], ex, ey, l2=l2, max_iter=max_iter))
    log.debug("few-shot probe: %d labels per draw, accuracies %s", int(chosen.numel()), accs)
    return float(np.mean(accs))
