"""Weights & Biases end to end: real wandb offline (history, config, run id on resume)."""

import json
import time
from pathlib import Path

import pytest
import wandb

from labelfree.analysis.wandb_source import records_from_history
from labelfree.train import train

SECRET = "wb" + "9" * 38  # a fake API key: 40 characters like a real one


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


@pytest.mark.slow
def test_offline_run_holds_config_and_history_and_resume_reuses_the_id(
    compose_train, tiny_overrides, tmp_path, monkeypatch, wandb_run_files, caplog
):
    """Real wandb, offline: the .wandb file holds the resolved config and every record; running
    the same run directory again (resume) reopens the same W&B run id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(
        *tiny_overrides, "logger=wandb", "logger.project=lf-test", "experiment_name=demo"
    )
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO", logger="labelfree.loggers"):
        status = train(cfg, run_dir)
    assert status["status"] == "completed"
    assert status["wandb_mode"] == "offline"
    run_id = status["wandb_id"]
    assert f"W&B is offline (WANDB_MODE=offline): run {run_id}" in caplog.text
    assert "wandb sync" in caplog.text
    # wandb's service process may still hold the end of the run file: a process exit (the CLI)
    # flushes it; in-process, shut the service down as that exit would
    wandb.teardown()
    (first,) = (tmp_path / "wandb_root" / "wandb").glob(f"offline-run-*-{run_id}")
    rows, config, ids = wandb_run_files([first])
    assert ids == {run_id}
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert records_from_history(rows) == records  # every record, the loss of every epoch
    assert [r["train/loss"] for r in rows if "train/loss" in r] == [
        r["train/loss"] for r in records[1:]
    ]
    assert config["method"]["name"] == "simclr"
    assert config["trainer"]["epochs"] == 2
    assert config["logger"]["group"] == "demo"  # resolved: group = experiment_name
    assert config["logger"]["run_name"] == "digits-small_cnn-simclr-s0"

    # wandb names offline segments by start time to the second: a relaunch within the same second
    # would reuse the first segment's directory, so wait for the next second
    time.sleep(1.1)
    again = train(cfg, run_dir)  # a relaunch into the same directory resumes the same W&B run
    assert again["wandb_id"] == run_id
    assert again["status"] == "completed"
    segments = sorted((tmp_path / "wandb_root" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(segments) == 2
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3  # nothing evaluated twice
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
