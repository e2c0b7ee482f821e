"""Loggers: secrets never reach a logger, the W&B mode chosen from the environment."""

import doctest

import pytest

from labelfree import loggers
from labelfree.loggers import resolve_wandb_mode, scrub_secrets

SECRET = "wb" + "9" * 38  # a fake API key: 40 characters like a real one


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


def test_docstring_examples():
    result = doctest.testmod(loggers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
