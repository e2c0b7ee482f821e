"""Batched SSL view augmentation on tensors, with independent random parameters per sample.

The usual SSL recipe applies lightly's per-image transforms (``SimCLRTransform``,
``BYOLView1Transform``, ...) to PIL images one at a time in DataLoader workers. On a GPU that data
path, not the network, bounds the training speed. :class:`ViewAugmentation` produces the same views,
statistically, in one batched call on a ``(B, C, H, W)`` tensor on any device:

1. random resized crop, horizontal / vertical flip and rotation fused into ONE per-sample sampling
   grid and one bilinear ``F.grid_sample`` (one resample instead of three);
2. colour jitter (brightness, contrast, saturation, hue) with per-sample factors and a per-sample
   random order of the four operations, as ``torchvision.transforms.ColorJitter`` does per call;
3. random grayscale, Gaussian blur with a per-sample sigma (PIL's three box passes per axis as
   grouped convolutions with per-sample kernels), solarization, then normalization.

A call is three steps, each in its own module: draw every random parameter on the CPU from a
``torch.Generator`` (:mod:`~labelfree.views.sampling`), turn them into a table of per-sample
coefficients on the CPU and copy it to the images' device (:mod:`~labelfree.views.plan`), then run
the device kernels (:mod:`~labelfree.views.kernels`). So a seed gives the same views on every
device and the device never waits for the host. :func:`~labelfree.views.lightly_view_transform` maps
the same options onto lightly's per-image transform: it is the reference the tests compare
against.

Deviations from the per-image reference (all small, documented where they happen):

- The reference works on uint8 PIL images and rounds to 8 bits after every operation; we keep
  float32 throughout. PIL's blends (brightness, contrast, saturation) truncate rather than round,
  about -0.4 grey levels each, so jittered reference views are about 0.005 darker on average.
  Per operation we match torchvision's tensor kernels (``adjust_*``, ``rgb_to_grayscale``,
  ``resized_crop``, ``rotate``) to 1e-5.
- Rotation by an arbitrary angle (``rr_degrees`` set) is resampled bilinearly as part of the fused
  grid; torchvision's ``RandomRotation`` uses nearest-neighbour on the already resized crop.
  Quarter turns (``rr_degrees=None``) are exact in both.
- A crop larger than ``input_size`` is downscaled without antialiasing (PIL antialiases). For
  32 px CIFAR-style crops resized to 32 px every resize is an upscale, where both agree.
- Gaussian blur reproduces PIL's ``GaussianBlur(radius=sigma)`` (three extended box blurs per
  axis, edge replication) without PIL's rounding to 8 bits after each pass.
- Contrast blends with the exact mean of the grayscale image; PIL rounds that mean to an integer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import labelfree.views.kernels as kernels
from labelfree.views.options import OPTION_NAMES, ViewOptions
from labelfree.views.plan import make_plan, plan_on_device
from labelfree.views.sampling import sample_params

__all__ = ["ViewAugmentation"]


class ViewAugmentation(torch.nn.Module):
    """One view's augmentation pipeline, batched, with per-sample random parameters.

    Reproduces, statistically, lightly's per-image view transforms (``BYOLView1Transform`` /
    ``SimCLRViewTransform``) for a whole batch in one call. The keyword arguments are the fields
    of :class:`~labelfree.views.ViewOptions` (lightly's names and meaning, lightly's
    ``SimCLRTransform`` defaults except ``solarization_prob=0`` and ``normalize=None``), and read
    back as attributes (``aug.hf_prob``). Per sample, in lightly's order:

    1. ``RandomResizedCrop(input_size, scale=(min_scale, max_scale), ratio=(3/4, 4/3))`` with
       torchvision's sampling (target area ~ U(scale), log-uniform aspect ratio, 10 attempts,
       central-crop fallback), bilinear resize;
    2. horizontal flip (``hf_prob``), vertical flip (``vf_prob``);
    3. rotation with probability ``rr_prob``: a quarter turn counter-clockwise when ``rr_degrees``
       is None (lightly's ``RandomRotate``), else an angle ~ U(-d, d) for a number ``d`` or
       U(a, b) for a pair, corners filled with 0 (torchvision's ``RandomRotation``); steps 1-3
       are one fused resample;
    4. with probability ``cj_prob``, ``ColorJitter(brightness=cj_strength * cj_bright,
       contrast=cj_strength * cj_contrast, saturation=cj_strength * cj_sat,
       hue=cj_strength * cj_hue)``, its four operations in a random order per sample
       (torchvision's formulas: brightness ``clamp(f x)``; contrast ``clamp(f x + (1 - f)
       mean(gray(x)))``; saturation ``clamp(f x + (1 - f) gray(x))``; hue: shift H in HSV);
       single-channel images get brightness and contrast only, as PIL ``L`` images do;
    5. grayscale with probability ``random_gray_scale`` (3-channel luma, ITU-R 601-2);
    6. Gaussian blur with probability ``gaussian_blur``, sigma ~ U(sigmas) pixels
       (lightly passes sigma to PIL's ``GaussianBlur(radius=sigma)``, whose radius is the
       standard deviation);
    7. solarization with probability ``solarization_prob``: ``x -> 1 - x`` where ``x >= 0.5``;
    8. ``(x - mean) / std`` per channel when ``normalize`` is given.

    See the module docstring for the small, documented deviations from the per-image reference.

    Args:
        **options: :class:`~labelfree.views.ViewOptions` fields; ``input_size`` is required.

    Raises:
        ValueError: An invalid option (see :class:`~labelfree.views.ViewOptions`).

    In a training loop, one call per view on the device, e.g. SimCLR on CIFAR-10 with
    lightly's CIFAR settings::

        views = build_views({"input_size": 32, "cj_strength": 0.5, "gaussian_blur": 0.0})
        x0, x1 = (view(images.to(device), generator) for view in views)

    Examples:
        >>> aug = ViewAugmentation(input_size=16, normalize=None)
        >>> images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
        >>> views = aug(images, generator=torch.Generator().manual_seed(0))
        >>> tuple(views.shape), views.dtype
        ((4, 3, 16, 16), torch.float32)
    """

    def __init__(self, **options: Any):
        super().__init__()
        self.options = ViewOptions(**options)
        self._normalize_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __getattr__(self, name: str) -> Any:
        """The options read as attributes: ``aug.hf_prob`` is ``aug.options.hf_prob``."""
        options = self.__dict__.get("options")
        if options is not None and name in OPTION_NAMES:
            return getattr(options, name)
        return super().__getattr__(name)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved options: ``lightly_view_transform(**aug.config)`` is the reference."""
        return self.options.as_kwargs()

    def extra_repr(self) -> str:
        """The resolved options, shown by ``repr``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Draw every random parameter of a batch: :func:`~labelfree.views.sample_params`."""
        return sample_params(self.options, batch_size, height, width, generator=generator)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch: one independent random view per image.

        Args:
            images: (B, C, H, W) uint8 in [0, 255] or float in [0, 1], any device, C in {1, 3}.
            generator: CPU generator for all random parameters (drawn on the CPU, then moved to
                the images' device), so a seed reproduces the views on any device. None uses
                torch's global generator.

        Returns:
            float32 (B, C, input_size, input_size) on the images' device; in [0, 1] unless
            ``normalize`` is set.

        Raises:
            ValueError: Images that are not 4-D with 1 or 3 channels, or a channel count that
                ``normalize`` does not match.
        """
        self._check_images(images)
        b, _, h, w = images.shape
        return self.apply(images, self.sample_params(b, h, w, generator=generator))

    def apply(self, images: Tensor, params: Mapping[str, Tensor], *, dense: bool = False) -> Tensor:
        """Augment a batch with given parameters (from :meth:`sample_params`, possibly edited).

        Everything per-sample (affine matrices, crop boxes, blend factors, blur kernels, masks)
        is derived on the CPU into one table and moved to the images' device in one copy, so
        the device only runs whole-batch kernels (about 60 to 170 of them, with no host sync).

        Args:
            images: (B, C, H, W) uint8 in [0, 255] or float in [0, 1], C in {1, 3}.
            params: Per-sample parameters as returned by :meth:`sample_params` for this batch.
            dense: Run every operation the configuration can apply on the whole batch, with
                identity parameters (hue shift 0, a unit blur kernel) for the samples that do
                not draw it, instead of on the drawn subsets. The same views up to float
                rounding, with a sequence of kernels and shapes that does not depend on the
                draws: what :class:`~labelfree.views.GraphedViewAugmentation` captures.

        Returns:
            float32 (B, C, input_size, input_size) on the images' device.

        Raises:
            ValueError: As :meth:`forward`.
        """
        self._check_images(images)
        b, c, height, width = images.shape
        plan = make_plan(self.options, params, c, height, width, dense=dense)
        table, rows = plan_on_device(plan, images.device)
        return self._execute(images, table, rows, plan)

    def _execute(
        self, images: Tensor, table: Tensor, rows: Tensor, plan: Mapping[str, Any]
    ) -> Tensor:
        """The device work of :meth:`apply`; ``table`` and ``rows``: the plan's, on the device."""
        b, c = images.shape[:2]
        cols = plan["columns"]
        rows = dict(zip(plan["row_names"], rows.split(plan["row_counts"]), strict=True))

        def col(name: str) -> Tensor:
            lo, hi = cols[name]
            return table[:, lo:hi]

        # uint8 -> [0, 1] (a fresh tensor, so in place is safe); float input is never modified.
        x = images.float().mul_(1.0 / 255.0) if images.dtype == torch.uint8 else images.float()
        x = kernels.geometry(
            x,
            col("theta").view(b, 2, 3),
            col("clamp"),
            col("turn"),
            size=self.options.input_size,
            rotate_free=plan["rotate_free"],
        )
        if plan["jitter"]:
            hue_rows = [rows[f"hue{k}"] for k in range(4)]
            x = kernels.color_jitter(
                x, col("factor"), col("is_contrast"), col("is_saturation"), col("hue"), hue_rows
            )
        if c == 3 and plan["grayscale"]:
            x = kernels.grayscale(x, col("grayscale"))
        if plan["blur"]:
            blurred = rows["blur"]
            x[blurred] = kernels.blur(x[blurred], col("kernel")[blurred])
        if plan["solarize"]:
            x = kernels.solarize(x, col("solarize"))
        if self.options.normalize is not None:
            x = kernels.normalize(x, *self._normalize_on(images.device))
        return x

    def _normalize_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(1 / std, -mean / std) as (1, C, 1, 1) tensors on ``device``, cached."""
        if device not in self._normalize_cache:
            normalize = self.options.normalize
            mean = torch.tensor(normalize["mean"], dtype=torch.float64)
            std = torch.tensor(normalize["std"], dtype=torch.float64)
            self._normalize_cache[device] = (
                (1 / std).float().view(1, -1, 1, 1).to(device),
                (-mean / std).float().view(1, -1, 1, 1).to(device),
            )
        return self._normalize_cache[device]

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"images of shape {shape}: expected a (B, C, H, W) tensor with C = 1 or 3."
            )
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise ValueError(
                f"images of dtype {images.dtype}: use uint8 in [0, 255] or float in [0, 1]."
            )
        normalize = self.options.normalize
        if normalize is not None and len(normalize["mean"]) != images.shape[1]:
            raise ValueError(
                f"normalize has {len(normalize['mean'])} channel(s) but the images have "
                f"{images.shape[1]}; give one mean and std per channel."
            )
