"""Batches of views for the SSL loss, one epoch at a time, from a config's augmentation options.

:func:`build_views` makes one :class:`~labelfree.views.ViewAugmentation` per view from the options
shared by all views (``data.augment``) and each view's overrides (``method.views``).
:class:`ViewLoader` feeds training: it shuffles the images, shards each global batch across DDP
ranks and yields the views of every batch, made batched on the device or by lightly's per-image
transforms in DataLoader workers.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelfree.views.augment import ViewAugmentation
from labelfree.views.graphs import GraphedViewAugmentation
from labelfree.views.options import resolve_kwargs
from labelfree.views.reference import PILViews, lightly_view_transform

__all__ = ["ViewLoader", "build_views"]


def build_views(
    common: Mapping[str, Any], per_view: Sequence[Mapping[str, Any]] = ({}, {})
) -> list[ViewAugmentation]:
    """One :class:`ViewAugmentation` per view: ``common`` updated by that view's overrides.

    Args:
        common: Keyword arguments shared by all views (e.g. a data config's augmentation block).
        per_view: One mapping of overrides per view; its length is the number of views. BYOL's
            asymmetric views: ``[{"gaussian_blur": 1.0, "solarization_prob": 0.0},
            {"gaussian_blur": 0.1, "solarization_prob": 0.2}]``.

    Returns:
        The views' augmentations, in order.

    Raises:
        ValueError: No views, an unknown option, or an invalid value.

    Examples:
        >>> v1, v2 = build_views({"input_size": 32}, [{}, {"solarization_prob": 0.2}])
        >>> v1.solarization_prob, v2.solarization_prob
        (0.0, 0.2)
    """
    if len(per_view) == 0:
        raise ValueError("per_view is empty; give one (possibly empty) mapping per view.")
    base = resolve_kwargs(common, "build_views(common)")
    views = []
    for i, overrides in enumerate(per_view):
        kwargs = {**base, **resolve_kwargs(overrides, f"build_views(per_view[{i}])")}
        views.append(ViewAugmentation(**kwargs))
    return views


class ViewLoader:
    """Batches of augmented views for the SSL loss, one epoch at a time.

    ``backend="batched"`` keeps the uint8 images on the training device and augments whole batches
    there with per-sample random parameters (:class:`~labelfree.views.ViewAugmentation`).
    ``backend="lightly"`` is the usual recipe: lightly's per-image PIL transforms in DataLoader
    workers. Both draw everything (batch order, augmentation parameters, worker seeds) from the
    epoch's generator, so an epoch replays exactly from its seed. The last incomplete batch is
    dropped.

    Under DDP (``world_size > 1``) ``batch_size`` is the global batch: every rank draws the same
    permutation from the epoch's generator and takes its ``batch_size // world_size`` slice of
    each global batch, so all ranks run ``len(self)`` steps and together see each image once per
    epoch; the view augmentations of a rank come from a generator derived from the epoch's and
    the rank.

    Args:
        images: (N, C, H, W) uint8 training images.
        augment: ``data.augment``: lightly transform parameters shared by all views.
        per_view: ``method.views``: one dict of overrides per view (e.g. BYOL's asymmetric
            solarization).
        batch_size: images per step.
        backend: ``batched`` or ``lightly``.
        device: training device.
        num_workers: DataLoader workers for the ``lightly`` backend.
        rank: this process's rank under DDP.
        world_size: number of DDP processes; must divide ``batch_size``.
        cuda_graphs: replay each view's batched augmentation as a CUDA graph on a GPU
            (:class:`~labelfree.views.GraphedViewAugmentation`); ignored elsewhere.
    """

    def __init__(
        self,
        images: Tensor,
        augment: Mapping,
        per_view: list[Mapping],
        *,
        batch_size: int,
        backend: str = "batched",
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        cuda_graphs: bool = False,
    ):
        if batch_size % world_size:
            raise ValueError(
                f"trainer.batch_size={batch_size} is not divisible by the {world_size} processes: "
                f"set trainer.batch_size to a multiple of {world_size}."
            )
        self.batch_size, self.backend, self.device = batch_size, backend, torch.device(device)
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.local_batch_size = batch_size // world_size
        if backend == "batched":
            self.images = images.to(self.device)
            self.views = build_views(augment, per_view)
            if cuda_graphs and self.device.type == "cuda":
                self.views = [GraphedViewAugmentation(v) for v in self.views]
        elif backend == "lightly":
            self.images = images
            self.dataset = PILViews(
                images, [lightly_view_transform(**{**augment, **v}) for v in per_view]
            )
        else:
            raise ValueError(f"trainer.augmentation={backend} is not one of: batched, lightly.")

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, generator: torch.Generator):
        """Yield ``len(self)`` lists of views, each a (local_batch_size, C, S, S) float tensor."""
        order = torch.randperm(len(self.images), generator=generator)[: len(self) * self.batch_size]
        if self.world_size > 1:  # this rank's slice of every global batch, its own view draws
            per = self.local_batch_size
            order = order.view(len(self), self.batch_size)[
                :, self.rank * per : (self.rank + 1) * per
            ]
            order = order.reshape(-1)
            seed = int(torch.randint(2**62, (1,), generator=generator))
            generator = torch.Generator().manual_seed(seed + self.rank)
        if self.backend == "batched":
            order = order.to(self.device)  # one copy per epoch, not a host wait per step
            for idx in order.view(len(self), self.local_batch_size):
                batch = self.images[idx]
                yield [view(batch, generator=generator) for view in self.views]
            return
        if self.num_workers == 0:  # transforms draw from the global RNGs of this process: seed them
            seed = int(torch.randint(2**31, (1,), generator=generator))
            random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)  # noqa: NPY002
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.local_batch_size,
            sampler=order.tolist(),
            drop_last=True,
            num_workers=self.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for views in loader:
            yield [v.to(self.device, non_blocking=True) for v in views]
