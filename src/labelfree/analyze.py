"""``labelfree-analyze``: run directories in, correlation tables and figures out.

    labelfree-analyze runs=multirun/2024-06-01/12-00-00 output=analysis/demo
    labelfree-analyze runs=[outputs/a,outputs/b] output=analysis/ab table.cell=pooled_ci

Configuration: ``conf/analyze.yaml`` (every key documented there). The pipeline is
:func:`analyze` (callable from Python, e.g. by ``labelfree-reproduce``): collect runs
(:mod:`labelfree.analysis.collect`), find the config keys the runs were swept over
(:mod:`labelfree.analysis.groups`), correlate (:mod:`labelfree.analysis.correlate`), choose runs
and checkpoints by each metric (:mod:`labelfree.analysis.select`), write tables
(:mod:`labelfree.analysis.report`) and figures (:mod:`labelfree.analysis.figures`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import pandas as pd
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from labelfree.analysis.collect import Collection, collect_runs
from labelfree.analysis.correlate import (
    COEFFICIENTS,
    VARIANTS,
    cross_run_correlations,
    metric_columns,
    within_run_correlations,
)
from labelfree.analysis.figures import write_figures
from labelfree.analysis.groups import (
    add_group_columns,
    check_group_keys,
    config_table,
    swept_keys,
)
from labelfree.analysis.labels import metric_label
from labelfree.analysis.report import (
    CELLS,
    SelectionReport,
    TableFile,
    write_selection,
    write_summary,
    write_tables,
)
from labelfree.analysis.select import model_selection, selector_columns
from labelfree.analysis.wandb_source import collect_wandb, is_wandb_source, merge_collections
from labelfree.config import quote_path_overrides
from labelfree.rundir import add_log_file

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    """What :func:`analyze` produced.

    Attributes:
        output: The output folder.
        collection: Loaded runs and their issues.
        correlations: The long correlation table (also ``correlations.csv``).
        main_tables: Paper-style tables of the main coefficient, variant ``all`` and the main
            target, one per dataset x arch.
        tables: Every table written.
        figures: Every figure file written.
        files: The CSV files, ``model_selection.md``/``.tex`` and ``summary.md``.
        group_keys: The config keys the runs are grouped by besides dataset, arch and method.
        selection: The model-selection table (also ``model_selection.csv``; empty when
            ``selection.enabled=false``).
        selection_reports: Its main tables per dataset x arch (all runs, checkpoints), Markdown.
    """

    output: Path
    collection: Collection
    correlations: pd.DataFrame
    main_tables: list[TableFile] = field(default_factory=list)
    tables: list[TableFile] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    group_keys: list[str] = field(default_factory=list)
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    selection_reports: list[SelectionReport] = field(default_factory=list)


def _as_list(value: object) -> list:
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return list(value)
    return [value]


def _check_choices(name: str, values: Sequence[str], valid: Sequence[str]) -> None:
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise ValueError(
            f"{name}={list(values)} is invalid ({', '.join(map(repr, bad)) or 'empty'}). "
            f"Choose from: {', '.join(valid)}."
        )


def _check_config(cfg: DictConfig) -> None:
    corr = cfg.correlation
    _check_choices("correlation.coefficients", _as_list(corr.coefficients), COEFFICIENTS)
    _check_choices("correlation.variants", _as_list(corr.variants), VARIANTS)
    if corr.main_coefficient not in _as_list(corr.coefficients):
        raise ValueError(
            f"correlation.main_coefficient={corr.main_coefficient!r} is not among "
            f"correlation.coefficients={list(corr.coefficients)}. Add it there or pick one of them."
        )
    if not _as_list(corr.targets):
        raise ValueError(
            "correlation.targets is empty. Give at least one, e.g. [sup/linear_probe_acc]."
        )
    if cfg.table.cell not in CELLS:
        raise ValueError(
            f"table.cell={cfg.table.cell!r} is invalid. Choose one of: {', '.join(CELLS)}."
        )


def _method_notes(cfg: DictConfig, group_keys: Sequence[str]) -> list[str]:
    corr, boot, out = cfg.correlation, cfg.bootstrap, cfg.outliers
    grouping = "(dataset, arch, method" + "".join(f", {k}" for k in group_keys) + ")"
    notes = [
        f"Within-run correlations use the evaluation epochs of each run, grouped by "
        f"{grouping}; `per_seed` rows are single runs, `mean`/`std` summarise the "
        "per-seed values, `pooled` uses all points of all seeds at once (its p-value treats "
        "checkpoints as independent; read it as descriptive).",
        f"Variants: `all`; `no_init` drops epoch 0 (the random initialisation); `late` keeps "
        f"epochs >= {corr.late_fraction:g} x planned epochs.",
        f"Bootstrap: {boot.n_resamples} percentile resamples, {boot.confidence:.0%} intervals, "
        f"seed {boot.seed}. One run: evaluation points resampled; several seeds: runs resampled, "
        "then points within each drawn run; cross-run: runs resampled. Checkpoints are "
        "autocorrelated, so the intervals are optimistic.",
        "Cross-run (`variant=final`): each "
        + ("completed " if corr.cross_run_completed_only else "")
        + "run's final evaluation, correlated across runs that differ in arch or method.",
        f"Outliers ({metric_label(out.metric)} figure): points that break the run's monotone "
        f"trend and whose residual from a robust local line through their {out.window} nearest "
        f"core neighbours has a robust z-score above {out.z:g}, both deviations above "
        f"{out.min_deviation:g} of the run's range; removed one at a time, worst first"
        + (
            f"; also epochs < {out.epoch_fraction:g} x planned epochs."
            if out.epoch_fraction > 0
            else "."
        ),
        "Runs marked `running` are "
        + (
            "included (listed in skipped_runs.csv as `included`)."
            if cfg.include_running
            else "skipped."
        ),
    ]
    if group_keys:
        how = "set by group_by" if cfg.group_by is not None else "detected from run.json configs"
        notes.append(
            f"Group keys ({how}): {', '.join(f'`{k}`' for k in group_keys)}; a row is a method "
            "and its settings, its runs are the seeds."
        )
    if cfg.selection.enabled:
        notes.append(
            "Model selection (model_selection.md): each label-free metric (and the few-shot "
            "probe) picks the run, and within each run the checkpoint, where it is best by its "
            f"direction; regret = best {metric_label(cfg.selection.target)} minus the pick's, "
            "against a random pick (best minus mean) and, for checkpoints, the last epoch."
        )
    return notes


def analyze(cfg: DictConfig) -> AnalysisResult:
    """Run the whole analysis described by an ``analyze.yaml`` config.

    Outputs are written as soon as they exist (``runs.csv`` and ``skipped_runs.csv`` first), so
    a later failure loses nothing already computed.

    Args:
        cfg: The composed ``analyze`` config.

    Returns:
        The :class:`AnalysisResult`.

    Raises:
        FileNotFoundError: If a ``runs`` path is missing or holds no run directory.
        ValueError: For an invalid setting, when every run was skipped, or when no metric column
            is found.
    """
    _check_config(cfg)
    if OmegaConf.is_missing(cfg, "runs") or not _as_list(cfg.runs):
        raise ValueError(
            "No runs given. Pass the training output to analyse: "
            "labelfree-analyze runs=DIR output=OUT (or runs=[DIR1,DIR2])."
        )
    sources = [str(r) for r in _as_list(cfg.runs)]
    roots = [to_absolute_path(r) for r in sources if not is_wandb_source(r)]
    output = Path(to_absolute_path(str(cfg.output)))
    check_output(output)
    output.mkdir(parents=True, exist_ok=True)
    handler = add_log_file(output / "analyze.log")
    try:
        collection = collect_runs(roots, include_running=cfg.include_running) if roots else None
        if len(roots) < len(sources):  # optional W&B source: runs=wandb:ENTITY/PROJECT[/GROUP]
            wandb_runs = [r for r in sources if is_wandb_source(r)]
            collection = merge_collections(
                collection, collect_wandb(wandb_runs, include_running=cfg.include_running)
            )
        return _analyze(cfg, collection, roots, output)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def check_output(output: Path) -> None:
    """Refuse an output folder that is, or lies inside, a training run directory.

    The analysis writes CSVs, tables and a log there; inside a run directory they would mix
    with (or, for ``.hydra/``, replace) the run's own files.
    """
    for folder in (output, *output.parents):
        if (folder / "run.json").is_file() or (folder / "metrics.jsonl").is_file():
            where = "is" if folder == output else "is inside"
            raise ValueError(
                f"output={output} {where} the run directory {folder}: write the analysis "
                f"elsewhere, e.g. output=outputs/analysis/<name>."
            )


def _analyze(cfg: DictConfig, collection: Collection, roots: list[str], output: Path):
    result = AnalysisResult(output=output, collection=collection, correlations=pd.DataFrame())
    runs_csv, skipped_csv = output / "runs.csv", output / "skipped_runs.csv"
    collection.runs.to_csv(runs_csv, index=False)
    collection.issues.to_csv(skipped_csv, index=False)
    result.files += [runs_csv, skipped_csv]
    if collection.runs.empty:
        raise ValueError(
            f"All {collection.n_found} run(s) found below {', '.join(roots)} were skipped; the "
            f"reasons are in {skipped_csv}."
        )
    corr = cfg.correlation
    runs, result.group_keys = _grouped(cfg, collection)
    if result.group_keys:
        runs.to_csv(runs_csv, index=False)  # with the group-key columns
    metrics = metric_columns(
        runs,
        None if corr.metrics is None else _as_list(corr.metrics),
        _as_list(corr.extra_metrics),
    )
    if not metrics:
        raise ValueError(
            f"No lf/* metric column in the runs (columns: {', '.join(runs.columns)}). "
            "Set correlation.metrics=[...] to the keys to correlate."
        )
    targets = [t for t in _as_list(corr.targets) if t in runs.columns]
    if not targets:
        raise ValueError(
            f"None of the targets {list(corr.targets)} is in the runs (columns: "
            f"{', '.join(runs.columns)}). Fix correlation.targets."
        )
    common = {
        "metrics": metrics,
        "targets": targets,
        "coefficients": _as_list(corr.coefficients),
        "n_resamples": cfg.bootstrap.n_resamples,
        "confidence": cfg.bootstrap.confidence,
        "seed": cfg.bootstrap.seed,
        "group_keys": result.group_keys,
    }
    within = within_run_correlations(
        runs, **common, variants=_as_list(corr.variants), late_fraction=corr.late_fraction
    )
    cross = cross_run_correlations(runs, **common, completed_only=corr.cross_run_completed_only)
    result.correlations = pd.concat([within, cross], ignore_index=True) if len(cross) else within
    correlations_csv = output / "correlations.csv"
    result.correlations.to_csv(correlations_csv, index=False)
    result.files.append(correlations_csv)
    result.tables = write_tables(
        result.correlations,
        output / "tables",
        targets=targets,
        coefficient=corr.main_coefficient,
        cell=cfg.table.cell,
        digits=cfg.table.digits,
        late_fraction=corr.late_fraction,
        confidence=cfg.bootstrap.confidence,
        group_keys=result.group_keys,
    )
    if cfg.selection.enabled:
        _select_models(cfg, runs, result)
    main_variant = "all" if "all" in _as_list(corr.variants) else _as_list(corr.variants)[0]
    result.main_tables = [
        t
        for t in result.tables
        if t.variant == main_variant and t.target == targets[0] and t.arch != "all"
    ]
    if cfg.figures.enabled:
        result.figures = write_figures(
            runs,
            output / "figures",
            metrics=metrics,
            target=targets[0],
            correlations=result.correlations,
            coefficient=corr.main_coefficient,
            outlier_metric=cfg.outliers.metric,
            outlier_z=cfg.outliers.z,
            outlier_min_deviation=cfg.outliers.min_deviation,
            outlier_window=cfg.outliers.window,
            outlier_epoch_fraction=cfg.outliers.epoch_fraction,
            completed_only=corr.cross_run_completed_only,
            formats=_as_list(cfg.figures.formats),
            dpi=cfg.figures.dpi,
            group_keys=result.group_keys,
            selection=result.selection if cfg.selection.enabled else None,
        )
    summary = write_summary(
        output / "summary.md",
        roots=roots,
        n_found=collection.n_found,
        n_loaded=collection.n_loaded,
        n_evaluations=len(runs),
        issues=collection.issues,
        main_tables=result.main_tables,
        tables=result.tables,
        figures=result.figures,
        files=list(result.files),
        method_notes=_method_notes(cfg, result.group_keys),
        selection_reports=result.selection_reports,
    )
    result.files.append(summary)
    log.info("Analysis written to %s (summary: %s)", output, summary)
    return result


def _grouped(cfg: DictConfig, collection: Collection) -> tuple[pd.DataFrame, list[str]]:
    """The tidy table with a column per group key, and the keys (``group_by`` or detected)."""
    configs = config_table(collection.configs, collection.runs)
    if cfg.group_by is None:
        typed = [o.split("=", 1)[0].lstrip("~+") for v in collection.overrides.values() for o in v]
        keys = swept_keys(configs, prefer=sorted(set(typed)))
        unknown = configs.loc[~configs["has_config"], "run_dir"].tolist()
        if keys and unknown:
            log.warning(
                "%d run(s) saved no config in run.json; their %s values are unknown (empty): %s",
                len(unknown),
                ", ".join(keys),
                ", ".join(unknown),
            )
    else:
        keys = check_group_keys(configs, [str(k) for k in _as_list(cfg.group_by)])
    if keys:
        log.info("Grouping runs by dataset, arch, method and %s", ", ".join(keys))
    runs = add_group_columns(collection.runs, configs, keys, after="epochs")
    return runs, keys


def _select_models(cfg: DictConfig, runs: pd.DataFrame, result: AnalysisResult) -> None:
    """Model selection: ``model_selection.csv``/``.md``/``.tex`` (skipped without the target)."""
    sel = cfg.selection
    if sel.target not in runs.columns or runs[sel.target].isna().all():
        log.warning("Target %s absent: model selection is skipped", sel.target)
        return
    selectors = selector_columns(
        runs,
        None if sel.selectors is None else _as_list(sel.selectors),
        _as_list(sel.extra_selectors),
    )
    selectors = [s for s in selectors if s != sel.target]
    if not selectors:
        log.warning("No selector column in the runs: model selection is skipped")
        return
    result.selection = model_selection(
        runs,
        selectors=selectors,
        target=sel.target,
        group_keys=result.group_keys,
        completed_only=sel.completed_only,
        n_resamples=cfg.bootstrap.n_resamples,
        confidence=cfg.bootstrap.confidence,
        seed=cfg.bootstrap.seed,
    )
    csv = result.output / "model_selection.csv"
    result.selection.to_csv(csv, index=False)
    paths, result.selection_reports = write_selection(
        result.selection, result.output, confidence=cfg.bootstrap.confidence
    )
    result.files += [csv, *paths]


def _print_summary(result: AnalysisResult) -> None:
    """CLI summary: the main table(s) and where everything went."""
    collection = result.collection
    skipped = collection.issues[collection.issues["action"] == "skipped"]["run_dir"].nunique()
    print(
        f"Loaded {collection.n_loaded} of {collection.n_found} runs "
        f"({len(collection.runs)} evaluations); {skipped} skipped, "
        f"{len(collection.issues)} issue(s) listed in {result.output / 'skipped_runs.csv'}"
    )
    for table in result.main_tables:
        print(f"\n## {table.dataset} / {table.arch}\n\n{table.markdown}")
    for report in result.selection_reports:
        print(f"\n## Model selection: {report.dataset} / {report.arch}\n\n{report.markdown}")
    print(
        f"\nOutputs in {result.output}: summary.md, runs.csv, correlations.csv, "
        + ("model_selection.{csv,md,tex}, " if result.selection_reports else "")
        + f"{len(result.tables)} tables in tables/ (Markdown + LaTeX), "
        f"{len(result.figures)} figure files in figures/"
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def _app(cfg: DictConfig) -> None:
    """Hydra task of ``labelfree-analyze`` (see the module docstring)."""
    log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        result = analyze(cfg)
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        print(f"labelfree-analyze: error: {error}", file=sys.stderr)
        sys.exit(1)
    _print_summary(result)


def main() -> None:
    """Console-script entry point (``labelfree-analyze``): run-directory paths need no quoting."""
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
