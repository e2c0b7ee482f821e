"""Shared fixtures: Hydra configs composed with overrides, tiny settings, real data, W&B files."""

from __future__ import annotations

import json
import os
import struct
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
def compose_analyze():
    """Compose conf/analyze.yaml with override strings, as `labelfree-analyze` would."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module("labelfree.conf", version_base="1.3"):
            return compose("analyze", overrides=list(overrides))

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
def cifar10_archive() -> Path:
    """The real CIFAR-10 JPEG archive, or skip naming the path tried."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(
            f"CIFAR-10 archive not found at {CIFAR_ARCHIVE} (set LABELFREE_CIFAR10_ARCHIVE)"
        )
    return CIFAR_ARCHIVE


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory, cifar10_archive) -> Path:
    """The real CIFAR-10 JPEG archive extracted once (ImageFolder layout)."""
    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(cifar10_archive) as tar:
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


def read_wandb_file(path: Path):
    """The protobuf records of a W&B run file (``run-<id>.wandb``), using wandb's own schema.

    The file is a ``:W&B`` header (magic 0xBEE1, version 0) followed by LevelDB-log framing:
    32 KiB blocks of chunks, each ``crc32 (4) | length (2, LE) | type (1)`` + payload, type
    FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4; a payload is a serialised ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


@pytest.fixture(scope="session")
def wandb_run_files():
    """``(history rows, config dict, run ids)`` of one or more offline run directories, in order."""

    def _read(run_dirs: list[Path]) -> tuple[list[dict], dict, set[str]]:
        rows, config, ids = [], {}, set()
        for run_dir in run_dirs:
            (wandb_file,) = Path(run_dir).glob("run-*.wandb")
            for record in read_wandb_file(wandb_file):
                kind = record.WhichOneof("record_type")
                if kind == "history":
                    rows.append(_items(record.history.item))
                elif kind == "config":
                    config.update(_items(record.config.update))
                elif kind == "run":
                    ids.add(record.run.run_id)
                    config.update(_items(record.run.config.update))
        return rows, config, ids

    return _read
