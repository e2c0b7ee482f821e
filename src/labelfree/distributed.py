"""Multi-process training with ``torch.distributed`` (DDP): torchrun locally, SLURM tasks remotely.

One process per GPU (or per CPU process with the gloo backend). The world is set up by whoever
starts the processes, never by the config:

- ``torchrun --nproc_per_node=N -m labelfree.train ...`` sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- ``labelfree-train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=N`` (and
  ``hydra.launcher.nodes=M``) starts N x M submitit tasks per job; :func:`detect_world` exports
  the same variables from submitit's job environment
  (``submitit.helpers.TorchDistributedEnvironment``).

Conventions of a distributed run (``trainer.distributed`` holds the knobs):

- ``trainer.batch_size`` is the GLOBAL batch: each of the W ranks takes its slice of every global
  batch (:class:`labelfree.views.ViewLoader` with ``rank``/``world_size``), so the learning-rate
  scaling rule (``lr x batch_size / 256``) and the number of steps per epoch do not depend on W;
- a method option ``gather_distributed`` (lightly's losses: NT-Xent, Barlow Twins, VICReg) is
  switched on, so the loss of a rank sees the negatives / statistics of the global batch;
- BatchNorm layers become ``SyncBatchNorm`` on GPUs (torch has no CPU SyncBatchNorm: gloo runs on
  CPU keep per-process statistics and say so in the log);
- only rank 0 evaluates and writes ``metrics.jsonl``, ``run.json``, ``checkpoints/last.pt`` and the
  logger; the other ranks wait at a barrier, log warnings only and show no progress bars;
- every collective has a timeout (``trainer.distributed.timeout_min``): a rank that waits longer
  raises instead of hanging, so a crashed peer ends the job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """The processes of one training run.

    Attributes:
        rank: global rank of this process (0 writes everything).
        world_size: number of processes (1: no torch.distributed at all).
        local_rank: rank on this node (picks the GPU).
        backend: ``nccl`` or ``gloo`` when distributed, else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that evaluates and writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process); raises after the process group timeout."""
        if self.distributed:
            dist.barrier()

    def mean(self, value: Tensor) -> Tensor:
        """Mean of a tensor over ranks (on one process, the tensor itself)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no ReduceOp.AVG
        return total / self.world_size

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raises on any rank, raise on every rank.

        The start-up checks of a run (config, data, checkpoint) run on each rank; without this
        a rank that fails would leave the others waiting in their first collective until the
        timeout. A rank whose own ``fn`` succeeded raises ``RuntimeError`` naming the rank that
        failed and its one-line error.
        """
        try:
            result, error = fn(), None
        except Exception as err:
            result, error = None, err
        if self.distributed:
            line = (
                None if error is None else f"{type(error).__name__}: {str(error).splitlines()[0]}"
            )
            lines: list[str | None] = [None] * self.world_size
            dist.all_gather_object(lines, line)
            failed = [(r, m) for r, m in enumerate(lines) if m is not None]
            if error is None and failed:
                rank, message = failed[0]
                raise RuntimeError(f"rank {rank} stopped before training: {message}")
        if error is not None:
            raise error
        return result

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda`` becomes ``cuda:<local_rank>`` under DDP.

        With one visible GPU per task (SLURM ``--gpus-per-task``, submitit's
        ``set_cuda_visible_devices``), every rank uses that GPU's index 0.
        """
        if device.type != "cuda" or device.index is not None or not self.distributed:
            return device
        return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))


def detect_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables or submitit's task environment.

    Under submitit with more than one task, ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``
    are exported from ``submitit.helpers.TorchDistributedEnvironment`` (the master port is derived
    from the job id, so a requeued job finds it again).
    """
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit  # lazy: only sweeps launched through submitit need it

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world_size, local_rank


def check_world(cfg: Mapping[str, Any], *, batch_size: int, world_size: int) -> None:
    """Start-up checks of ``trainer.distributed`` against the world size (one line each)."""
    if cfg["backend"] not in BACKENDS:
        raise ValueError(
            f"trainer.distributed.backend={cfg['backend']} is not one of: {', '.join(BACKENDS)}."
        )
    if not (isinstance(cfg["timeout_min"], int | float) and cfg["timeout_min"] > 0):
        raise ValueError(
            f"trainer.distributed.timeout_min={cfg['timeout_min']} must be a positive number of "
            f"minutes: set trainer.distributed.timeout_min=30."
        )
    if batch_size % world_size:
        raise ValueError(
            f"trainer.batch_size={batch_size} (the global batch) is not divisible by the "
            f"{world_size} processes: set trainer.batch_size to a multiple of {world_size}."
        )


@contextmanager
def distributed_world(cfg: Mapping[str, Any], *, device: torch.device) -> Iterator[World]:
    """Join the process group described by the environment for the duration of a run.

    On one process (no torchrun, a single submitit task) nothing is initialised and the world is
    ``World()``. Otherwise the process group is created with ``trainer.distributed.backend``
    (``auto``: nccl on CUDA, gloo on CPU) and ``timeout_min``, ranks other than 0 log warnings
    only, and the group is destroyed on exit, also after an error.

    Args:
        cfg: ``trainer.distributed``.
        device: the training device chosen by ``trainer.device`` (before the rank's GPU is picked).
    """
    rank, world_size, local_rank = detect_world()
    if world_size == 1:
        yield World()
        return
    backend = cfg["backend"]
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    world = World(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(world.device(device))
    dist.init_process_group(backend, timeout=timedelta(minutes=cfg["timeout_min"]))
    root = logging.getLogger()
    level = root.level
    if not world.is_main:
        root.setLevel(logging.WARNING)  # one log per run: rank 0's
    log.info(
        "Distributed training: %d processes, backend %s (rank 0 evaluates and writes)",
        world_size,
        backend,
    )
    try:
        yield world
    finally:
        root.setLevel(level)
        dist.destroy_process_group()


class _LossModule(nn.Module):
    """``forward(views) = method.loss(views)``, so DDP sees the loss as the module's forward."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, views: list[Tensor]) -> Tensor:
        return self.method.loss(views)


def prepare_model(
    model: nn.Module, world: World, *, sync_batchnorm: bool = True
) -> Callable[[list[Tensor]], Tensor]:
    """The loss function the training loop calls; under DDP it synchronises gradients.

    On one process this is ``model.loss``. Under DDP, BatchNorm layers are first converted to
    ``SyncBatchNorm`` (GPU only, when ``sync_batchnorm``), then the model is wrapped in
    ``DistributedDataParallel`` through a module whose forward is ``model.loss``, so the
    gradient all-reduce runs for every method without the loop knowing which one it trains.
    ``model`` itself stays the unwrapped module: checkpoints and evaluation use it unchanged
    (state-dict keys without a ``module.`` prefix, loadable by a single process).

    Args:
        model: the SSL method, already on this rank's device.
        world: the process group.
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under DDP on GPUs.
    """
    if not world.distributed:
        return model.loss
    device = next(model.parameters()).device
    if sync_batchnorm and device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # only when the model itself is a BatchNorm layer
            raise ValueError("The SSL method must not itself be a BatchNorm layer.")
        log.info("BatchNorm layers synchronised across %d processes", world.world_size)
    elif sync_batchnorm:
        log.info(
            "SyncBatchNorm needs GPUs: on %s each of the %d processes keeps its own BatchNorm "
            "statistics.",
            device.type,
            world.world_size,
        )
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_LossModule(model), device_ids=device_ids)


def set_gather_distributed(method_cfg: dict[str, Any], world: World) -> dict[str, Any]:
    """Switch on a method's ``gather_distributed`` option under DDP (a copy; generic, any method).

    Methods whose lightly loss gathers across processes expose ``gather_distributed``; with it the
    loss of each rank sees the whole global batch, which makes DDP training equivalent to one
    process on ``trainer.batch_size`` images. Methods without the option are returned unchanged.
    """
    if world.distributed and "gather_distributed" in method_cfg:
        return {**method_cfg, "gather_distributed": True}
    return method_cfg
