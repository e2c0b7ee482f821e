"""Figures of an analysis, written as PNG and PDF (matplotlib, no pyplot state, Agg canvas).

- ``curves_<dataset>_<arch>_<metric>``: metric vs epoch, one panel per method, one line per seed,
  linear-probe accuracy (the main target) on a twin axis;
- ``scatter_<dataset>_<arch>_<metric>``: metric vs target, one panel per method, points coloured
  by epoch, the pooled coefficient and its interval in each panel title;
- ``outliers_<dataset>_<arch>_<metric>``: the entropy-vs-epoch plot of the paper with "core" and
  "outlier" points (rule: :func:`labelfree.analysis.outliers.flag_outliers`), with the
  coefficient on all points and on core points in each panel title;
- ``cross_run_<dataset>``: final metric vs final target across runs, one panel per metric,
  colour = method, marker = architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from labelfree.analysis.correlate import (
    ALL,
    CROSS_RUN_AGGREGATE,
    correlation,
    final_evaluations,
)
from labelfree.analysis.labels import COEFFICIENT_SYMBOLS, metric_label, slug
from labelfree.analysis.outliers import flag_outliers

log = logging.getLogger(__name__)

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def save_figure(
    figure: Figure, stem: str | Path, *, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Save a figure once per format (``stem.png``, ``stem.pdf`` ...).

    Raises:
        ValueError: For a format matplotlib cannot write.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    supported = figure.canvas.get_supported_filetypes()
    paths = []
    for fmt in formats:
        if fmt not in supported:
            raise ValueError(
                f"Unknown figure format {fmt!r}. Choose from: {', '.join(sorted(supported))}."
            )
        path = stem.with_name(f"{stem.name}.{fmt}")
        figure.savefig(path, dpi=dpi, format=fmt)
        paths.append(path)
    return paths


def _panels(n: int, *, width: float = 4.0, height: float = 3.2) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * n, height), layout="constrained")
    axes = figure.subplots(1, n, squeeze=False)[0]
    return figure, list(axes)


def _coefficient_text(row: pd.Series | None, coefficient: str) -> str:
    symbol = COEFFICIENT_SYMBOLS[coefficient]
    if row is None or not np.isfinite(row["value"]):
        return f"{symbol} = n/a"
    text = f"{symbol} = {row['value']:.2f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return text


def _pooled_row(correlations: pd.DataFrame | None, **keys: object) -> pd.Series | None:
    if correlations is None or correlations.empty:
        return None
    mask = correlations["aggregate"] == keys.pop("aggregate", "pooled")
    for column, value in keys.items():
        mask &= correlations[column] == value
    rows = correlations[mask]
    return rows.iloc[0] if len(rows) else None


def _seed_label(run: pd.DataFrame) -> str:
    seed = run["seed"].iloc[0]
    return f"seed {int(seed)}" if pd.notna(seed) else str(run["name"].iloc[0])


def plot_metric_curves(
    runs: pd.DataFrame, *, dataset: str, arch: str, metric: str, target: str
) -> Figure:
    """Metric vs epoch per method (one line per seed), the target on a twin axis.

    Args:
        runs: The tidy table.
        dataset: Dataset to plot.
        arch: Architecture to plot.
        metric: Metric column (left axis, solid).
        target: Target column (right axis, dashed), usually ``sup/linear_probe_acc``.

    Returns:
        The figure.
    """
    part = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    methods = sorted(part["method"].unique())
    figure, axes = _panels(len(methods))
    for ax, method in zip(axes, methods, strict=True):
        twin = ax.twinx()
        for i, (_, run) in enumerate(part[part["method"] == method].groupby("run_dir")):
            run = run.sort_values("epoch")
            label = _seed_label(run)
            ax.plot(
                run["epoch"],
                run[metric],
                color="C0",
                marker=_MARKERS[i % 8],
                ms=3,
                alpha=0.8,
                label=f"{metric_label(metric)} ({label})",
            )
            if target in run:
                twin.plot(
                    run["epoch"],
                    run[target],
                    color="C1",
                    ls="--",
                    marker=_MARKERS[i % 8],
                    ms=3,
                    alpha=0.8,
                    label=f"{metric_label(target)} ({label})",
                )
        ax.set(title=method, xlabel="epoch")
        ax.set_ylabel(metric_label(metric), color="C0")
        twin.set_ylabel(metric_label(target), color="C1")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize="x-small", loc="best")
    figure.suptitle(
        f"{metric_label(metric)} and {metric_label(target)} vs epoch ({dataset}, {arch})"
    )
    return figure


def plot_metric_vs_target(
    runs: pd.DataFrame,
    *,
    dataset: str,
    arch: str,
    metric: str,
    target: str,
    correlations: pd.DataFrame | None = None,
    coefficient: str = "spearman",
    variant: str = "all",
) -> Figure:
    """Metric vs target scatter per method, points coloured by epoch, one marker per seed.

    Each panel title holds the pooled coefficient [CI] of ``correlations`` for that method
    (``variant``, ``coefficient``); computed directly when ``correlations`` is None.
    """
    part = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    methods = sorted(part["method"].unique())
    figure, axes = _panels(len(methods))
    last_epoch = max(float(part["epoch"].max()), 1.0)
    scatter = None
    for ax, method in zip(axes, methods, strict=True):
        for i, (_, run) in enumerate(part[part["method"] == method].groupby("run_dir")):
            scatter = ax.scatter(
                run[metric],
                run[target],
                c=run["epoch"],
                cmap="viridis",
                vmin=0,
                vmax=last_epoch,
                marker=_MARKERS[i % 8],
                s=18,
                label=_seed_label(run),
            )
        row = _pooled_row(
            correlations,
            dataset=dataset,
            arch=arch,
            method=method,
            variant=variant,
            metric=metric,
            target=target,
            coefficient=coefficient,
        )
        if correlations is None:
            sub = part[part["method"] == method]
            result = correlation(sub[metric], sub[target], coefficient=coefficient)
            row = pd.Series({"value": result.value, "ci_low": np.nan, "ci_high": np.nan})
        ax.set(
            title=f"{method}: {_coefficient_text(row, coefficient)}",
            xlabel=metric_label(metric),
            ylabel=metric_label(target),
        )
        ax.legend(fontsize="x-small", loc="best")
    if scatter is not None:
        figure.colorbar(scatter, ax=axes, label="epoch")
    figure.suptitle(
        f"{metric_label(metric)} vs {metric_label(target)} "
        f"({dataset}, {arch}; pooled over seeds, variant {variant})"
    )
    return figure


def plot_outliers(
    runs: pd.DataFrame,
    *,
    dataset: str,
    arch: str,
    metric: str = "lf/entropy",
    target: str | None = "sup/linear_probe_acc",
    coefficient: str = "spearman",
    z: float = 3.5,
    min_deviation: float = 0.1,
    window: int = 4,
    epoch_fraction: float = 0.0,
) -> Figure:
    """Metric (entropy by default) vs epoch with "core" and "outlier" points marked.

    Outliers follow :func:`labelfree.analysis.outliers.flag_outliers`, run by run; the grey
    line joins each run's core points. When ``target`` is present, each panel title gives the
    coefficient with the target over all points and over core points (pooled over seeds): the
    paper's point that unstable early points can hide the trend.
    """
    part = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    methods = sorted(part["method"].unique())
    figure, axes = _panels(len(methods))
    for ax, method in zip(axes, methods, strict=True):
        core_x, core_y, all_x, all_y = [], [], [], []
        for i, (_, run) in enumerate(part[part["method"] == method].groupby("run_dir")):
            run = run.sort_values("epoch")
            values = run[metric].to_numpy(dtype=float)
            epochs = run["epoch"].to_numpy(dtype=float)
            planned = pd.to_numeric(run["epochs"], errors="coerce").iloc[0]
            outlier = flag_outliers(
                epochs,
                values,
                z=z,
                min_deviation=min_deviation,
                window=window,
                epoch_fraction=epoch_fraction,
                planned_epochs=None if pd.isna(planned) else float(planned),
            )
            core = ~outlier & np.isfinite(values)
            marker = _MARKERS[i % 8]
            if core.sum() >= 1:
                ax.plot(epochs[core], values[core], color="0.6", lw=1, zorder=1)
            ax.scatter(
                epochs[core],
                values[core],
                color="C0",
                marker=marker,
                s=18,
                zorder=2,
                label="core" if i == 0 else None,
            )
            ax.scatter(
                epochs[outlier],
                values[outlier],
                color="C3",
                marker="x",
                s=30,
                zorder=3,
                label="outlier" if i == 0 else None,
            )
            if target is not None and target in run:
                t = run[target].to_numpy(dtype=float)
                all_x.append(values)
                all_y.append(t)
                core_x.append(values[core])
                core_y.append(t[core])
        title = method
        if all_x:
            symbol = COEFFICIENT_SYMBOLS[coefficient]
            every = correlation(
                np.concatenate(all_x), np.concatenate(all_y), coefficient=coefficient
            ).value
            kept = correlation(
                np.concatenate(core_x), np.concatenate(core_y), coefficient=coefficient
            ).value
            title += f"\n{symbol} with {metric_label(target)}:\nall {every:.2f}, core {kept:.2f}"
        ax.set(title=title, xlabel="epoch", ylabel=metric_label(metric))
        ax.legend(fontsize="x-small", loc="best")
    figure.suptitle(
        f"{metric_label(metric)} vs epoch: core and outlier points "
        f"({dataset}, {arch}; robust z > {z:g})"
    )
    return figure


def plot_cross_run(
    runs: pd.DataFrame,
    *,
    dataset: str,
    metrics: Sequence[str],
    target: str,
    correlations: pd.DataFrame | None = None,
    coefficient: str = "spearman",
    completed_only: bool = True,
) -> Figure:
    """Final metric vs final target across runs of one dataset; colour method, marker arch."""
    final = final_evaluations(runs[runs["dataset"] == dataset], completed_only=completed_only)
    figure, axes = _panels(max(1, len(metrics)))
    methods = sorted(final["method"].unique())
    archs = sorted(final["arch"].unique())
    for ax, metric in zip(axes, metrics, strict=False):
        for (method, arch), group in final.groupby(["method", "arch"]):
            ax.scatter(
                group[metric],
                group[target],
                color=f"C{methods.index(method) % 10}",
                marker=_MARKERS[archs.index(arch) % 8],
                s=30,
                label=f"{method}, {arch}",
            )
        row = _pooled_row(
            correlations,
            aggregate=CROSS_RUN_AGGREGATE,
            dataset=dataset,
            arch=ALL,
            method=ALL,
            metric=metric,
            target=target,
            coefficient=coefficient,
        )
        ax.set(
            title=f"{metric_label(metric)}: {_coefficient_text(row, coefficient)}",
            xlabel=metric_label(metric),
            ylabel=metric_label(target),
        )
    if len(final):
        axes[0].legend(fontsize="x-small", loc="best")
    figure.suptitle(f"Final evaluation of each run, across models ({dataset})")
    return figure


def write_figures(
    runs: pd.DataFrame,
    out_dir: str | Path,
    *,
    metrics: Sequence[str],
    target: str,
    correlations: pd.DataFrame | None = None,
    coefficient: str = "spearman",
    outlier_metric: str = "lf/entropy",
    outlier_z: float = 3.5,
    outlier_min_deviation: float = 0.1,
    outlier_window: int = 4,
    outlier_epoch_fraction: float = 0.0,
    completed_only: bool = True,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 150,
    progress: bool = True,
) -> list[Path]:
    """Write every figure of the module docstring for each dataset x arch.

    Args:
        runs: The tidy table.
        out_dir: Folder for the figures (created).
        metrics: Metrics to plot.
        target: Main target (linear-probe accuracy by default), plotted alongside.
        correlations: The long table, for coefficients in titles.
        coefficient: Coefficient shown in titles.
        outlier_metric: Metric of the core/outlier plot; skipped with a log line when absent.
        outlier_z: See :func:`labelfree.analysis.outliers.flag_outliers` (``z``).
        outlier_min_deviation: Idem (``min_deviation``).
        outlier_window: Idem (``window``).
        outlier_epoch_fraction: Idem (``epoch_fraction``).
        completed_only: Cross-run figure uses completed runs only.
        formats: File formats.
        dpi: Resolution of raster formats.
        progress: Show a tqdm bar (only on a terminal).

    Returns:
        Paths written.
    """
    out_dir = Path(out_dir)
    has_target = target in runs.columns
    jobs = []
    combos = runs[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
    for dataset, arch in combos.itertuples(index=False):
        where = {"dataset": dataset, "arch": arch}
        name = slug(dataset, arch)
        for metric in metrics:
            if not has_target:
                break
            jobs.append(
                (
                    f"curves_{name}_{slug(metric)}",
                    plot_metric_curves,
                    {**where, "metric": metric, "target": target},
                )
            )
            jobs.append(
                (
                    f"scatter_{name}_{slug(metric)}",
                    plot_metric_vs_target,
                    {
                        **where,
                        "metric": metric,
                        "target": target,
                        "correlations": correlations,
                        "coefficient": coefficient,
                    },
                )
            )
        if outlier_metric in runs.columns:
            jobs.append(
                (
                    f"outliers_{name}_{slug(outlier_metric)}",
                    plot_outliers,
                    {
                        **where,
                        "metric": outlier_metric,
                        "target": target if has_target else None,
                        "coefficient": coefficient,
                        "z": outlier_z,
                        "min_deviation": outlier_min_deviation,
                        "window": outlier_window,
                        "epoch_fraction": outlier_epoch_fraction,
                    },
                )
            )
        else:
            log.info("No %s column: the core/outlier figure is skipped", outlier_metric)
    if has_target and correlations is not None:
        cross = correlations[correlations["aggregate"] == CROSS_RUN_AGGREGATE]
        for dataset in sorted(cross["dataset"].unique()):
            jobs.append(
                (
                    f"cross_run_{slug(dataset)}",
                    plot_cross_run,
                    {
                        "dataset": dataset,
                        "metrics": list(metrics),
                        "target": target,
                        "correlations": correlations,
                        "coefficient": coefficient,
                        "completed_only": completed_only,
                    },
                )
            )
    if not has_target:
        log.warning("Target %s absent: metric-vs-target figures are skipped", target)
    paths: list[Path] = []
    for stem, plot, kwargs in tqdm(
        jobs, desc="Figures", unit="fig", disable=None if progress else True
    ):
        figure = plot(runs, **kwargs)
        paths += save_figure(figure, out_dir / stem, formats=formats, dpi=dpi)
    log.info("Wrote %d figure files to %s", len(paths), out_dir)
    return paths
