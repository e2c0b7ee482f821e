"""Fixtures for the scale-out tests: the W&B offline run files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest


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
