"""Core and outlier points of a metric's trajectory over training (the paper's entropy figure).

A point is an outlier when it breaks the run's monotone trend (:func:`fit_monotone`) and its
residual from a robust local line through its nearest core neighbours
(:func:`local_trend_residuals`) is far from the others; :func:`flag_outliers` applies the rule.
"""

from __future__ import annotations

import numpy as np


def fit_monotone(values: np.ndarray) -> np.ndarray:
    """Least-squares monotone fit (increasing or decreasing, whichever fits better).

    Pool-adjacent-violators algorithm for isotonic regression with unit weights.

    Args:
        values: Shape (n,), in epoch order, finite.

    Returns:
        The fitted values, shape (n,).

    References:
        Barlow et al., "Statistical Inference under Order Restrictions", Wiley 1972.

    Examples:
        >>> fit_monotone(np.array([1.0, 3.0, 2.0, 4.0])).tolist()
        [1.0, 2.5, 2.5, 4.0]
    """

    def increasing(v: np.ndarray) -> np.ndarray:
        means: list[float] = []
        counts: list[int] = []
        for value in v:
            means.append(float(value))
            counts.append(1)
            while len(means) > 1 and means[-2] > means[-1]:
                mean, count = means.pop(), counts.pop()
                means[-1] = (means[-1] * counts[-1] + mean * count) / (counts[-1] + count)
                counts[-1] += count
        return np.repeat(means, counts)

    values = np.asarray(values, dtype=float)
    up, down = increasing(values), -increasing(-values)
    return up if np.sum((values - up) ** 2) <= np.sum((values - down) ** 2) else down


def local_trend_residuals(epochs: np.ndarray, values: np.ndarray, *, window: int = 4) -> np.ndarray:
    """Leave-one-out residuals from a robust local linear trend.

    Each point is predicted by the Theil-Sen line (median pairwise slope, median intercept)
    through its ``window`` nearest other points in epoch order (ties to the earlier one; at the
    ends all neighbours lie on one side and the line extrapolates); the residual is
    ``value - prediction``. A straight trend gives zeros everywhere, ends included, and the
    median keeps one wild neighbour from moving the prediction.

    Args:
        epochs: Shape (n,), sorted ascending.
        values: Shape (n,), finite.
        window: Number of neighbours per prediction (>= 2).

    Returns:
        Residuals, shape (n,).

    References:
        Sen, "Estimates of the regression coefficient based on Kendall's tau", JASA 1968.

    Examples:
        >>> local_trend_residuals(np.arange(6.0), np.array([0, 1, 2, 9, 4, 5.0])).tolist()
        [0.0, 0.0, 0.0, 6.0, 0.0, 0.0]
    """
    epochs, values = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    n = len(values)
    residuals = np.zeros(n)
    positions = np.arange(n)
    upper = np.triu_indices(min(window, n - 1), k=1)
    for i in range(n):
        others = np.delete(positions, i)
        nearest = others[np.argsort(np.abs(others - i), kind="stable")[:window]]
        e, v = epochs[nearest], values[nearest]
        de, dv = np.subtract.outer(e, e)[upper], np.subtract.outer(v, v)[upper]
        slopes = dv[de != 0] / de[de != 0]
        slope = float(np.median(slopes)) if len(slopes) else 0.0
        intercept = float(np.median(v - slope * e))
        residuals[i] = values[i] - (intercept + slope * epochs[i])
    return residuals


def flag_outliers(
    epochs: np.ndarray,
    values: np.ndarray,
    *,
    z: float = 3.5,
    min_deviation: float = 0.1,
    window: int = 4,
    epoch_fraction: float = 0.0,
    planned_epochs: float | None = None,
) -> np.ndarray:
    """Mark evaluation points that break a run's overall trend ("outliers" vs "core").

    Rule, repeated on the core points (at first every finite point) at most ``(n - 1) // 2``
    times: a point is a candidate if

    1. it breaks the monotone trend: ``|v_i - f_i| > min_deviation * range(v)`` with ``f``
       the best increasing or decreasing fit (:func:`fit_monotone`), and
    2. it breaks the local trend: its leave-one-out residual ``r_i`` from the Theil-Sen line
       through its ``window`` nearest core neighbours (:func:`local_trend_residuals`) has a
       robust z-score ``|r_i - median(r)| / (1.4826 * MAD(r)) > z`` and
       ``|r_i - median(r)| > min_deviation * range(v)``.

    The candidate with the largest local deviation leaves the core and everything is
    recomputed, so one wild point does not drag its neighbours out of the core. Condition 1
    keeps a smooth monotone curve (whose MAD is 0) from flagging anything; condition 2
    tells which of two points that break monotonicity is off the trend. Points with
    ``epoch < epoch_fraction * planned_epochs`` are outliers as well (off by default). NaN
    values are never outliers.

    Args:
        epochs: Shape (n,).
        values: Shape (n,), the metric (e.g. entropy) at those epochs.
        z: Robust z-score threshold (3.5: Iglewicz and Hoaglin's modified z-score rule).
        min_deviation: Minimum deviation as a fraction of the run's value range.
        window: Neighbours of the local linear trend.
        epoch_fraction: Early-training cut-off as a fraction of the planned epochs.
        planned_epochs: The run's planned epochs (its last epoch if None).

    Returns:
        Boolean array, True for outliers, in the input order.

    Raises:
        ValueError: If the shapes differ or ``window < 2``.

    References:
        Iglewicz and Hoaglin, "How to Detect and Handle Outliers", ASQC 1993; Xu, Lowe,
        Trappenberg, arXiv:2409.06612 (entropy is unstable early in training).

    Examples:
        >>> flag_outliers(np.arange(8), np.array([8.0, 1, 6, 5, 4, 3, 2, 1])).tolist()
        [False, True, False, False, False, False, False, False]
    """
    epochs, values = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    if epochs.shape != values.shape:
        raise ValueError(f"epochs and values differ in shape: {epochs.shape} vs {values.shape}.")
    if window < 2:
        raise ValueError(f"window must be >= 2 neighbours, got {window}.")
    order = np.argsort(epochs, kind="stable")
    core = list(order[np.isfinite(values[order])])
    flags = np.zeros(len(values), dtype=bool)
    if len(core) >= 3:
        threshold = min_deviation * np.ptp(values[core])
        for _ in range((len(core) - 1) // 2):
            v = values[core]
            breaks_monotone = np.abs(v - fit_monotone(v)) > threshold
            residual = local_trend_residuals(epochs[core], v, window=window)
            centred = np.abs(residual - np.median(residual))
            scale = 1.4826 * np.median(centred)
            with np.errstate(divide="ignore", invalid="ignore"):
                robust_z = np.where(scale > 0, centred / scale, np.inf)
            candidate = breaks_monotone & (robust_z > z) & (centred > threshold)
            if not candidate.any():
                break
            worst = int(np.argmax(np.where(candidate, centred, -1.0)))
            flags[core.pop(worst)] = True
    if epoch_fraction > 0:
        planned = np.nanmax(epochs) if planned_epochs is None else planned_epochs
        flags |= np.isfinite(values) & (epochs < epoch_fraction * planned)
    return flags
