"""Figures of an analysis, written as PNG and PDF (matplotlib, no pyplot state, Agg canvas).

- ``curves_<dataset>_<arch>_<metric>``: metric vs epoch, one panel per method (per method and
  setting when a sweep varied group keys, :mod:`labelfree.analysis.groups`), one line per seed,
  linear-probe accuracy (the main target) on a twin axis;
- ``scatter_<dataset>_<arch>_<metric>``: metric vs target, one panel per method, points coloured
  by epoch, the pooled coefficient and its interval in each panel title;
- ``outliers_<dataset>_<arch>_<metric>``: the entropy-vs-epoch plot of the paper with "core" and
  "outlier" points (rule: :func:`labelfree.analysis.outliers.flag_outliers`), with the
  coefficient on all points and on core points in each panel title;
- ``cross_run_<dataset>``: final metric vs final target across runs, one panel per metric,
  colour = method (and setting), marker = architecture;
- ``model_selection_<dataset>_<arch>``: accuracy lost by each selector's pick of a run and of a
  checkpoint, against the random-pick and last-epoch baselines (:func:`plot_model_selection`).
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
from labelfree.analysis.groups import group_frames, setting_label, short_keys
from labelfree.analysis.labels import COEFFICIENT_SYMBOLS, metric_label, order_metrics, slug
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


def _panels(
    n: int, *, width: float = 4.0, height: float = 3.2, columns: int | None = None
) -> tuple[Figure, list]:
    """One row of ``n`` panels, or rows of ``columns`` panels when ``n`` is larger."""
    columns = n if columns is None else max(1, min(n, columns))
    rows = -(-n // columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return figure, axes[:n]


#: Panels per row of the per-group figures (a sweep can make many groups).
_GROUP_COLUMNS = 4


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


def _groups(
    part: pd.DataFrame, group_keys: Sequence[str], *, separator: str = "\n"
) -> list[tuple[str, dict, pd.DataFrame]]:
    """Panels of a per-group figure: one per method (and setting), in table order.

    The label is the method, then the setting with short key names (:func:`short_keys`) after
    ``separator`` (a new line in panel titles).
    """
    if not group_keys:  # one per method, in name order
        return [
            (m, {"method": m}, part[part["method"] == m]) for m in sorted(part["method"].unique())
        ]
    short = short_keys(group_keys)
    out = []
    for _, where, rows in group_frames(part, group_keys):
        setting = setting_label({short[k]: where[k] for k in group_keys})
        out.append((separator.join(p for p in (str(where["method"]), setting) if p), where, rows))
    return out


def plot_metric_curves(
    runs: pd.DataFrame,
    *,
    dataset: str,
    arch: str,
    metric: str,
    target: str,
    group_keys: Sequence[str] = (),
) -> Figure:
    """Metric vs epoch per method (one line per seed), the target on a twin axis.

    Args:
        runs: The tidy table.
        dataset: Dataset to plot.
        arch: Architecture to plot.
        metric: Metric column (left axis, solid).
        target: Target column (right axis, dashed), usually ``sup/linear_probe_acc``.
        group_keys: Group-key columns: one panel per method and setting.

    Returns:
        The figure.
    """
    part = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    groups = _groups(part, group_keys)
    figure, axes = _panels(len(groups), columns=_GROUP_COLUMNS)
    for ax, (method, _, members) in zip(axes, groups, strict=True):
        twin = ax.twinx()
        for i, (_, run) in enumerate(members.groupby("run_dir")):
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
    group_keys: Sequence[str] = (),
) -> Figure:
    """Metric vs target scatter per method, points coloured by epoch, one marker per seed.

    Each panel title holds the pooled coefficient [CI] of ``correlations`` for that method
    (``variant``, ``coefficient``); computed directly when ``correlations`` is None. With
    ``group_keys``, one panel per method and setting.
    """
    part = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    groups = _groups(part, group_keys)
    figure, axes = _panels(len(groups), columns=_GROUP_COLUMNS)
    last_epoch = max(float(part["epoch"].max()), 1.0)
    scatter = None
    for ax, (method, where, members) in zip(axes, groups, strict=True):
        for i, (_, run) in enumerate(members.groupby("run_dir")):
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
            **where,
            variant=variant,
            metric=metric,
            target=target,
            coefficient=coefficient,
        )
        if correlations is None:
            result = correlation(members[metric], members[target], coefficient=coefficient)
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
    group_keys: Sequence[str] = (),
) -> Figure:
    """Metric (entropy by default) vs epoch with "core" and "outlier" points marked.

    Outliers follow :func:`labelfree.analysis.outliers.flag_outliers`, run by run; the grey
    line joins each run's core points. When ``target`` is present, each panel title gives the
    coefficient with the target over all points and over core points (pooled over seeds): the
    paper's point that unstable early points can hide the trend. With ``group_keys``, one panel
    per method and setting.
    """
    part = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    groups = _groups(part, group_keys)
    figure, axes = _panels(len(groups), columns=_GROUP_COLUMNS)
    for ax, (method, _, members) in zip(axes, groups, strict=True):
        core_x, core_y, all_x, all_y = [], [], [], []
        for i, (_, run) in enumerate(members.groupby("run_dir")):
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
    group_keys: Sequence[str] = (),
) -> Figure:
    """Final metric vs final target across runs of one dataset.

    Colour: method (method and setting with ``group_keys``); marker: architecture.
    """
    final = final_evaluations(runs[runs["dataset"] == dataset], completed_only=completed_only)
    figure, axes = _panels(max(1, len(metrics)))
    archs = sorted(final["arch"].unique())
    groups = _groups(final, group_keys, separator=", ")
    colours = {label: i for i, (label, _, _) in enumerate(groups)}
    for ax, metric in zip(axes, metrics, strict=False):
        for label, _, members in groups:
            for arch, group in members.groupby("arch"):
                ax.scatter(
                    group[metric],
                    group[target],
                    color=f"C{colours[label] % 10}",
                    marker=_MARKERS[archs.index(arch) % 8],
                    s=30,
                    label=f"{label}, {arch}",
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


def plot_model_selection(selection: pd.DataFrame, *, dataset: str, arch: str) -> Figure:
    """Accuracy lost by each selector's pick, for a run and for a checkpoint (all runs).

    Left: choosing a run at the final evaluation, the regret of each selector's pick, the
    random pick's expected regret as a dashed line. Right: choosing a checkpoint within each
    run, the mean regret over runs, with the random-epoch (dashed) and last-epoch (dotted)
    baselines. Selectors without a direction get no bar (``n/a``). Accuracies in points.

    Args:
        selection: The table of :func:`labelfree.analysis.select.model_selection`.
        dataset: Dataset to plot.
        arch: Architecture to plot.
    """
    part = selection[
        (selection["dataset"] == dataset)
        & (selection["arch"] == arch)
        & (selection["method"] == ALL)
    ]
    figure, axes = _panels(2, width=5.0, height=3.6)
    panels = (
        ("run", "pick", "Choosing a run (final evaluation)", (("random_regret", "--", "random"),)),
        (
            "checkpoint",
            "mean",
            "Choosing a checkpoint (mean over runs)",
            (("random_regret", "--", "random epoch"), ("last_regret", ":", "last epoch")),
        ),
    )
    for ax, (kind, aggregate, title, baselines) in zip(axes, panels, strict=True):
        rows = part[(part["kind"] == kind) & (part["aggregate"] == aggregate)]
        if rows.empty:
            ax.set_visible(False)
            continue
        rows = rows.set_index("selector").loc[order_metrics(rows["selector"])].reset_index()
        scale = 100.0 if str(rows["target"].iloc[0]).endswith("_acc") else 1.0
        labels = [metric_label(s) for s in rows["selector"]]
        values = rows["regret"].to_numpy(dtype=float) * scale
        positions = np.arange(len(rows))
        colours = ["C2" if s.startswith("sup/") else "C0" for s in rows["selector"]]
        ax.bar(positions, np.nan_to_num(values), color=colours)
        for x, value in zip(positions, values, strict=True):
            text = f"{value:.1f}" if np.isfinite(value) else "n/a"
            ax.text(x, np.nan_to_num(value), text, ha="center", va="bottom", fontsize="x-small")
        for column, style, name in baselines:
            level = float(rows[column].iloc[0]) * scale
            ax.axhline(level, color="C3", ls=style, lw=1, label=f"{name} ({level:.1f})")
        ax.set_xticks(positions, labels, rotation=45, ha="right", fontsize="small")
        unit = "points" if scale == 100.0 else "target units"
        ax.set(title=title, ylabel=f"regret ({unit})")
        ax.set_ylim(0, 1.15 * max(float(np.nanmax(np.append(values, 0.0))), ax.get_ylim()[1]))
        ax.legend(fontsize="x-small", loc="best")
    target = metric_label(str(part["target"].iloc[0])) if len(part) else ""
    figure.suptitle(
        f"Label-free model selection: {target} lost against the best ({dataset}, {arch})"
    )
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
    group_keys: Sequence[str] = (),
    selection: pd.DataFrame | None = None,
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
        group_keys: Group-key columns of ``runs``: panels per method and setting.
        selection: The model-selection table; one ``model_selection_*`` figure per dataset x
            arch when given.
        progress: Show a tqdm bar (only on a terminal).

    Returns:
        Paths written.
    """
    out_dir = Path(out_dir)
    has_target = target in runs.columns
    jobs = []
    combos = runs[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
    for dataset, arch in combos.itertuples(index=False):
        where = {"dataset": dataset, "arch": arch, "group_keys": group_keys}
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
                        "group_keys": group_keys,
                    },
                )
            )
    if selection is not None and len(selection):
        chosen = selection[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
        for dataset, arch in chosen.itertuples(index=False):
            jobs.append(
                (
                    f"model_selection_{slug(dataset, arch)}",
                    lambda _runs, **kwargs: plot_model_selection(selection, **kwargs),
                    {"dataset": dataset, "arch": arch},
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
