"""Sweep planning: the jobs an experiment's sweep will run, found before running any of them.

:func:`plan_sweep` expands ``labelfree-train -m experiment=NAME ...`` exactly as Hydra's basic
sweeper will (a command-line sweep replaces the experiment's own ``hydra.sweeper.params`` entry
for the same key; jobs are the cartesian product in argument order), through Hydra's public
compose and override-parser API, and composes every job to find its run directory. A misspelt
key fails here, in a second, not after an hour of training.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from labelfree.rundir import RunDir
from labelfree.sweep.summary import job_reports, run_status

log = logging.getLogger(__name__)

#: ``run.json`` status of a run the sweep did not start (no run directory).
MISSING = "missing"


@dataclass
class SweepPlan:
    """What ``labelfree-train -m experiment=NAME <overrides>`` will run, found before running it.

    Attributes:
        experiment: The experiment name.
        overrides: The overrides passed to ``labelfree-train`` after ``-m experiment=NAME``.
        sweep_dir: The sweep directory (``hydra.sweep.dir``), absolute.
        jobs: Each job's override list, in launch order.
        run_dirs: Each job's run directory (``hydra.sweep.dir/hydra.sweep.subdir``), absolute.
        launcher: The Hydra launcher's class name.
        sweep_keys: The swept keys and their values, e.g. ``{"method": "simclr,simsiam"}``.
    """

    experiment: str
    overrides: list[str]
    sweep_dir: Path
    jobs: list[list[str]]
    run_dirs: list[Path]
    launcher: str
    sweep_keys: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        """The sweep's command line."""
        return [
            sys.executable,
            "-m",
            "labelfree.train",
            "-m",
            f"experiment={self.experiment}",
            *self.overrides,
        ]


@dataclass
class RunStatus:
    """One job of the sweep after it ran: its ``run.json`` status, or ``missing``."""

    name: str
    run_dir: Path
    status: str
    last_epoch: int | None = None
    epochs: int | None = None
    error: str | None = None


def list_experiments() -> list[str]:
    """Names of the experiment configs shipped in ``conf/experiment/``.

    Examples:
        >>> "demo" in list_experiments()
        True
    """
    folder = resources.files("labelfree.conf") / "experiment"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _compose_train(overrides: list[str]) -> DictConfig:
    return compose("train", overrides=overrides, return_hydra_config=True)


def _job_run_dir(overrides: list[str]) -> Path:
    cfg = _compose_train([*overrides, "hydra.mode=MULTIRUN"])  # names as the sweep's jobs get
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def expand_sweep(overrides: Sequence[Override]) -> list[list[str]]:
    """The job override lists of a multirun: one value of every sweep, in argument order.

    What Hydra's basic sweeper does with ``a=1,2 b=x c=3,4``: the cartesian product of the sweep
    values, each job listing every key once; a key given again replaces its earlier values in
    their place (a command-line sweep replaces the experiment's).

    Raises:
        ValueError: a range or interval sweep, which the basic sweeper does not run either.

    Examples:
        >>> parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "c=3,4"])
        >>> expand_sweep(parsed)[:2]
        [['a=1', 'b=x', 'c=3'], ['a=1', 'b=x', 'c=4']]
    """
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ValueError(
                f"{override.input_line}: a {override.value_type.name} sweep is not supported by "
                f"the basic sweeper; list the values, e.g. {key}=1,2,3."
            )
    return [list(job) for job in itertools.product(*choices.values())]


def plan_sweep(experiment: str, overrides: Sequence[str] = ()) -> SweepPlan:
    """Expand an experiment's sweep without running it: its jobs and their run directories.

    Composes ``train.yaml`` with ``experiment=NAME`` and the non-sweep overrides (so a bad key
    fails here, before any training), reads ``hydra.sweeper.params``, combines it with the sweep
    overrides as Hydra's basic sweeper does (a command-line value replaces the experiment's for
    the same key) and composes each job to find its run directory.

    Args:
        experiment: Name of a file in ``conf/experiment/``.
        overrides: Overrides for ``labelfree-train -m experiment=NAME``.

    Returns:
        The :class:`SweepPlan`.

    Raises:
        ValueError: If the overrides do not compose, or two jobs share a run directory.
    """
    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("labelfree.conf", version_base="1.3"):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            arguments = [f"experiment={experiment}", *overrides]
            parsed = parser.parse_overrides(arguments)
            fixed = [a for a, o in zip(arguments, parsed, strict=True) if not o.is_sweep_override()]
            cfg = _compose_train(fixed)
            params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
            params = {str(k): str(v) for k, v in params.items()}
            sweep_keys = dict(params)
            for o in parsed:
                if o.is_sweep_override():
                    sweep_keys[o.get_key_element()] = ",".join(o.sweep_string_iterator())
                elif o.get_key_element() in sweep_keys:
                    sweep_keys.pop(o.get_key_element())
            swept = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + arguments)
            jobs = expand_sweep(swept)
            run_dirs = [Path(os.path.abspath(_job_run_dir(job))) for job in jobs]
            sweep_dir = Path(os.path.abspath(str(cfg.hydra.sweep.dir)))
            launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_") or "unknown")
    except (HydraException, OmegaConfBaseException) as error:
        raise ValueError(
            f"labelfree-train -m experiment={experiment} {shlex.join(overrides)} does not compose: "
            f"{error}"
        ) from error
    finally:
        GlobalHydra.instance().clear()
    seen: dict[Path, list[str]] = {}
    for job, run_dir in zip(jobs, run_dirs, strict=True):
        if run_dir in seen:
            raise ValueError(
                f"Jobs {seen[run_dir]} and {job} would share the run directory {run_dir}: "
                "they differ only in keys that cannot change results (labelfree.config."
                "NON_RESULT_KEYS), or run_name was set to a fixed value; sweep a key that "
                "changes results, or leave run_name to its default."
            )
        seen[run_dir] = job
    return SweepPlan(
        experiment=experiment,
        overrides=overrides,
        sweep_dir=sweep_dir,
        jobs=jobs,
        run_dirs=run_dirs,
        launcher=launcher.rsplit(".", 1)[-1],
        sweep_keys=sweep_keys,
    )


def run_sweep(plan: SweepPlan) -> int:
    """Launch the sweep as a subprocess (output streamed to this terminal); its exit status."""
    log.info("Sweep command: %s", shlex.join(plan.command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(plan.command, env=env, check=False).returncode


def read_statuses(plan: SweepPlan, *, since: float | None = None) -> list[RunStatus]:
    """How every job of the plan ended.

    The job's own report when there is one (a job refused before it owned its run writes
    nothing into it), else the run's ``run.json`` status (``missing`` where there is none).

    Args:
        plan: The sweep.
        since: Only job reports written at or after this time (``time.time()``) count.
    """
    reports = job_reports(plan.sweep_dir, since)
    statuses = []
    for run_dir in plan.run_dirs:
        try:
            info = RunDir(run_dir).read_status() if (run_dir / "run.json").is_file() else {}
        except ValueError as error:  # not JSON: a run killed while writing it, or edited by hand
            info = {"status": "unreadable", "error": f"run.json: {error}"}
        report = reports.get(os.path.abspath(run_dir))
        if report is not None:
            info = {**info, "status": report["status"], "error": report.get("error")}
        elif "status" in info:
            status, error = run_status(run_dir, info["status"], info.get("error"))
            info = {**info, "status": status, "error": error}
        statuses.append(
            RunStatus(
                name=run_dir.name,
                run_dir=run_dir,
                status=str(info.get("status", MISSING)),
                last_epoch=info.get("last_epoch"),
                epochs=info.get("epochs"),
                error=info.get("error"),
            )
        )
    return statuses
