"""Run identity: which config keys change a run's results, the run's name, and the resume diff.

A run *is* its result-relevant config. Its directory name is readable and deterministic::

    <data>-<arch>-<method>-s<seed>[-<key=value,...>]

The suffix lists, sorted, every command-line override (``hydra.overrides.task``, which includes
the values a sweep assigns to each job) that can change the results, the way Hydra's
``override_dirname`` does. Keys that cannot change results (:data:`NON_RESULT_KEYS`: logger,
paths, device, workers, ...) and keys already in the prefix are left out; values are written as
the resolved config holds them (``lr=.20`` and ``lr=0.2`` name the same run). A suffix longer
than :data:`MAX_SUFFIX` characters keeps its first items and ends with a hash of the whole
result-relevant config. In a sweep the experiment names the sweep directory
(``sweeps/<experiment_name>/``), so ``experiment=...`` is not repeated in each job's name; a
single run (``labelfree-train experiment=demo``) carries it in its name.

Relaunching the same command gives the same name (and resumes); any other result-relevant
override gives another directory. Differences that no override shows (an edited YAML default)
are caught when the run starts, by :func:`config_diff` against the run's saved config.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: Config keys (and everything below them) that cannot change a run's results: where files go,
#: how they are logged, which machine and how many workers, and how the same arithmetic is
#: executed (channels_last, CUDA graphs, torch.compile: the same operations and random draws,
#: rounding aside). They are left out of the run name and may differ when a run resumes (e.g. on
#: another machine, from another data folder).
NON_RESULT_KEYS = (
    "hydra",
    "logger",
    "paths",
    "resume",
    "run_name",
    "experiment_name",
    "trainer.device",
    "trainer.num_workers",
    "trainer.channels_last",
    "trainer.cuda_graphs",
    "trainer.compile",
    "trainer.distributed.backend",
    "trainer.distributed.timeout_min",
    "eval.batch_size",
    "data.root",
    "data.archive",
    "data.download",
    "data.decode_threads",
)
#: Keys the name's prefix already shows (``<data>-<arch>-<method>-s<seed>``).
PREFIX_KEYS = ("data", "arch", "method", "seed", "data.name", "arch.name", "method.name")
#: Longest suffix written in full; a longer one is shortened and hashed.
MAX_SUFFIX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,:+@%\[\]{}-]")


def as_container(cfg: Any) -> Any:
    """Plain Python containers from a config node (resolved), for kwargs and JSON.

    Anything that is not a config node is returned as it is.

    Examples:
        >>> as_container(OmegaConf.create({"a": "${b}", "b": [1]}))
        {'a': [1], 'b': [1]}
    """
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def is_result_key(key: str) -> bool:
    """Whether a dotted config key can change results (not under :data:`NON_RESULT_KEYS`).

    Examples:
        >>> is_result_key("method.temperature"), is_result_key("logger.project")
        (True, False)
    """
    return not any(key == k or key.startswith(k + ".") for k in NON_RESULT_KEYS)


def format_value(value: Any) -> str:
    """A config value as it appears in a run name (compact, deterministic, Hydra-like).

    Examples:
        >>> format_value(0.20), format_value([1, 2, 5]), format_value(None), format_value(True)
        ('0.2', '[1,2,5]', 'null', 'true')
    """
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def identity_overrides(
    overrides: Iterable[str], cfg: DictConfig, *, factor_experiment: bool = False
) -> list[str]:
    """The result-relevant overrides of a launch, as sorted ``key=value`` items.

    Args:
        overrides: Hydra task overrides (``hydra.overrides.task``), as typed or set by a sweep.
        cfg: The composed config (values are read from it, so equal values give equal items).
        factor_experiment: Leave ``experiment=...`` out (a sweep names its directory after it).

    Examples:
        >>> cfg = OmegaConf.create({"seed": 1, "method": {"temperature": 0.2}, "logger": {}})
        >>> identity_overrides(["seed=1", "method.temperature=.20", "logger=wandb"], cfg)
        ['method.temperature=0.2']
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    items = set()
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group.replace("/", ".")
        if key in PREFIX_KEYS or not is_result_key(key):
            continue
        if key == "experiment" and factor_experiment:
            continue
        if override.is_delete():
            items.add(f"~{key}")
            continue
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, DictConfig) or value is None:  # a group choice: its option name
            text = override.get_value_element_as_str()
        else:
            text = format_value(value)
        items.add(f"{key}={_UNSAFE.sub('_', text)}")
    return sorted(items)


def result_config(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The resolved config without the keys that cannot change results (plain containers).

    Each kept value is resolved in place, so interpolations into left-out keys still resolve
    and the run name (which is left out) is never needed.
    """

    def keep(node: Any, prefix: str) -> Any:
        if isinstance(node, DictConfig | Mapping):
            out = {}
            for key in node:
                path = f"{prefix}{key}"
                if is_result_key(path):
                    out[str(key)] = keep(node[key], path + ".")
            return out
        if isinstance(node, ListConfig | list | tuple):
            return [keep(v, prefix) for v in node]
        return node

    return keep(cfg, "")


def config_hash(cfg: DictConfig | Mapping) -> str:
    """A stable short hash of the result-relevant config (the same on every machine)."""
    text = json.dumps(result_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(cfg: DictConfig, overrides: Sequence[str], *, factor_experiment: bool = False) -> str:
    """The run directory name of a config launched with ``overrides`` (see the module docstring).

    Examples:
        >>> cfg = OmegaConf.create({"data": {"name": "digits"}, "arch": {"name": "small_cnn"},
        ...     "method": {"name": "simclr", "temperature": 0.2}, "seed": 0})
        >>> run_name(cfg, ["method.temperature=0.2", "seed=0"])
        'digits-small_cnn-simclr-s0-method.temperature=0.2'
    """
    prefix = f"{cfg.data.name}-{cfg.arch.name}-{cfg.method.name}-s{cfg.seed}"
    items = identity_overrides(overrides, cfg, factor_experiment=factor_experiment)
    suffix = ",".join(items)
    if len(suffix) > MAX_SUFFIX:
        kept: list[str] = []
        for item in items:
            if len(",".join([*kept, item])) > MAX_SUFFIX - 40:
                break
            kept.append(item)
        rest = len(items) - len(kept)
        suffix = ",".join([*kept, f"+{rest}more"]) + f"-{config_hash(cfg)}"
    return _UNSAFE.sub("_", f"{prefix}-{suffix}" if suffix else prefix)


def launch_overrides(root: DictConfig | None = None) -> tuple[list[str], bool]:
    """The task overrides of the current launch and whether it is a sweep job.

    Read from the config's own ``hydra`` node when present (Hydra resolving the run directory,
    or a config composed with ``return_hydra_config=True``), else from the running Hydra app;
    outside Hydra (a config composed in a script) there are none.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = OmegaConf.select(root, "hydra", default=None) if root is not None else None
    if hydra_cfg is None and HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    if hydra_cfg is None:
        return [], False
    overrides = list(OmegaConf.select(hydra_cfg, "overrides.task", default=None) or [])
    return overrides, OmegaConf.select(hydra_cfg, "mode", default=None) == RunMode.MULTIRUN


def _run_name_resolver(*, _root_: DictConfig) -> str:
    overrides, sweep = launch_overrides(_root_)
    return run_name(_root_, overrides, factor_experiment=sweep)


def _folder_name_resolver(path: str) -> str:
    return Path(str(path)).expanduser().name or str(path)


def register_resolvers() -> None:
    """``${labelfree.run_name:}`` (the run name) and ``${labelfree.folder_name:PATH}``."""
    for name, fn in (
        ("labelfree.run_name", _run_name_resolver),
        ("labelfree.folder_name", _folder_name_resolver),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def config_diff(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every result-relevant key that differs between two configs.

    Examples:
        >>> config_diff({"seed": 0, "logger": {"name": "csv"}}, {"seed": 1, "logger": {}})
        ['seed: 0 -> 1']
    """
    diffs = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        if not is_result_key(path):
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_diff(a, b, path + ".")
        elif a != b:
            diffs.append(f"{path}: {a} -> {b}")
    return diffs


#: Overrides whose value is a file or directory path (quoted for Hydra by
#: :func:`quote_path_overrides`, since run names hold ``=`` and ``,``).
PATH_KEYS = (
    "resume",
    "checkpoint",
    "embeddings",
    "labels",
    "train_embeddings",
    "train_labels",
    "views",
    "output",
    "runs",
    "data.root",
    "data.archive",
    "paths.output_dir",
    "paths.data_dir",
    "hydra.run.dir",
    "hydra.sweep.dir",
)


def quote_path_overrides(argv: Sequence[str], keys: Sequence[str] = PATH_KEYS) -> list[str]:
    """Quote path values that Hydra's override grammar would reject, e.g. run directories.

    ``resume=outputs/runs/digits-small_cnn-simclr-s0-method.temperature=0.2`` is not a valid
    Hydra override (``=`` and ``,`` are grammar), so a path pasted from a run name would fail;
    such a value is wrapped in single quotes before Hydra parses the command line. Values that
    already parse (including lists ``runs=[a,b]``) are left alone.

    Examples:
        >>> quote_path_overrides(["resume=out/a-x=1,y=2", "seed=1", "runs=[a,b]"])
        ["resume='out/a-x=1,y=2'", 'seed=1', 'runs=[a,b]']
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, out = OverridesParser.create(), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in keys and "'" not in value:
            try:
                parser.parse_overrides([arg])
            except OverrideParseException:
                arg = f"{key}='{value}'"
        out.append(arg)
    return out


def quoted(path: str | Path) -> str:
    """A path as one shell word that Hydra also accepts as an override value."""
    text = str(path)
    return shlex.quote(text) if _UNSAFE.search(text.replace("/", "")) is None else f"'{text}'"
