import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from labelfree.analysis.collect import collect_runs
from labelfree.analysis.correlate import (
    COEFFICIENTS,
    CORRELATION_COLUMNS,
    EXTRA_COLUMNS,
    batch_correlation,
    correlation,
    cross_run_correlations,
    final_evaluations,
    metric_columns,
    select_variant,
    within_run_correlations,
)
from labelfree.analysis.outliers import fit_monotone, flag_outliers, local_trend_residuals

SCIPY = {"spearman": stats.spearmanr, "pearson": stats.pearsonr, "kendall": stats.kendalltau}
METRICS = ["lf/silhouette", "lf/kmeans_agreement", "lf/entropy", "sup/kmeans_gt_ami"]
TARGET = "sup/linear_probe_acc"


@pytest.fixture(scope="module")
def runs(run_tree):
    return collect_runs(run_tree, progress=False).runs


@pytest.fixture(scope="module")
def within(runs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy/numpy warning spam
        return within_run_correlations(
            runs,
            metrics=METRICS,
            targets=[TARGET, "sup/kmeans_gt_ami"],
            coefficients=COEFFICIENTS,
            n_resamples=200,
            progress=False,
        )


def _one(table, **equal):
    mask = pd.Series(True, index=table.index)
    for column, value in equal.items():
        mask &= table[column] == value
    rows = table[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _table(x, y, *, epochs=None, run="r0", seed=0, planned=None):
    epochs = np.arange(len(x)) if epochs is None else epochs
    return pd.DataFrame(
        {
            "run_dir": run,
            "name": run,
            "dataset": "d",
            "arch": "a",
            "method": "m",
            "seed": seed,
            "status": "completed",
            "epochs": len(x) - 1 if planned is None else planned,
            "epoch": epochs,
            "lf/x": x,
            TARGET: y,
        }
    )


@pytest.mark.parametrize("coefficient", COEFFICIENTS)
def test_correlation_matches_scipy(coefficient):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 30).astype(float)  # ties
    y = x + rng.normal(0, 2, 30)
    y[4] = np.nan  # dropped pairwise
    result = correlation(x, y, coefficient=coefficient)
    keep = ~np.isnan(y)
    expected = SCIPY[coefficient](x[keep], y[keep])
    assert result.n_points == 29
    assert result.note == ""
    assert result.value == pytest.approx(expected.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)


@pytest.mark.parametrize("coefficient", COEFFICIENTS)
def test_batch_correlation_matches_scipy_with_mask(coefficient):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 4, (40, 15)).astype(float)
    y = rng.integers(0, 4, (40, 15)).astype(float) + x
    mask = rng.random(x.shape) > 0.25
    batch = batch_correlation(x, y, coefficient=coefficient, mask=mask)
    for b in range(len(x)):
        expected = SCIPY[coefficient](x[b][mask[b]], y[b][mask[b]]).statistic
        assert batch[b] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("coefficient", COEFFICIENTS)
def test_constant_or_short_input_is_nan_with_reason_and_no_warning(coefficient):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = correlation([1.0] * 5, [1, 2, 3, 4, 5], coefficient=coefficient)
        target = correlation([1, 2, 3, 4, 5], [2.0] * 5, coefficient=coefficient)
        short = correlation([1, 2], [1, 2], coefficient=coefficient)
        batch = batch_correlation(
            np.ones((2, 5)), np.arange(10.0).reshape(2, 5), coefficient=coefficient
        )
    assert np.isnan(constant.value)
    assert constant.note == "constant metric"
    assert np.isnan(target.value)
    assert target.note == "constant target"
    assert np.isnan(short.value)
    assert short.note == "fewer than 3 points (2)"
    assert np.isnan(batch).all()


def test_unknown_coefficient_names_options():
    with pytest.raises(ValueError, match="Unknown correlation coefficient 'spearmen'.*kendall"):
        correlation([1, 2, 3], [1, 2, 3], coefficient="spearmen")


def test_monotone_metric_gives_one_with_tight_interval(within):
    # lf/silhouette = acc**3 + 0.1: a strictly increasing function of the target.
    for coefficient in ("spearman", "kendall"):
        rows = within[
            (within["metric"] == "lf/silhouette")
            & (within["target"] == TARGET)
            & (within["coefficient"] == coefficient)
            & (within["variant"] == "all")
            & (within["aggregate"] != "std")
        ]
        assert len(rows) == 7 + 3 * 2  # 7 per-seed rows, then mean + pooled of 3 groups
        assert np.allclose(rows["value"], 1.0)
        assert np.allclose(rows[["ci_low", "ci_high"]], 1.0)
    per_seed = _one(
        within,
        method="simclr",
        arch="small_cnn",
        variant="all",
        seed=0,
        metric="lf/silhouette",
        target=TARGET,
        coefficient="spearman",
        aggregate="per_seed",
    )
    assert per_seed["p_value"] < 1e-10
    assert per_seed["n_points"] == 21
    assert per_seed["n_runs"] == 1


def test_shuffled_metric_gives_small_value_with_wide_interval():
    rng = np.random.default_rng(3)
    acc = np.sort(rng.random(40))
    table = _table(rng.permutation(acc), acc)
    result = within_run_correlations(
        table, metrics=["lf/x"], targets=[TARGET], n_resamples=500, progress=False
    )
    row = _one(result, aggregate="per_seed", variant="all")
    assert abs(row["value"]) < 0.2
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["ci_high"] - row["ci_low"] > 0.5
    assert row["p_value"] > 0.2


def test_mean_std_pooled_match_direct_computation(runs, within):
    keys = {
        "method": "simclr",
        "arch": "small_cnn",
        "variant": "all",
        "metric": "lf/entropy",
        "target": TARGET,
        "coefficient": "pearson",
    }
    group = runs[(runs["method"] == "simclr") & (runs["arch"] == "small_cnn")]
    per_seed = []
    for _, run in group.groupby("run_dir"):
        per_seed.append(stats.pearsonr(run["lf/entropy"], run[TARGET]).statistic)
        row = _one(within, **keys, aggregate="per_seed", seed=run["seed"].iloc[0])
        assert row["value"] == pytest.approx(per_seed[-1])
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert len(per_seed) == 3
    mean = _one(within, **keys, aggregate="mean")
    assert mean["value"] == pytest.approx(np.mean(per_seed))
    assert np.isnan(mean["p_value"])
    assert mean["n_runs"] == 3
    assert mean["n_points"] == 21 + 21 + 20
    std = _one(within, **keys, aggregate="std")
    assert std["value"] == pytest.approx(np.std(per_seed, ddof=1))
    pooled = _one(within, **keys, aggregate="pooled")
    expected = stats.pearsonr(group["lf/entropy"], group[TARGET])
    assert pooled["value"] == pytest.approx(expected.statistic)
    assert pooled["p_value"] == pytest.approx(expected.pvalue)
    assert pooled["ci_low"] <= pooled["value"] <= pooled["ci_high"]


def test_single_run_group_aggregates(within):
    keys = {
        "method": "simclr",
        "arch": "resnet18",
        "variant": "all",
        "metric": "lf/entropy",
        "target": TARGET,
        "coefficient": "spearman",
    }
    per_seed = _one(within, **keys, aggregate="per_seed")
    mean = _one(within, **keys, aggregate="mean")
    pooled = _one(within, **keys, aggregate="pooled")
    std = _one(within, **keys, aggregate="std")
    for row in (mean, pooled):
        assert row[["value", "ci_low", "ci_high"]].tolist() == pytest.approx(
            per_seed[["value", "ci_low", "ci_high"]].tolist()
        )
    assert np.isnan(std["value"])
    assert std["note"] == "one run: no spread"


def test_output_columns_and_metric_equal_target_skipped(within):
    assert list(within.columns) == [*CORRELATION_COLUMNS, *EXTRA_COLUMNS]
    assert not ((within["metric"] == within["target"]).any())
    assert set(within["variant"]) == {"all", "no_init", "late"}
    assert set(within["aggregate"]) == {"per_seed", "mean", "std", "pooled"}


def test_variants_select_the_right_rows(runs, within):
    assert 0 not in set(select_variant(runs, "no_init")["epoch"])
    assert len(select_variant(runs, "no_init")) == len(runs) - 7
    late = select_variant(runs, "late", late_fraction=0.5)
    assert late["epoch"].min() == 10  # planned epochs = 20
    assert sorted(set(late["epoch"])) == list(range(10, 21))
    assert select_variant(runs, "late", late_fraction=0.25)["epoch"].min() == 5
    keys = {
        "method": "simclr",
        "arch": "small_cnn",
        "seed": 0,
        "metric": "lf/entropy",
        "target": TARGET,
        "coefficient": "spearman",
        "aggregate": "per_seed",
    }
    assert _one(within, **keys, variant="all")["n_points"] == 21
    assert _one(within, **keys, variant="no_init")["n_points"] == 20
    assert _one(within, **keys, variant="late")["n_points"] == 11
    # The running run (epochs 0-7 of 20) has no late evaluation: NaN with a reason.
    running = _one(within, **{**keys, "method": "moco_v2", "seed": 6}, variant="late")
    assert running["n_points"] == 0
    assert np.isnan(running["value"])
    assert running["note"] == "fewer than 3 points (0)"


def test_late_uses_last_epoch_when_plan_unknown():
    table = _table(np.arange(10.0), np.arange(10.0), planned=np.nan)
    assert select_variant(table, "late", late_fraction=0.5)["epoch"].tolist() == [5, 6, 7, 8, 9]


def test_variant_errors():
    table = _table(np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match="Unknown variant 'final'.*no_init"):
        select_variant(table, "final")
    with pytest.raises(ValueError, match=r"late_fraction must lie in \[0, 1\], got 1.5"):
        select_variant(table, "late", late_fraction=1.5)


def test_bootstrap_is_seeded(runs):
    args = {
        "metrics": ["lf/kmeans_agreement"],
        "targets": [TARGET],
        "n_resamples": 100,
        "variants": ["all"],
        "progress": False,
    }
    first = within_run_correlations(runs, **args, seed=0)
    again = within_run_correlations(runs, **args, seed=0)
    other = within_run_correlations(runs, **args, seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["ci_low"].dropna(), other["ci_low"].dropna())
    # the same runs in another directory (a copied sweep, a CI checkout) give the same intervals
    moved = runs.assign(run_dir="/elsewhere/" + runs["run_dir"].astype(str))
    pd.testing.assert_frame_equal(
        within_run_correlations(moved, **args, seed=0).drop(columns="run_dir", errors="ignore"),
        first.drop(columns="run_dir", errors="ignore"),
    )


def test_constant_metric_column_in_table_is_nan_without_warnings():
    table = _table(np.ones(10), np.arange(10.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = within_run_correlations(
            table,
            metrics=["lf/x"],
            targets=[TARGET],
            coefficients=COEFFICIENTS,
            n_resamples=50,
            progress=False,
        )
    assert result["value"].isna().all()
    assert set(result.loc[result["aggregate"] == "per_seed", "note"]) == {"constant metric"}


def test_cross_run_correlations(runs):
    final = final_evaluations(runs)
    assert len(final) == 6  # completed runs only (the running one is left out)
    assert final.groupby("run_dir")["epoch"].max().tolist() == final["epoch"].tolist()
    result = cross_run_correlations(
        runs, metrics=METRICS, targets=[TARGET], coefficients=COEFFICIENTS, n_resamples=200
    )
    assert set(result["variant"]) == {"final"}
    assert set(result["aggregate"]) == {"cross_run"}
    comparisons = set(zip(result["arch"], result["method"], strict=True))
    # moco_v2 has one arch only: no "across archs" row for it.
    assert comparisons == {("all", "all"), ("all", "simclr"), ("small_cnn", "all")}
    every = _one(result, arch="all", method="all", metric="lf/silhouette", coefficient="spearman")
    assert every["value"] == pytest.approx(1.0)
    assert every["n_runs"] == every["n_points"] == 6
    entropy = _one(
        result, arch="small_cnn", method="all", metric="lf/entropy", coefficient="kendall"
    )
    subset = final[final["arch"] == "small_cnn"]
    expected = stats.kendalltau(subset["lf/entropy"], subset[TARGET])
    assert entropy["value"] == pytest.approx(expected.statistic)
    assert entropy["p_value"] == pytest.approx(expected.pvalue)
    assert entropy["n_runs"] == 5


def test_metric_columns(runs):
    assert metric_columns(runs) == ["lf/entropy", "lf/kmeans_agreement", "lf/silhouette"]
    assert metric_columns(runs, extra=["sup/kmeans_gt_ami", "sup/absent"])[-1] == (
        "sup/kmeans_gt_ami"
    )
    with pytest.raises(ValueError, match="lf/typo not found.*lf/entropy"):
        metric_columns(runs, ["lf/typo"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_monotone_matches_sklearn(seed):
    values = np.random.default_rng(seed).normal(size=25).cumsum()
    fitted = fit_monotone(values)
    candidates = [
        IsotonicRegression(increasing=inc).fit_transform(np.arange(25), values)
        for inc in (True, False)
    ]
    best = min(candidates, key=lambda f: np.sum((values - f) ** 2))
    np.testing.assert_allclose(fitted, best)


def test_local_trend_residuals_zero_on_a_line():
    epochs = np.array([0.0, 20, 40, 60, 80, 100])
    np.testing.assert_allclose(local_trend_residuals(epochs, 3 - 0.01 * epochs), 0, atol=1e-12)


def test_flag_outliers_rule():
    epochs = np.arange(21.0)
    rng = np.random.default_rng(0)
    trend = 8 - 0.1 * epochs + rng.normal(0, 0.02, 21)
    spiked = trend.copy()
    spiked[[1, 12]] += [3.0, -1.0]
    assert np.flatnonzero(flag_outliers(epochs, spiked)).tolist() == [1, 12]
    # Order of the input does not matter.
    order = rng.permutation(21)
    assert np.flatnonzero(flag_outliers(epochs[order], spiked[order])).tolist() == sorted(
        np.flatnonzero(np.isin(order, [1, 12]))
    )
    # Smooth curves, even fast-changing ones, have no outliers.
    assert not flag_outliers(epochs, trend).any()
    assert not flag_outliers(epochs, 1 - np.exp(-epochs / 3)).any()
    assert not flag_outliers(epochs, (epochs - 8) ** 2).any()
    # Early-epoch rule and NaN handling.
    with_nan = trend.copy()
    with_nan[5] = np.nan
    early = flag_outliers(epochs, with_nan, epoch_fraction=0.2, planned_epochs=20)
    assert np.flatnonzero(early).tolist() == [0, 1, 2, 3]
    assert not early[5]
    # A stricter threshold keeps the smaller spike in the core.
    assert np.flatnonzero(flag_outliers(epochs, spiked, min_deviation=0.2)).tolist() == [1]
    with pytest.raises(ValueError, match="window must be >= 2"):
        flag_outliers(epochs, trend, window=1)


def test_group_with_an_undefined_run():
    flat = _table(np.ones(8), np.arange(8.0), run="r0", seed=0)
    rising = _table(np.arange(8.0) ** 2, np.arange(8.0), run="r1", seed=1)
    result = within_run_correlations(
        pd.concat([flat, rising]),
        metrics=["lf/x"],
        targets=[TARGET],
        variants=["all"],
        n_resamples=200,
        progress=False,
    ).set_index("aggregate")
    per_seed = result.loc["per_seed"].set_index("run")
    assert np.isnan(per_seed.loc["r0", "value"])
    assert per_seed.loc["r1", "value"] == pytest.approx(1.0)
    assert result.loc["mean", "value"] == pytest.approx(1.0)
    assert result.loc["mean", "n_runs"] == 1
    assert result.loc["mean", "n_points"] == 16
    pooled = result.loc["pooled"]
    assert pooled["n_runs"] == 2
    assert np.isfinite(pooled["ci_low"])
    assert pooled["ci_low"] <= pooled["value"] <= pooled["ci_high"]
    x, y = np.r_[np.ones(8), np.arange(8.0) ** 2], np.r_[np.arange(8.0), np.arange(8.0)]
    assert pooled["value"] == pytest.approx(stats.spearmanr(x, y).statistic)
