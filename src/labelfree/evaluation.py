"""Scheduled evaluation: which epochs, how to embed a split, and the record written per evaluation.

At each scheduled epoch the backbone (eval mode, no augmentation) embeds the labelled test split
(and the labelled train split for the probe and kNN references), and
:func:`labelfree.metrics.compute_metrics` turns the embeddings into the DESIGN.md record keys.
When ``lidar`` is requested, ``q`` augmented views of ``n`` fixed test images are embedded too
(:func:`lidar_images`, :func:`embed_views`): the same images and the same augmentation draws at
every evaluation, so only the weights change between two LiDAR values.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from omegaconf import ListConfig
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.data import Dataset, Split, balanced_subset, to_float
from labelfree.metrics import compute_metrics, input_options
from labelfree.records import LOSS_KEY, make_record

log = logging.getLogger(__name__)

# Headline keys of the one-line summary logged per evaluation.
SUMMARY_KEYS = (
    LOSS_KEY,
    "lf/silhouette",
    "lf/kmeans_agreement",
    "lf/entropy",
    "lf/rankme",
    "sup/kmeans_gt_ami",
    "sup/linear_probe_acc",
    "sup/knn_acc",
)


def eval_epochs(schedule: str | Sequence[int], epochs: int) -> list[int]:
    """Epochs at which to evaluate; epoch 0 (the random initialisation) and the last epoch always.

    Args:
        schedule: ``"every:N"`` (every N epochs), ``"log:N"`` (about N epochs spaced evenly in
            log(1 + epoch): dense early, where the paper saw the metrics behave differently), or an
            explicit list of epochs.
        epochs: total training epochs.

    Raises:
        ValueError: malformed schedule or epochs outside [0, epochs].

    Examples:
        >>> eval_epochs("every:5", 12)
        [0, 5, 10, 12]
        >>> eval_epochs("log:6", 100)
        [0, 2, 5, 15, 39, 100]
        >>> eval_epochs([2, 4], 10)
        [0, 2, 4, 10]
    """
    if isinstance(schedule, ListConfig):
        schedule = list(schedule)
    if not isinstance(schedule, str | list | tuple):
        raise ValueError(
            f"eval.schedule={schedule!r} is not understood: use 'every:N', 'log:N' (N >= 1) or a "
            f"list of epochs such as [1,2,5,10]"
            + (
                f" (every:{schedule} evaluates every {schedule} epochs)."
                if _is_int(schedule)
                else "."
            )
        )
    if isinstance(schedule, str):
        kind, _, arg = schedule.partition(":")
        if kind not in ("every", "log") or not arg.isdigit() or int(arg) < 1:
            raise ValueError(
                f"eval.schedule={schedule!r} is not understood: use 'every:N', 'log:N' (N >= 1) "
                f"or a list of epochs such as [1,2,5,10]."
            )
        n = int(arg)
        if kind == "every":
            chosen = set(range(0, epochs + 1, n))
        else:
            points = np.expm1(np.linspace(0.0, math.log1p(epochs), n))
            chosen = {int(round(p)) for p in points}
    else:
        not_int = [e for e in schedule if not _is_int(e)]
        if not_int:
            raise ValueError(
                f"eval.schedule={list(schedule)} must list epochs as integers ({not_int} are not): "
                f"e.g. eval.schedule=[1,2,5,10]."
            )
        chosen = {int(e) for e in schedule}
        bad = sorted(e for e in chosen if not 0 <= e <= epochs)
        if bad:
            raise ValueError(
                f"eval.schedule has epochs {bad} outside 0..trainer.epochs={epochs}: remove them."
            )
    return sorted(chosen | {0, epochs})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _model_input(batch: Tensor, normalize: Mapping | None) -> Tensor:
    """uint8 images -> float in [0, 1]; float images are taken as they are; then ``normalize``."""
    if batch.dtype == torch.uint8:
        return to_float(batch, normalize)
    x = batch.float()
    if normalize:
        mean = torch.as_tensor(list(normalize["mean"]), device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(list(normalize["std"]), device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def _device_of(model: torch.nn.Module | None, images: Tensor) -> torch.device:
    params = next(model.parameters(), None) if model is not None else None
    return params.device if params is not None else images.device


@torch.no_grad()
def embed(
    model: torch.nn.Module | None,
    images: Tensor,
    *,
    normalize: Mapping | None,
    batch_size: int = 1024,
    where: str = "backbone",
    precision: str = "fp32",
    desc: str = "embed",
    features: Callable[[Tensor], Tensor] | None = None,
    augment: Callable[..., Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Features of images (N, C, H, W) in eval mode: as they are, or one augmented view of each.

    Args:
        model: The network: its parameters give the device, and it is in eval mode during the
            call (its train/eval mode is restored). ``None`` with ``features``: a plain function
            on the images' device.
        images: uint8 in [0, 255] (scaled to [0, 1]) or float (taken as they are).
        normalize: Per-channel ``mean``/``std`` applied before the network (not with
            ``augment``, which normalises as in training).
        batch_size: Images per forward pass.
        where: ``model.features(x, where=where)`` (an SSL method): ``backbone`` or
            ``projector``; ignored with ``features``.
        precision: ``bf16`` autocast or ``fp32``.
        desc: tqdm label.
        features: ``features(x) -> (B, ...)`` instead of ``model.features``; outputs are
            flattened to ``(B, D)``.
        augment: ``augment(batch, generator=generator)`` makes one view of each image first
            (a :class:`~labelfree.views.ViewAugmentation`).
        generator: The CPU generator of ``augment``'s draws.

    Returns:
        A float32 (N, D) tensor on the model's device (the images' without parameters).
    """
    device = _device_of(model, images)
    if features is None:
        features = functools.partial(model.features, where=where)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    chunks = []
    try:
        for start in tqdm(
            range(0, len(images), batch_size),
            desc=desc,
            leave=False,
            disable=len(images) <= batch_size,
        ):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            if augment is not None:
                x = augment(batch, generator=generator)
            else:
                x = _model_input(batch, normalize)
            with _autocast(device, precision):
                chunks.append(features(x).float().flatten(start_dim=1))
    finally:
        if model is not None:
            model.train(was_training)
    return torch.cat(chunks)


def lidar_images(n_available: int, metrics_cfg: Mapping, *, seed: int) -> tuple[Tensor, int] | None:
    """LiDAR's fixed images and views per image, when ``lidar`` is in ``metrics.compute``.

    ``metrics.lidar.n_images`` indices of the ``n_available`` evaluation images, drawn with
    ``seed`` (so every evaluation of a run, and every run of a seed, uses the same images), in
    ascending order, and ``metrics.lidar.n_views``.

    Returns:
        ``(indices, n_views)``, or ``None`` when LiDAR is not requested.

    Raises:
        ValueError: ``metrics.lidar.n_images`` larger than ``n_available``, or a bad value.

    Examples:
        >>> cfg = {"compute": ["lidar"], "lidar": {"n_images": 3, "n_views": 2}}
        >>> idx, q = lidar_images(10, cfg, seed=0)
        >>> len(idx), q, lidar_images(10, {"compute": ["rankme"]}, seed=0)
        (3, 2, None)
    """
    if "lidar" not in list(metrics_cfg.get("compute") or ()):
        return None
    n_images, n_views = input_options(metrics_cfg, "lidar")
    if n_images > n_available:
        raise ValueError(
            f"metrics.lidar.n_images={n_images} is larger than the {n_available} evaluation "
            f"images: set metrics.lidar.n_images<={n_available}."
        )
    order = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
    return order[:n_images].sort().values, n_views


def embed_views(
    model: torch.nn.Module | None,
    images: Tensor,
    augment: Callable[..., Tensor],
    *,
    n_views: int,
    seed: int,
    batch_size: int = 1024,
    where: str = "backbone",
    precision: str = "fp32",
    features: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``(n, n_views, D)`` features of ``n_views`` augmented views of each of ``n`` images.

    All draws come from one generator seeded with ``seed``: the same seed gives the same views.
    Other arguments as in :func:`embed`.
    """
    generator = torch.Generator().manual_seed(seed)
    views = [
        embed(
            model,
            images,
            normalize=None,
            batch_size=batch_size,
            where=where,
            precision=precision,
            desc="embed views",
            features=features,
            augment=augment,
            generator=generator,
        )
        for _ in range(n_views)
    ]
    return torch.stack(views, dim=1)


class Evaluator:
    """Embeds the evaluation splits and computes the metrics suite for one checkpoint.

    Args:
        dataset: the loaded dataset; metrics are computed on ``dataset.test``.
        metrics_cfg: the ``metrics`` config node.
        normalize: per-channel mean/std applied to images before the backbone.
        device: where embeddings and metrics are computed.
        embedding: ``backbone`` (default, DESIGN.md) or ``projector``.
        batch_size: images per forward pass.
        train_per_class: labelled train images per class used by probe/kNN (None: all).
        precision: ``bf16`` or ``fp32`` forward passes.
        seed: base seed; the metrics of epoch e use ``seed + e`` so every evaluation is
            reproducible. LiDAR's images and views are drawn from ``seed`` alone: the same at
            every evaluation.
        augment: one view's augmentation (a :class:`~labelfree.views.ViewAugmentation`), for
            LiDAR's views when ``lidar`` is in ``metrics.compute``; without it LiDAR is skipped.

    Raises:
        ValueError: ``metrics.lidar.n_images`` larger than the test split.
    """

    def __init__(
        self,
        dataset: Dataset,
        metrics_cfg: Mapping,
        *,
        normalize: Mapping | None,
        device: torch.device,
        embedding: str = "backbone",
        batch_size: int = 1024,
        train_per_class: int | None = None,
        precision: str = "fp32",
        seed: int = 0,
        augment: Callable[..., Tensor] | None = None,
    ):
        self.metrics_cfg, self.normalize = metrics_cfg, normalize
        self.embedding, self.batch_size, self.precision, self.seed = (
            embedding,
            batch_size,
            precision,
            seed,
        )
        idx = balanced_subset(dataset.train.labels.numpy(), train_per_class, seed=seed)
        probe_train = Split(dataset.train.images[idx], dataset.train.labels[idx])
        self.splits = {
            name: Split(split.images.to(device), split.labels.to(device))
            for name, split in (("test", dataset.test), ("train", probe_train))
        }
        self.augment, self.view_images, self.n_views = augment, None, 0
        plan = lidar_images(len(dataset.test), metrics_cfg, seed=seed)
        if plan is not None and augment is not None:
            self.view_images, self.n_views = dataset.test.images[plan[0]].to(device), plan[1]

    def embeddings(self, model: torch.nn.Module) -> dict[str, Tensor]:
        """Embeddings of both splits (and ``views``, LiDAR's), on the evaluation device."""
        out = {}
        for name, split in self.splits.items():
            z = embed(
                model,
                split.images,
                normalize=self.normalize,
                batch_size=self.batch_size,
                where=self.embedding,
                precision=self.precision,
                desc=f"embed {name}",
            )
            out[name] = z
        if self.view_images is not None:
            out["views"] = embed_views(
                model,
                self.view_images,
                self.augment,
                n_views=self.n_views,
                seed=self.seed,
                batch_size=self.batch_size,
                where=self.embedding,
                precision=self.precision,
            )
        return out

    def __call__(self, model: torch.nn.Module, *, epoch: int) -> dict[str, float]:
        """Metric values for the model's current weights (keys as in DESIGN.md)."""
        z = self.embeddings(model)
        return compute_metrics(
            z["test"],
            config=self.metrics_cfg,
            labels=self.splits["test"].labels,
            train_embeddings=z["train"],
            train_labels=self.splits["train"].labels,
            views=z.get("views"),
            seed=self.seed + epoch,
        )


def summary_line(record: Mapping) -> str:
    """One line with the headline values of a record, for the log."""
    parts = [f"epoch {record['epoch']}"]
    for key in SUMMARY_KEYS:
        value = record.get(key)
        if value is not None:
            parts.append(f"{key.split('/')[-1]}={value:.4g}")
    parts.append(f"eval {record.get('eval_s', 0):.1f}s")
    return " | ".join(parts)


def timed_record(
    evaluator: Evaluator,
    model: torch.nn.Module,
    *,
    epoch: int,
    step: int,
    wall_s: float,
    loss: float | None,
) -> dict:
    """The full record of one evaluation (:func:`labelfree.records.make_record`)."""
    start = time.perf_counter()
    metrics = evaluator(model, epoch=epoch)
    eval_s = time.perf_counter() - start
    return make_record(
        epoch=epoch, step=step, wall_s=wall_s, eval_s=eval_s, loss=loss, metrics=metrics
    )
