"""Correlations between label-free metrics and label-based targets: pure functions on DataFrames.

Input is the tidy table of :func:`labelfree.analysis.collect.collect_runs` (one row per run x
evaluation). Output is a long table, one row per (dataset, arch, method, variant, metric, target,
coefficient, aggregate[, seed]) with columns :data:`CORRELATION_COLUMNS` then
:data:`EXTRA_COLUMNS`.

Within-run correlations are computed over the evaluation epochs of each run, grouped by
(dataset, arch, method) and the group keys a sweep varied (``group_keys``: config keys such as
``method.temperature``, one column each, placed after ``method``; see
:mod:`labelfree.analysis.groups`); the runs of a group are its seeds. Aggregates:

- ``per_seed``: one run's coefficient and p-value (``seed``, ``run`` columns say which);
- ``mean`` / ``std``: mean and sample standard deviation (ddof=1) of the per-seed values that
  are defined; no p-value;
- ``pooled``: one coefficient over all evaluation points of all seeds. Its p-value treats the
  points as independent, which successive checkpoints are not: read it as descriptive.

Variants (:func:`select_variant`): ``all`` evaluations, ``no_init`` (epoch 0, the random
initialisation, excluded) and ``late`` (epoch >= ``late_fraction`` x planned epochs).

Cross-run (:func:`cross_run_correlations`, ``variant="final"``, ``aggregate="cross_run"``): the
final evaluation of every completed run of a dataset, correlated across runs that differ in arch,
method or group keys (``arch``/``method`` = ``"all"`` name the pooled dimension; group keys are
always pooled there, ``"all"``).

Bootstrap confidence intervals (percentile method, seeded): for a single run, evaluation points
are resampled with replacement (pairs kept together). With several runs, a two-stage (cluster)
bootstrap: runs are resampled with replacement, then points within each drawn run; ``mean``
averages the drawn runs' coefficients, ``pooled`` recomputes the coefficient on the drawn points.
Cross-run intervals resample runs. Successive checkpoints are autocorrelated, so the intervals are
optimistic; they are still a fair yardstick for comparing metrics. Undefined inputs (fewer than 3
points, a constant metric or target) give NaN with the reason in ``note``, never a warning.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Sequence
from itertools import product
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

COEFFICIENTS = ("spearman", "pearson", "kendall")
VARIANTS = ("all", "no_init", "late")
#: Name of the variant and of the aggregate of cross-run rows.
CROSS_RUN_VARIANT, CROSS_RUN_AGGREGATE = "final", "cross_run"
#: Value of ``arch``/``method`` in cross-run rows that pool over that dimension.
ALL = "all"
GROUP_COLUMNS = ("dataset", "arch", "method")
CORRELATION_COLUMNS = (
    "dataset",
    "arch",
    "method",
    "variant",
    "metric",
    "target",
    "coefficient",
    "value",
    "p_value",
    "ci_low",
    "ci_high",
    "n_runs",
    "n_points",
)
EXTRA_COLUMNS = ("aggregate", "seed", "run", "note")
DEFAULT_TARGETS = ("sup/linear_probe_acc", "sup/kmeans_gt_ami")

_SCIPY = {"spearman": stats.spearmanr, "pearson": stats.pearsonr, "kendall": stats.kendalltau}
_MAX_CHUNK_ELEMENTS = 1_000_000  # bound on B x L x L for the batched Kendall tau


class Correlation(NamedTuple):
    """One correlation coefficient over ``n_points`` finite pairs.

    ``value`` and ``p_value`` are NaN when undefined, with the reason in ``note``.
    """

    value: float
    p_value: float
    n_points: int
    note: str


def check_coefficient(coefficient: str) -> str:
    """Return ``coefficient`` if valid.

    Raises:
        ValueError: If it is not one of :data:`COEFFICIENTS`.
    """
    if coefficient not in COEFFICIENTS:
        raise ValueError(
            f"Unknown correlation coefficient {coefficient!r}. Choose one of: "
            f"{', '.join(COEFFICIENTS)}."
        )
    return coefficient


def _finite_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"x and y must be 1-D arrays of equal length, got shapes {x.shape} and {y.shape}."
        )
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _undefined_reason(x: np.ndarray, y: np.ndarray) -> str:
    """Why a coefficient is undefined on finite pairs (``""`` if it is defined)."""
    if len(x) < 3:
        return f"fewer than 3 points ({len(x)})"
    if np.ptp(x) == 0:
        return "constant metric"
    if np.ptp(y) == 0:
        return "constant target"
    return ""


def correlation(x: np.ndarray, y: np.ndarray, *, coefficient: str = "spearman") -> Correlation:
    """Correlation coefficient and p-value between two series, via scipy.stats.

    ``spearman``: Pearson correlation of the ranks (ties get average ranks); ``pearson``:
    ``r = cov(x, y) / (std(x) std(y))``; ``kendall``: tau-b,
    ``(n_c - n_d) / sqrt((n_0 - n_x)(n_0 - n_y))`` with concordant/discordant pair counts and
    ties. All lie in [-1, 1]; +1 means the metric ranks (or, for Pearson, linearly predicts)
    checkpoints exactly as the target does. Pairs with a NaN or infinite value are dropped.
    Undefined (NaN, with the reason in ``note``) for fewer than 3 points or a constant input;
    no scipy warning is emitted.

    Args:
        x: Metric values, shape (n,).
        y: Target values, shape (n,).
        coefficient: One of :data:`COEFFICIENTS`.

    Returns:
        A :class:`Correlation`.

    Raises:
        ValueError: For an unknown coefficient or mismatched shapes.

    References:
        scipy.stats.spearmanr, pearsonr, kendalltau; Kendall, "The treatment of ties in ranking
        problems", Biometrika 1945.

    Examples:
        >>> correlation([1, 2, 3, 4], [10, 20, 40, 80]).value
        1.0
        >>> correlation([1, 1, 1], [1, 2, 3]).note
        'constant metric'
    """
    check_coefficient(coefficient)
    x, y = _finite_pairs(x, y)
    reason = _undefined_reason(x, y)
    if reason:
        return Correlation(np.nan, np.nan, len(x), reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant input: the value is still returned
        result = _SCIPY[coefficient](x, y)
    return Correlation(float(result.statistic), float(result.pvalue), len(x), "")


def _masked_pearson(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pearson r of each row over its masked-in entries; NaN where a row is constant."""
    m = mask.astype(float)
    n = m.sum(axis=1, keepdims=True)
    x, y = np.where(mask, x, 0.0), np.where(mask, y, 0.0)
    dx = (x - (x * m).sum(axis=1, keepdims=True) / n) * m
    dy = (y - (y * m).sum(axis=1, keepdims=True) / n) * m
    denominator = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(axis=1) / denominator
    # Round-off can leave a tiny non-zero spread for constant rows; call those undefined too.
    scale = np.maximum(np.abs(x).max(axis=1), np.abs(y).max(axis=1)) + 1e-300
    degenerate = (denominator <= (1e-12 * scale) ** 2 * n[:, 0]) | (n[:, 0] < 3)
    return np.where(degenerate, np.nan, np.clip(r, -1.0, 1.0))


def batch_correlation(
    x: np.ndarray, y: np.ndarray, *, coefficient: str = "spearman", mask: np.ndarray | None = None
) -> np.ndarray:
    """Coefficient of every row pair of two matrices at once (used by the bootstrap).

    Same definitions as :func:`correlation` (average ranks for Spearman, tau-b for Kendall),
    vectorised over rows; entries where ``mask`` is False are ignored.

    Args:
        x: Shape (B, L).
        y: Shape (B, L).
        coefficient: One of :data:`COEFFICIENTS`.
        mask: Boolean (B, L), True for entries to use; all True if None.

    Returns:
        Shape (B,), NaN for rows with fewer than 3 entries or a constant input.

    Examples:
        >>> batch_correlation(np.array([[1, 2, 3], [1, 2, 3]]), np.array([[1, 2, 3], [3, 2, 1]]))
        array([ 1., -1.])
    """
    check_coefficient(coefficient)
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    mask = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if coefficient == "pearson":
        return _masked_pearson(x, y, mask)
    if coefficient == "spearman":
        # Masked-out entries rank after every real value, so real ranks are 1..n with ties averaged.
        rank_x = stats.rankdata(np.where(mask, x, np.inf), axis=1)
        rank_y = stats.rankdata(np.where(mask, y, np.inf), axis=1)
        return _masked_pearson(rank_x, rank_y, mask)
    # Kendall tau-b = sum sign(dx) sign(dy) / sqrt(#{sign(dx) != 0} #{sign(dy) != 0}) over pairs
    # (both orders of each pair count, which cancels). int8 signs keep memory traffic small.
    length = x.shape[1]
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, length * length))
    out = np.empty(x.shape[0])
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        pair_mask = (mask[sl, :, None] & mask[sl, None, :]).view(np.int8)
        signs = []
        for values in (x[sl], y[sl]):
            a, b = values[:, :, None], values[:, None, :]
            signs.append(((a > b).view(np.int8) - (a < b).view(np.int8)) * pair_mask)
        numerator = np.einsum("bij,bij->b", *signs, dtype=np.int64)
        denominator = np.sqrt(
            np.count_nonzero(signs[0], axis=(1, 2)) * np.count_nonzero(signs[1], axis=(1, 2)),
            dtype=float,
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = numerator / denominator
        n = mask[sl].sum(axis=1)
        out[sl] = np.where((denominator == 0) | (n < 3), np.nan, tau)
    return out


def cell_rng(seed: int, *key: object) -> np.random.Generator:
    """A generator for one cell of the table.

    Same seed and same cell give the same draws, whatever else is in the table.
    """
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, key)).encode())])


def cluster_bootstrap(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    coefficient: str,
    n_resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Coefficient on ``n_resamples`` two-stage resamples of ``pairs`` (one (x, y) per run).

    Runs are drawn with replacement (trivially the same run when there is one), then points
    within each drawn run; the coefficient is computed on all drawn points together.
    """
    lengths = np.array([len(x) for x, _ in pairs])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    x_all = np.concatenate([x for x, _ in pairs])
    y_all = np.concatenate([y for _, y in pairs])
    n_runs, longest = len(pairs), int(lengths.max())
    runs = rng.integers(0, n_runs, size=(n_resamples, n_runs))
    run_lengths = lengths[runs][:, :, None]  # (B, R, 1)
    within = np.floor(rng.random((n_resamples, n_runs, longest)) * run_lengths).astype(int)
    index = (offsets[runs][:, :, None] + within).reshape(n_resamples, -1)
    mask = (np.arange(longest)[None, None, :] < run_lengths).reshape(n_resamples, -1)
    return batch_correlation(x_all[index], y_all[index], coefficient=coefficient, mask=mask)


def confidence_interval(replicates: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the finite replicates; (NaN, NaN) if there are none.

    Examples:
        >>> low, high = confidence_interval(np.arange(101.0), confidence=0.9)
        >>> round(low, 6), round(high, 6)
        (5.0, 95.0)
    """
    replicates = np.asarray(replicates, dtype=float)
    replicates = replicates[np.isfinite(replicates)]
    if not len(replicates):
        return np.nan, np.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def select_variant(runs: pd.DataFrame, variant: str, *, late_fraction: float = 0.5) -> pd.DataFrame:
    """Rows of the tidy table that a variant uses.

    ``all``: every evaluation. ``no_init``: epoch 0 (the randomly initialised network)
    excluded. ``late``: ``epoch >= late_fraction * epochs`` with ``epochs`` the run's planned
    epochs (a run's last evaluated epoch when the plan is unknown).

    Args:
        runs: The tidy table (needs ``run_dir``, ``epoch``, ``epochs``).
        variant: One of :data:`VARIANTS`.
        late_fraction: Start of the ``late`` window as a fraction of the planned epochs, in [0, 1].

    Returns:
        The selected rows (a view-safe copy).

    Raises:
        ValueError: For an unknown variant or a fraction outside [0, 1].

    Examples:
        >>> table = pd.DataFrame({"run_dir": "r", "epoch": [0, 5, 10], "epochs": 10})
        >>> select_variant(table, "late", late_fraction=0.5)["epoch"].tolist()
        [5, 10]
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}. Choose one of: {', '.join(VARIANTS)}.")
    if not 0.0 <= late_fraction <= 1.0:
        raise ValueError(f"late_fraction must lie in [0, 1], got {late_fraction}.")
    if variant == "all":
        return runs.copy()
    if variant == "no_init":
        return runs[runs["epoch"] != 0].copy()
    planned = pd.to_numeric(runs["epochs"], errors="coerce")
    planned = planned.fillna(runs.groupby("run_dir")["epoch"].transform("max"))
    return runs[runs["epoch"] >= late_fraction * planned].copy()


def metric_columns(
    runs: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    *,
    setting: str = "metrics",
) -> list[str]:
    """The metric columns to correlate (or to select by).

    Args:
        runs: The tidy table.
        metrics: Explicit metric keys; every ``lf/*`` column present when None.
        extra: Further keys correlated when present (default config: ``sup/kmeans_gt_ami``,
            the paper's AMI(C1; C_GT) column).
        setting: The config key that gave ``metrics``, named in the error.

    Returns:
        Metric keys, in table order.

    Raises:
        ValueError: If an explicitly requested metric is absent.
    """
    if metrics is None:
        chosen = [c for c in runs.columns if c.startswith("lf/")]
    else:
        missing = [m for m in metrics if m not in runs.columns]
        if missing:
            available = [c for c in runs.columns if "/" in c]
            raise ValueError(
                f"Metric(s) {', '.join(missing)} not found in the runs. Available: "
                f"{', '.join(available) or 'none'}. Fix {setting}= or set {setting}=null for all "
                "lf/*."
            )
        chosen = list(metrics)
    return chosen + [m for m in extra if m in runs.columns and m not in chosen]


def _row(keys: dict, result: Correlation, ci: tuple[float, float], **extra: object) -> dict:
    row = {
        **keys,
        "value": result.value,
        "p_value": result.p_value,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "n_points": result.n_points,
        "note": result.note,
    }
    row.update(extra)
    return row


def _group_rows(
    group: pd.DataFrame,
    members: pd.DataFrame,
    keys: dict,
    *,
    coefficient: str,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> list[dict]:
    """per_seed, mean, std and pooled rows of one (group, variant, metric, target, coefficient).

    ``group`` holds the variant's rows; ``members`` (run_dir, seed, name) lists every run of the
    group, so a run without evaluations in this variant still gets its (NaN) per-seed row.
    """
    metric, target = keys["metric"], keys["target"]
    rows, pairs, seeds_values, replicates = [], [], [], []
    for run_dir, run_seed, run_name in members.itertuples(index=False):
        run = group[group["run_dir"] == run_dir]
        x, y = _finite_pairs(run[metric].to_numpy(), run[target].to_numpy())
        if len(x):
            pairs.append((x, y))  # every run with data takes part in the pooled bootstrap
        result = correlation(x, y, coefficient=coefficient)
        reps = np.full(n_resamples, np.nan)
        if result.note == "":
            seeds_values.append(result.value)
            rng = cell_rng(
                seed, *keys.values(), run_name
            )  # not the path: same CIs wherever runs live
            reps = cluster_bootstrap(
                [(x, y)], coefficient=coefficient, n_resamples=n_resamples, rng=rng
            )
            replicates.append(reps)
        rows.append(
            _row(
                keys,
                result,
                confidence_interval(reps, confidence=confidence),
                n_runs=1,
                aggregate="per_seed",
                seed=run_seed,
                run=run_name,
            )
        )
    n_total = int(sum(r["n_points"] for r in rows))
    n_defined = len(seeds_values)
    note = "" if n_defined else "no run with a defined coefficient"
    rng = cell_rng(seed, *keys.values(), "mean")
    if n_defined == 1:
        mean_reps = replicates[0]  # one run: the mean is that run's coefficient
    elif n_defined:
        picks = rng.integers(0, n_defined, size=(n_resamples, n_defined))
        draws = rng.integers(0, n_resamples, size=(n_resamples, n_defined))
        stacked = np.vstack(replicates)  # (R, B)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample -> NaN
            mean_reps = np.nanmean(stacked[picks, draws], axis=1)
    else:
        mean_reps = np.array([])
    mean = Correlation(float(np.mean(seeds_values)) if n_defined else np.nan, np.nan, n_total, note)
    rows.append(
        _row(
            keys,
            mean,
            confidence_interval(mean_reps, confidence=confidence),
            n_runs=n_defined,
            aggregate="mean",
        )
    )
    std_note = note or ("one run: no spread" if n_defined == 1 else "")
    std_value = float(np.std(seeds_values, ddof=1)) if n_defined > 1 else np.nan
    std = Correlation(std_value, np.nan, n_total, std_note)
    rows.append(_row(keys, std, (np.nan, np.nan), n_runs=n_defined, aggregate="std"))
    x_all, y_all = group[metric].to_numpy(dtype=float), group[target].to_numpy(dtype=float)
    pooled = correlation(x_all, y_all, coefficient=coefficient)
    pooled_reps = np.array([])
    if pooled.note == "" and len(pairs) == 1:
        pooled_reps = replicates[0]  # one run: pooled is that run's coefficient
    elif pooled.note == "":
        rng = cell_rng(seed, *keys.values(), "pooled")
        pooled_reps = cluster_bootstrap(
            pairs, coefficient=coefficient, n_resamples=n_resamples, rng=rng
        )
    rows.append(
        _row(
            keys,
            pooled,
            confidence_interval(pooled_reps, confidence=confidence),
            n_runs=group["run_dir"].nunique(),
            aggregate="pooled",
        )
    )
    return rows


def _check_common(coefficients: Sequence[str], n_resamples: int, confidence: float) -> None:
    for coefficient in coefficients:
        check_coefficient(coefficient)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}; 0.95 is usual.")


def _present_targets(runs: pd.DataFrame, targets: Sequence[str]) -> list[str]:
    present = [t for t in targets if t in runs.columns and runs[t].notna().any()]
    for target in targets:
        if target not in present:
            log.warning("Target %s has no values in the runs; its correlations are skipped", target)
    return present


def correlation_columns(group_keys: Sequence[str] = ()) -> list[str]:
    """Columns of a correlation table, with the group keys after ``method``.

    :data:`CORRELATION_COLUMNS`, the group keys inserted after ``method``, then
    :data:`EXTRA_COLUMNS`.

    Examples:
        >>> correlation_columns(["method.temperature"])[:5]
        ['dataset', 'arch', 'method', 'method.temperature', 'variant']
    """
    position = CORRELATION_COLUMNS.index("method") + 1
    return [
        *CORRELATION_COLUMNS[:position],
        *group_keys,
        *CORRELATION_COLUMNS[position:],
        *EXTRA_COLUMNS,
    ]


def _finish(rows: list[dict], group_keys: Sequence[str] = ()) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=correlation_columns(group_keys))
    if not len(frame):
        return frame
    seeds = pd.to_numeric(frame["seed"], errors="coerce")
    if ((seeds.dropna() % 1) == 0).all():
        frame["seed"] = seeds.astype("Int64")  # 0, 1, ... and empty, not 0.0 and NaN
    return frame.astype({"n_runs": int, "n_points": int})


def within_run_correlations(
    runs: pd.DataFrame,
    *,
    metrics: Sequence[str],
    targets: Sequence[str] = DEFAULT_TARGETS,
    coefficients: Sequence[str] = ("spearman",),
    variants: Sequence[str] = VARIANTS,
    late_fraction: float = 0.5,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    group_keys: Sequence[str] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Correlate every metric with every target over the evaluation epochs of each run.

    Grouped by (dataset, arch, method, *group_keys); per group, variant, metric, target and
    coefficient:
    one ``per_seed`` row per run, then ``mean``, ``std`` and ``pooled`` rows (module
    docstring). A metric equal to the target is skipped.

    Args:
        runs: The tidy table.
        metrics: Metric columns (see :func:`metric_columns`).
        targets: Target columns; absent ones are skipped with a warning.
        coefficients: Subset of :data:`COEFFICIENTS`.
        variants: Subset of :data:`VARIANTS`.
        late_fraction: See :func:`select_variant`.
        n_resamples: Bootstrap resamples per cell.
        confidence: Confidence level of the intervals.
        seed: Bootstrap seed; each cell derives its own stream from it.
        group_keys: Columns of ``runs`` that split groups further (the swept config keys).
        progress: Show a tqdm bar over groups (only on a terminal).

    Returns:
        Long table with columns :func:`correlation_columns` (``group_keys`` after ``method``).

    Raises:
        ValueError: For an unknown coefficient or variant or a bad bootstrap setting.
    """
    _check_common(coefficients, n_resamples, confidence)
    selected = {v: select_variant(runs, v, late_fraction=late_fraction) for v in variants}
    targets = _present_targets(runs, targets)
    rows: list[dict] = []
    group_columns = [*GROUP_COLUMNS, *group_keys]
    members = {
        key: table[["run_dir", "seed", "name"]].drop_duplicates("run_dir").sort_values("run_dir")
        for key, table in runs.groupby(group_columns, sort=True)
    }
    by_group = {v: dict(list(t.groupby(group_columns))) for v, t in selected.items()}
    cells = [(m, t, c) for m, t, c in product(metrics, targets, coefficients) if m != t]
    for group_key in tqdm(
        members, desc="Correlating", unit="group", disable=None if progress else True
    ):
        for variant in selected:
            group = by_group[variant].get(group_key, runs.iloc[:0])
            for metric, target, coefficient in cells:
                keys = dict(zip(group_columns, group_key, strict=True))
                keys |= {
                    "variant": variant,
                    "metric": metric,
                    "target": target,
                    "coefficient": coefficient,
                }
                rows += _group_rows(
                    group,
                    members[group_key],
                    keys,
                    coefficient=coefficient,
                    n_resamples=n_resamples,
                    confidence=confidence,
                    seed=seed,
                )
    return _finish(rows, group_keys)


def final_evaluations(runs: pd.DataFrame, *, completed_only: bool = True) -> pd.DataFrame:
    """Each run's last evaluation (highest epoch), of completed runs only by default.

    A running run's last evaluation is not its final model, so it is left out of model
    comparisons unless ``completed_only=False``.
    """
    table = runs[runs["status"] == "completed"] if completed_only else runs
    if table.empty:
        return table.copy()
    last = table.groupby("run_dir")["epoch"].transform("max")
    return table[table["epoch"] == last].copy()


def cross_run_correlations(
    runs: pd.DataFrame,
    *,
    metrics: Sequence[str],
    targets: Sequence[str] = DEFAULT_TARGETS,
    coefficients: Sequence[str] = ("spearman",),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    completed_only: bool = True,
    group_keys: Sequence[str] = (),
) -> pd.DataFrame:
    """Does the metric rank different models like the target does? Correlation across runs.

    Uses each run's final evaluation (:func:`final_evaluations`). Per dataset, three kinds of
    rows, each only when its runs span at least two different models (arch, method and group
    keys):
    ``arch="all", method="all"`` (every run), ``arch="all", method=M`` (one method, across
    architectures) and ``arch=A, method="all"`` (one architecture, across methods). Seeds of one
    model count as separate points. Intervals resample runs.

    Args:
        runs: The tidy table.
        metrics: Metric columns.
        targets: Target columns; absent ones are skipped with a warning.
        coefficients: Subset of :data:`COEFFICIENTS`.
        n_resamples: Bootstrap resamples per cell.
        confidence: Confidence level of the intervals.
        seed: Bootstrap seed.
        completed_only: Only runs with status ``completed``.
        group_keys: Columns of ``runs`` that tell models apart besides arch and method; pooled
            (``"all"``) in every row.

    Returns:
        Long table like :func:`within_run_correlations`, ``variant="final"``,
        ``aggregate="cross_run"``, ``n_runs == n_points``.
    """
    _check_common(coefficients, n_resamples, confidence)
    final = final_evaluations(runs, completed_only=completed_only)
    targets = _present_targets(runs, targets)
    rows: list[dict] = []
    for dataset, table in final.groupby("dataset", sort=True):
        subsets = [(ALL, ALL, table)]
        subsets += [(ALL, m, t) for m, t in table.groupby("method", sort=True)]
        subsets += [(a, ALL, t) for a, t in table.groupby("arch", sort=True)]
        for arch, method, subset in subsets:
            if len(subset[["arch", "method", *group_keys]].drop_duplicates()) < 2:
                continue
            for metric in metrics:
                for target in targets:
                    if metric == target:
                        continue
                    for coefficient in coefficients:
                        keys = {
                            "dataset": dataset,
                            "arch": arch,
                            "method": method,
                            **dict.fromkeys(group_keys, ALL),
                            "variant": CROSS_RUN_VARIANT,
                            "metric": metric,
                            "target": target,
                            "coefficient": coefficient,
                        }
                        x, y = _finite_pairs(subset[metric].to_numpy(), subset[target].to_numpy())
                        result = correlation(x, y, coefficient=coefficient)
                        reps = np.array([])
                        if result.note == "":
                            reps = cluster_bootstrap(
                                [(x, y)],
                                coefficient=coefficient,
                                n_resamples=n_resamples,
                                rng=cell_rng(seed, *keys.values()),
                            )
                        ci = confidence_interval(reps, confidence=confidence)
                        rows.append(
                            _row(
                                keys,
                                result,
                                ci,
                                n_runs=result.n_points,
                                aggregate=CROSS_RUN_AGGREGATE,
                            )
                        )
    if not rows:
        log.info("No cross-run correlation: no dataset has completed runs of two different models")
    return _finish(rows, group_keys)
