"""Optional source for ``labelfree-analyze``: runs logged with ``logger=wandb``, read from W&B.

    labelfree-analyze runs=wandb:ENTITY/PROJECT output=analysis/wb
    labelfree-analyze runs=wandb:ENTITY/PROJECT/GROUP output=analysis/wb     # one sweep's group
    labelfree-analyze 'runs=[outputs/sweeps/demo,wandb:me/labelfree/paper_cifar10]' output=...

Each W&B run becomes the same rows as its run directory would (:mod:`labelfree.analysis.collect`):
identity columns from the logged config (``data.name``, ``arch.name``, ``method.name``, ``seed``,
``experiment_name``, ``trainer.epochs``) and the status that ``WandbLogger`` puts in the run
summary, and one record per evaluated epoch, merged from the run's history rows of that epoch
(the evaluation row and the ``train/loss`` row). Runs are skipped or flagged for the same reasons as
local runs (failed, diverged, running, no evaluations).

It needs the network and a W&B API key (``WANDB_API_KEY`` or ``wandb login``), and reads through
the public API (``wandb.Api().runs``, ``Run.scan_history``). The local ``metrics.jsonl`` remains
the source of truth: prefer the run directories when you have them. The conversion of history rows
(:func:`records_from_history`) is tested on the history of real offline runs; the API calls
themselves cannot be tested without network access.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from labelfree.analysis.collect import (
    ISSUE_COLUMNS,
    RUN_COLUMNS,
    Collection,
)
from labelfree.records import STATUSES, order_keys

log = logging.getLogger(__name__)

#: Prefix of a ``runs`` entry read from W&B instead of the file system.
WANDB_PREFIX = "wandb:"
#: Prefixes of the history keys that make an evaluation record.
EVAL_PREFIXES = ("lf/", "sup/")
#: W&B run states -> run.json statuses, used when the summary has no ``status``.
_STATES = {"finished": "completed", "running": "running", "crashed": "failed", "failed": "failed"}


def is_wandb_source(entry: object) -> bool:
    """True for a ``runs`` entry of the form ``wandb:ENTITY/PROJECT[/GROUP]``."""
    return str(entry).startswith(WANDB_PREFIX)


def parse_source(entry: str) -> tuple[str, str | None]:
    """``wandb:ENTITY/PROJECT[/GROUP]`` -> (``ENTITY/PROJECT``, ``GROUP`` or None).

    Raises:
        ValueError: the entry does not have two or three non-empty parts.

    Examples:
        >>> parse_source("wandb:me/labelfree/paper_cifar10")
        ('me/labelfree', 'paper_cifar10')
        >>> parse_source("wandb:me/labelfree")
        ('me/labelfree', None)
    """
    parts = str(entry).removeprefix(WANDB_PREFIX).strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(
            f"runs={entry} is not a W&B source: use wandb:ENTITY/PROJECT or "
            f"wandb:ENTITY/PROJECT/GROUP."
        )
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


def records_from_history(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Evaluation records (as in ``metrics.jsonl``) from a run's W&B history rows.

    Rows are merged per ``epoch`` (later rows win), W&B's own keys (``_step``, ``_runtime``,
    ``_timestamp``, ``_wandb``) are dropped, and only epochs with an evaluation key (``lf/*`` or
    ``sup/*``) are kept, sorted by epoch. An epoch evaluated without a training loss (epoch 0)
    gets ``train/loss = None`` as in ``metrics.jsonl``.

    Examples:
        >>> rows = [{"_step": 0, "epoch": 0, "lf/silhouette": 0.1},
        ...         {"_step": 1, "epoch": 1, "train/loss": 5.0, "step": 10},
        ...         {"_step": 2, "epoch": 2, "train/loss": 4.0, "step": 20},
        ...         {"_step": 3, "epoch": 2, "step": 20, "lf/silhouette": 0.3}]
        >>> records_from_history(rows)  # doctest: +NORMALIZE_WHITESPACE
        [{'epoch': 0, 'lf/silhouette': 0.1, 'train/loss': None},
         {'epoch': 2, 'train/loss': 4.0, 'step': 20, 'lf/silhouette': 0.3}]
    """
    by_epoch: dict[int, dict] = {}
    for row in rows:
        epoch = row.get("epoch")
        if not isinstance(epoch, int | float) or (isinstance(epoch, float) and math.isnan(epoch)):
            continue
        merged = by_epoch.setdefault(int(epoch), {})
        merged.update({k: v for k, v in row.items() if not k.startswith("_") and v is not None})
        merged["epoch"] = int(epoch)
    records = []
    for epoch in sorted(by_epoch):
        record = by_epoch[epoch]
        if any(k.startswith(EVAL_PREFIXES) for k in record):
            records.append({**record, "train/loss": record.get("train/loss")})
    return records


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and set(node) == {
            "value"
        }:  # API configs: {"key": {"value": v}}
            node = node["value"]
    return node


def plain_config(config: Mapping[str, Any]) -> dict:
    """A W&B run's config as ``run.json`` saves it.

    ``{"value": v}`` wrappers (the public API's form) are unwrapped and W&B's own ``_*`` keys
    dropped.

    Examples:
        >>> plain_config({"_wandb": {"value": {}}, "method": {"value": {"temperature": 0.2}}})
        {'method': {'temperature': 0.2}}
    """

    def unwrap(node: Any) -> Any:
        if isinstance(node, Mapping):
            if set(node) == {"value"}:
                return unwrap(node["value"])
            return {k: unwrap(v) for k, v in node.items() if not str(k).startswith("_")}
        return node

    return unwrap(config)


def run_info(
    config: Mapping[str, Any], summary: Mapping[str, Any], *, state: str, name: str
) -> dict:
    """The identity of a W&B run in ``run.json``'s shape, from its config and summary."""
    return {
        "name": _get(config, "run_name") or name,
        "data": _get(config, "data.name"),
        "arch": _get(config, "arch.name"),
        "method": _get(config, "method.name"),
        "seed": _get(config, "seed"),
        "status": summary.get("status") or _STATES.get(state, state),
        "experiment": _get(config, "experiment_name"),
        "epochs": _get(config, "trainer.epochs"),
        "error": summary.get("error"),
    }


def collect_wandb(
    entries: Sequence[str], *, include_running: bool = True, api: Any = None
) -> Collection:
    """Collect the runs of W&B projects or groups into a :class:`Collection`.

    Args:
        entries: ``wandb:ENTITY/PROJECT[/GROUP]`` strings.
        include_running: keep runs whose status is ``running``.
        api: a ``wandb.Api``; None: a new one (needs network and an API key).

    Raises:
        ValueError: malformed entry, or W&B cannot be reached (no key, no network, no such
            project), naming the fix.
    """
    try:
        import wandb  # lazy: optional dependency
    except ImportError:
        raise ValueError(
            f"runs={entries[0]} needs the wandb package: pip install 'labelfree[wandb]'."
        ) from None

    rows: list[dict] = []
    issues: list[dict] = []
    configs: dict[str, dict] = {}
    n_found = 0
    for entry in entries:
        path, group = parse_source(entry)
        try:
            api = api or wandb.Api(timeout=60)
            runs = list(api.runs(path, filters={"group": group} if group else None))
        except (wandb.Error, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"Could not read W&B runs from {entry} ({type(err).__name__}: {first}). W&B "
                f"needs network access and an API key (WANDB_API_KEY or `wandb login`); without "
                f"them, analyse the run directories instead (runs=outputs/sweeps/<experiment>)."
            ) from None
        log.info("W&B %s: %d run(s)", entry, len(runs))
        for run in runs:
            n_found += 1
            where = f"{WANDB_PREFIX}{path}/{run.id}"
            info = run_info(dict(run.config), dict(run.summary), state=run.state, name=run.name)
            issue = {"run_dir": where, "name": info["name"], "status": info["status"]}
            if info["status"] in ("failed", "diverged") or info["status"] not in STATUSES:
                detail = f"status {info['status']}: {info.get('error') or 'see the W&B run'}"
                issues.append({**issue, "action": "skipped", "reason": "status", "detail": detail})
                continue
            if info["status"] == "running":
                action = "included" if include_running else "skipped"
                issues.append({**issue, "action": action, "reason": "running", "detail": ""})
                if not include_running:
                    continue
            records = records_from_history(run.scan_history())
            if not records:
                issues.append(
                    {**issue, "action": "skipped", "reason": "no_evaluations", "detail": ""}
                )
                continue
            identity = {
                "run_dir": where,
                "name": info["name"],
                "dataset": info["data"],
                "arch": info["arch"],
                "method": info["method"],
                "seed": info["seed"],
                "status": info["status"],
                "experiment": info["experiment"],
                "epochs": info["epochs"],
            }
            rows.extend({**identity, **record} for record in records)
            configs[where] = plain_config(dict(run.config))
    keys = order_keys(k for row in rows for k in row if k not in RUN_COLUMNS)
    runs_frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *keys])
    if len(runs_frame):
        runs_frame["epoch"] = runs_frame["epoch"].astype(int)
    return Collection(
        runs=runs_frame,
        issues=pd.DataFrame(issues, columns=list(ISSUE_COLUMNS)),
        n_found=n_found,
        configs=configs,
    )


def merge_collections(*collections: Collection | None) -> Collection:
    """One :class:`Collection` from several sources (None entries are ignored)."""
    present = [c for c in collections if c is not None]
    runs = pd.concat([c.runs for c in present], ignore_index=True)
    keys = order_keys(k for k in runs.columns if k not in RUN_COLUMNS)
    return Collection(
        runs=runs[[*RUN_COLUMNS, *keys]],
        issues=pd.concat([c.issues for c in present], ignore_index=True),
        n_found=sum(c.n_found for c in present),
        configs={k: v for c in present for k, v in c.configs.items()},
        overrides={k: v for c in present for k, v in c.overrides.items()},
    )
