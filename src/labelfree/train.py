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

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from labelfree.backbones import build_backbone
from labelfree.checkpoint import load_checkpoint, save_checkpoint
from labelfree.data import Dataset, ViewLoader, build_dataset
from labelfree.distributed import (
    World,
    check_world,
    distributed_world,
    prepare_model,
    run_dir_for,
    set_gather_distributed,
)
from labelfree.evaluation import Evaluator, as_container, eval_epochs, summary_line, timed_record
from labelfree.loggers import NullLogger, build_logger
from labelfree.methods import SSLMethod, build_method
from labelfree.metrics import check_metrics_config
from labelfree.optim import build_optimizer, lr_factor
from labelfree.rundir import RunDir

log = logging.getLogger(__name__)

# Steps between reads of the training loss (NaN check, progress bar): each read syncs host and GPU.
CHECK_EVERY = 10

# Config keys allowed to differ between a checkpoint and the relaunch that resumes it.
RESUME_MAY_DIFFER = (
    "resume",
    "logger",
    "paths",
    "trainer.device",
    "trainer.num_workers",
    "trainer.distributed.backend",
    "trainer.distributed.timeout_min",
    "eval.batch_size",
)


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
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value} must be a positive integer: set {key}=<n >= 1>.")
    if cfg.trainer.augmentation not in ("batched", "lightly"):
        raise ValueError(
            f"trainer.augmentation={cfg.trainer.augmentation} is not one of: batched, lightly."
        )
    if not isinstance(cfg.trainer.cuda_graphs, bool):
        raise ValueError(f"trainer.cuda_graphs={cfg.trainer.cuda_graphs} must be true or false.")
    if cfg.eval.embedding not in ("backbone", "projector"):
        raise ValueError(f"eval.embedding={cfg.eval.embedding} is not one of: backbone, projector.")
    eval_epochs(cfg.eval.schedule, cfg.trainer.epochs)


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


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        if any(path == k or path.startswith(k + ".") for k in RESUME_MAY_DIFFER):
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, path + ".")
        elif a != b:
            diffs.append(f"{path}: {a} -> {b}")
    return diffs


def find_checkpoint(cfg: DictConfig, run: RunDir) -> Path | None:
    """The checkpoint to resume from (``resume``: auto | never | PATH), or None to start fresh."""
    if cfg.resume == "never":
        if run.read_records():
            raise ValueError(
                f"resume=never but {run.metrics_path} already holds records: delete the run "
                f"directory or choose another one (hydra.run.dir=...)."
            )
        return None
    if cfg.resume == "auto":
        return run.last_checkpoint if run.last_checkpoint.exists() else None
    path = Path(cfg.resume).expanduser()
    path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"resume={cfg.resume}: no checkpoint there; pass a run directory or a last.pt."
        )
    return path


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train and evaluate one run in ``run_dir``; returns the final ``run.json`` contents.

    Under torchrun or multi-task submitit jobs every process calls this; they form one DDP run
    (:mod:`labelfree.distributed`) in which rank 0 evaluates and writes the run directory.
    """
    validate_config(cfg)
    device = resolve_device(cfg.trainer.device)
    with distributed_world(cfg.trainer.distributed, device=device) as world:
        return _train(cfg, run_dir, world=world, device=world.device(device))


def _train(cfg: DictConfig, run_dir: str | Path, *, world: World, device: torch.device) -> dict:
    check_world(
        cfg.trainer.distributed, batch_size=cfg.trainer.batch_size, world_size=world.world_size
    )
    run = run_dir_for(run_dir, world)
    ckpt_path = find_checkpoint(cfg, run)
    if ckpt_path is not None and ckpt_path.parent.parent != run.path:
        run = run_dir_for(ckpt_path.parent.parent, world)
        log.info("Resuming in the checkpoint's run directory %s", run.path)
    world.barrier()  # every rank has chosen its checkpoint before rank 0 writes one
    precision = resolve_precision(cfg.trainer.precision, device)

    dataset, model = build_model(cfg, world)
    validate_data(cfg, dataset)
    channels_last = resolve_channels_last(cfg.trainer.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = prepare_model(model, world, sync_batchnorm=cfg.trainer.distributed.sync_batchnorm)
    optimizer = build_optimizer(model, cfg.method.optimizer, batch_size=cfg.trainer.batch_size)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
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
    epochs, steps_per_epoch = cfg.trainer.epochs, len(loader)
    total_steps, warmup_steps = (
        epochs * steps_per_epoch,
        cfg.trainer.warmup_epochs * steps_per_epoch,
    )
    schedule = set(eval_epochs(cfg.eval.schedule, epochs))
    config = as_container(cfg)

    epoch, step, elapsed, loss = 0, 0, 0.0, None
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        diffs = _config_diff(state["config"], config)
        if diffs:
            raise ValueError(
                f"{ckpt_path} was trained with a different config ({'; '.join(diffs[:5])}): "
                f"relaunch with the same overrides, or start a new run (resume=never in another "
                f"hydra.run.dir)."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, elapsed = state["epoch"], state["step"], state["elapsed_s"]
        loss = state.get("loss")  # for a scheduled record of that epoch still missing
        log.info("Resumed from %s at epoch %d (step %d)", ckpt_path, epoch, step)
    records = (
        {r["epoch"] for r in run.keep_records_through(epoch)}
        if run.metrics_path.exists()
        else set()
    )

    logger = (
        build_logger(cfg.logger, run_dir=run.path, config=config) if world.is_main else NullLogger()
    )
    status = run.update_status(
        name=cfg.run_name,
        method=cfg.method.name,
        arch=cfg.arch.name,
        data=cfg.data.name,
        seed=cfg.seed,
        experiment=cfg.experiment_name,
        status="running",
        epochs=epochs,
        last_epoch=epoch if ckpt_path else None,
        error=None,
        device=str(device),
        world_size=world.world_size,
        host=socket.gethostname(),
        pid=os.getpid(),  # of rank 0: a requeued or resumed job records its new process
        config=config,
    )
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

    try:
        if ckpt_path is None:
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
        status = run.update_status(status="completed", wall_s=round(now(), 1))
    except Diverged as err:
        status = run.update_status(status="diverged", error=str(err), wall_s=round(now(), 1))
        log.error(str(err))
    finally:
        logger.finish(run.read_status().get("status", "failed"))
        log.info("Run directory: %s (metrics.jsonl: %d records)", run.path, len(records))
    return status


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
def main(cfg: DictConfig) -> dict | None:
    """Hydra entry point: one line per failure, ``run.json`` marked failed, results kept."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    log.info("Run directory: %s", run_dir)
    multirun = hydra_cfg.mode == hydra.types.RunMode.MULTIRUN
    try:
        return train(cfg, run_dir)
    except Exception as err:  # in a sweep, even a bug must not sink the other jobs
        expected = isinstance(err, ValueError | FileNotFoundError | RuntimeError)
        if not (expected or multirun):
            raise  # a bug in a single run: the full traceback
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.error("%s: %s", type(err).__name__, message, exc_info=not expected)
        if int(os.environ.get("RANK", 0)) == 0:  # under DDP rank 0 writes run.json
            error = message if expected else f"{type(err).__name__}: {message}"
            RunDir(run_dir).update_status(status="failed", error=error)
        if multirun:
            return None  # one failing job must not stop the rest of a sweep (sweep_summary.json)
        sys.exit(1)


if __name__ == "__main__":
    main()
