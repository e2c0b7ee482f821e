import numpy as np
import pandas as pd
import pytest

from labelfree.analysis.collect import collect_runs
from labelfree.analysis.correlate import cross_run_correlations, within_run_correlations
from labelfree.analysis.labels import latex_escape, metric_label, order_metrics
from labelfree.analysis.report import (
    checkpoint_selection_table,
    cross_run_table,
    format_cell,
    paper_table,
    run_selection_table,
    to_latex,
    to_markdown,
    write_summary,
    write_tables,
)
from labelfree.analysis.select import model_selection

TARGET = "sup/linear_probe_acc"
METRICS = ["lf/entropy", "lf/kmeans_agreement", "lf/silhouette", "sup/kmeans_gt_ami"]


@pytest.fixture(scope="module")
def correlations(run_tree):
    runs = collect_runs(run_tree, progress=False).runs
    args = {"metrics": METRICS, "targets": [TARGET], "n_resamples": 100}
    within = within_run_correlations(runs, **args, progress=False)
    return pd.concat([within, cross_run_correlations(runs, **args)], ignore_index=True)


def test_paper_table_layout_and_cells(correlations):
    table = paper_table(
        correlations, dataset="digits", arch="small_cnn", variant="all", target=TARGET
    )
    assert table.index.name == "method"
    assert table.index.tolist() == ["moco_v2", "simclr"]
    # Paper column order: S1, AMI(C1;C2), H(Z), then AMI(C1;C_GT).
    assert table.columns.tolist() == ["S1", "AMI(C1;C2)", "H(Z)", "AMI(C1;C_GT)"]
    rows = correlations[
        (correlations["method"] == "simclr")
        & (correlations["arch"] == "small_cnn")
        & (correlations["variant"] == "all")
        & (correlations["metric"] == "lf/entropy")
        & (correlations["target"] == TARGET)
    ].set_index("aggregate")
    expected = f"{rows.loc['mean', 'value']:.2f} ± {rows.loc['std', 'value']:.2f}"
    assert table.loc["simclr", "H(Z)"] == expected
    assert table.loc["simclr", "S1"] == "1.00 ± 0.00"
    pooled = paper_table(
        correlations,
        dataset="digits",
        arch="resnet18",
        variant="all",
        target=TARGET,
        cell="pooled_ci",
        digits=3,
    )
    row = rows = correlations[
        (correlations["arch"] == "resnet18")
        & (correlations["variant"] == "all")
        & (correlations["metric"] == "lf/entropy")
        & (correlations["aggregate"] == "pooled")
    ].iloc[0]
    assert pooled.loc["simclr", "H(Z)"] == (
        f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    )
    assert rows is row
    with pytest.raises(ValueError, match="Unknown table cell 'median'.*pooled_ci"):
        paper_table(
            correlations,
            dataset="digits",
            arch="resnet18",
            variant="all",
            target=TARGET,
            cell="median",
        )


def test_cross_run_table(correlations):
    table = cross_run_table(correlations, dataset="digits", target=TARGET)
    assert table.index.tolist() == ["all runs", "simclr, across archs", "small_cnn, across methods"]
    assert table.loc["all runs", "S1"] == "1.00 [1.00, 1.00] (n=6)"


def test_cells_labels_escaping():
    assert format_cell(np.nan, std=0.1) == "n/a"
    assert format_cell(0.5, std=np.nan) == "0.50"
    assert format_cell(-0.456, std=0.01, latex=True) == "$-0.46 \\pm 0.01$"
    assert format_cell(0.5, ci=(np.nan, np.nan)) == "0.50"
    assert metric_label("lf/entropy", latex=True) == "$H(Z)$"
    assert metric_label("lf/my_metric", latex=True) == "lf/my\\_metric"
    assert order_metrics(["sup/kmeans_gt_ami", "lf/rankme", "lf/entropy", "lf/silhouette"]) == [
        "lf/silhouette",
        "lf/entropy",
        "lf/rankme",
        "sup/kmeans_gt_ami",
    ]
    assert latex_escape("a_b & 5% ± #1") == "a\\_b \\& 5\\% $\\pm$ \\#1"


def test_markdown_and_latex_rendering():
    table = pd.DataFrame(
        {"S1": ["0.90 ± 0.01"], "H(Z)": ["a|b"]}, index=pd.Index(["moco_v2"], name="method")
    )
    markdown = to_markdown(table, caption="Cap.")
    assert markdown.splitlines() == [
        "| method | S1 | H(Z) |",
        "|---|---|---|",
        "| moco_v2 | 0.90 ± 0.01 | a\\|b |",
        "",
        "*Cap.*",
    ]
    latex = to_latex(table, caption="Spearman ± std", label="tab:x")
    assert "\\begin{tabular}{lcc}" in latex
    assert "moco\\_v2 & 0.90 ± 0.01 & a|b \\\\" in latex
    assert "\\caption{Spearman $\\pm$ std}" in latex
    assert latex.count("\\toprule") == latex.count("\\bottomrule") == 1


def test_write_tables_and_summary(correlations, tmp_path):
    tables = write_tables(correlations, tmp_path / "tables", targets=[TARGET])
    # 2 archs x 3 variants + 1 cross-run table
    assert len(tables) == 7
    for table in tables:
        assert table.markdown_path.read_text().startswith("| ")
        assert "\\begin{table}" in table.latex_path.read_text()
    captions = {t.variant: t.caption for t in tables if t.arch == "small_cnn"}
    assert "epoch 0 (random initialisation) excluded" in captions["no_init"]
    assert "at or after 0.5 of the planned epochs" in captions["late"]
    assert "mean ± std over seeds (3 per method" in captions["all"]
    figure = tmp_path / "figures" / "a.png"
    figure.parent.mkdir()
    figure.write_bytes(b"x")
    issues = pd.DataFrame(
        [
            {
                "run_dir": "/r/6",
                "name": "6",
                "status": None,
                "action": "skipped",
                "reason": "missing_run_json",
                "detail": "no run.json",
            }
        ]
    )
    summary = write_summary(
        tmp_path / "summary.md",
        roots=["/r"],
        n_found=3,
        n_loaded=2,
        n_evaluations=42,
        issues=issues,
        main_tables=tables[:1],
        tables=tables,
        figures=[figure],
        files=[],
        method_notes=["note one"],
    )
    text = summary.read_text()
    assert "loaded 2 (42 evaluations); skipped 1" in text
    assert "| 6 | skipped | missing_run_json | no run.json |" in text
    assert "[figures/a.png](figures/a.png)" in text
    assert tables[0].markdown in text
    assert "- note one" in text


def test_selection_baselines_count_every_candidate():
    """The random-pick and oracle rows come from the selector with the most candidates, not
    from the first one (here S1, which has no value at the best run or the best epoch)."""
    rows = []
    finals = {"r0": 0.5, "r1": 0.6, "r2": 0.7}
    for seed, (run, final) in enumerate(finals.items()):
        for epoch, acc in enumerate([0.3, final]):
            rows.append(
                {
                    "run_dir": f"/runs/{run}", "name": run, "dataset": "digits",
                    "arch": "small_cnn", "method": "simclr", "seed": seed,
                    "status": "completed", "epochs": 1, "epoch": epoch,
                    "lf/silhouette": np.nan if run == "r2" or epoch == 1 else 0.1 * seed,
                    "lf/uniformity": acc, "sup/linear_probe_acc": acc,
                }
            )  # fmt: skip
    selection = model_selection(
        pd.DataFrame(rows), selectors=["lf/silhouette", "lf/uniformity"], n_resamples=20
    )
    runs = run_selection_table(selection, dataset="digits", arch="small_cnn")
    # every run: best 70.0, mean (50 + 60 + 70) / 3 = 60.0 (S1's own runs would give 60, 55)
    assert runs.loc["random pick (expected)"].tolist()[2:4] == ["60.0", "10.0"]
    assert runs.loc["best run (oracle)"].tolist()[1:4] == ["simclr, s2", "70.0", "0.0"]
    assert runs.loc["Uniformity"].tolist()[1:4] == ["simclr, s0", "50.0", "20.0"]
    checkpoints = checkpoint_selection_table(selection, dataset="digits", arch="small_cnn")
    # random epoch: mean over runs of (final - 0.3) / 2 = (0.1 + 0.15 + 0.2) / 3 = 0.15
    assert checkpoints.loc["random epoch (expected)"].tolist()[2] == "15.0"
    assert checkpoints.loc["last epoch"].tolist()[2] == "0.0"
