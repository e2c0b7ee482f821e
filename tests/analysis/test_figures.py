import numpy as np
import pandas as pd
import pytest

from labelfree.analysis.collect import collect_runs
from labelfree.analysis.correlate import cross_run_correlations, within_run_correlations
from labelfree.analysis.figures import plot_outliers, save_figure, write_figures

TARGET = "sup/linear_probe_acc"


@pytest.fixture(scope="module")
def runs(run_tree):
    return collect_runs(run_tree, progress=False).runs


def test_write_figures_png_and_pdf(runs, tmp_path):
    metrics = ["lf/silhouette", "lf/entropy"]
    args = {"metrics": metrics, "targets": [TARGET], "n_resamples": 50}
    correlations = within_run_correlations(runs, **args, variants=["all"], progress=False)
    correlations = pd.concat(
        [correlations, cross_run_correlations(runs, **args)], ignore_index=True
    )
    paths = write_figures(
        runs,
        tmp_path,
        metrics=metrics,
        target=TARGET,
        correlations=correlations,
        dpi=40,
        progress=False,
    )
    stems = sorted({p.stem for p in paths})
    assert stems == sorted(
        [
            f"{kind}_digits_{arch}_{metric}"
            for kind in ("curves", "scatter")
            for arch in ("resnet18", "small-cnn")
            for metric in ("lf-silhouette", "lf-entropy")
        ]
        + [
            "outliers_digits_resnet18_lf-entropy",
            "outliers_digits_small-cnn_lf-entropy",
            "cross_run_digits",
        ]
    )
    assert len(paths) == 2 * len(stems)
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000
        assert data.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")


def test_outlier_plot_marks_the_spike(runs):
    figure = plot_outliers(
        runs, dataset="digits", arch="resnet18", metric="lf/entropy", target=TARGET
    )
    (ax,) = figure.axes
    marked = {c.get_label(): c.get_offsets() for c in ax.collections}
    outliers = np.asarray(marked["outlier"])
    assert outliers[:, 0].tolist() == [1.0]  # the entropy spike at epoch 1
    assert outliers[0, 1] > 10
    assert len(marked["core"]) == 20
    assert "all" in ax.get_title()
    assert "core" in ax.get_title()


def test_save_figure_rejects_unknown_format(runs, tmp_path):
    figure = plot_outliers(runs, dataset="digits", arch="resnet18", target=None)
    with pytest.raises(ValueError, match="Unknown figure format 'docx'.*png"):
        save_figure(figure, tmp_path / "x", formats=["docx"])
