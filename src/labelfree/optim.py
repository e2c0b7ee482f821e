"""Optimizers and the warmup-cosine learning-rate schedule, configured by ``method.optimizer``.

The learning rate in the config is per 256 images and scaled linearly with the batch size
(Goyal et al. 2017, as in SimCLR/SimSiam): ``lr = optimizer.lr * trainer.batch_size / 256``.
The schedule is a pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_warmup_schedule
from torch import nn

OPTIMIZERS = {"sgd": torch.optim.SGD, "lars": LARS, "adamw": torch.optim.AdamW}


def build_optimizer(model: nn.Module, cfg: Mapping, *, batch_size: int) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters (EMA targets are frozen, so they are left out).

    Args:
        model: the SSL method.
        cfg: ``method.optimizer``: ``name`` (sgd | lars | adamw), ``lr`` per 256 images, and the
            optimizer's own keyword arguments (momentum, weight_decay, ...).
        batch_size: images per step, for the linear scaling rule.
    """
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer method.optimizer.name={name}. "
            f"Choose one of: {', '.join(sorted(OPTIMIZERS))}."
        )
    lr = kwargs.pop("lr") * batch_size / 256
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[name](params, lr=lr, **kwargs)


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
