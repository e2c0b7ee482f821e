"""What a sweep varied: the config keys that split runs into groups beyond (dataset, arch, method).

The analysis compares runs group by group; a group is every run that shares dataset, arch, method
and the values of the *group keys*, and its runs are the seeds. By default the group keys are
detected from the runs' saved configs (``run.json``'s ``config``, restricted to the
result-relevant keys by :func:`labelfree.config.result_config`): a key is a group key when it
takes two values among runs of one (dataset, arch, method) and seed, after the keys already
chosen. So

- ``method.temperature=0.2,0.5`` on SimCLR gives the key ``method.temperature``;
- keys that differ only because the method, the arch or the dataset does (every ``method.*`` key
  between SimCLR and BYOL, every ``data.*`` key between two datasets) are not keys: the group
  already tells them apart;
- keys that change only with the seed stay seeds of one group;
- a key derived from another (an interpolation) is left out once the other is chosen; keys the
  runs were launched with (``identity.overrides``) are tried first, so the one typed wins.

A run without a saved config has unknown settings: its group-key values are empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from labelfree.analysis.correlate import GROUP_COLUMNS
from labelfree.config import format_value, result_config

#: The column of the run's seed (varies within a group by definition).
SEED_COLUMN = "seed"
#: Value of a group key for a run whose config does not hold the key (e.g. ``method.temperature``
#: of a BYOL run next to SimCLR runs), or whose config is unknown.
ABSENT = ""


def flatten_config(config: Mapping) -> dict[str, str]:
    """The result-relevant config as ``dotted.key -> value`` (values as run names write them).

    Mappings are walked into; lists and scalars are leaves, formatted by
    :func:`labelfree.config.format_value` (``0.2``, ``[1,2]``, ``null``, ``true``), so two
    configs agree on a key exactly when its values would name the same run.

    Examples:
        >>> flatten_config({"seed": 0, "logger": {"name": "csv"},
        ...                 "method": {"temperature": 0.2, "views": [{}, {}]}})
        {'seed': '0', 'method.temperature': '0.2', 'method.views': '[{},{}]'}
    """
    flat: dict[str, str] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = format_value(node)

    kept = result_config(config)
    if kept:
        walk(kept, "")
    return flat


def config_table(configs: Mapping[str, Mapping | None], identity: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its identity columns, then its flattened result-relevant config.

    Args:
        configs: ``run_dir -> config`` (None or empty when the run saved none).
        identity: Rows with ``run_dir`` and the :data:`~labelfree.analysis.correlate.GROUP_COLUMNS`
            and ``seed`` of each run (e.g. the tidy table; one row per run is kept).

    Returns:
        Columns ``run_dir``, ``dataset``, ``arch``, ``method``, ``seed``, then every config key
        (NaN where a run's config lacks it); ``has_config`` says which runs saved one.
    """
    base = identity[["run_dir", *GROUP_COLUMNS, SEED_COLUMN]].drop_duplicates("run_dir")
    rows = [
        {"run_dir": run_dir, **flatten_config(configs.get(run_dir) or {})}
        for run_dir in base["run_dir"]
    ]
    keys = sorted({k for row in rows for k in row} - {"run_dir", SEED_COLUMN, *GROUP_COLUMNS})
    flat = pd.DataFrame(rows, columns=["run_dir", *keys])
    table = base.merge(flat, on="run_dir", how="left").reset_index(drop=True)
    has_config = [bool(configs.get(run_dir)) for run_dir in table["run_dir"]]
    table.insert(len(GROUP_COLUMNS) + 2, "has_config", has_config)
    return table


def _splits(table: pd.DataFrame, cell: list[str], key: str) -> bool:
    """Whether ``key`` takes two values within one cell (runs equal on ``cell``)."""
    values = table[key].fillna(ABSENT)
    return bool((values.groupby([table[c] for c in cell], dropna=False).nunique() > 1).any())


def swept_keys(configs: pd.DataFrame, *, prefer: Iterable[str] = ()) -> list[str]:
    """The config keys that split (dataset, arch, method) groups: what a sweep varied.

    Greedy, in order (keys in ``prefer`` first, then alphabetical): a key is chosen when two
    runs with the same dataset, arch, method, seed and already chosen keys differ in it. Keys
    constant within every such cell are explained by the group (``method.*`` between methods),
    by the seed, or by a key chosen before (an interpolated value). Runs without a config take
    no part.

    Args:
        configs: The table of :func:`config_table`.
        prefer: Keys to try first (the runs' command-line overrides, so the key typed wins over
            one derived from it).

    Returns:
        The group keys, in the order chosen.

    Examples:
        >>> configs = pd.DataFrame({"run_dir": list("abcd"), "dataset": "d", "arch": "a",
        ...     "method": "simclr", "seed": [0, 1, 0, 1], "has_config": True,
        ...     "method.temperature": ["0.2", "0.2", "0.5", "0.5"], "trainer.epochs": "20"})
        >>> swept_keys(configs)
        ['method.temperature']
    """
    known = configs[configs["has_config"]] if "has_config" in configs else configs
    identity = {"run_dir", "has_config", SEED_COLUMN, *GROUP_COLUMNS}
    candidates = [c for c in configs.columns if c not in identity]
    prefer = [k for k in dict.fromkeys(prefer) if k in candidates]
    order = prefer + sorted(set(candidates) - set(prefer))
    chosen: list[str] = []
    for key in order:
        if len(known) > 1 and _splits(known, [*GROUP_COLUMNS, SEED_COLUMN, *chosen], key):
            chosen.append(key)
    return chosen


def check_group_keys(configs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Validate explicit group keys (``group_by=[...]``): each must be a config key of the runs.

    Raises:
        ValueError: Naming the unknown key and the keys that do vary between the runs.
    """
    reserved = {"run_dir", "has_config", SEED_COLUMN, *GROUP_COLUMNS}
    for key in keys:
        if key in reserved:
            raise ValueError(
                f"group_by={list(keys)}: {key!r} is always part of the grouping (or, for seed, "
                "what a group is made of); list only other config keys."
            )
        if key not in configs.columns:
            varying = [
                c
                for c in configs.columns
                if c not in reserved and configs[c].fillna(ABSENT).nunique() > 1
            ]
            raise ValueError(
                f"group_by: {key!r} is not a result-relevant config key of the runs. Keys that "
                f"vary between them: {', '.join(varying) or 'none'}. Fix group_by, or set "
                "group_by=null to detect them."
            )
    return list(keys)


def add_group_columns(
    runs: pd.DataFrame, configs: pd.DataFrame, keys: Sequence[str], *, after: str
) -> pd.DataFrame:
    """The tidy table with one column per group key (string values, :data:`ABSENT` if none).

    Args:
        runs: The tidy table.
        configs: The table of :func:`config_table`.
        keys: Group keys (column names: the dotted config keys).
        after: Column after which the key columns are inserted.

    Raises:
        ValueError: If a key is already a column of the tidy table.
    """
    clash = [k for k in keys if k in runs.columns]
    if clash:
        raise ValueError(
            f"group key(s) {', '.join(clash)} clash with columns of the runs table; "
            "choose other group_by keys."
        )
    if not keys:
        return runs
    values = configs.set_index("run_dir")[list(keys)].fillna(ABSENT)
    added = values.reindex(runs["run_dir"]).fillna(ABSENT).reset_index(drop=True)
    added.index = runs.index
    position = list(runs.columns).index(after) + 1
    columns = [*runs.columns[:position], *keys, *runs.columns[position:]]
    return pd.concat([runs, added], axis=1)[columns]


def setting_label(values: Mapping[str, object]) -> str:
    """``key=value`` pairs of a group's settings, joined by ``, ``; absent values left out.

    Examples:
        >>> setting_label({"method.temperature": "0.2", "trainer.epochs": ""})
        'method.temperature=0.2'
    """
    return ", ".join(f"{k}={v}" for k, v in values.items() if str(v) != ABSENT)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Short names of group keys for figures: the last dotted part, unless two keys share it.

    Examples:
        >>> short_keys(["method.optimizer.lr", "a.x", "b.x"])
        {'method.optimizer.lr': 'lr', 'a.x': 'a.x', 'b.x': 'b.x'}
    """
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def group_label(method: str, values: Mapping[str, object]) -> str:
    """A group's row label: the method, then its settings.

    Examples:
        >>> group_label("simclr", {"method.temperature": "0.2"})
        'simclr, method.temperature=0.2'
        >>> group_label("byol", {"method.temperature": ""})
        'byol'
    """
    return ", ".join(p for p in (str(method), setting_label(values)) if p)


def natural_key(value: object) -> list:
    """Sort key ordering ``0.05 < 0.2 < 10`` and ``s2 < s10`` (numbers inside text by value).

    Examples:
        >>> sorted(["10", "0.2", "2", ""], key=natural_key)
        ['', '0.2', '2', '10']
    """
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", str(value))
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def group_frames(
    table: pd.DataFrame, keys: Sequence[str] = ()
) -> list[tuple[str, dict[str, object], pd.DataFrame]]:
    """The table split by ``method`` and group keys, in display order.

    Returns:
        ``(label, {column: value}, rows)`` per group, sorted by method then by the keys'
        values in natural order (:func:`natural_key`).
    """
    columns = ["method", *keys]
    out = []
    for values, rows in table.groupby(columns, sort=False, dropna=False):
        values = dict(zip(columns, values if isinstance(values, tuple) else (values,), strict=True))
        setting = {k: values[k] for k in keys}
        out.append((group_label(values["method"], setting), values, rows))
    out.sort(key=lambda item: [natural_key(item[1][c]) for c in columns])
    return out
