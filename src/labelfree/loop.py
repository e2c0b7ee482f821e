"""The epoch loop shared by every method: views -> loss -> optimizer step -> post-step hook.

The loop never asks which method it trains: ``method.loss`` (or its DDP wrapper) gives the loss of
a batch of views and ``method.on_step_end`` updates momentum targets. Everything random in an
epoch (batch order, views, global-RNG use inside methods) derives from ``(seed, epoch)``
(:func:`epoch_seed`), so a resumed run replays the epochs it had not finished exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.distributed import World
from labelfree.methods import SSLMethod
from labelfree.optim import lr_factor
from labelfree.views import ViewLoader

#: Steps between reads of the training loss (NaN check, progress bar): each read syncs host and GPU.
CHECK_EVERY = 10


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's draws: a function of the run's seed and the epoch only.

    Examples:
        >>> epoch_seed(0, 3), epoch_seed(1, 3)
        (3, 1000006)
    """
    return seed * 1_000_003 + epoch


@dataclass
class Trainer:
    """What one optimisation step needs, fixed for the whole run.

    Attributes:
        model: the SSL method (unwrapped; checkpoints and evaluation use it).
        loss_fn: ``model.loss`` or its DDP wrapper (:func:`labelfree.distributed.prepare_model`).
        optimizer: over the model's trainable parameters.
        base_lrs: each parameter group's learning rate before the schedule's factor.
        loader: the views of the training set, one epoch at a time.
        world: the processes of the run (one, or a DDP group).
        device: where the views and the loss live.
        precision: ``bf16`` (autocast) or ``fp32``.
        channels_last: feed views in channels_last memory format.
        seed: the run's seed.
        epochs: planned epochs (the schedule's length).
        warmup_epochs: linear warmup before the cosine decay.
    """

    model: SSLMethod
    loss_fn: Callable[[list[Tensor]], Tensor]
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    loader: ViewLoader
    world: World
    device: torch.device
    precision: str
    channels_last: bool
    seed: int
    epochs: int
    warmup_epochs: int

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last incomplete batch is dropped)."""
        return len(self.loader)

    def set_lr(self, step: int) -> None:
        """Learning rates of ``step``: linear warmup, then cosine decay to 0 (per step)."""
        factor = lr_factor(
            step,
            total_steps=self.epochs * self.steps_per_epoch,
            warmup_steps=self.warmup_epochs * self.steps_per_epoch,
        )
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor


def train_epoch(trainer: Trainer, *, epoch: int, step: int) -> float:
    """Train epoch ``epoch`` (1-based) starting at optimizer step ``step``; its mean loss.

    Under DDP the loss checked and averaged is the mean over ranks, so every rank stops at the
    same step.

    Raises:
        Diverged: the loss became NaN or infinite (caught within :data:`CHECK_EVERY` steps,
            before the epoch's checkpoint could save the damaged weights).
    """
    t, world = trainer, trainer.world
    t.model.train()
    torch.manual_seed(epoch_seed(t.seed, epoch))  # global-RNG use inside methods replays on resume
    generator = torch.Generator().manual_seed(epoch_seed(t.seed, epoch))
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    total = torch.zeros((), device=t.device)
    steps = t.steps_per_epoch
    bar = tqdm(
        t.loader.epoch(generator),
        total=steps,
        desc=f"epoch {epoch}/{t.epochs}",
        leave=False,
        disable=not world.is_main,
    )
    for i, views in enumerate(bar):
        t.set_lr(step + i)
        views = [v.contiguous(memory_format=memory_format) for v in views]
        with torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
            loss = t.loss_fn(views)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        t.model.on_step_end(step + i, t.epochs * steps)
        total += loss.detach()
        # Reading the loss syncs host and device: every CHECK_EVERY steps only. A NaN propagates
        # into the running sum, so it is still caught before the epoch's checkpoint.
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
            mean_so_far = world.mean(total) / (i + 1)  # the same value on every rank
            if not torch.isfinite(mean_so_far):
                raise Diverged(
                    f"train/loss became {mean_so_far.item()} in epoch {epoch} (by step "
                    f"{step + i}): the run diverged. Lower method.optimizer.lr or raise "
                    f"trainer.warmup_epochs."
                )
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return (world.mean(total) / steps).item()
