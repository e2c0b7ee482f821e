"""Optimizers and the warmup-cosine learning-rate schedule, configured by ``method.optimizer``.

The learning rate in the config is per 256 images and scaled linearly with the batch size
(Goyal et al. 2017, as in SimCLR/SimSiam): ``lr = optimizer.lr * trainer.batch_size / 256``.
The schedule is a pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_warmup_schedule
from torch import nn

OPTIMIZERS = {"sgd": torch.optim.SGD, "lars": LARS, "adamw": torch.optim.AdamW}


def check_optimizer_config(cfg: Mapping) -> None:
    """Validate ``method.optimizer`` before anything is built: one line naming the key typed.

    ``name`` must be a known optimizer, ``lr`` (per 256 images) a positive number, and every
    other numeric option (momentum, weight_decay, ...) a number >= 0.

    Raises:
        ValueError: naming ``method.optimizer.<key>``, the value as typed and the fix.
    """
    name = cfg.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer method.optimizer.name={name}. "
            f"Choose one of: {', '.join(sorted(OPTIMIZERS))}."
        )
    lr = cfg.get("lr")
    if not _is_number(lr) or lr <= 0:
        raise ValueError(
            f"method.optimizer.lr={lr!r} must be a positive number (the learning rate per 256 "
            f"images, scaled by trainer.batch_size / 256): e.g. method.optimizer.lr=0.3."
        )
    for key, value in cfg.items():
        if (
            key in ("name", "lr")
            or isinstance(value, bool | list | tuple | Mapping)
            or value is None
        ):
            continue
        if not _is_number(value) or value < 0:
            raise ValueError(f"method.optimizer.{key}={value!r} must be a number >= 0.")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def build_optimizer(model: nn.Module, cfg: Mapping, *, batch_size: int) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters (EMA targets are frozen, so they are left out).

    Args:
        model: the SSL method.
        cfg: ``method.optimizer``: ``name`` (sgd | lars | adamw), ``lr`` per 256 images, and the
            optimizer's own keyword arguments (momentum, weight_decay, ...).
        batch_size: images per step, for the linear scaling rule.

    Raises:
        ValueError: a bad value (see :func:`check_optimizer_config`) or an option the optimizer
            rejects, naming ``method.optimizer``.
    """
    check_optimizer_config(cfg)
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    lr = kwargs.pop("lr") * batch_size / 256
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return OPTIMIZERS[name](params, lr=lr, **kwargs)
    except (TypeError, ValueError) as err:  # an unknown keyword or a value torch rejects
        raise ValueError(
            f"method.optimizer={dict(cfg)} is not accepted by {OPTIMIZERS[name].__name__}: {err}."
        ) from None


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then cosine decay to 0."""
    if warmup_steps >= total_steps:
        warmup_steps = 0
    return cosine_warmup_schedule(
        step,
        max_steps=total_steps,
        start_value=1.0,
        end_value=0.0,
        warmup_steps=warmup_steps,
        warmup_start_value=0.0,
    )
