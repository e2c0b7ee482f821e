"""``labelfree-reproduce``: an experiment's training sweep, then its analysis, in one command.

    labelfree-reproduce                                        # experiment=demo, ~5 min on 2 CPUs
    labelfree-reproduce experiment=paper_cifar10 hydra/launcher=slurm
    labelfree-reproduce trainer.epochs=3 seed=0 output=/tmp/demo     # pass-through overrides
    labelfree-reproduce experiment=paper_cifar10 train=false         # analyse finished runs only

Arguments are ``key=value`` strings, as for every Hydra command of the suite:

- ``experiment=NAME``: a file of ``conf/experiment/`` (default ``demo``);
- ``output=DIR``: where the analysis is written (default ``outputs/reproduce/<experiment>``,
  relative to the launch directory);
- ``train=false``: skip the sweep and analyse the run directories it would have written;
- ``analysis.KEY=VALUE``: passed to the analysis as ``KEY=VALUE`` (keys of ``conf/analyze.yaml``,
  e.g. ``analysis.figures.formats=[png]``);
- anything else goes to the sweep, ``labelfree-train -m experiment=NAME ...``: config overrides
  (``trainer.epochs=3``), sweep values (``seed=0`` or ``method=simclr,simsiam`` replace the
  experiment's own ``hydra.sweeper.params`` entry for that key) and Hydra settings
  (``hydra/launcher=local``).

The sweep runs as a subprocess (``python -m labelfree.train -m ...``) through whatever Hydra
launcher is configured, so each experiment is exactly what ``labelfree-train -m experiment=NAME``
runs. Run directories are named by the run (``<sweep dir>/<data>-<arch>-<method>-s<seed>``), so a
relaunch resumes unfinished runs and only re-checks finished ones. A job that fails or diverges is
reported (from its ``run.json``) and left out of the analysis; the others are analysed.
The analysis is :func:`labelfree.analyze.analyze` on exactly the run directories of this sweep.
Besides the analysis outputs (``summary.md``, ``runs.csv``, ``correlations.csv``,
``model_selection.{csv,md,tex}``, ``tables/``, ``figures/``), the output folder gets
``main_table.md`` (command, wall time, run statuses, main tables, model selection) and
``reproduce.log``. The printed summary ends with the model-selection tables: which run and which
checkpoint each label-free metric would pick, and the accuracy it gives up (the regret).
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from labelfree.analysis.report import TableFile
from labelfree.analyze import AnalysisResult, analyze, check_output
from labelfree.sweep.plan import (
    MISSING,
    RunStatus,
    SweepPlan,
    list_experiments,
    plan_sweep,
    read_statuses,
    run_sweep,
)

log = logging.getLogger(__name__)

#: Experiment run when none is named.
DEFAULT_EXPERIMENT = "demo"
#: Default analysis folder, relative to the launch directory.
DEFAULT_OUTPUT = "outputs/reproduce/{experiment}"
#: Prefix of the arguments passed to the analysis (``analysis.bootstrap.n_resamples=200``).
ANALYSIS_PREFIX = "analysis."
#: What each figure family of the analysis shows (file name prefix -> text of main_table.md).
FIGURE_KINDS = {
    "curves": "metric and linear-probe accuracy vs epoch, per method",
    "scatter": "metric vs linear-probe accuracy, coloured by epoch",
    "outliers": "entropy vs epoch with core and outlier points",
    "cross_run": "final metric vs final accuracy across runs (cross-run comparison)",
    "model_selection": "accuracy lost by each metric's pick of a run and of a checkpoint",
}


@dataclass
class Arguments:
    """The parsed command line of ``labelfree-reproduce`` (see the module docstring)."""

    experiment: str = DEFAULT_EXPERIMENT
    output: str | None = None
    train: bool = True
    train_overrides: list[str] = field(default_factory=list)
    analysis_overrides: list[str] = field(default_factory=list)


@dataclass
class ReproduceResult:
    """What :func:`reproduce` did.

    Attributes:
        plan: The sweep that was (or would have been) launched.
        returncode: Exit status of the sweep subprocess (None when ``train=false``).
        runs: Status of each job's run directory after the sweep.
        analysis: The analysis result.
        main_table: Path of ``main_table.md``.
        sweep_s: Wall time of the sweep, seconds (0 when skipped).
        analysis_s: Wall time of the analysis, seconds.
    """

    plan: SweepPlan
    returncode: int | None
    runs: list[RunStatus]
    analysis: AnalysisResult
    main_table: Path
    sweep_s: float
    analysis_s: float

    @property
    def wall_s(self) -> float:
        """Total wall time, seconds."""
        return self.sweep_s + self.analysis_s


def _as_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{key}={value} is not a boolean: use {key}=true or {key}=false.")


def parse_arguments(argv: Sequence[str]) -> Arguments:
    """Split ``key=value`` arguments into this command's own keys, analysis and sweep overrides.

    Examples:
        >>> a = parse_arguments(["experiment=demo", "seed=0", "analysis.table.digits=3"])
        >>> a.experiment, a.train_overrides, a.analysis_overrides
        ('demo', ['seed=0'], ['table.digits=3'])

    Raises:
        ValueError: For an argument without ``=``, an empty or unknown experiment, or a
            non-boolean ``train``.
    """
    args = Arguments()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(
                f"Argument {arg!r} is not key=value. Examples: experiment=demo, "
                "trainer.epochs=3, output=DIR, train=false, analysis.table.digits=3."
            )
        if key == "experiment":
            args.experiment = value
        elif key == "output":
            args.output = value
        elif key == "train":
            args.train = _as_bool(key, value)
        elif key.startswith(ANALYSIS_PREFIX):
            args.analysis_overrides.append(arg[len(ANALYSIS_PREFIX) :])
        else:
            args.train_overrides.append(arg)
    experiments = list_experiments()
    if args.experiment not in experiments:
        raise ValueError(
            f"Unknown experiment {args.experiment!r}. Choose one of: {', '.join(experiments)} "
            "(files of conf/experiment/)."
        )
    return args


def compose_analysis(
    run_dirs: Sequence[Path], output: Path, overrides: Sequence[str] = ()
) -> DictConfig:
    """The ``analyze.yaml`` config for these run directories and output folder.

    Raises:
        ValueError: If an analysis override does not compose.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("labelfree.conf", version_base="1.3"):
            cfg = compose("analyze", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        bad = " ".join(ANALYSIS_PREFIX + o for o in overrides)
        raise ValueError(f"Analysis overrides {bad} do not compose: {error}") from error
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.runs = [str(p) for p in run_dirs]
        cfg.output = str(output)
    return cfg


def _duration(seconds: float) -> str:
    """``'4 min 05 s'`` style.

    Examples:
        >>> _duration(245.2)
        '4 min 05 s'
        >>> _duration(9.96)
        '10 s'
    """
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _status_counts(runs: Sequence[RunStatus]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"


def write_main_table(result: ReproduceResult, path: Path, *, command: str) -> Path:
    """Write ``main_table.md``: command, wall time, run statuses, main tables, figure list."""
    plan, analysis = result.plan, result.analysis
    lines = [
        f"# labelfree-reproduce: experiment `{plan.experiment}`",
        "",
        f"- Command: `{command}`",
        f"- Sweep: {len(plan.jobs)} runs "
        + (
            "(" + " x ".join(f"{k}={v}" for k, v in plan.sweep_keys.items()) + ")"
            if plan.sweep_keys
            else ""
        )
        + f", launcher {plan.launcher}, run directories in `{_display(plan.sweep_dir)}`",
        f"- Run statuses: {_status_counts(result.runs)}",
        f"- Wall time: {_duration(result.wall_s)} (sweep {_duration(result.sweep_s)}, "
        f"analysis {_duration(result.analysis_s)}) on {_machine()}",
        "",
        "| run | status | last epoch | error |",
        "|---|---|---|---|",
    ]
    for run in result.runs:
        epoch = "" if run.last_epoch is None else f"{run.last_epoch}/{run.epochs}"
        error = (run.error or "").replace("|", "\\|")
        lines.append(f"| {run.name} | {run.status} | {epoch} | {error} |")
    for table in analysis.main_tables:
        lines += ["", f"## {table.dataset} / {table.arch}", "", table.markdown]
    for report in analysis.selection_reports:
        lines += ["", f"## Model selection: {report.dataset} / {report.arch}", "", report.markdown]
    if analysis.figures:
        kinds: dict[str, int] = {}
        for figure in analysis.figures:
            kind = next((k for k in FIGURE_KINDS if figure.name.startswith(k + "_")), "other")
            kinds[kind] = kinds.get(kind, 0) + 1
        lines += [
            "",
            f"Figures ({len(analysis.figures)} files in `figures/`): "
            + "; ".join(
                f"`{kind}_*` ({n}): {FIGURE_KINDS.get(kind, 'see summary.md')}"
                for kind, n in kinds.items()
            )
            + ".",
        ]
    lines += ["", f"Everything else: `summary.md` in `{_display(analysis.output)}`.", ""]
    path.write_text("\n".join(lines))
    return path


def _display(path: Path) -> str:
    """A path relative to the launch directory when below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def reproduce(
    experiment: str = DEFAULT_EXPERIMENT,
    overrides: Sequence[str] = (),
    *,
    output: str | os.PathLike | None = None,
    train: bool = True,
    analysis_overrides: Sequence[str] = (),
    command: str | None = None,
) -> ReproduceResult:
    """Run an experiment's sweep, then analyse its runs.

    Args:
        experiment: Name of a file in ``conf/experiment/``.
        overrides: Overrides for ``labelfree-train -m experiment=NAME``.
        output: Analysis folder (default ``outputs/reproduce/<experiment>``).
        train: Launch the sweep; False analyses the run directories as they are.
        analysis_overrides: Overrides of ``conf/analyze.yaml``.
        command: The command line to record in ``main_table.md`` (default: rebuilt from the
            arguments).

    Returns:
        The :class:`ReproduceResult`.

    Raises:
        ValueError: If the overrides do not compose, no run directory exists after the sweep, or
            the analysis rejects its input (the message says why).
        FileNotFoundError: If a run directory disappears before the analysis.
    """
    started, started_at = time.perf_counter(), time.time()
    plan = plan_sweep(experiment, overrides)
    output = Path(os.path.abspath(output or DEFAULT_OUTPUT.format(experiment=experiment)))
    check_output(output)
    # Everything is written into a sibling work folder, which replaces `output` only once
    # complete: an interrupted or failed reproduction never leaves a half-written output.
    work = output.with_name(f".{output.name}.incomplete")
    if work.exists():
        shutil.rmtree(work)  # what a failed attempt left; never the output itself
    work.mkdir(parents=True)
    handler = logging.FileHandler(work / "reproduce.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        swept = ", ".join(f"{k}={v}" for k, v in plan.sweep_keys.items()) or "one job"
        log.info(
            "Experiment %s: %d runs (%s), launcher %s, run directories in %s",
            experiment,
            len(plan.jobs),
            swept,
            plan.launcher,
            _display(plan.sweep_dir),
        )
        returncode = None
        if train:
            returncode = run_sweep(plan)
            if returncode:
                log.warning(
                    "The sweep exited with status %d; analysing the runs it left.", returncode
                )
        else:
            log.info("train=false: no training, analysing the run directories as they are.")
        sweep_s = time.perf_counter() - started
        runs = read_statuses(plan, since=started_at)
        log.info("Runs: %s (sweep %s)", _status_counts(runs), _duration(sweep_s))
        for run in runs:
            if run.status != "completed":
                detail = f": {run.error}" if run.error else ""
                log.warning("Run %s is %s%s (%s)", run.name, run.status, detail, run.run_dir)
        present = [run.run_dir for run in runs if run.status != MISSING]
        if not present:
            raise ValueError(
                f"None of the {len(runs)} run directories of experiment {experiment} exists below "
                f"{plan.sweep_dir}"
                + (" (train=false: run the sweep first)." if not train else ": see the log above.")
            )
        log.info("Analysing %d run directories into %s", len(present), _display(output))
        analysis_started = time.perf_counter()
        analysis = analyze(compose_analysis(present, work, analysis_overrides))
        analysis_s = time.perf_counter() - analysis_started
        _relocate(analysis, work, output)  # paths as they will be once work replaces output
        result = ReproduceResult(
            plan=plan,
            returncode=returncode,
            runs=runs,
            analysis=analysis,
            main_table=output / "main_table.md",
            sweep_s=sweep_s,
            analysis_s=analysis_s,
        )
        if command is None:
            args = [f"experiment={experiment}", *overrides]
            args += [] if train else ["train=false"]
            args += [ANALYSIS_PREFIX + o for o in analysis_overrides]
            command = shlex.join(["labelfree-reproduce", *args])
        write_main_table(result, work / result.main_table.name, command=command)
        log.info("Done in %s: %s", _duration(result.wall_s), _display(result.main_table))
    except BaseException:
        log.error("Stopped; partial outputs are in %s, %s is unchanged", work, _display(output))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    _replace_dir(work, output)
    return result


def _relocate(analysis: AnalysisResult, old: Path, new: Path) -> None:
    """Re-point the paths of an analysis written under ``old`` to ``new``."""

    def move(path: Path) -> Path:
        return new / Path(path).relative_to(old)

    def move_table(table: TableFile) -> TableFile:
        return replace(
            table, markdown_path=move(table.markdown_path), latex_path=move(table.latex_path)
        )

    analysis.output = new
    analysis.figures = [move(p) for p in analysis.figures]
    analysis.files = [move(p) for p in analysis.files]
    analysis.tables = [move_table(t) for t in analysis.tables]
    analysis.main_tables = [move_table(t) for t in analysis.main_tables]


def _replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` in place of ``target`` (renames on one file system)."""
    old = target.with_name(f".{target.name}.replaced")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def print_summary(result: ReproduceResult) -> None:
    """CLI summary: run statuses, the main table(s), where everything went, wall time."""
    analysis, collection = result.analysis, result.analysis.collection
    print(f"\nRuns of experiment {result.plan.experiment}: {_status_counts(result.runs)}")
    for run in result.runs:
        if run.status != "completed":
            print(f"  {run.status}: {run.name}" + (f" ({run.error})" if run.error else ""))
    print(
        f"Analysed {collection.n_loaded} runs ({len(collection.runs)} evaluations); "
        f"issues listed in {_display(analysis.output / 'skipped_runs.csv')}"
    )
    for table in analysis.main_tables:
        print(f"\n## {table.dataset} / {table.arch}\n\n{table.markdown}")
    for report in analysis.selection_reports:
        print(f"\n## Model selection: {report.dataset} / {report.arch}\n\n{report.markdown}")
    png = [p for p in analysis.figures if p.suffix == ".png"]
    print(
        f"\nOutputs in {_display(analysis.output)}: main_table.md, summary.md, runs.csv, "
        f"correlations.csv, "
        + ("model_selection.{csv,md,tex}, " if analysis.selection_reports else "")
        + f"{len(analysis.tables)} tables in tables/, "
        f"{len(analysis.figures)} figure files in figures/ ({len(png)} PNG)"
    )
    print(
        f"Wall time {_duration(result.wall_s)} (sweep {_duration(result.sweep_s)}, analysis "
        f"{_duration(result.analysis_s)})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``labelfree-reproduce`` (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(f"Experiments: {', '.join(list_experiments())}")
        return
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][%(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args = parse_arguments(argv)
        result = reproduce(
            args.experiment,
            args.train_overrides,
            output=args.output,
            train=args.train,
            analysis_overrides=args.analysis_overrides,
            command=shlex.join(["labelfree-reproduce", *argv]),
        )
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        print(f"labelfree-reproduce: error: {error}", file=sys.stderr)
        sys.exit(1)
    print_summary(result)


if __name__ == "__main__":
    main()
