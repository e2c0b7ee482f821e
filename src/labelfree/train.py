"""``labelfree-train``: train one SSL encoder and evaluate it at scheduled epochs.

    labelfree-train                                     # digits x small_cnn x simclr
    labelfree-train method=byol arch=resnet18_cifar data=cifar10 data.download=true
    labelfree-train --cfg job                           # print the composed config

One shared epoch loop for every method: views -> ``method.loss`` -> optimizer step ->
``method.on_step_end``. Epoch 0 (the random initialisation) is evaluated before training. After
every epoch the checkpoint is written atomically, then the scheduled evaluation is appended to
``metrics.jsonl``; a relaunch into the same run directory (or ``resume=PATH``) continues from the
last finished epoch and writes exactly the records an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from labelfree.backbones import build_backbone
from labelfree.checkpoint import load_checkpoint, restore, save_checkpoint
from labelfree.config import (
    config_diff,
    config_hash,
    identity_overrides,
    launch_overrides,
    quote_path_overrides,
)
from labelfree.data import Dataset, ViewLoader, build_dataset
from labelfree.distributed import (
    ReadOnlyRunDir,
    World,
    check_world,
    distributed_world,
    prepare_model,
    set_gather_distributed,
)
from labelfree.evaluation import Evaluator, as_container, eval_epochs, summary_line, timed_record
from labelfree.loggers import NullLogger, build_logger
from labelfree.methods import SSLMethod, build_method
from labelfree.metrics import check_metrics_config
from labelfree.optim import build_optimizer, check_optimizer_config, lr_factor
from labelfree.rundir import RunDir, RunLock, RunLocked, add_log_file, write_atomic

log = logging.getLogger(__name__)

# Steps between reads of the training loss (NaN check, progress bar): each read syncs host and GPU.
CHECK_EVERY = 10
#: ``resume`` values other than a path.
RESUME_MODES = ("auto", "never", "restart")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.device={spec} but CUDA is not available: use trainer.device=auto or cpu."
        )
    return device


def resolve_precision(spec: str, device: torch.device) -> str:
    """``auto`` -> bf16 autocast on CUDA, fp32 elsewhere."""
    if spec not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision={spec} is not one of: auto, bf16, fp32.")
    if spec == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return spec


def resolve_channels_last(spec: bool | str, device: torch.device) -> bool:
    """``auto`` -> channels_last memory format on CUDA (faster bf16 convolutions), not on CPU."""
    if spec == "auto":
        return device.type == "cuda"
    if not isinstance(spec, bool):
        raise ValueError(f"trainer.channels_last={spec} is not one of: auto, true, false.")
    return spec


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data: each failure is one line naming the key, the value and the fix."""
    for key in ("trainer.epochs", "trainer.batch_size"):
        value = OmegaConf.select(cfg, key)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key}={value} must be a positive integer: set {key}=<n >= 1>.")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise ValueError(
            f"seed={cfg.seed!r} must be a non-negative integer: set seed=0 (or 1, 2...)."
        )
    warmup = cfg.trainer.warmup_epochs
    if not _is_int(warmup) or warmup < 0:
        raise ValueError(
            f"trainer.warmup_epochs={warmup!r} must be an integer >= 0: e.g. "
            "trainer.warmup_epochs=2."
        )
    check_optimizer_config(cfg.method.optimizer)
    if cfg.resume in ("", None):
        raise ValueError("resume is empty: use resume=auto | never | restart | PATH.")
    if cfg.trainer.augmentation not in ("batched", "lightly"):
        raise ValueError(
            f"trainer.augmentation={cfg.trainer.augmentation} is not one of: batched, lightly."
        )
    if not isinstance(cfg.trainer.cuda_graphs, bool):
        raise ValueError(f"trainer.cuda_graphs={cfg.trainer.cuda_graphs} must be true or false.")
    if cfg.eval.embedding not in ("backbone", "projector"):
        raise ValueError(f"eval.embedding={cfg.eval.embedding} is not one of: backbone, projector.")
    eval_epochs(cfg.eval.schedule, cfg.trainer.epochs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_data(cfg: DictConfig, dataset: Dataset) -> None:
    """Checks that need the loaded dataset."""
    if cfg.trainer.batch_size > len(dataset.train):
        raise ValueError(
            f"trainer.batch_size={cfg.trainer.batch_size} is larger than the "
            f"{len(dataset.train)} training "
            f"images of data={dataset.name}: set trainer.batch_size<={len(dataset.train)}."
        )
    check_metrics_config(
        cfg.metrics,
        n_samples=len(dataset.test),
        n_classes=dataset.num_classes,
        n_train=len(dataset.train),
    )


def build_model(cfg: DictConfig, world: World | None = None) -> tuple[Dataset, SSLMethod]:
    """The dataset and the SSL method (seeded backbone and heads) described by ``cfg``.

    Under DDP (``world``) a method's ``gather_distributed`` option is switched on.
    """
    dataset = build_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    backbone, dim = build_backbone(
        cfg.arch, in_channels=dataset.channels, image_size=dataset.image_size
    )
    method_cfg = set_gather_distributed(as_container(cfg.method), world or World())
    return dataset, build_method(method_cfg, backbone, dim)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Views and batch order of an epoch depend on (seed, epoch) only, so a resumed run replays them.
    return seed * 1_000_003 + epoch


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
    """Everything a run needs, built and checked before the launch writes anything."""

    plan: ResumePlan
    config: dict
    dataset: Dataset
    model: SSLMethod
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    loader: ViewLoader
    evaluator: Evaluator | None
    precision: str
    channels_last: bool
    state: dict | None


def _prepare(cfg: DictConfig, run_dir: Path, *, world: World, device: torch.device) -> Prepared:
    """Decide the resume, load the data, build and restore the model: reads only, writes nothing.

    Raises ``ValueError``/``FileNotFoundError`` naming the value and the fix; the run directory
    is left as it was.
    """
    plan = plan_resume(str(cfg.resume), run_dir)
    config = as_container(cfg)
    state = None
    if plan.checkpoint is not None:
        state = load_checkpoint(plan.checkpoint)
        reference, source = state["config"], str(plan.checkpoint)
    else:
        reference = plan.run.read_status().get("config") if plan.run.read_records() else None
        source = str(plan.run.run_json_path)
    diffs = config_diff(reference, config) if reference and not plan.restart else []
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
    loader = ViewLoader(
        dataset.train.images,
        as_container(cfg.data.augment),
        as_container(cfg.method.views),
        batch_size=cfg.trainer.batch_size,
        backend=cfg.trainer.augmentation,
        device=device,
        num_workers=cfg.trainer.num_workers,
        rank=world.rank,
        world_size=world.world_size,
        cuda_graphs=cfg.trainer.cuda_graphs,
    )
    evaluator = (
        Evaluator(
            dataset,
            cfg.metrics,
            normalize=as_container(cfg.data.normalize),
            device=device,
            embedding=cfg.eval.embedding,
            batch_size=cfg.eval.batch_size,
            train_per_class=cfg.eval.train_per_class,
            precision=precision,
            seed=cfg.seed,
        )
        if world.is_main
        else None
    )
    return Prepared(
        plan,
        config,
        dataset,
        model,
        optimizer,
        base_lrs,
        loader,
        evaluator,
        precision,
        channels_last,
        state,
    )


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train and evaluate one run in ``run_dir``; returns the final ``run.json`` contents.

    A launch owns its run only once everything is checked: the config is valid, the run's lock
    is taken, the resume is decided, the data is loaded and the model restored. Until then it
    writes nothing, so a refused launch (a bad value, a config that differs from the
    checkpoint's, ``resume=never`` on an existing run, a missing dataset, a run another process
    trains) leaves the run directory byte for byte as it was; :func:`record_refused_launch`
    notes the error in a directory that holds no run yet. Once owned, an error marks
    ``run.json`` failed (Ctrl-C: ``interrupted``) and is raised again.

    Under torchrun or multi-task submitit jobs every process calls this; they form one DDP run
    (:mod:`labelfree.distributed`) in which rank 0 holds the lock, evaluates and writes.
    """
    run_dir = Path(run_dir)
    validate_config(cfg)
    target, _ = target_run_dir(str(cfg.resume), run_dir)
    device = resolve_device(cfg.trainer.device)
    with distributed_world(cfg.trainer.distributed, device=device) as world:
        check_world(
            cfg.trainer.distributed, batch_size=cfg.trainer.batch_size, world_size=world.world_size
        )
        device = world.device(device)
        lock = RunLock(target) if world.is_main else None
        try:
            if lock is not None:
                lock.acquire()
            prepared = world.agree(lambda: _prepare(cfg, run_dir, world=world, device=device))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        try:
            return _run(cfg, prepared, world=world, device=device)
        finally:
            if lock is not None:
                lock.release()


def record_refused_launch(cfg: DictConfig, run_dir: str | Path, error: BaseException) -> None:
    """Note why a launch stopped before owning its run, in a directory that holds no run yet.

    A sweep summary then names the job and its error. A directory that already holds a run
    (``run.json``, records or a checkpoint), or that another process has locked, is left alone.
    """
    try:
        target, _ = target_run_dir(str(cfg.resume), Path(run_dir))
    except (FileNotFoundError, ValueError):
        target = Path(run_dir)
    if target != Path(run_dir).resolve() and target != Path(run_dir):
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
                error=_one_line(error),
                overrides=launch_overrides()[0],
            )
    except (RunLocked, OSError):
        return


def _one_line(error: BaseException) -> str:
    """The first line of an error; an ``OSError`` as ``<reason>: <path>`` (no errno prefix)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _run(cfg: DictConfig, prepared: Prepared, *, world: World, device: torch.device) -> dict:
    """The owned part of a launch: write the run's files and train it (rank 0 writes)."""
    plan = prepared.plan
    run = plan.run if world.is_main else ReadOnlyRunDir(plan.run.path)
    if world.is_main and plan.restart:
        aside = run.move_aside()
        if aside is not None:
            log.warning("resume=restart: the previous files of %s are in %s", run.path, aside)
    file_log = add_log_file(run.path / "train.log") if world.is_main else None
    try:
        if world.is_main:
            write_launch_files(run.path, cfg)
        return _train_owned(cfg, prepared, run, world=world, device=device)
    finally:
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()


def _train_owned(
    cfg: DictConfig, prepared: Prepared, run: RunDir, *, world: World, device: torch.device
) -> dict:
    model, optimizer, loader = prepared.model, prepared.optimizer, prepared.loader
    evaluator, state, config = prepared.evaluator, prepared.state, prepared.config
    precision, channels_last = prepared.precision, prepared.channels_last
    base_lrs = prepared.base_lrs
    epochs, steps_per_epoch = cfg.trainer.epochs, len(loader)
    total_steps, warmup_steps = (
        epochs * steps_per_epoch,
        cfg.trainer.warmup_epochs * steps_per_epoch,
    )
    schedule = set(eval_epochs(cfg.eval.schedule, epochs))

    epoch, step, elapsed, loss = 0, 0, 0.0, None
    if state is not None:
        epoch, step, elapsed = state["epoch"], state["step"], state["elapsed_s"]
        loss = state.get("loss")  # for a scheduled record of that epoch still missing
        log.info("Resumed from %s at epoch %d (step %d)", prepared.plan.checkpoint, epoch, step)
    records: set[int] = set()
    logger = NullLogger()
    started = time.perf_counter()

    def now() -> float:
        return elapsed + time.perf_counter() - started

    def checkpoint() -> None:
        if not world.is_main:
            return
        save_checkpoint(
            run.last_checkpoint,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "elapsed_s": now(),
                "loss": loss,
                "config": config,
            },
        )

    def evaluate(loss: float | None) -> None:
        if epoch in schedule and epoch not in records and world.is_main:
            record = timed_record(evaluator, model, epoch=epoch, step=step, wall_s=now(), loss=loss)
            with deferred_preemption():  # a record is in metrics.jsonl iff the logger has it
                run.append_record(record)
                logger.log_record(record)
            records.add(epoch)
            log.info(summary_line(record))
        if epoch in schedule:
            world.barrier()  # the other ranks wait for rank 0's evaluation

    final = "failed"
    try:
        records.update(r["epoch"] for r in run.keep_records_through(epoch))
        if world.is_main:
            logger = build_logger(cfg.logger, run_dir=run.path, config=config)
        overrides, sweep = launch_overrides()
        status = run.update_status(
            name=run.read_status().get("name") or cfg.run_name,
            method=cfg.method.name,
            arch=cfg.arch.name,
            data=cfg.data.name,
            seed=cfg.seed,
            experiment=cfg.experiment_name,
            identity={
                "overrides": identity_overrides(overrides, cfg, factor_experiment=sweep),
                "hash": config_hash(cfg),
            },
            status="running",
            epochs=epochs,
            last_epoch=epoch if state is not None else None,
            error=None,
            device=str(device),
            world_size=world.world_size,
            host=socket.gethostname(),
            pid=os.getpid(),  # of rank 0: a requeued or resumed job records its new process
            config=config,
        )
        loss_fn = prepare_model(model, world, sync_batchnorm=cfg.trainer.distributed.sync_batchnorm)
        if state is None:
            checkpoint()
        evaluate(loss=loss)  # epoch 0, or a scheduled record missing after an interruption
        while epoch < epochs:
            loss = _train_epoch(
                model,
                loss_fn,
                world,
                optimizer,
                loader,
                base_lrs,
                epoch=epoch + 1,
                step=step,
                total_steps=total_steps,
                warmup_steps=warmup_steps,
                device=device,
                precision=precision,
                channels_last=channels_last,
                seed=cfg.seed,
                epochs=epochs,
            )
            epoch, step = epoch + 1, step + steps_per_epoch
            # a resume starts after the checkpointed epoch: its training scalars must be logged too
            with deferred_preemption():
                checkpoint()
                status = run.update_status(last_epoch=epoch)
                logger.log_train({"train/loss": loss, "epoch": epoch}, step=step)
            evaluate(loss=loss)
        final = "completed"
        status = run.update_status(status=final, wall_s=round(now(), 1))
    except Diverged as err:
        final = "diverged"
        status = run.update_status(status=final, error=str(err), wall_s=round(now(), 1))
        log.error(str(err))
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or submitit's requeue on a signal
        final = "interrupted"
        detail = "Ctrl-C" if isinstance(err, KeyboardInterrupt) else "stopped to be requeued"
        _mark(run, final, f"interrupted at epoch {epoch} ({detail})", now())
        raise
    except BaseException as err:
        message = _one_line(err)
        expected = isinstance(err, ValueError | FileNotFoundError | RuntimeError | OSError)
        _mark(run, "failed", message if expected else f"{type(err).__name__}: {message}", now())
        raise
    finally:
        logger.finish(final)
        log.info("Run directory: %s (metrics.jsonl: %d records)", run.path, len(records))
    return status


def _mark(run: RunDir, status: str, error: str, wall_s: float) -> None:
    """Record how an owned run stopped; a failure to write that (a full disk) is logged only."""
    try:
        run.update_status(status=status, error=error, wall_s=round(wall_s, 1))
    except OSError as err:
        log.error("Could not record status %s in %s: %s", status, run.run_json_path, err)


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


@contextmanager
def deferred_preemption(
    signums: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM),
) -> Iterator[None]:
    """Hold preemption signals until the block ends, then deliver them.

    submitit's SIGUSR2 handler (SLURM preemption or time limit) checkpoints, requeues and raises
    ``SystemExit`` wherever the main thread is. Inside this block it waits, so a block that writes
    the same fact to two places (metrics.jsonl and W&B; the checkpoint and the logged loss) is
    never cut in half; a resumed run would otherwise never re-log what one of them lacks. Python
    runs signal handlers in the main thread whichever thread receives the signal, so swapping the
    handlers there is enough; elsewhere (a worker thread) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for num in signums:
        if signal.getsignal(num) is not None:  # None: a handler set outside Python, left alone
            previous[num] = signal.signal(num, lambda n, _frame: received.append(n))
    try:
        yield
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)
        for num in received:
            signal.raise_signal(num)


def _train_epoch(
    model: SSLMethod,
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    world: World,
    optimizer: torch.optim.Optimizer,
    loader: ViewLoader,
    base_lrs: list[float],
    *,
    epoch: int,
    step: int,
    total_steps: int,
    warmup_steps: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    seed: int,
    epochs: int,
) -> float:
    """One pass over the training set; returns the mean loss; :class:`Diverged` on NaN/inf.

    ``loss_fn`` is ``model.loss`` or its DDP wrapper; under DDP the loss checked and averaged is the
    mean over ranks, so every rank stops at the same step.
    """
    model.train()
    torch.manual_seed(_epoch_seed(seed, epoch))  # global-RNG use inside methods replays on resume
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    total = torch.zeros((), device=device)
    bar = tqdm(
        loader.epoch(generator),
        total=len(loader),
        desc=f"epoch {epoch}/{epochs}",
        leave=False,
        disable=not world.is_main,
    )
    for i, views in enumerate(bar):
        factor = lr_factor(step + i, total_steps=total_steps, warmup_steps=warmup_steps)
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * factor
        views = [v.contiguous(memory_format=memory_format) for v in views]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_step_end(step + i, total_steps)
        total += loss.detach()
        # Reading the loss forces a host-device sync: do it every CHECK_EVERY steps, not every step.
        # A NaN propagates into the running sum, so it is still caught within CHECK_EVERY steps,
        # before the epoch's checkpoint could save the damaged weights.
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == len(loader):
            mean_so_far = world.mean(total) / (i + 1)  # the same value on every rank
            if not torch.isfinite(mean_so_far):
                raise Diverged(
                    f"train/loss became {mean_so_far.item()} in epoch {epoch} (by step "
                    f"{step + i}): the run diverged. Lower method.optimizer.lr or raise "
                    f"trainer.warmup_epochs."
                )
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return (world.mean(total) / len(loader)).item()


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
        message = _one_line(err)
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
