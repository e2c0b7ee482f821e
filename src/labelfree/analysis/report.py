"""Markdown and LaTeX tables laid out like the paper's, and the ``summary.md`` of an analysis.

Paper layout (Xu, Lowe, Trappenberg 2024, arXiv:2409.06612): rows are SSL methods, columns are
metrics, one table per dataset x arch x variant (and per target and coefficient here). A cell is
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

import pandas as pd

from labelfree.analysis.correlate import (
    ALL,
    CROSS_RUN_AGGREGATE,
    CROSS_RUN_VARIANT,
)
from labelfree.analysis.labels import (
    COEFFICIENT_NAMES,
    VARIANT_TEXT,
    latex_escape,
    metric_label,
    order_metrics,
    slug,
)

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
) -> pd.DataFrame:
    """A paper-style table: rows methods, columns metrics, string cells.

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
    methods = sorted(part["method"].unique())
    table = pd.DataFrame(
        index=pd.Index(methods, name="method"),
        columns=[metric_label(m, latex=latex) for m in metrics],
        dtype=object,
    )
    for method in methods:
        for metric in metrics:
            rows = _select(part, method=method, metric=metric).set_index("aggregate")
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
) -> pd.DataFrame:
    """Cross-run table of one dataset: rows model comparisons, columns metrics.

    Cell: coefficient [bootstrap CI] (n runs).
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
) -> str:
    """Caption of a paper-style table; says what a cell holds."""
    what = (
        f"mean ± std over seeds ({n_seeds} per method; a single value where one seed)"
        if cell == "mean_std"
        else f"coefficient pooled over all seeds' evaluations [{confidence:.0%} bootstrap CI]"
    )
    selection = VARIANT_TEXT[variant].format(late_fraction=late_fraction)
    return (
        f"{COEFFICIENT_NAMES[coefficient]} correlation between each metric and "
        f"{metric_label(target)} over training ({selection}); "
        f"dataset {dataset}, architecture {arch}. Cell: {what}."
    )


def _n_seeds(correlations: pd.DataFrame) -> str:
    per_seed = correlations.loc[correlations["aggregate"] == "per_seed"]
    values = sorted(set(per_seed.groupby(["method", "metric"]).size().tolist())) or [0]
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
                    n_seeds=_n_seeds(_select(part, target=target, variant=variant)),
                    late_fraction=late_fraction,
                    confidence=confidence,
                )
                args = {"coefficient": coefficient, "cell": cell, "digits": digits}
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
            args = {"dataset": dataset, "target": target, "coefficient": coefficient}
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
) -> Path:
    """Write ``summary.md``: inputs, run issues, main tables, links to every table and figure.

    Links are relative to the summary's folder.
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
