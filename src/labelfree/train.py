"""``labelfree-train``: train one SSL encoder and evaluate it at scheduled epochs.

    labelfree-train                                     # digits x small_cnn x simclr
    labelfree-train method=byol arch=resnet18_cifar data=cifar10 data.download=true
    labelfree-train --cfg job                           # print the composed config

This module chooses the run, owns it and orchestrates it; the pieces live elsewhere: the run's
name (:mod:`labelfree.config`), its objects (:mod:`labelfree.build`), the epoch loop
(:mod:`labelfree.loop`), its files (:mod:`labelfree.rundir`, :mod:`labelfree.checkpoint`).

A launch owns its run only once everything is checked: the config is valid, the run's lock is
taken, the resume is decided, the data is loaded and the checkpoint restored. Until then it
writes nothing, so a refused launch leaves the run directory byte for byte as it was. Epoch 0
(the random initialisation) is evaluated before training; after every epoch the checkpoint is
written atomically, then the scheduled evaluation is appended to ``metrics.jsonl``, so a relaunch
continues from the last finished epoch and writes exactly the records an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from labelfree.build import (
    build_evaluator,
    build_loader,
    build_model,
    compile_model,
    limit_cpu_threads,
    resolve_augmentation,
    resolve_channels_last,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
    validate_config,
    validate_data,
)
from labelfree.checkpoint import load_checkpoint, restore, save_checkpoint
from labelfree.config import (
    as_container,
    config_diff,
    config_hash,
    identity_overrides,
    launch_overrides,
    quote_path_overrides,
)
from labelfree.distributed import World, check_world, distributed_world, prepare_model
from labelfree.evaluation import Evaluator, eval_epochs, summary_line, timed_record
from labelfree.loggers import NullLogger, build_logger
from labelfree.loop import Diverged, Trainer, train_epoch
from labelfree.optim import build_optimizer
from labelfree.preemption import before_requeue, deferred_preemption, preemption_signalled
from labelfree.records import LOSS_KEY
from labelfree.rundir import (
    ReadOnlyRunDir,
    RunDir,
    RunLock,
    RunLocked,
    add_log_file,
    write_atomic,
)

log = logging.getLogger(__name__)

#: ``resume`` values other than a path.
RESUME_MODES = ("auto", "never", "restart")


@dataclass(frozen=True)
class ResumePlan:
    """How a launch continues its run directory (decided before anything is written).

    Attributes:
        run: the run directory to train in (the checkpoint's, for ``resume=PATH``).
        checkpoint: the checkpoint to resume from, or None to start at epoch 0.
        restart: ``resume=restart``: move the run's files aside first.
    """

    run: RunDir
    checkpoint: Path | None = None
    restart: bool = False


def target_run_dir(resume: str, run_dir: Path) -> tuple[Path, Path | None]:
    """The run directory a launch trains in and the explicit checkpoint of ``resume=PATH``.

    ``resume=PATH`` names a run directory or a ``last.pt``; a checkpoint inside
    ``<dir>/checkpoints/`` resumes in ``<dir>``, a loose file starts this launch's run from it.
    """
    if resume in RESUME_MODES:
        return run_dir, None
    path = Path(resume).expanduser()
    path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"resume={resume}: no checkpoint there; pass a run directory, a last.pt, or one of "
            f"{', '.join(RESUME_MODES)}."
        )
    if path.parent.name == "checkpoints":
        return path.parent.parent.resolve(), path
    return run_dir, path


def plan_resume(resume: str, run_dir: Path) -> ResumePlan:
    """Decide how to continue ``run_dir`` (read-only; refusals raise and change nothing).

    - ``auto``: continue from ``checkpoints/last.pt``; with no checkpoint, start at epoch 0,
      unless records after epoch 0 exist: then refuse, since starting over would silently
      replace trained epochs (restore the checkpoint, or ``resume=restart``);
    - ``never``: start at epoch 0 in a directory without records or checkpoint, else refuse;
    - ``restart``: move every file of the run aside (``.restarts/<time>/``), start at epoch 0;
    - ``PATH``: continue from that checkpoint (:func:`target_run_dir`).
    """
    target, explicit = target_run_dir(resume, run_dir)
    run = RunDir(target)
    if explicit is not None:
        return ResumePlan(run, checkpoint=explicit)
    if resume == "restart":
        return ResumePlan(run, restart=True)
    if resume == "never":
        if run.read_records() or run.last_checkpoint.exists():
            raise ValueError(
                f"resume=never but {run.path} already holds a run (metrics.jsonl or "
                f"checkpoints/last.pt): choose another directory (hydra.run.dir=...), or "
                f"resume=restart to start it over (its files are moved aside)."
            )
        return ResumePlan(run)
    if run.last_checkpoint.exists():
        return ResumePlan(run, checkpoint=run.last_checkpoint)
    trained = run.trained_epochs()
    if trained:
        raise ValueError(
            f"{run.metrics_path} holds records up to epoch {trained[-1]} but "
            f"{run.last_checkpoint} is missing, so the run cannot continue: restore the "
            f"checkpoint, or start over with resume=restart (the old records are moved aside, "
            f"not deleted)."
        )
    return ResumePlan(run)


@dataclass
class Prepared:
    """Everything a run needs, built and checked before the launch writes anything.

    ``config`` is the run's resolved config as it is recorded (checkpoint, run.json, logger),
    with ``trainer.augmentation`` as resolved; ``resolved`` lists the keys a launch resolved
    from ``auto`` (``{"trainer.augmentation": "batched"}``), for run.json's identity.
    """

    plan: ResumePlan
    config: dict
    resolved: dict
    trainer: Trainer
    evaluator: Evaluator | None
    state: dict | None


def _prepare(cfg: DictConfig, run_dir: Path, *, world: World, device: torch.device) -> Prepared:
    """Decide the resume, load the data, build and restore the model: reads only.

    Raises ``ValueError``/``FileNotFoundError`` naming the value and the fix; the run directory
    is left as it was.
    """
    plan = plan_resume(str(cfg.resume), run_dir)
    state = None
    if plan.checkpoint is not None:
        state = load_checkpoint(plan.checkpoint)
        reference, source = state["config"], str(plan.checkpoint)
    else:
        reference = plan.run.read_status().get("config") if plan.run.read_records() else None
        source = str(plan.run.run_json_path)
    if plan.restart:
        reference = None
    # The view path is result-relevant (its own random streams): the run records the resolved
    # one, and `auto` keeps the path a resumed run was trained with, on any machine.
    workers = resolve_num_workers(cfg.trainer.num_workers)
    augmentation = resolve_augmentation(
        cfg.trainer.augmentation, device, workers=workers, saved=reference
    )
    config = as_container(cfg)
    config["trainer"]["augmentation"] = augmentation
    resolved = {"trainer.augmentation": augmentation} if cfg.trainer.augmentation == "auto" else {}
    diffs = config_diff(reference, config) if reference else []
    if diffs:
        raise ValueError(
            f"{source} was trained with a different config ({'; '.join(diffs[:5])}"
            f"{'; ...' if len(diffs) > 5 else ''}): relaunch with that config, train it in "
            f"another directory (hydra.run.dir=...), or start this one over with resume=restart."
        )
    precision = resolve_precision(cfg.trainer.precision, device)
    dataset, model = build_model(cfg, world)
    validate_data(cfg, dataset)
    channels_last = resolve_channels_last(cfg.trainer.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, cfg.method.optimizer, batch_size=cfg.trainer.batch_size)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a checkpoint sets scheduled lrs
    if state is not None:
        restore(state, plan.checkpoint, model, optimizer)
    if cfg.trainer.compile:
        compile_model(model)
    trainer = Trainer(
        model=model,
        loss_fn=model.loss,  # wrapped for DDP once the run is owned (a collective)
        optimizer=optimizer,
        base_lrs=base_lrs,
        loader=build_loader(
            cfg,
            dataset,
            device=device,
            world=world,
            augmentation=augmentation,
            num_workers=workers,
        ),
        world=world,
        device=device,
        precision=precision,
        channels_last=channels_last,
        seed=cfg.seed,
        epochs=cfg.trainer.epochs,
        warmup_epochs=cfg.trainer.warmup_epochs,
    )
    evaluator = build_evaluator(cfg, dataset, device=device) if world.is_main else None
    return Prepared(plan, config, resolved, trainer, evaluator, state)


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train and evaluate one run in ``run_dir``; returns the final ``run.json`` contents.

    Refused before owning the run (a bad value, a config that differs from the checkpoint's,
    ``resume=never`` on an existing run, a missing dataset, a run another process trains): the
    error is raised and nothing is written. Once owned, an error marks ``run.json`` failed
    (Ctrl-C: ``interrupted``) and is raised again.

    Under torchrun or multi-task submitit jobs every process calls this; they form one DDP run
    (:mod:`labelfree.distributed`) in which rank 0 holds the lock, evaluates and writes. When
    rank 0 leaves for a requeue (submitit's preemption signal), another rank's next collective
    fails: that rank returns ``{"status": "interrupted", ...}`` quietly instead of raising.
    """
    run_dir = Path(run_dir)
    validate_config(cfg)
    target, _ = target_run_dir(str(cfg.resume), run_dir)
    device = resolve_device(cfg.trainer.device)
    # (here, not in RunSession: `python -m labelfree.train` makes this module __main__, which
    # submitit's cloudpickle copies by value, and a method naming torch beside attributes such
    # as `.distributed` and `.config` drags the unpicklable torch.distributed.config along)
    threads = limit_cpu_threads()
    rank = 0
    try:
        with distributed_world(cfg.trainer.distributed, device=device) as world:
            rank = world.rank
            check_world(
                cfg.trainer.distributed,
                batch_size=cfg.trainer.batch_size,
                world_size=world.world_size,
            )
            device = world.device(device)
            lock = RunLock(target) if world.is_main else None
            try:
                if lock is not None:
                    lock.acquire()
                prepared = world.agree(lambda: _prepare(cfg, run_dir, world=world, device=device))
                return RunSession(cfg, prepared, cpu_threads=threads).run()
            finally:
                if lock is not None:
                    lock.release()
    except RuntimeError as err:
        if rank == 0 or not preemption_signalled():
            raise
        # Rank 0 got the same signal and left to be requeued; the requeued job runs this rank
        # again. (Returning, not exiting: submitit then has this task's result, which it needs
        # if rank 0 was not requeued after all, e.g. out of time-limit requeues.)
        log.info(
            "Rank %d: rank 0 left after the preemption signal (%s); this rank stops too.",
            rank,
            one_line(err)[:120],
        )
        return {"status": "interrupted", "error": f"rank {rank} stopped with rank 0 (preempted)"}


class RunSession:
    """The owned part of a launch: the run's files and its epochs (rank 0 writes).

    Holds the position (``epoch``, ``step``, the loss of the last epoch, the training time so
    far) explicitly, so checkpoints, records and ``run.json`` always describe the same moment.
    """

    def __init__(self, cfg: DictConfig, prepared: Prepared, *, cpu_threads: int | None = None):
        self.cfg, self.prepared, self.cpu_threads = cfg, prepared, cpu_threads
        self.trainer, self.evaluator = prepared.trainer, prepared.evaluator
        self.world = prepared.trainer.world
        path = prepared.plan.run.path
        self.rundir = RunDir(path) if self.world.is_main else ReadOnlyRunDir(path)
        self.schedule = set(eval_epochs(cfg.eval.schedule, cfg.trainer.epochs))
        state = prepared.state or {}
        self.epoch, self.step = state.get("epoch", 0), state.get("step", 0)
        self.loss = state.get("loss")  # for a scheduled record of that epoch still missing
        self.elapsed, self.started = state.get("elapsed_s", 0.0), time.perf_counter()
        self.records: set[int] = set()
        self.logger = NullLogger()

    def now(self) -> float:
        """Training and evaluation time of the run so far, over all its launches (seconds)."""
        return self.elapsed + time.perf_counter() - self.started

    def run(self) -> dict:
        """Own the directory (``.hydra/``, ``train.log``), then train; the final ``run.json``."""
        if self.world.is_main and self.prepared.plan.restart:
            aside = self.rundir.move_aside()
            if aside is not None:
                log.warning(
                    "resume=restart: the previous files of %s are in %s", self.rundir.path, aside
                )
        file_log = add_log_file(self.rundir.path / "train.log") if self.world.is_main else None
        try:
            if self.world.is_main:
                write_launch_files(self.rundir.path, self.cfg)
            return self._train()
        finally:
            if file_log is not None:
                logging.getLogger().removeHandler(file_log)
                file_log.close()

    def _train(self) -> dict:
        # submitit requeues on SIGUSR2 with `scontrol requeue`, after which SLURM sends SIGTERM
        # to every process of the job, W&B's service process included: close the logger first.
        with before_requeue(self._close_logger_for_requeue):
            return self._train_epochs()

    def _close_logger_for_requeue(self) -> None:
        if self.world.is_main:
            log.info("Preemption signal: closing the logger before submitit requeues the job")
            self._finish_logger("interrupted")

    def _finish_logger(self, status: str) -> None:
        """Close the logger; its failure is a warning (metrics.jsonl is the source of truth).

        It never replaces the exception in flight (submitit's requeue, a failure) nor changes the
        run's status.
        """
        try:
            self.logger.finish(status)
        except Exception as err:  # a mirror of metrics.jsonl: its failure must not fail the run
            log.warning(
                "The %s logger could not be closed (%s: %s); metrics.jsonl in %s has every record.",
                type(self.logger).__name__,
                type(err).__name__,
                one_line(err),
                self.rundir.path,
            )

    def _train_epochs(self) -> dict:
        final = "failed"
        try:
            status = self._start()
            if self.prepared.state is None:
                self._checkpoint()
            self._evaluate()  # epoch 0, or a scheduled record missing after an interruption
            while self.epoch < self.cfg.trainer.epochs:
                self.loss = train_epoch(self.trainer, epoch=self.epoch + 1, step=self.step)
                self.epoch, self.step = self.epoch + 1, self.step + self.trainer.steps_per_epoch
                # a resume starts after the checkpointed epoch: its loss must be logged too
                with deferred_preemption():
                    self._checkpoint()
                    status = self.rundir.update_status(last_epoch=self.epoch)
                    self.logger.log_train(
                        {LOSS_KEY: self.loss, "epoch": self.epoch}, step=self.step
                    )
                self._evaluate()
            final = "completed"
            status = self.rundir.update_status(status=final, wall_s=round(self.now(), 1))
        except Diverged as err:
            final = "diverged"
            status = self.rundir.update_status(
                status=final, error=str(err), wall_s=round(self.now(), 1)
            )
            log.error(str(err))
        except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or submitit's requeue on a signal
            final = "interrupted"
            detail = "Ctrl-C" if isinstance(err, KeyboardInterrupt) else "stopped to be requeued"
            self._mark(final, f"interrupted at epoch {self.epoch} ({detail})")
            raise
        except BaseException as err:
            message = one_line(err)
            expected = isinstance(err, ValueError | FileNotFoundError | RuntimeError | OSError)
            self._mark("failed", message if expected else f"{type(err).__name__}: {message}")
            raise
        finally:
            self._finish_logger(final)
            log.info(
                "Run directory: %s (metrics.jsonl: %d records)", self.rundir.path, len(self.records)
            )
        return status

    def _start(self) -> dict:
        """Drop records the checkpoint does not explain, open the logger, mark the run running."""
        cfg, world, trainer = self.cfg, self.world, self.trainer
        if self.prepared.state is not None:
            log.info(
                "Resumed from %s at epoch %d (step %d)",
                self.prepared.plan.checkpoint,
                self.epoch,
                self.step,
            )
        slurm = slurm_job()
        if slurm["slurm_job_id"] is not None:
            log.info(
                "SLURM job %s, restart %d, node %s",
                slurm["slurm_job_id"],
                slurm["slurm_restart_count"],
                os.environ.get("SLURMD_NODENAME", socket.gethostname()),
            )
        self.records.update(r["epoch"] for r in self.rundir.keep_records_through(self.epoch))
        previous = self.rundir.read_status()
        if world.is_main:
            self.logger = build_logger(
                cfg.logger, run_dir=self.rundir.path, config=self.prepared.config, status=previous
            )
        trainer.loss_fn = prepare_model(
            trainer.model, world, sync_batchnorm=cfg.trainer.distributed.sync_batchnorm
        )
        overrides, sweep = launch_overrides()
        return self.rundir.update_status(
            name=previous.get("name") or cfg.run_name,
            method=cfg.method.name,
            arch=cfg.arch.name,
            data=cfg.data.name,
            seed=cfg.seed,
            experiment=cfg.experiment_name,
            identity={
                "overrides": identity_overrides(overrides, cfg, factor_experiment=sweep),
                "hash": config_hash(self.prepared.config),
                "resolved": self.prepared.resolved,
            },
            status="running",
            epochs=cfg.trainer.epochs,
            last_epoch=self.epoch if self.prepared.state is not None else None,
            error=None,
            device=str(trainer.device),
            world_size=world.world_size,
            host=socket.gethostname(),
            pid=os.getpid(),  # of rank 0: a requeued or resumed job records its new process
            cpu_threads=self.cpu_threads,
            **slurm,
            config=self.prepared.config,
            **self.logger.status_fields,
        )

    def _checkpoint(self) -> None:
        if not self.world.is_main:
            return
        save_checkpoint(
            self.rundir.last_checkpoint,
            {
                "model": self.trainer.model.state_dict(),
                "optimizer": self.trainer.optimizer.state_dict(),
                "epoch": self.epoch,
                "step": self.step,
                "elapsed_s": self.now(),
                "loss": self.loss,
                "config": self.prepared.config,
            },
        )

    def _evaluate(self) -> None:
        if self.epoch not in self.schedule:
            return
        if self.world.is_main and self.epoch not in self.records:
            record = timed_record(
                self.evaluator,
                self.trainer.model,
                epoch=self.epoch,
                step=self.step,
                wall_s=self.now(),
                loss=self.loss,
            )
            with deferred_preemption():  # a record is in metrics.jsonl iff the logger has it
                self.rundir.append_record(record)
                self.logger.log_record(record)
            self.records.add(self.epoch)
            log.info(summary_line(record))
        self.world.barrier()  # the other ranks wait for rank 0's evaluation

    def _mark(self, status: str, error: str) -> None:
        """Record how the run stopped; a failure to write that (a full disk) is logged only."""
        try:
            self.rundir.update_status(status=status, error=error, wall_s=round(self.now(), 1))
        except OSError as err:
            log.error(
                "Could not record status %s in %s: %s", status, self.rundir.run_json_path, err
            )


def slurm_job(environ: dict[str, str] | None = None) -> dict:
    """The SLURM job this process runs in, for ``run.json`` (both values None outside SLURM).

    ``slurm_job_id`` as squeue shows it (``123``, or ``123_4`` in an array) and
    ``slurm_restart_count``, how often SLURM requeued it (``SLURM_RESTART_COUNT``).
    """
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return {"slurm_job_id": None, "slurm_restart_count": None}
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array}_{task}" if array and task else env["SLURM_JOB_ID"]
    return {"slurm_job_id": job_id, "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", 0))}


def record_refused_launch(cfg: DictConfig, run_dir: str | Path, error: BaseException) -> None:
    """Note why a launch stopped before owning its run, in a directory that holds no run yet.

    A sweep summary then names the job and its error. A directory that already holds a run
    (``run.json``, records or a checkpoint), or that another process has locked, is left alone.
    """
    try:
        target, _ = target_run_dir(str(cfg.resume), Path(run_dir))
    except (FileNotFoundError, ValueError):
        target = Path(run_dir)
    if target not in (Path(run_dir), Path(run_dir).resolve()):
        # resume=PATH trains elsewhere: Hydra's directory for this launch stays unused
        with contextlib.suppress(OSError):
            Path(run_dir).rmdir()  # only if empty
        return
    run = RunDir(run_dir)
    if any(p.exists() for p in (run.run_json_path, run.metrics_path, run.checkpoint_dir)):
        return
    try:
        with RunLock(run.path):
            run.update_status(
                name=OmegaConf.select(cfg, "run_name", default=run.path.name),
                status="failed",
                error=one_line(error),
                overrides=launch_overrides()[0],
            )
    except (RunLocked, OSError):
        return


def one_line(error: BaseException) -> str:
    """The first line of an error; an ``OSError`` as ``<reason>: <path>`` (no errno prefix)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def write_launch_files(run_dir: Path, cfg: DictConfig) -> None:
    """Write ``.hydra/`` (config, hydra and overrides YAML) for the launch that owns the run.

    Hydra's own copies are switched off (``hydra.output_subdir: null``): Hydra writes them at
    every launch before any check, so a refused launch would leave a config that does not
    describe the run.
    """
    from hydra.core.hydra_config import HydraConfig

    folder = run_dir / ".hydra"
    write_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        write_atomic(
            folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg}))
        )
        write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _app(cfg: DictConfig) -> dict | None:
    """Hydra task: one line per failure; a run it owned is marked failed, results kept.

    In a sweep a failing job returns ``{"status": "failed", "error": ...}`` instead of raising, so
    the other jobs go on and the sweep summary names it.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    log.info("Run directory: %s", run_dir)
    multirun = hydra_cfg.mode == hydra.types.RunMode.MULTIRUN
    try:
        return train(cfg, run_dir)
    except KeyboardInterrupt:
        log.error("Interrupted (Ctrl-C): relaunch the same command to resume %s.", run_dir)
        sys.exit(130)
    except Exception as err:  # in a sweep, even a bug must not sink the other jobs
        expected = isinstance(err, ValueError | FileNotFoundError | RuntimeError | OSError)
        if not (expected or multirun):
            raise  # a bug in a single run: the full traceback
        message = one_line(err)
        log.error("%s: %s", type(err).__name__, message, exc_info=not expected)
        if int(os.environ.get("RANK", 0)) == 0:  # under DDP rank 0 notes it
            record_refused_launch(cfg, run_dir, err)
        if multirun:
            error = message if expected else f"{type(err).__name__}: {message}"
            return {"status": "failed", "error": error, "run_dir": str(run_dir)}
        sys.exit(1)


def main() -> None:
    """Console-script entry point (``labelfree-train``): run-directory paths need no quoting."""
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
