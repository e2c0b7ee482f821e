"""Weights & Biases: real wandb offline (history, config, run id on resume), secrets, W&B source."""

import json
import time
from pathlib import Path

import pytest
import wandb
from hydra import compose, initialize_config_module

from labelfree.analysis.wandb_source import collect_wandb, parse_source, records_from_history
from labelfree.analyze import analyze
from labelfree.loggers import resolve_wandb_mode, scrub_secrets
from labelfree.train import train

SECRET = "wb" + "9" * 38  # a fake API key: 40 characters like a real one


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def test_scrub_secrets_redacts_secret_like_keys_at_any_depth():
    config = {
        "logger": {"name": "wandb", "api_key": "k", "settings": {"WANDB_API_KEY": "k"}},
        "tokens": [{"hf_token": "t"}, {"lr": 0.3}],
        "password": 1,
        "seed": 0,
    }
    assert scrub_secrets(config) == {
        "logger": {
            "name": "wandb",
            "api_key": "<redacted>",
            "settings": {"WANDB_API_KEY": "<redacted>"},
        },
        "tokens": "<redacted>",
        "password": "<redacted>",
        "seed": 0,
    }


def test_wandb_mode_auto_is_offline_without_a_key(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    mode, reason = resolve_wandb_mode("auto")
    assert mode == "offline"
    assert "no W&B API key" in reason
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + SECRET)
    assert resolve_wandb_mode("auto")[0] == "online"  # `wandb login` wrote the key here
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    assert resolve_wandb_mode("auto") == ("online", "a W&B API key is configured")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == ("offline", "WANDB_MODE=offline")
    assert resolve_wandb_mode("disabled")[0] == "disabled"
    with pytest.raises(ValueError, match="logger.mode=cloud is not one of: auto, online"):
        resolve_wandb_mode("cloud")


def test_wandb_source_needs_a_key_and_says_so(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(
        ValueError, match=r"Could not read W&B runs from wandb:me/proj/grp .*API key"
    ):
        collect_wandb(["wandb:me/proj/grp"])
    assert parse_source("wandb:me/proj/grp") == ("me/proj", "grp")
    with initialize_config_module("labelfree.conf", version_base="1.3"):  # labelfree-analyze's hook
        cfg = compose("analyze", overrides=["runs=wandb:me/proj", f"output={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="Could not read W&B runs from wandb:me/proj "):
        analyze(cfg)
    with pytest.raises(ValueError, match="runs=wandb:proj is not a W&B source"):
        parse_source("wandb:proj")


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
