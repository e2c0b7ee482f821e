"""Label-free model selection: which run, and which checkpoint, would each metric pick?

The correlation tables say whether a label-free metric *tracks* accuracy; this module asks what
that is worth when the metric is used to choose. A *selector* is a record key with a direction
of "better" (:data:`DIRECTIONS`): every label-free metric and, as the few-labels check, the
few-shot probe. Input is the tidy table of :func:`labelfree.analysis.collect.collect_runs`;
output is a long table (:func:`selection_columns`), one row per choice:

- **Choosing a run** (``kind="run"``): among the final evaluations of a set of runs (every run of
  one dataset and arch, ``method="all"``; and, when there are several methods, the runs of each
  method), the run whose selector value is best. Seeds and settings are separate candidates.
  Reported: the pick and its target value (linear-probe accuracy by default), the best value
  among the candidates (the oracle), the regret ``oracle - pick``, the expected regret of a
  random pick ``oracle - mean(target)``, and Kendall's tau and Spearman's rho between selector
  and target across the runs with percentile bootstrap intervals over runs.
- **Choosing a checkpoint** (``kind="checkpoint"``): within each run, the evaluated epoch whose
  selector value is best; the regret against the run's best evaluated epoch, the random-epoch
  baseline ``max - mean`` and the last-epoch baseline ``max - last`` (``aggregate="per_run"``),
  and their means over the same sets of runs as above (``aggregate="mean"``).

Ties (several candidates with the best selector value) give the mean target of the tied
candidates, the expected value of a random tie-break; the pick named is the first of them.
Candidates where the selector or the target is NaN are left out (``note`` says how many). A
selector without a monotone direction (``none``) picks nothing; its rank correlations are still
reported, as a description.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from labelfree.analysis.correlate import (
    ALL,
    GROUP_COLUMNS,
    cell_rng,
    check_coefficient,
    cluster_bootstrap,
    confidence_interval,
    correlation,
    final_evaluations,
    metric_columns,
)
from labelfree.analysis.groups import group_label

log = logging.getLogger(__name__)

HIGHER, LOWER, NONE = "higher", "lower", "none"
#: The main target of the selection: what "the best model" means.
DEFAULT_TARGET = "sup/linear_probe_acc"
#: Label-based selectors used by default besides every ``lf/*`` metric: a probe on 1% of the labels
#: is the paper's practical workflow (a label-free sensor, then a few labels to confirm).
DEFAULT_EXTRA_SELECTORS = ("sup/fewshot_probe_acc",)
KINDS = ("run", "checkpoint")
SELECTION_COEFFICIENTS = ("kendall", "spearman")


class Direction(NamedTuple):
    """Which way a record key is better, and why (the source that says so)."""

    better: str
    reason: str


#: Direction of "better" of every metric the suite computes (the record key of each name in
#: ``labelfree.metrics.ALL_METRICS``), each checked against its reference. ``none``: no monotone
#: direction, so the key is not used to pick (its rank correlations are still reported).
DIRECTIONS: dict[str, Direction] = {
    # Rousseeuw 1987: S -> 1 for compact, well separated clusters. Xu et al. 2024 find S1 rising
    # with probe accuracy for SimCLR and MoCo-v2 (not SimSiam); at CPU scale it fell while
    # accuracy rose (docs/results/cifar10_cpu): the direction is the paper's, the evidence mixed.
    "lf/silhouette": Direction(
        HIGHER,
        "compact, separated k-means clusters (Rousseeuw 1987); tracks the probe for SimCLR and "
        "MoCo-v2 in Xu et al. 2024, not for SimSiam",
    ),
    # Xu et al. 2024: AMI(C1;C2) correlates positively with probe accuracy for the contrastive
    # methods; 1 = the partition does not depend on the k-means seed.
    "lf/kmeans_agreement": Direction(
        HIGHER,
        "k-means partitions that do not depend on the seed; tracks the probe for SimCLR and "
        "MoCo-v2 in Xu et al. 2024, not for SimSiam",
    ),
    # Xu et al. 2024: "entropy generally decreases as learning progresses, [but] this trend
    # reverses for SimSiam"; in cifar10_cpu it rose for SimCLR/MoCo-v2 and fell for BYOL. The sign
    # depends on the method, so there is no direction to pick by.
    "lf/entropy": Direction(
        NONE,
        "falls with training for some methods and rises for others (Xu et al. 2024: reverses "
        "for SimSiam; docs/results/cifar10_cpu: rises for SimCLR and MoCo-v2)",
    ),
    # Garrido et al. 2023 (RankMe): higher effective rank goes with better downstream accuracy;
    # proposed exactly for label-free hyperparameter selection.
    "lf/rankme": Direction(
        HIGHER,
        "higher effective rank goes with better downstream accuracy; proposed for label-free "
        "hyperparameter selection (Garrido et al. 2023)",
    ),
    # Agrawal et al. 2022: accuracy is best for alpha near 1 and falls on both sides (alpha < 1:
    # noisy, whitened-like spectrum; alpha >> 1: collapse). Not monotone.
    "lf/alpha_req": Direction(
        NONE,
        "best near alpha = 1, worse on both sides (Agrawal et al. 2022): not monotone",
    ),
    # He & Ozay 2022: NESum runs from 1 (collapse) to D (whitened); they find generalisation best
    # between the two, so "higher" holds away from whitening. Trained encoders here are far from
    # it (cifar10_cpu: NESum 4-5 of 256), where higher NESum tracked accuracy for SimCLR/MoCo-v2.
    "lf/nesum": Direction(
        HIGHER,
        "1 = dimensional collapse, D = whitened (He & Ozay 2022); better away from collapse, as "
        "long as features are far from whitened (the usual case: 4-5 of 256 in cifar10_cpu)",
    ),
    # Wang & Isola 2020: lower uniformity loss (more uniform on the sphere), with alignment,
    # goes with better downstream accuracy.
    "lf/uniformity": Direction(
        LOWER,
        "lower = more uniform on the sphere, which goes with better downstream accuracy (Wang "
        "& Isola 2020)",
    ),
    # Thilak et al. 2023 (LiDAR): higher LiDAR correlates with linear-probe accuracy (more
    # strongly than RankMe) and is proposed for hyperparameter selection.
    "lf/lidar": Direction(
        HIGHER,
        "higher effective rank of the discriminative covariance goes with higher probe accuracy "
        "(Thilak et al. 2023)",
    ),
    # Chen & He 2021 (SimSiam): 0 = complete collapse, ~1/sqrt(d) when spread out. It detects
    # collapse; it saturates, so it separates healthy models poorly.
    "lf/l2_std": Direction(
        HIGHER,
        "0 = collapse, about 1/sqrt(D) when spread out (Chen & He 2021); saturates, so it ranks "
        "healthy models poorly",
    ),
    # Label-based references: larger agreement with the labels / accuracy is better by definition.
    "sup/kmeans_gt_ami": Direction(HIGHER, "agreement of k-means clusters with the labels"),
    "sup/linear_probe_acc": Direction(HIGHER, "accuracy"),
    "sup/knn_acc": Direction(HIGHER, "accuracy"),
    "sup/fewshot_probe_acc": Direction(HIGHER, "accuracy of a probe on 1% of the labels"),
}


def direction_of(key: str) -> str:
    """The direction of ``key`` (:data:`DIRECTIONS`); ``none`` for a key it does not list.

    Examples:
        >>> direction_of("lf/uniformity"), direction_of("lf/entropy"), direction_of("lf/new")
        ('lower', 'none', 'none')
    """
    return DIRECTIONS[key].better if key in DIRECTIONS else NONE


class Selection(NamedTuple):
    """What one selector picks among candidates (indices into the inputs; -1 = none)."""

    pick: int
    n_tied: int
    pick_metric: float
    pick_target: float
    oracle: int
    oracle_target: float
    regret: float
    random_regret: float
    n_points: int
    note: str


def select_best(metric: np.ndarray, target: np.ndarray, *, direction: str) -> Selection:
    """The candidate a selector picks, its regret, and the random-pick baseline.

    With ``s = +1`` for ``higher`` and ``-1`` for ``lower``, over the candidates ``i`` where both
    values are finite::

        T       = argmax_i s * m_i              (ties: every maximiser)
        pick    = min(T),  pick_target = mean_{i in T} y_i
        regret  = max_i y_i - pick_target       (>= 0; 0 = the selector found the best)
        random  = max_i y_i - mean_i y_i        (expected regret of a uniform random pick)

    ``regret`` is in the target's units (accuracy as a fraction: x100 for points). For
    ``direction="none"`` nothing is picked (``pick = -1``, regret NaN) and only the oracle and
    the random baseline are filled in.

    Args:
        metric: Selector values, shape (n,).
        target: Target values, shape (n,).
        direction: ``higher``, ``lower`` or ``none``.

    Returns:
        A :class:`Selection`; all NaN with the reason in ``note`` when no candidate has both
        values.

    Raises:
        ValueError: For an unknown direction or mismatched shapes.

    References:
        Regret as in hyperparameter-selection studies of label-free metrics: Garrido et al.,
        RankMe, ICML 2023 (arXiv:2210.02885); Thilak et al., LiDAR, ICLR 2024
        (arXiv:2312.04000).

    Examples:
        >>> s = select_best(np.array([0.1, 0.3, 0.2]), np.array([0.50, 0.55, 0.60]),
        ...                 direction="higher")
        >>> s.pick, round(s.regret, 4), round(s.random_regret, 4)
        (1, 0.05, 0.05)
    """
    if direction not in (HIGHER, LOWER, NONE):
        raise ValueError(f"Unknown direction {direction!r}. Choose one of: higher, lower, none.")
    metric, target = np.asarray(metric, dtype=float), np.asarray(target, dtype=float)
    if metric.shape != target.shape or metric.ndim != 1:
        raise ValueError(
            f"metric and target must be 1-D of equal length, got {metric.shape}, {target.shape}."
        )
    usable = np.flatnonzero(np.isfinite(metric) & np.isfinite(target))
    left_out = len(metric) - len(usable)
    note = f"{left_out} candidate(s) without a value left out" if left_out else ""
    if not len(usable):
        reason = "no candidate with both values"
        return Selection(-1, 0, np.nan, np.nan, -1, np.nan, np.nan, np.nan, 0, reason)
    m, y = metric[usable], target[usable]
    oracle = int(usable[np.argmax(y)])
    best = float(y.max())
    random = best - float(y.mean())
    if direction == NONE:
        note = "; ".join(p for p in ("no monotone direction: nothing picked", note) if p)
        return Selection(-1, 0, np.nan, np.nan, oracle, best, np.nan, random, len(usable), note)
    score = m if direction == HIGHER else -m
    tied = np.flatnonzero(score == score.max())
    if len(tied) > 1:
        note = "; ".join(p for p in (f"{len(tied)} tied: target averaged", note) if p)
    pick_target = float(y[tied].mean())
    return Selection(
        pick=int(usable[tied[0]]),
        n_tied=len(tied),
        pick_metric=float(m[tied[0]]),
        pick_target=pick_target,
        oracle=oracle,
        oracle_target=best,
        regret=best - pick_target,
        random_regret=random,
        n_points=len(usable),
        note=note,
    )


#: Columns of the selection table before the group keys and after them.
_HEAD = ("dataset", "arch", "method")
_TAIL = (
    "kind",
    "aggregate",
    "selector",
    "direction",
    "target",
    "n_runs",
    "n_points",
    "pick",
    "pick_run",
    "pick_epoch",
    "pick_metric",
    "pick_target",
    "oracle",
    "oracle_run",
    "oracle_epoch",
    "oracle_target",
    "regret",
    "random_regret",
    "last_regret",
    "kendall",
    "kendall_ci_low",
    "kendall_ci_high",
    "spearman",
    "spearman_ci_low",
    "spearman_ci_high",
    "note",
)


def selection_columns(group_keys: Sequence[str] = ()) -> list[str]:
    """Columns of the model-selection table (``model_selection.csv``).

    ``dataset``, ``arch``, ``method``, the group keys, then: ``kind`` (``run`` | ``checkpoint``),
    ``aggregate`` (``pick`` for runs; ``per_run`` | ``mean`` for checkpoints), ``selector``,
    ``direction``, ``target``, ``n_runs``, ``n_points`` (candidates), the pick (``pick`` label,
    ``pick_run``, ``pick_epoch``, ``pick_metric``, ``pick_target``), the oracle (same fields),
    ``regret``, ``random_regret``, ``last_regret`` (checkpoints), Kendall and Spearman
    coefficients with bootstrap intervals (runs), ``note``. ``method="all"`` and group keys
    ``"all"`` mark rows pooled over that dimension.

    Examples:
        >>> selection_columns(["method.temperature"])[:5]
        ['dataset', 'arch', 'method', 'method.temperature', 'kind']
    """
    return [*_HEAD, *group_keys, *_TAIL]


def _run_label(row: Mapping, group_keys: Sequence[str]) -> str:
    """``simclr, method.temperature=0.2, s0``: a run named by its group and seed."""
    seed = row.get("seed")
    seed_text = f"s{int(seed)}" if pd.notna(seed) else str(row.get("name"))
    return f"{group_label(row['method'], {k: row[k] for k in group_keys})}, {seed_text}"


def _scopes(table: pd.DataFrame) -> Iterable[tuple[tuple[str, str, str], pd.DataFrame]]:
    """Sets of runs to choose among: each dataset x arch, then each of its methods.

    A method's own set is listed only when the dataset x arch has several methods (otherwise it
    is the same set) and the method has at least two runs.
    """
    for (dataset, arch), part in table.groupby(["dataset", "arch"], sort=True):
        yield (dataset, arch, ALL), part
        if part["method"].nunique() > 1:
            for method, runs in part.groupby("method", sort=True):
                if runs["run_dir"].nunique() > 1:
                    yield (dataset, arch, method), runs


def _check(selectors: Sequence[str], target: str, runs: pd.DataFrame, n_resamples: int) -> None:
    missing = [k for k in (target, *selectors) if k not in runs.columns]
    if missing:
        available = [c for c in runs.columns if "/" in c]
        raise ValueError(
            f"Model selection: {', '.join(missing)} not in the runs. Available: "
            f"{', '.join(available) or 'none'}. Fix selection.selectors / selection.target."
        )
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}.")


def run_selection(
    runs: pd.DataFrame,
    *,
    selectors: Sequence[str],
    target: str = DEFAULT_TARGET,
    group_keys: Sequence[str] = (),
    completed_only: bool = True,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Choosing a run by each selector at the final evaluation (``kind="run"`` rows).

    For every set of runs of :func:`_scopes` and every selector: :func:`select_best` over the
    runs' final evaluations (:func:`labelfree.analysis.correlate.final_evaluations`), and
    Kendall's tau-b and Spearman's rho between selector and target across the runs, each with a
    percentile bootstrap interval over runs (runs resampled with replacement, seeded per cell by
    :func:`labelfree.analysis.correlate.cell_rng`).

    Args:
        runs: The tidy table (with the group-key columns).
        selectors: Record keys to select by.
        target: What the best run maximises (linear-probe accuracy by default).
        group_keys: Group-key columns (labels of the picks; ``"all"`` in the rows).
        completed_only: Only completed runs (a running run's last evaluation is not its final
            model).
        n_resamples: Bootstrap resamples per interval.
        confidence: Confidence level of the intervals.
        seed: Bootstrap seed.

    Returns:
        Rows with columns :func:`selection_columns`.

    Raises:
        ValueError: If a selector or the target is not a column of ``runs``.
    """
    _check(selectors, target, runs, n_resamples)
    for coefficient in SELECTION_COEFFICIENTS:
        check_coefficient(coefficient)
    final = final_evaluations(runs, completed_only=completed_only)
    final = final.sort_values(["name", "run_dir"], kind="stable")
    rows: list[dict] = []
    for (dataset, arch, method), part in _scopes(final):
        part = part.reset_index(drop=True)
        labels = [_run_label(r, group_keys) for r in part.to_dict("records")]
        y = part[target].to_numpy(dtype=float)
        for selector in selectors:
            direction = direction_of(selector)
            x = part[selector].to_numpy(dtype=float)
            chosen = select_best(x, y, direction=direction)
            row = {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                **dict.fromkeys(group_keys, ALL),
                "kind": "run",
                "aggregate": "pick",
                "selector": selector,
                "direction": direction,
                "target": target,
                "n_runs": len(part),
                "n_points": chosen.n_points,
                "pick_metric": chosen.pick_metric,
                "pick_target": chosen.pick_target,
                "oracle_target": chosen.oracle_target,
                "regret": chosen.regret,
                "random_regret": chosen.random_regret,
                "last_regret": np.nan,
                "note": chosen.note,
            }
            for role, index in (("pick", chosen.pick), ("oracle", chosen.oracle)):
                found = index >= 0
                row[role] = labels[index] if found else ""
                row[f"{role}_run"] = part.at[index, "name"] if found else ""
                row[f"{role}_epoch"] = part.at[index, "epoch"] if found else np.nan
            keep = np.isfinite(x) & np.isfinite(y)
            for coefficient in SELECTION_COEFFICIENTS:
                result = correlation(x[keep], y[keep], coefficient=coefficient)
                ci = (np.nan, np.nan)
                if result.note == "":
                    rng = cell_rng(seed, "selection", dataset, arch, method, selector, coefficient)
                    reps = cluster_bootstrap(
                        [(x[keep], y[keep])],
                        coefficient=coefficient,
                        n_resamples=n_resamples,
                        rng=rng,
                    )
                    ci = confidence_interval(reps, confidence=confidence)
                row[coefficient] = result.value
                row[f"{coefficient}_ci_low"], row[f"{coefficient}_ci_high"] = ci
            rows.append(row)
    return pd.DataFrame(rows, columns=selection_columns(group_keys))


def last_regret(epochs: np.ndarray, target: np.ndarray) -> float:
    """Accuracy lost by keeping the last evaluated checkpoint: ``max_e y_e - y_last``.

    Examples:
        >>> round(last_regret(np.array([0, 5, 10]), np.array([0.4, 0.6, 0.55])), 4)
        0.05
    """
    epochs, target = np.asarray(epochs, dtype=float), np.asarray(target, dtype=float)
    usable = np.isfinite(target)
    if not usable.any():
        return np.nan
    last = target[usable][np.argmax(epochs[usable])]
    return float(target[usable].max() - last)


def checkpoint_selection(
    runs: pd.DataFrame,
    *,
    selectors: Sequence[str],
    target: str = DEFAULT_TARGET,
    group_keys: Sequence[str] = (),
) -> pd.DataFrame:
    """Choosing a checkpoint within each run by each selector (``kind="checkpoint"`` rows).

    Per run and selector: :func:`select_best` over the run's evaluated epochs (the epoch it
    picks, the target lost against the run's best evaluated epoch, the random-epoch baseline)
    and :func:`last_regret` over the same epochs (``aggregate="per_run"``). Then the means over
    the runs of each set of :func:`_scopes` (``aggregate="mean"``: ``pick_epoch`` is the mean
    picked epoch, the regrets are mean regrets, ``n_runs`` the runs with a value).

    Args:
        runs: The tidy table (with the group-key columns).
        selectors: Record keys to select by.
        target: What the best checkpoint maximises.
        group_keys: Group-key columns.

    Returns:
        Rows with columns :func:`selection_columns`.

    Raises:
        ValueError: If a selector or the target is not a column of ``runs``.
    """
    _check(selectors, target, runs, 1)
    per_run: list[dict] = []
    for run_dir, run in runs.sort_values(["name", "run_dir", "epoch"]).groupby(
        "run_dir", sort=False
    ):
        run = run.reset_index(drop=True)
        first = run.iloc[0].to_dict()
        epochs = run["epoch"].to_numpy(dtype=float)
        y = run[target].to_numpy(dtype=float)
        for selector in selectors:
            direction = direction_of(selector)
            x = run[selector].to_numpy(dtype=float)
            chosen = select_best(x, y, direction=direction)
            keep = np.isfinite(x) & np.isfinite(y)
            row = {
                **{c: first[c] for c in (*GROUP_COLUMNS, *group_keys)},
                "kind": "checkpoint",
                "aggregate": "per_run",
                "selector": selector,
                "direction": direction,
                "target": target,
                "n_runs": 1,
                "n_points": chosen.n_points,
                "pick": _run_label(first, group_keys),
                "pick_run": first["name"],
                "pick_epoch": run.at[chosen.pick, "epoch"] if chosen.pick >= 0 else np.nan,
                "pick_metric": chosen.pick_metric,
                "pick_target": chosen.pick_target,
                "oracle": _run_label(first, group_keys),
                "oracle_run": first["name"],
                "oracle_epoch": run.at[chosen.oracle, "epoch"] if chosen.oracle >= 0 else np.nan,
                "oracle_target": chosen.oracle_target,
                "regret": chosen.regret,
                "random_regret": chosen.random_regret,
                "last_regret": last_regret(epochs[keep], y[keep]) if keep.any() else np.nan,
                "note": chosen.note,
                "run_dir": run_dir,
            }
            per_run.append(row)
    table = pd.DataFrame(per_run)
    means: list[dict] = []
    if len(table):
        means_of = ["pick_epoch", "pick_metric", "pick_target", "oracle_epoch", "oracle_target"]
        means_of += ["regret", "random_regret", "last_regret"]
        for (dataset, arch, method), part in _scopes(table):
            for selector, rows in part.groupby("selector", sort=False):
                defined = rows[rows["n_points"] > 0]
                mean = {
                    "dataset": dataset,
                    "arch": arch,
                    "method": method,
                    **dict.fromkeys(group_keys, ALL),
                    "kind": "checkpoint",
                    "aggregate": "mean",
                    "selector": selector,
                    "direction": rows["direction"].iloc[0],
                    "target": target,
                    "n_runs": len(defined),
                    "n_points": int(defined["n_points"].sum()),
                    "note": ""
                    if len(defined) == len(rows)
                    else (f"{len(rows) - len(defined)} run(s) without values left out"),
                }
                for column in means_of:
                    values = pd.to_numeric(defined[column], errors="coerce").dropna()
                    mean[column] = float(values.mean()) if len(values) else np.nan
                means.append(mean)
    columns = selection_columns(group_keys)
    out = pd.concat(
        [pd.DataFrame(means, columns=columns), table.reindex(columns=columns)], ignore_index=True
    )
    return out


def model_selection(
    runs: pd.DataFrame,
    *,
    selectors: Sequence[str],
    target: str = DEFAULT_TARGET,
    group_keys: Sequence[str] = (),
    completed_only: bool = True,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Both selections (runs, then checkpoints) in one table (``model_selection.csv``).

    Args: see :func:`run_selection` and :func:`checkpoint_selection`.

    Returns:
        Rows with columns :func:`selection_columns`: ``kind="run"`` first, then
        ``kind="checkpoint"`` (means, then per run).
    """
    by_run = run_selection(
        runs,
        selectors=selectors,
        target=target,
        group_keys=group_keys,
        completed_only=completed_only,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
    by_checkpoint = checkpoint_selection(
        runs, selectors=selectors, target=target, group_keys=group_keys
    )
    frames = [f for f in (by_run, by_checkpoint) if len(f)]
    if not frames:
        return pd.DataFrame(columns=selection_columns(group_keys))
    table = pd.concat(frames, ignore_index=True)
    for column in ("n_runs", "n_points"):
        table[column] = table[column].astype(int)
    return table


def selector_columns(
    runs: pd.DataFrame,
    selectors: Sequence[str] | None = None,
    extra: Sequence[str] = DEFAULT_EXTRA_SELECTORS,
) -> list[str]:
    """The selectors: explicit keys, or every ``lf/*`` column; then the extras present.

    A selector without a documented direction (:data:`DIRECTIONS`) is kept and logged: it picks
    nothing, but its rank correlations are still reported.

    Raises:
        ValueError: If an explicitly requested selector is not a column.
    """
    chosen = metric_columns(runs, selectors, extra, setting="selection.selectors")
    unknown = [s for s in chosen if s not in DIRECTIONS]
    if unknown:
        log.warning(
            "No documented direction of 'better' for %s (labelfree.analysis.select.DIRECTIONS): "
            "they pick nothing",
            ", ".join(unknown),
        )
    return chosen
