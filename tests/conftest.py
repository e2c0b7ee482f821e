"""Shared fixtures: real Hydra configs composed with overrides, tiny settings, real data."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

CIFAR_ARCHIVE = Path(
    os.environ.get(
        "LABELFREE_CIFAR10_ARCHIVE", Path(__file__).parents[2] / "shared/data/cifar10-jpeg.tar.gz"
    )
)


@pytest.fixture(scope="session")
def compose_train():
    """Compose conf/train.yaml with override strings, exactly as `labelfree-train` would."""

    def _compose(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        with initialize_config_module("labelfree.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        if run_dir is not None:
            with open_dict(cfg):
                cfg.paths.output_dir = str(run_dir)
        return cfg

    return _compose


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Overrides for a small, fast run: two short epochs on digits, evaluated after each."""
    return [
        "trainer.epochs=2",
        "trainer.batch_size=128",
        "trainer.warmup_epochs=1",
        "eval.schedule=every:1",
    ]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """Overrides for runs small enough for several processes at once on 2 cores: 400 train /
    200 test digits, 3 steps per epoch, a 2-stage CNN, 2 k-means restarts, 2 epochs."""
    return [
        "trainer.epochs=2",
        "trainer.batch_size=128",
        "trainer.warmup_epochs=1",
        "eval.schedule=every:1",
        "data.train_per_class=40",
        "data.test_per_class=20",
        "arch.widths=[16,32]",
        "metrics.kmeans.n_runs=2",
    ]


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG archive extracted once (ImageFolder layout), or skip naming it."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(
            f"CIFAR-10 archive not found at {CIFAR_ARCHIVE} (set LABELFREE_CIFAR10_ARCHIVE)"
        )
    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        tar.extractall(dest, filter="data")
    roots = [p.parent for p in dest.rglob("train") if p.is_dir()]
    return roots[0]


@pytest.fixture(scope="session")
def run_module():
    """Run ``python -m MODULE ARGS`` in ``cwd`` as a user would (unbuffered, Hydra's short errors).

    Returns the CompletedProcess; with ``check=True`` a non-zero exit fails with the output.
    """

    def _run(module: str, *args: str, cwd, timeout: int = 300, check: bool = False):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode:
            raise AssertionError(proc.stdout + proc.stderr)
        return proc

    return _run
