import json
import math

import pandas as pd
import pytest

from labelfree.analysis.collect import (
    ISSUE_COLUMNS,
    RUN_COLUMNS,
    collect_runs,
    find_run_dirs,
    read_metrics,
)
from labelfree.records import POSITION_KEYS


@pytest.fixture(scope="module")
def collection(run_tree):
    return collect_runs(run_tree, progress=False)


def _issues_by_job(collection):
    issues = collection.issues
    return {
        int(row.run_dir.rsplit("/", 1)[-1]): (row.reason, row.action, row.detail)
        for row in issues.itertuples(index=False)
    }


def test_tidy_table_columns_and_rows(collection):
    runs = collection.runs
    assert list(runs.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert list(runs.columns[len(RUN_COLUMNS) : len(RUN_COLUMNS) + 4]) == list(POSITION_KEYS)
    record_keys = list(runs.columns[len(RUN_COLUMNS) + 4 :])
    assert record_keys == [
        "train/loss",
        "lf/entropy",
        "lf/kmeans_agreement",
        "lf/silhouette",
        "sup/kmeans_gt_ami",
        "sup/linear_probe_acc",
    ]
    # 4 small_cnn runs + resnet18 (21 evals each) + truncated (20) + running (8).
    assert collection.n_found == 11
    assert collection.n_loaded == 7
    assert len(runs) == 5 * 21 + 20 + 8
    assert set(runs["dataset"]) == {"digits"}
    assert set(runs["method"]) == {"simclr", "moco_v2"}
    assert set(runs["arch"]) == {"small_cnn", "resnet18"}
    assert runs["epochs"].eq(20).all()
    # null at epoch 0 becomes NaN
    assert runs.loc[runs["epoch"] == 0, "train/loss"].isna().all()
    assert runs.loc[runs["epoch"] > 0, "train/loss"].notna().all()


def test_damaged_runs_are_reported_with_reasons(collection):
    issues = collection.issues
    assert list(issues.columns) == list(ISSUE_COLUMNS)
    by_job = _issues_by_job(collection)
    assert by_job[5][:2] == ("truncated_last_line", "included")
    assert "kept the 20 complete record(s)" in by_job[5][2]
    assert by_job[6][:2] == ("missing_run_json", "skipped")
    assert by_job[7][:2] == ("diverged", "skipped")
    assert "loss is NaN at epoch 3" in by_job[7][2]
    assert by_job[8][:2] == ("failed", "skipped")
    assert "CUDA out of memory" in by_job[8][2]
    assert by_job[9][:2] == ("running", "included")
    assert by_job[10][:2] == ("no_evaluations", "skipped")
    assert set(by_job) == {5, 6, 7, 8, 9, 10}
    loaded = {int(d.rsplit("/", 1)[-1]) for d in collection.runs["run_dir"]}
    assert loaded == {0, 1, 2, 3, 4, 5, 9}
    truncated = collection.runs[collection.runs["run_dir"].str.endswith("/5")]
    assert truncated["epoch"].tolist() == list(range(20))


def test_running_runs_can_be_excluded(run_tree):
    collection = collect_runs(run_tree, include_running=False, progress=False)
    assert collection.n_loaded == 6
    assert _issues_by_job(collection)[9][:2] == ("running", "skipped")


def test_find_run_dirs_natural_order_and_dedup(run_tree):
    dirs = find_run_dirs([run_tree, run_tree / "3", run_tree.parent])
    assert [int(d.name) for d in dirs] == list(range(11))
    # .hydra and checkpoints of run dirs are never run dirs themselves
    assert all(d.name not in (".hydra", "checkpoints") for d in dirs)


def test_missing_root_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*runs=DIR"):
        collect_runs(tmp_path / "nope", progress=False)


def test_empty_root_says_no_run_found(tmp_path):
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No run directory"):
        collect_runs(tmp_path / "empty", progress=False)


def test_read_metrics_nan_bad_lines_duplicates(tmp_path, make_records, write_run):
    records = make_records(4, seed=0)
    records[2]["lf/entropy"] = float("nan")
    lines = [json.dumps(r) for r in records]
    assert "NaN" in lines[2]
    lines.insert(1, "{not json")
    lines.append(json.dumps(records[3] | {"lf/entropy": 123.0}))  # epoch 3 evaluated again
    lines.append(json.dumps({"step": 5, "lf/entropy": 1.0}))  # no epoch
    run = write_run(tmp_path / "run", records=[])
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n\n")
    parsed, problems = read_metrics(run)
    assert len(parsed) == 7
    assert problems == [("bad_line", problems[0][1])]
    assert "line 2" in problems[0][1]
    collection = collect_runs(run, progress=False)
    reasons = set(collection.issues["reason"])
    assert reasons == {"bad_line", "duplicate_epoch", "missing_epoch"}
    assert set(collection.issues["action"]) == {"included"}
    runs = collection.runs
    assert runs["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert math.isnan(runs.loc[2, "lf/entropy"])
    assert runs.loc[3, "lf/entropy"] == 123.0  # the last record of a duplicated epoch wins


def test_unknown_status_missing_fields_broken_run_json(tmp_path, write_run):
    write_run(tmp_path / "a", status="paused")
    run_b = write_run(tmp_path / "b")
    info = json.loads((run_b / "run.json").read_text())
    del info["arch"]
    (run_b / "run.json").write_text(json.dumps(info))
    (write_run(tmp_path / "c") / "run.json").write_text("{broken")
    collection = collect_runs(tmp_path, progress=False)
    assert collection.runs.empty
    assert collection.n_found == 3
    issues = collection.issues.set_index("reason")
    assert sorted(issues.index) == ["missing_fields", "unknown_status", "unreadable_run_json"]
    assert set(issues["action"]) == {"skipped"}
    assert "'paused'" in issues.loc["unknown_status", "detail"]
    assert "completed" in issues.loc["unknown_status", "detail"]
    assert issues.loc["missing_fields", "detail"] == "run.json lacks arch"


def test_config_group_dicts_and_missing_seed(tmp_path, write_run):
    run = write_run(tmp_path / "r")
    info = json.loads((run / "run.json").read_text())
    info["arch"] = {"name": "resnet18", "width": 64}
    del info["seed"]
    (run / "run.json").write_text(json.dumps(info))
    runs = collect_runs(run, progress=False).runs
    assert set(runs["arch"]) == {"resnet18"}
    assert runs["seed"].isna().all()
    assert isinstance(runs, pd.DataFrame)
