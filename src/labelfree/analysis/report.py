"""Markdown and LaTeX tables laid out like the paper's, and the ``summary.md`` of an analysis.

Paper layout (Xu, Lowe, Trappenberg 2024, arXiv:2409.06612): rows are SSL methods, columns are
metrics, one table per dataset x arch x variant (and per target and coefficient here). When a
sweep varied other config keys (the group keys, :mod:`labelfree.analysis.groups`), a row is a
method and its settings, e.g. ``simclr, method.temperature=0.2``. A cell is
either the mean ± standard deviation of the per-seed coefficients (``cell="mean_std"``, default)
or the pooled coefficient with its bootstrap interval (``cell="pooled_ci"``); the caption says
which. Cross-run tables (one per dataset) have one row per model comparison.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelfree.analysis.correlate import (
    ALL,
    CROSS_RUN_AGGREGATE,
    CROSS_RUN_VARIANT,
)
from labelfree.analysis.groups import group_frames
from labelfree.analysis.labels import (
    COEFFICIENT_NAMES,
    VARIANT_TEXT,
    latex_escape,
    metric_label,
    order_metrics,
    slug,
)
from labelfree.analysis.select import DIRECTIONS, direction_of

log = logging.getLogger(__name__)

CELLS = ("mean_std", "pooled_ci")
_NA = "n/a"


@dataclass
class TableFile:
    """A written table: its identity, caption and the paths of its Markdown and LaTeX files."""

    dataset: str
    arch: str
    variant: str
    target: str
    coefficient: str
    caption: str
    markdown: str
    markdown_path: Path
    latex_path: Path


@dataclass
class SelectionReport:
    """The model-selection tables of one dataset x arch, as Markdown (printed and in summary.md)."""

    dataset: str
    arch: str
    markdown: str


def _number(value: float, digits: int) -> str | None:
    return None if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_cell(
    value: float,
    *,
    std: float | None = None,
    ci: tuple[float, float] | None = None,
    digits: int = 2,
    latex: bool = False,
) -> str:
    """One table cell: ``value ± std``, ``value [low, high]`` or ``value``; ``n/a`` if undefined.

    Examples:
        >>> format_cell(0.9312, std=0.021)
        '0.93 ± 0.02'
        >>> format_cell(0.9312, ci=(0.85, 0.98), latex=True)
        '0.93 [0.85, 0.98]'
    """
    main = _number(value, digits)
    if main is None:
        return _NA
    spread = _number(std, digits) if std is not None else None
    if spread is not None:
        return f"${main} \\pm {spread}$" if latex else f"{main} ± {spread}"
    if ci is not None and _number(ci[0], digits) is not None:
        return f"{main} [{_number(ci[0], digits)}, {_number(ci[1], digits)}]"
    return main


def _select(correlations: pd.DataFrame, **equal: object) -> pd.DataFrame:
    mask = pd.Series(True, index=correlations.index)
    for column, value in equal.items():
        mask &= correlations[column] == value
    return correlations[mask]


def paper_table(
    correlations: pd.DataFrame,
    *,
    dataset: str,
    arch: str,
    variant: str,
    target: str,
    coefficient: str = "spearman",
    cell: str = "mean_std",
    digits: int = 2,
    latex: bool = False,
    group_keys: Sequence[str] = (),
) -> pd.DataFrame:
    """A paper-style table: rows methods (and their settings), columns metrics, string cells.

    Args:
        correlations: The long table of :mod:`labelfree.analysis.correlate`.
        dataset: Dataset to show.
        arch: Architecture to show.
        variant: Variant to show.
        target: Target the metrics are correlated with.
        coefficient: Coefficient to show.
        cell: ``mean_std`` (mean ± std over seeds; the single value where one seed) or
            ``pooled_ci`` (pooled value [CI]).
        digits: Decimals.
        latex: Format cells and headers for LaTeX.
        group_keys: Group-key columns of ``correlations``: one row per method and setting,
            labelled ``method, key=value, ...``.

    Returns:
        DataFrame indexed by method (named ``method``), one column per metric label.

    Raises:
        ValueError: For an unknown ``cell``.
    """
    if cell not in CELLS:
        raise ValueError(f"Unknown table cell {cell!r}. Choose one of: {', '.join(CELLS)}.")
    part = _select(
        correlations,
        dataset=dataset,
        arch=arch,
        variant=variant,
        target=target,
        coefficient=coefficient,
    )
    metrics = order_metrics(part["metric"].unique())
    if group_keys:
        groups = [(label, rows) for label, _, rows in group_frames(part, group_keys)]
    else:  # one row per method, in name order (the paper's layout)
        groups = [
            (method, part[part["method"] == method]) for method in sorted(part["method"].unique())
        ]
    table = pd.DataFrame(
        index=pd.Index([label for label, _ in groups], name="method"),
        columns=[metric_label(m, latex=latex) for m in metrics],
        dtype=object,
    )
    for method, group in groups:
        for metric in metrics:
            rows = _select(group, metric=metric).set_index("aggregate")
            if cell == "mean_std" and "mean" in rows.index:
                std = rows.loc["std", "value"] if "std" in rows.index else None
                text = format_cell(rows.loc["mean", "value"], std=std, digits=digits, latex=latex)
            elif "pooled" in rows.index:
                pooled = rows.loc["pooled"]
                ci = (pooled["ci_low"], pooled["ci_high"])
                text = format_cell(pooled["value"], ci=ci, digits=digits, latex=latex)
            else:
                text = _NA
            table.loc[method, metric_label(metric, latex=latex)] = text
    return table


def cross_run_table(
    correlations: pd.DataFrame,
    *,
    dataset: str,
    target: str,
    coefficient: str = "spearman",
    digits: int = 2,
    latex: bool = False,
    group_keys: Sequence[str] = (),
) -> pd.DataFrame:
    """Cross-run table of one dataset: rows model comparisons, columns metrics.

    Cell: coefficient [bootstrap CI] (n runs). With ``group_keys``, every comparison also pools
    the settings (``simclr: every arch and setting``).
    """
    part = _select(
        correlations,
        dataset=dataset,
        target=target,
        coefficient=coefficient,
        aggregate=CROSS_RUN_AGGREGATE,
    )
    metrics = order_metrics(part["metric"].unique())

    def comparison(arch: str, method: str) -> str:
        if arch == ALL and method == ALL:
            return "all runs"
        if group_keys:
            return (
                f"{method}: every arch and setting"
                if arch == ALL
                else f"{arch}: every method and setting"
            )
        return f"{method}, across archs" if arch == ALL else f"{arch}, across methods"

    keys = sorted({(a, m) for a, m in zip(part["arch"], part["method"], strict=True)})
    keys.sort(key=lambda k: (k != (ALL, ALL), k[0] != ALL, k))
    index = [comparison(*k) for k in keys]
    table = pd.DataFrame(
        index=pd.Index(index, name="comparison"),
        columns=[metric_label(m, latex=latex) for m in metrics],
        dtype=object,
    )
    for key, label in zip(keys, index, strict=True):
        for metric in metrics:
            rows = _select(part, arch=key[0], method=key[1], metric=metric)
            if rows.empty:
                text = _NA
            else:
                row = rows.iloc[0]
                text = format_cell(
                    row["value"], ci=(row["ci_low"], row["ci_high"]), digits=digits, latex=latex
                )
                text = text if text == _NA else f"{text} (n={row['n_runs']})"
            table.loc[label, metric_label(metric, latex=latex)] = text
    return table


def to_markdown(table: pd.DataFrame, *, caption: str | None = None) -> str:
    """Render a table as GitHub Markdown (index as first column), caption as a note below.

    Examples:
        >>> t = pd.DataFrame({"S1": ["0.9"]}, index=pd.Index(["simclr"], name="method"))
        >>> print(to_markdown(t))
        | method | S1 |
        |---|---|
        | simclr | 0.9 |
    """
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = [str(index), *(str(v).replace("|", "\\|") for v in row)]
        lines.append("| " + " | ".join(cells) + " |")
    if caption:
        lines += ["", f"*{caption}*"]
    return "\n".join(lines)


def to_latex(table: pd.DataFrame, *, caption: str, label: str) -> str:
    """Render a table as a booktabs LaTeX ``table`` float (cells must already be LaTeX)."""
    columns = "l" + "c" * len(table.columns)
    header = [latex_escape(table.index.name or ""), *map(str, table.columns)]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    lines += [
        " & ".join([latex_escape(str(index)), *map(str, row)]) + r" \\"
        for index, row in table.iterrows()
    ]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def table_caption(
    *,
    dataset: str,
    arch: str,
    variant: str,
    target: str,
    coefficient: str,
    cell: str,
    n_seeds: str,
    late_fraction: float = 0.5,
    confidence: float = 0.95,
    per: str = "method",
) -> str:
    """Caption of a paper-style table; says what a cell holds (seeds ``per`` row kind)."""
    what = (
        f"mean ± std over seeds ({n_seeds} per {per}; a single value where one seed)"
        if cell == "mean_std"
        else f"coefficient pooled over all seeds' evaluations [{confidence:.0%} bootstrap CI]"
    )
    selection = VARIANT_TEXT[variant].format(late_fraction=late_fraction)
    return (
        f"{COEFFICIENT_NAMES[coefficient]} correlation between each metric and "
        f"{metric_label(target)} over training ({selection}); "
        f"dataset {dataset}, architecture {arch}. Cell: {what}."
    )


def _n_seeds(correlations: pd.DataFrame, group_keys: Sequence[str] = ()) -> str:
    per_seed = correlations.loc[correlations["aggregate"] == "per_seed"]
    counts = per_seed.groupby(["method", *group_keys, "metric"], dropna=False).size()
    values = sorted(set(counts.tolist())) or [0]
    return "–".join(map(str, (values[0], values[-1]))) if len(values) > 1 else str(values[0])


def write_tables(
    correlations: pd.DataFrame,
    out_dir: str | Path,
    *,
    targets: Sequence[str],
    coefficient: str = "spearman",
    cell: str = "mean_std",
    digits: int = 2,
    late_fraction: float = 0.5,
    confidence: float = 0.95,
    group_keys: Sequence[str] = (),
) -> list[TableFile]:
    """Write the paper-style and cross-run tables as Markdown and LaTeX.

    One table per dataset x arch x variant x target (for one coefficient), and one cross-run
    table per dataset x target.

    Args:
        correlations: The long table.
        out_dir: Folder for the files (created).
        targets: Targets to tabulate, in order.
        coefficient: Coefficient to tabulate.
        cell: See :func:`paper_table`.
        digits: Decimals.
        late_fraction: For the ``late`` caption.
        confidence: For the CI caption.
        group_keys: Group-key columns of ``correlations`` (rows per method and setting).

    Returns:
        The written tables, paper-style first (dataset, arch, target, variant order).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[TableFile] = []
    within = correlations[correlations["aggregate"] != CROSS_RUN_AGGREGATE]
    within = within[within["coefficient"] == coefficient]
    variants = [v for v in VARIANT_TEXT if v in set(within["variant"])]
    combos = within[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
    for dataset, arch in combos.itertuples(index=False):
        part = _select(within, dataset=dataset, arch=arch)
        for target in [t for t in targets if t in set(part["target"])]:
            for variant in variants:
                keys = {"dataset": dataset, "arch": arch, "variant": variant, "target": target}
                caption = table_caption(
                    **keys,
                    coefficient=coefficient,
                    cell=cell,
                    n_seeds=_n_seeds(_select(part, target=target, variant=variant), group_keys),
                    late_fraction=late_fraction,
                    confidence=confidence,
                    per="method and setting" if group_keys else "method",
                )
                args = {
                    "coefficient": coefficient,
                    "cell": cell,
                    "digits": digits,
                    "group_keys": group_keys,
                }
                markdown = to_markdown(paper_table(part, **keys, **args), caption=caption)
                latex = to_latex(
                    paper_table(part, **keys, **args, latex=True),
                    caption=caption,
                    label="tab:" + slug(dataset, arch, variant, target.split("/")[-1]),
                )
                stem = out_dir / slug(dataset, arch, variant, target.split("/")[-1], coefficient)
                written.append(_write(keys, coefficient, caption, markdown, latex, stem))
    cross = correlations[
        (correlations["aggregate"] == CROSS_RUN_AGGREGATE)
        & (correlations["coefficient"] == coefficient)
    ]
    for dataset in sorted(cross["dataset"].unique()):
        for target in [t for t in targets if t in set(cross["target"])]:
            keys = {"dataset": dataset, "arch": ALL, "variant": CROSS_RUN_VARIANT, "target": target}
            caption = (
                f"Cross-run {COEFFICIENT_NAMES[coefficient]} correlation with "
                f"{metric_label(target)} at the {VARIANT_TEXT[CROSS_RUN_VARIANT]}; dataset "
                f"{dataset}. Cell: coefficient [{confidence:.0%} bootstrap CI over runs] (n runs)."
            )
            args = {
                "dataset": dataset,
                "target": target,
                "coefficient": coefficient,
                "group_keys": group_keys,
            }
            markdown = to_markdown(cross_run_table(cross, **args, digits=digits), caption=caption)
            latex = to_latex(
                cross_run_table(cross, **args, digits=digits, latex=True),
                caption=caption,
                label="tab:" + slug(dataset, "cross-run", target.split("/")[-1]),
            )
            stem = out_dir / slug(dataset, "cross-run", target.split("/")[-1], coefficient)
            written.append(_write(keys, coefficient, caption, markdown, latex, stem))
    log.info("Wrote %d tables (Markdown + LaTeX) to %s", len(written), out_dir)
    return written


def _write(
    keys: dict, coefficient: str, caption: str, markdown: str, latex: str, stem: Path
) -> TableFile:
    markdown_path, latex_path = stem.with_suffix(".md"), stem.with_suffix(".tex")
    markdown_path.write_text(markdown + "\n", encoding="utf-8")
    latex_path.write_text(latex, encoding="utf-8")
    return TableFile(
        **keys,
        coefficient=coefficient,
        caption=caption,
        markdown=markdown,
        markdown_path=markdown_path,
        latex_path=latex_path,
    )


def write_summary(
    path: str | Path,
    *,
    roots: Sequence[str],
    n_found: int,
    n_loaded: int,
    n_evaluations: int,
    issues: pd.DataFrame,
    main_tables: Sequence[TableFile],
    tables: Sequence[TableFile],
    figures: Sequence[Path],
    files: Sequence[Path],
    method_notes: Sequence[str],
    selection_reports: Sequence[SelectionReport] = (),
) -> Path:
    """Write ``summary.md``: inputs, run issues, main tables, links to every table and figure.

    Links are relative to the summary's folder. The model-selection tables (all runs, and
    checkpoints) follow the main tables when given.
    """
    path = Path(path)
    base = path.parent

    def link(target: Path) -> str:
        relative = Path(target).resolve().relative_to(base.resolve()).as_posix()
        return f"[{relative}]({relative})"

    skipped = issues[issues["action"] == "skipped"]
    lines = [
        "# labelfree analysis",
        "",
        f"Runs searched: {', '.join(f'`{r}`' for r in roots)}. Found {n_found} run "
        f"directories; loaded {n_loaded} ({n_evaluations} evaluations); "
        f"skipped {skipped['run_dir'].nunique()}. Every skipped or incomplete run and "
        "damaged file: " + link(base / "skipped_runs.csv") + ".",
        "",
    ]
    if len(issues):
        lines += ["| run | action | reason | detail |", "|---|---|---|---|"]
        for issue in issues.itertuples(index=False):
            detail = str(issue.detail).replace("|", "\\|")
            lines.append(f"| {issue.name} | {issue.action} | {issue.reason} | {detail} |")
        lines.append("")
    lines += ["## Main table", ""]
    for table in main_tables:
        lines += [f"### {table.dataset} / {table.arch}", "", table.markdown, ""]
    if not main_tables:
        lines += ["No within-run correlation could be computed.", ""]
    if selection_reports:
        lines += [
            "## Model selection",
            "",
            f"Every table: {link(base / 'model_selection.md')}.",
            "",
        ]
        for report in selection_reports:  # its headings name the dataset and arch
            lines += [report.markdown, ""]
    lines += ["## Files", ""] + [f"- {link(f)}" for f in files] + [""]
    lines += ["## Tables", ""]
    lines += [
        f"- {t.dataset} / {t.arch} / {t.variant} / {metric_label(t.target)} / {t.coefficient}: "
        f"{link(t.markdown_path)}, {link(t.latex_path)}"
        for t in tables
    ]
    lines += ["", "## Figures", ""]
    pngs = [f for f in figures if f.suffix == ".png"]
    for png in pngs:
        others = [f for f in figures if f.stem == png.stem and f != png]
        lines.append(f"- {link(png)}" + "".join(f", {link(o)}" for o in others))
    if not figures:
        lines.append("Figures were not written (figures.enabled=false).")
    lines += ["", "## How to read", ""] + [f"- {note}" for note in method_notes] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# model selection (labelfree.analysis.select)
# --------------------------------------------------------------------------------------------


def _scale(target: str) -> tuple[float, str, str]:
    """Display scale of a target: accuracies (fractions) in %, their differences in points."""
    if target.endswith("_acc"):
        return 100.0, f"{metric_label(target)} (%)", "regret (pp)"
    return 1.0, metric_label(target), "regret"


def _scaled(value: object, scale: float, digits: int) -> str:
    number = _number(float(value) * scale, digits) if pd.notna(value) else None
    return _NA if number is None else number


def _with_ci(row: pd.Series, coefficient: str, digits: int) -> str:
    ci = (row[f"{coefficient}_ci_low"], row[f"{coefficient}_ci_high"])
    return format_cell(row[coefficient], ci=ci, digits=digits)


def run_selection_table(
    selection: pd.DataFrame, *, dataset: str, arch: str, method: str = ALL, digits: int = 2
) -> pd.DataFrame:
    """Choosing a run: one row per selector, then the random pick and the oracle.

    Columns: direction of "better", the run picked, its target value, the regret, and Kendall's
    tau and Spearman's rho across runs with their bootstrap intervals. Accuracies are shown in
    %, regrets in accuracy points (pp).
    """
    part = _select(
        selection, dataset=dataset, arch=arch, method=method, kind="run", aggregate="pick"
    )
    if part.empty:
        return pd.DataFrame()
    target = part["target"].iloc[0]
    scale, value_header, regret_header = _scale(target)
    columns = ["better", "pick", value_header, regret_header, "Kendall τ", "Spearman ρ_s"]
    table = pd.DataFrame(columns=columns, dtype=object)
    table.index.name = "selector"
    by_selector = part.set_index("selector")
    for selector in order_metrics(list(by_selector.index)):
        row = by_selector.loc[selector]
        picked = row["direction"] != "none" and bool(row["pick"])
        table.loc[metric_label(selector)] = [
            row["direction"],
            row["pick"] if picked else "n/a (no direction)",
            _scaled(row["pick_target"], scale, 1) if picked else _NA,
            _scaled(row["regret"], scale, 1) if picked else _NA,
            _with_ci(row, "kendall", digits),
            _with_ci(row, "spearman", digits),
        ]
    # the baselines of the selector with the most candidates: all runs unless every selector
    # lacks a value somewhere (each selector's own baseline is in model_selection.csv)
    first = part.loc[part["n_points"].astype(int).idxmax()]
    mean_target = first["oracle_target"] - first["random_regret"]
    table.loc["random pick (expected)"] = [
        "",
        "",
        _scaled(mean_target, scale, 1),
        _scaled(first["random_regret"], scale, 1),
        "",
        "",
    ]
    table.loc["best run (oracle)"] = [
        "",
        first["oracle"],
        _scaled(first["oracle_target"], scale, 1),
        _scaled(0.0, scale, 1),
        "",
        "",
    ]
    return table


def checkpoint_selection_table(selection: pd.DataFrame, *, dataset: str, arch: str) -> pd.DataFrame:
    """Choosing a checkpoint within each run: one row per selector, then the baselines.

    Columns: direction, the mean epoch picked (all runs), then the mean regret over the runs of
    every set (all runs, then each method), in accuracy points for accuracies.
    """
    part = _select(selection, dataset=dataset, arch=arch, kind="checkpoint", aggregate="mean")
    if part.empty:
        return pd.DataFrame()
    scale, _, regret_header = _scale(part["target"].iloc[0])
    methods = [m for m in part["method"].unique() if m != ALL]
    scopes = [ALL, *sorted(methods)]
    names = {ALL: f"all runs ({int(part[part['method'] == ALL]['n_runs'].max())})"}
    for m in methods:
        names[m] = f"{m} ({int(part[part['method'] == m]['n_runs'].max())})"
    columns = ["better", "epoch picked (mean)"] + [f"{regret_header}: {names[s]}" for s in scopes]
    table = pd.DataFrame(columns=columns, dtype=object)
    table.index.name = "selector"
    everything = part[part["method"] == ALL].set_index("selector")
    by_scope = {s: part[part["method"] == s].set_index("selector") for s in scopes}
    for selector in order_metrics(list(everything.index)):
        row = everything.loc[selector]
        picked = row["direction"] != "none"
        cells = [
            row["direction"],
            _number(row["pick_epoch"], 1) if picked else "n/a (no direction)",
        ]
        for scope in scopes:
            value = by_scope[scope].loc[selector, "regret"] if picked else np.nan
            cells.append(_scaled(value, scale, 1))
        table.loc[metric_label(selector)] = cells
    first = {s: by_scope[s].loc[by_scope[s]["n_points"].astype(int).idxmax()] for s in scopes}
    table.loc["random epoch (expected)"] = ["", ""] + [
        _scaled(first[s]["random_regret"], scale, 1) for s in scopes
    ]
    table.loc["last epoch"] = ["", "last"] + [
        _scaled(first[s]["last_regret"], scale, 1) for s in scopes
    ]
    table.loc["best epoch (oracle)"] = ["", _number(first[ALL]["oracle_epoch"], 1) or _NA] + [
        _scaled(0.0, scale, 1) for _ in scopes
    ]
    return table


def direction_table(selectors: Sequence[str]) -> pd.DataFrame:
    """The direction of "better" of each selector and its reason (:data:`DIRECTIONS`)."""
    table = pd.DataFrame(columns=["better", "why"], dtype=object)
    table.index.name = "selector"
    for selector in order_metrics(selectors):
        reason = DIRECTIONS[selector].reason if selector in DIRECTIONS else "not documented"
        table.loc[metric_label(selector)] = [direction_of(selector), reason]
    return table


def _latex_table(table: pd.DataFrame) -> pd.DataFrame:
    """Plain-text cells and labels escaped for LaTeX."""
    out = table.map(lambda v: latex_escape(str(v)))
    out.index = [latex_escape(str(i)) for i in table.index]
    out.index.name = table.index.name
    greek = {"τ": r"$\tau$", "ρ\\_s": r"$\rho_s$"}  # after escaping, ρ_s reads ρ\_s
    columns = [latex_escape(str(c)) for c in table.columns]
    for letter, tex in greek.items():
        columns = [c.replace(letter, tex) for c in columns]
    out.columns = columns
    return out


def write_selection(
    selection: pd.DataFrame,
    output: str | Path,
    *,
    confidence: float = 0.95,
    digits: int = 2,
) -> tuple[list[Path], list[SelectionReport]]:
    """Write ``model_selection.md`` and ``model_selection.tex`` (next to ``model_selection.csv``).

    Per dataset x arch: the run-selection table over all runs, one per method (when there are
    several), and the checkpoint-selection table; then the directions used.

    Args:
        selection: The table of :func:`labelfree.analysis.select.model_selection`.
        output: The analysis folder.
        confidence: For the captions.
        digits: Decimals of the rank correlations.

    Returns:
        The two paths, and the main tables (all runs + checkpoints) per dataset x arch.
    """
    output = Path(output)
    markdown = ["# Label-free model selection", ""]
    latex: list[str] = []
    reports: list[SelectionReport] = []
    combos = selection[["dataset", "arch"]].drop_duplicates().sort_values(["dataset", "arch"])
    for dataset, arch in combos.itertuples(index=False):
        part = _select(selection, dataset=dataset, arch=arch)
        runs_part = part[part["kind"] == "run"]
        target = metric_label(part["target"].iloc[0])
        main: list[str] = []
        methods = [m for m in runs_part["method"].unique() if m != ALL]
        for method in [ALL, *sorted(methods)]:
            table = run_selection_table(part, dataset=dataset, arch=arch, method=method)
            if table.empty:
                continue
            n_runs = int(_select(runs_part, method=method)["n_runs"].max())
            who = "all runs" if method == ALL else f"the {method} runs"
            caption = (
                f"Choosing a run by each selector: {who} of {dataset} / {arch} ({n_runs}), "
                f"final evaluation. Regret: best {target} among them minus the pick's; random "
                f"pick: best minus mean. Rank correlations across runs, [{confidence:.0%} "
                "bootstrap CI over runs]."
            )
            text = to_markdown(table, caption=caption)
            title = f"### Choosing a run: {who} ({dataset} / {arch})"
            markdown += [title, "", text, ""]
            label = "tab:" + slug("selection", dataset, arch, method)
            latex.append(to_latex(_latex_table(table), caption=caption, label=label))
            if method == ALL:
                main += [title, "", text, ""]
        table = checkpoint_selection_table(part, dataset=dataset, arch=arch)
        if not table.empty:
            caption = (
                f"Choosing a checkpoint within each run of {dataset} / {arch}: the evaluated "
                f"epoch with the best selector value; regret: the run's best {target} over its "
                "evaluated epochs minus the picked epoch's, mean over the runs of each set (run "
                "count in brackets). Baselines: a random epoch (expected), the last epoch."
            )
            text = to_markdown(table, caption=caption)
            title = f"### Choosing a checkpoint ({dataset} / {arch})"
            markdown += [title, "", text, ""]
            main += [title, "", text, ""]
            label = "tab:" + slug("checkpoint-selection", dataset, arch)
            latex.append(to_latex(_latex_table(table), caption=caption, label=label))
        reports.append(SelectionReport(dataset=dataset, arch=arch, markdown="\n".join(main)))
    directions = direction_table(list(selection["selector"].unique()))
    markdown += [
        '### Direction of "better"',
        "",
        to_markdown(directions, caption="none: no monotone direction, so nothing is picked."),
        "",
    ]
    md_path, tex_path = output / "model_selection.md", output / "model_selection.tex"
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    tex_path.write_text("\n".join(latex), encoding="utf-8")
    log.info("Wrote %s and %s", md_path, tex_path)
    return [md_path, tex_path], reports
