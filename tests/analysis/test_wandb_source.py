"""The W&B source of the analysis: what it needs and what it says without it."""

import doctest

import pytest
from hydra import compose, initialize_config_module

from labelfree.analysis import wandb_source
from labelfree.analysis.wandb_source import collect_wandb, parse_source
from labelfree.analyze import analyze


@pytest.fixture(autouse=True)
def _fresh_wandb_settings():
    """wandb keeps the settings of its first use in the process (here: online, no key) for every
    later run; tear them down so the offline runs of later tests start from the environment."""
    yield
    import wandb

    wandb.teardown()


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


def test_docstring_examples():
    result = doctest.testmod(wandb_source, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
