"""Label-free model selection, checked by hand on small tables."""

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from labelfree.analysis import select
from labelfree.analysis.select import (
    DIRECTIONS,
    checkpoint_selection,
    direction_of,
    model_selection,
    run_selection,
    select_best,
    selection_columns,
    selector_columns,
)
from labelfree.metrics import ALL_METRICS, metric_key


def final_table(metric, acc, *, method="simclr", fewshot=None, status="completed"):
    """One final evaluation per run: runs r0, r1, ... with the given metric and accuracy."""
    rows = []
    for i, (m, a) in enumerate(zip(metric, acc, strict=True)):
        rows.append(
            {
                "run_dir": f"/runs/r{i}",
                "name": f"r{i}",
                "dataset": "digits",
                "arch": "small_cnn",
                "method": method if isinstance(method, str) else method[i],
                "seed": i,
                "status": status,
                "epochs": 10,
                "epoch": 10,
                "lf/silhouette": m,
                "lf/uniformity": -m,
                "lf/entropy": m,
                "sup/fewshot_probe_acc": a if fewshot is None else fewshot[i],
                "sup/linear_probe_acc": a,
            }
        )
    return pd.DataFrame(rows)


# Three runs: S1 0.1, 0.3, 0.2; accuracy 0.50, 0.55, 0.60.
METRIC, ACC = [0.1, 0.3, 0.2], [0.50, 0.55, 0.60]


def test_select_best_by_hand():
    higher = select_best(np.array(METRIC), np.array(ACC), direction="higher")
    assert higher.pick == 1  # S1 0.3
    assert higher.pick_target == pytest.approx(0.55)
    assert higher.oracle == 2
    assert higher.regret == pytest.approx(0.60 - 0.55)
    assert higher.random_regret == pytest.approx(0.60 - (0.50 + 0.55 + 0.60) / 3)
    lower = select_best(np.array(METRIC), np.array(ACC), direction="lower")
    assert (lower.pick, lower.regret) == (0, pytest.approx(0.10))
    none = select_best(np.array(METRIC), np.array(ACC), direction="none")
    assert none.pick == -1
    assert math.isnan(none.regret)
    assert none.random_regret == pytest.approx(higher.random_regret)
    assert "no monotone direction" in none.note


def test_ties_average_the_target_and_nan_candidates_are_left_out():
    tied = select_best(np.array([0.3, 0.3, 0.1]), np.array([0.5, 0.6, 0.7]), direction="higher")
    assert (tied.pick, tied.n_tied) == (0, 2)
    assert tied.pick_target == pytest.approx(0.55)
    assert tied.regret == pytest.approx(0.15)
    assert "2 tied" in tied.note
    gap = select_best(np.array([np.nan, 0.2, 0.1]), np.array([0.9, 0.6, 0.7]), direction="higher")
    assert (gap.pick, gap.oracle, gap.n_points) == (1, 2, 2)  # run 0 (acc 0.9) has no metric
    assert gap.regret == pytest.approx(0.1)
    assert "1 candidate(s) without a value left out" in gap.note
    empty = select_best(np.array([np.nan]), np.array([0.5]), direction="higher")
    assert empty.pick == -1
    assert empty.note == "no candidate with both values"
    with pytest.raises(ValueError, match="Unknown direction 'up'"):
        select_best(np.array([1.0]), np.array([1.0]), direction="up")


def test_run_selection_by_hand():
    selection = run_selection(
        final_table(METRIC, ACC),
        selectors=["lf/silhouette", "lf/uniformity", "lf/entropy"],
        n_resamples=200,
    )
    assert list(selection.columns) == selection_columns()
    rows = selection.set_index("selector")
    s1 = rows.loc["lf/silhouette"]
    assert (s1["method"], s1["kind"], s1["direction"]) == ("all", "run", "higher")
    assert (s1["pick_run"], s1["oracle_run"], s1["pick"]) == ("r1", "r2", "simclr, s1")
    assert s1["pick_target"] == pytest.approx(0.55)
    assert s1["regret"] == pytest.approx(0.05)
    assert s1["random_regret"] == pytest.approx(0.05)
    # ranks S1 (1, 3, 2) vs accuracy (1, 2, 3): Spearman 1 - 6 * 2 / (3 * 8) = 0.5;
    # pairs (0,1) and (0,2) concordant, (1,2) discordant: Kendall (2 - 1) / 3
    assert s1["spearman"] == pytest.approx(0.5)
    assert s1["kendall"] == pytest.approx(1 / 3)
    assert s1["kendall_ci_low"] <= s1["kendall"] <= s1["kendall_ci_high"]
    # uniformity is -S1 and lower is better: the same pick, opposite coefficients
    uniformity = rows.loc["lf/uniformity"]
    assert (uniformity["pick_run"], uniformity["regret"]) == ("r1", pytest.approx(0.05))
    assert uniformity["spearman"] == pytest.approx(-0.5)
    entropy = rows.loc["lf/entropy"]
    assert entropy["pick"] == ""
    assert math.isnan(entropy["regret"])
    assert entropy["spearman"] == pytest.approx(0.5)  # still described


def test_bootstrap_intervals_are_seeded_and_over_runs():
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.4, 0.6, 12)
    table = final_table(acc + rng.normal(0, 0.05, 12), acc)
    first = run_selection(table, selectors=["lf/silhouette"], n_resamples=300, seed=3)
    again = run_selection(table, selectors=["lf/silhouette"], n_resamples=300, seed=3)
    other = run_selection(table, selectors=["lf/silhouette"], n_resamples=300, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert first["spearman_ci_low"].iloc[0] != other["spearman_ci_low"].iloc[0]
    row = first.iloc[0]
    assert row["spearman"] == pytest.approx(stats.spearmanr(table["lf/silhouette"], acc)[0])
    assert row["kendall"] == pytest.approx(stats.kendalltau(table["lf/silhouette"], acc)[0])
    assert row["spearman_ci_low"] < row["spearman"] < row["spearman_ci_high"]


def test_each_method_is_also_a_set_of_its_own_and_running_runs_are_left_out():
    table = final_table(
        [0.1, 0.3, 0.2, 0.5], [0.50, 0.55, 0.60, 0.40], method=["simclr"] * 3 + ["byol"]
    )
    table.loc[3, "status"] = "running"
    selection = run_selection(table, selectors=["lf/silhouette"], n_resamples=50)
    assert selection["method"].tolist() == ["all"]  # byol's running run is not a candidate
    table.loc[3, "status"] = "completed"
    selection = run_selection(table, selectors=["lf/silhouette"], n_resamples=50)
    assert selection["method"].tolist() == ["all", "simclr"]  # byol has a single run
    everything = selection.iloc[0]
    assert (everything["pick_run"], everything["regret"]) == ("r3", pytest.approx(0.20))


def test_few_labels_buy_a_better_pick():
    """S1 picks the worst run; the few-shot probe, a noisy copy of accuracy, the best."""
    table = final_table([0.9, 0.1, 0.2], [0.40, 0.60, 0.55], fewshot=[0.30, 0.45, 0.41])
    selection = run_selection(
        table, selectors=["lf/silhouette", "sup/fewshot_probe_acc"], n_resamples=50
    ).set_index("selector")
    assert selection.loc["lf/silhouette", "regret"] == pytest.approx(0.20)
    assert selection.loc["sup/fewshot_probe_acc", "regret"] == pytest.approx(0.0)


def curve_table():
    """Two runs of 4 evaluations with known metric and accuracy curves."""
    curves = {
        "a": ([0.0, 2.0, 1.0, 3.0], [0.40, 0.60, 0.70, 0.65]),
        "b": ([5.0, 1.0, 2.0, 4.0], [0.30, 0.50, 0.55, 0.60]),
    }
    rows = []
    for run, (metric, acc) in curves.items():
        for epoch, (m, a) in enumerate(zip(metric, acc, strict=True)):
            rows.append(
                {
                    "run_dir": f"/runs/{run}",
                    "name": run,
                    "dataset": "digits",
                    "arch": "small_cnn",
                    "method": "simclr",
                    "seed": 0 if run == "a" else 1,
                    "status": "completed",
                    "epochs": 3,
                    "epoch": epoch,
                    "lf/silhouette": m,
                    "sup/linear_probe_acc": a,
                }
            )
    return pd.DataFrame(rows)


def test_checkpoint_selection_by_hand():
    selection = checkpoint_selection(curve_table(), selectors=["lf/silhouette"])
    per_run = selection[selection["aggregate"] == "per_run"].set_index("pick_run")
    a, b = per_run.loc["a"], per_run.loc["b"]
    # run a: S1 is highest at epoch 3 (acc 0.65); best epoch 2 (0.70); last epoch is 3
    assert (a["pick_epoch"], a["oracle_epoch"]) == (3, 2)
    assert a["regret"] == pytest.approx(0.05)
    assert a["random_regret"] == pytest.approx(0.70 - (0.40 + 0.60 + 0.70 + 0.65) / 4)
    assert a["last_regret"] == pytest.approx(0.05)
    # run b: S1 is highest at epoch 0, the random initialisation (acc 0.30)
    assert (b["pick_epoch"], b["regret"], b["last_regret"]) == (0, pytest.approx(0.30), 0.0)
    (mean,) = selection[selection["aggregate"] == "mean"].to_dict("records")
    assert (mean["method"], mean["n_runs"]) == ("all", 2)
    assert mean["regret"] == pytest.approx((0.05 + 0.30) / 2)
    assert mean["pick_epoch"] == pytest.approx(1.5)
    assert mean["last_regret"] == pytest.approx(0.025)
    assert mean["random_regret"] == pytest.approx((0.1125 + (0.60 - 0.4875)) / 2)


def test_model_selection_has_both_kinds_and_checks_its_input():
    table = model_selection(curve_table(), selectors=["lf/silhouette"], n_resamples=20)
    assert list(table["kind"].unique()) == ["run", "checkpoint"]
    assert table["n_runs"].dtype == int
    with pytest.raises(ValueError, match=r"lf/rankme not in the runs.*selection.selectors"):
        model_selection(curve_table(), selectors=["lf/rankme"])
    with pytest.raises(ValueError, match=r"lf/rankme not found.*Fix selection.selectors="):
        selector_columns(curve_table(), ["lf/rankme"])
    assert selector_columns(curve_table()) == ["lf/silhouette"]


def test_every_metric_of_the_suite_has_a_direction(compose_train):
    keys = [metric_key(name) for name in ALL_METRICS]  # what compute_metrics can return
    assert {"lf/l2_std", "lf/lidar"} <= set(keys)
    missing = [k for k in keys if k not in DIRECTIONS]
    assert not missing, f"add a direction of 'better' to select.DIRECTIONS for {missing}"
    stale = sorted(set(DIRECTIONS) - set(keys))
    assert not stale, f"select.DIRECTIONS lists keys no metric of the suite computes: {stale}"
    # metrics=full, the shipped "every metric" config, computes exactly the registry's metrics
    assert sorted(compose_train("metrics=full").metrics.compute) == sorted(ALL_METRICS)
    assert all(d.better in ("higher", "lower", "none") and d.reason for d in DIRECTIONS.values())
    # the entries the issue decides: entropy and alpha-ReQ have no monotone direction
    assert {k for k, d in DIRECTIONS.items() if d.better == "none"} == {
        "lf/entropy",
        "lf/alpha_req",
    }
    assert direction_of("lf/uniformity") == "lower"
    assert direction_of("lf/l2_std") == direction_of("lf/lidar") == "higher"
    assert direction_of("sup/fewshot_probe_acc") == "higher"
    assert direction_of("lf/not_a_metric") == "none"


def test_docstring_examples():
    result = doctest.testmod(select, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
