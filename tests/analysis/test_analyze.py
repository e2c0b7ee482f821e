import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import labelfree
from labelfree.analysis.correlate import CORRELATION_COLUMNS
from labelfree.analyze import analyze

CONF = Path(labelfree.__file__).parent / "conf"
FAST = ["bootstrap.n_resamples=100", "figures.dpi=40"]


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="analyze", overrides=list(overrides))


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "labelfree.analyze", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_console_script_is_declared():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["labelfree-analyze"] == "labelfree.analyze:main"


def test_cli_end_to_end_writes_every_output(run_tree, tmp_path):
    out = tmp_path / "analysis"
    result = _cli(f"runs={run_tree}", f"output={out}", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The main table is printed: spearman, variant all, linear probe, per dataset x arch.
    assert "## digits / small_cnn" in result.stdout
    assert "| method | S1 | AMI(C1;C2) | H(Z) | AMI(C1;C_GT) |" in result.stdout
    assert "| simclr | 1.00 ± 0.00 |" in result.stdout
    assert f"Outputs in {out}" in result.stdout
    for name in ("runs.csv", "skipped_runs.csv", "correlations.csv", "summary.md", "analyze.log"):
        assert (out / name).stat().st_size > 0, name
    correlations = pd.read_csv(out / "correlations.csv")
    assert list(correlations.columns[:13]) == list(CORRELATION_COLUMNS)
    assert set(correlations["coefficient"]) == {"spearman", "pearson", "kendall"}
    assert set(correlations["variant"]) == {"all", "no_init", "late", "final"}
    skipped = pd.read_csv(out / "skipped_runs.csv")
    assert sorted(skipped["reason"]) == sorted(
        [
            "truncated_last_line",
            "missing_run_json",
            "diverged",
            "failed",
            "running",
            "no_evaluations",
        ]
    )
    assert len(pd.read_csv(out / "runs.csv")) == 133
    tables = sorted((out / "tables").iterdir())
    assert (
        len([t for t in tables if t.suffix == ".md"])
        == len([t for t in tables if t.suffix == ".tex"])
        == 2 * 2 * 3 + 2
    )
    figures = sorted((out / "figures").iterdir())
    pngs = {f.stem for f in figures if f.suffix == ".png"}
    assert pngs == {f.stem for f in figures if f.suffix == ".pdf"}
    assert "outliers_digits_small-cnn_lf-entropy" in pngs
    assert "cross_run_digits" in pngs
    assert all(f.stat().st_size > 1000 for f in figures)
    summary = (out / "summary.md").read_text()
    assert "[skipped_runs.csv](skipped_runs.csv)" in summary
    assert "figures/outliers_digits_small-cnn_lf-entropy.png" in summary
    assert "diverged" in (out / "analyze.log").read_text()


def test_cli_missing_runs_path_is_one_clear_line(tmp_path):
    result = _cli(f"runs={tmp_path / 'nowhere'}", f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "labelfree-analyze: error: runs path" in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_without_runs_says_how_to_call(tmp_path):
    result = _cli(f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "No runs given" in result.stderr
    assert "labelfree-analyze runs=DIR output=OUT" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_list_options_and_pooled_cells(run_tree, tmp_path):
    cfg = _compose(
        f"runs=[{run_tree / '0'},{run_tree / '1'},{run_tree / '2'}]",
        f"output={tmp_path / 'out'}",
        "correlation.coefficients=[pearson]",
        "correlation.main_coefficient=pearson",
        "correlation.variants=[no_init]",
        "correlation.targets=[sup/linear_probe_acc]",
        "table.cell=pooled_ci",
        "figures.enabled=false",
        "bootstrap.n_resamples=50",
    )
    result = analyze(cfg)
    assert result.collection.n_loaded == 3
    assert set(result.correlations["coefficient"]) == {"pearson"}
    assert set(result.correlations["variant"]) == {"no_init", "final"}
    assert result.figures == []
    (main,) = result.main_tables
    assert (main.dataset, main.arch, main.variant) == ("digits", "small_cnn", "no_init")
    assert "pooled over all seeds' evaluations [95% bootstrap CI]" in main.caption
    corr = result.correlations
    row = corr[
        (corr["method"] == "simclr")
        & (corr["metric"] == "lf/silhouette")
        & (corr["aggregate"] == "pooled")
    ].iloc[0]
    cell = f"{row['value']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    assert f"| simclr | {cell} |" in main.markdown
    assert not (tmp_path / "out" / "figures").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("correlation.coefficients=[spearmann]", "spearmann.*Choose from: spearman"),
        ("correlation.variants=[early]", "'early'.*Choose from: all, no_init, late"),
        ("correlation.main_coefficient=kendall", "not among correlation.coefficients"),
        ("table.cell=best", "table.cell='best' is invalid"),
        ("correlation.metrics=[lf/rankme]", "lf/rankme not found"),
        ("correlation.targets=[sup/knn_acc]", "None of the targets"),
    ],
)
def test_config_errors_name_value_and_fix(run_tree, tmp_path, override, message):
    overrides = [f"runs={run_tree}", f"output={tmp_path}", override]
    if "main_coefficient" in override:
        overrides.append("correlation.coefficients=[spearman]")
    with pytest.raises(ValueError, match=message):
        analyze(_compose(*overrides))


def test_all_runs_skipped_keeps_the_report(run_tree, tmp_path):
    cfg = _compose(f"runs=[{run_tree / '7'},{run_tree / '8'}]", f"output={tmp_path}")
    with pytest.raises(ValueError, match="All 2 run.*skipped_runs.csv"):
        analyze(cfg)
    skipped = pd.read_csv(tmp_path / "skipped_runs.csv")
    assert sorted(skipped["reason"]) == ["diverged", "failed"]


def test_model_selection_is_written_and_listed(run_tree, tmp_path):
    out = tmp_path / "out"
    result = analyze(_compose(f"runs={run_tree}", f"output={out}", *FAST))
    selection = pd.read_csv(out / "model_selection.csv")
    assert set(selection["kind"]) == {"run", "checkpoint"}
    assert set(selection["selector"]) == {"lf/entropy", "lf/kmeans_agreement", "lf/silhouette"}
    assert (selection["regret"].dropna() >= 0).all()
    text = (out / "model_selection.md").read_text()
    assert "### Choosing a run: all runs (digits / small_cnn)" in text
    assert "| random pick (expected) |" in text
    assert (out / "model_selection.tex").read_text().count(r"\begin{table}") >= 3
    assert "figures/model_selection_digits_small-cnn.png" in (out / "summary.md").read_text()
    assert "[model_selection.md](model_selection.md)" in (out / "summary.md").read_text()
    assert result.selection_reports
    off = analyze(
        _compose(f"runs={run_tree}", f"output={tmp_path / 'off'}", "selection.enabled=false", *FAST)
    )
    assert off.selection.empty
    assert not (tmp_path / "off" / "model_selection.csv").exists()


@pytest.mark.slow
def test_tiny_sweep_over_one_key_end_to_end(run_module, tiny_overrides, tmp_path):
    """labelfree-train -m over method.temperature x seed, then labelfree-analyze on the sweep."""
    train = run_module(
        "labelfree.train",
        "-m",
        "method.temperature=0.2,0.5",
        "seed=0,1",
        *tiny_overrides,
        "metrics=full",
        "eval.train_per_class=10",
        f"paths.output_dir={tmp_path / 'outputs'}",
        cwd=tmp_path,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    sweep = tmp_path / "outputs" / "sweeps" / "adhoc"
    assert len(list(sweep.glob("*/run.json"))) == 4
    out = tmp_path / "analysis"
    proc = _cli(f"runs={sweep}", f"output={out}", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| simclr, method.temperature=0.2 |" in proc.stdout
    assert "## Model selection: digits / small_cnn" in proc.stdout
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.groupby("method.temperature")["seed"].unique().map(sorted).items()) == [
        (0.2, [0, 1]),
        (0.5, [0, 1]),
    ]
    selection = pd.read_csv(out / "model_selection.csv")
    chosen = selection[(selection["kind"] == "run") & (selection["selector"] == "lf/silhouette")]
    assert chosen["n_runs"].tolist() == [4]
    assert chosen["pick"].iloc[0].startswith("simclr, method.temperature=")
    assert "sup/fewshot_probe_acc" in set(selection["selector"])
    for suffix in ("csv", "md", "tex"):
        assert (out / f"model_selection.{suffix}").stat().st_size > 0
    assert (out / "figures" / "model_selection_digits_small-cnn.png").stat().st_size > 1000
