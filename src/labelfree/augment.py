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

Every random parameter is drawn on the CPU from a ``torch.Generator`` (:meth:`sample_params`),
turned into per-sample coefficients on the CPU and moved to the images' device in one copy, so a
seed gives the same views on every device and the device never waits for the host.
:func:`lightly_view_transform` maps the same keyword arguments onto lightly's per-image transform:
it is the reference the tests compare against.

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

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["GraphedViewAugmentation", "ViewAugmentation", "build_views", "lightly_view_transform"]

# torchvision's RandomResizedCrop defaults, used by every lightly view transform.
_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_ATTEMPTS = 10
# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale and PIL's convert("L").
_LUMA = (0.2989, 0.587, 0.114)
# Index of each colour-jitter operation in ``params["jitter_order"]`` (torchvision's fn_idx).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
# Pixels at or above this value (in [0, 1]) are inverted by solarization. PIL inverts uint8 values
# >= 128; a continuous value rounds to >= 128 exactly when it is >= 127.5 / 255 = 0.5.
SOLARIZE_THRESHOLD = 0.5
# PIL's GaussianBlur runs this many box blurs per axis.
_BLUR_PASSES = 3


class ViewAugmentation(torch.nn.Module):
    """One view's augmentation pipeline, batched, with per-sample random parameters.

    Reproduces, statistically, lightly's per-image view transforms (``BYOLView1Transform`` /
    ``SimCLRViewTransform``) for a whole batch in one call. The keyword arguments keep lightly's
    names and meaning; defaults are those of lightly's ``SimCLRTransform`` (Chen et al. 2020,
    arXiv:2002.05709) except ``solarization_prob=0`` and ``normalize=None``. Per sample, in
    lightly's order:

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
        input_size: Output height and width in pixels.
        cj_prob: Probability that colour jitter is applied.
        cj_strength: Multiplier of ``cj_bright``, ``cj_contrast``, ``cj_sat`` and ``cj_hue``.
        cj_bright: Brightness jitter; factor ~ U(max(0, 1 - s), 1 + s) with s = strength * this.
        cj_contrast: Contrast jitter, as brightness.
        cj_sat: Saturation jitter, as brightness.
        cj_hue: Hue jitter; shift ~ U(-s, s) with s = strength * this, at most 0.5.
        min_scale: Smallest crop area as a fraction of the image area.
        max_scale: Largest crop area fraction (lightly fixes it at 1.0).
        random_gray_scale: Probability of conversion to grayscale.
        gaussian_blur: Probability of Gaussian blur.
        sigmas: ``(min, max)`` of the blur's standard deviation in pixels.
        solarization_prob: Probability of solarization.
        vf_prob: Probability of a vertical flip.
        hf_prob: Probability of a horizontal flip.
        rr_prob: Probability of a rotation.
        rr_degrees: None for quarter turns; a number ``d`` for angles in [-d, d]; or a
            ``(min, max)`` pair, in degrees counter-clockwise.
        normalize: ``{"mean": [...], "std": [...]}`` with one value per channel, or None.

    Raises:
        ValueError: A probability outside [0, 1], a non-positive size, scale or sigma, a hue
            jitter above 0.5, or a malformed ``normalize``.

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

    def __init__(
        self,
        *,
        input_size: int,
        cj_prob: float = 0.8,
        cj_strength: float = 1.0,
        cj_bright: float = 0.8,
        cj_contrast: float = 0.8,
        cj_sat: float = 0.8,
        cj_hue: float = 0.2,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        random_gray_scale: float = 0.2,
        gaussian_blur: float = 0.5,
        sigmas: Sequence[float] = (0.1, 2.0),
        solarization_prob: float = 0.0,
        vf_prob: float = 0.0,
        hf_prob: float = 0.5,
        rr_prob: float = 0.0,
        rr_degrees: float | Sequence[float] | None = None,
        normalize: Mapping[str, Sequence[float]] | None = None,
    ):
        super().__init__()
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size={input_size!r} must be a positive integer (pixels).")
        for name, p in [
            ("cj_prob", cj_prob),
            ("random_gray_scale", random_gray_scale),
            ("gaussian_blur", gaussian_blur),
            ("solarization_prob", solarization_prob),
            ("vf_prob", vf_prob),
            ("hf_prob", hf_prob),
            ("rr_prob", rr_prob),
        ]:
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name}={p!r} is a probability; use a value in [0, 1].")
        for name, v in [
            ("cj_strength", cj_strength),
            ("cj_bright", cj_bright),
            ("cj_contrast", cj_contrast),
            ("cj_sat", cj_sat),
            ("cj_hue", cj_hue),
        ]:
            if float(v) < 0:
                raise ValueError(f"{name}={v!r} must be non-negative.")
        if cj_strength * cj_hue > 0.5:
            raise ValueError(
                f"cj_strength * cj_hue = {cj_strength * cj_hue!r} exceeds 0.5, the largest hue "
                "shift; lower cj_hue or cj_strength."
            )
        if not 0.0 < float(min_scale) <= float(max_scale):
            raise ValueError(
                f"min_scale={min_scale!r}, max_scale={max_scale!r}: need "
                "0 < min_scale <= max_scale (crop area fractions, e.g. min_scale=0.08, "
                "max_scale=1.0)."
            )
        sigmas = tuple(float(s) for s in sigmas)
        if len(sigmas) != 2 or not 0.0 < sigmas[0] <= sigmas[1]:
            raise ValueError(f"sigmas={sigmas!r} must be a pair 0 < min <= max, e.g. (0.1, 2.0).")
        if rr_degrees is not None:
            if isinstance(rr_degrees, int | float):
                if rr_degrees < 0:
                    raise ValueError(f"rr_degrees={rr_degrees!r} must be non-negative as a number.")
                rr_degrees = float(rr_degrees)
            else:
                rr_degrees = tuple(float(d) for d in rr_degrees)
                if len(rr_degrees) != 2 or rr_degrees[0] > rr_degrees[1]:
                    raise ValueError(
                        f"rr_degrees={rr_degrees!r} must be None, a number or a (min, max) pair."
                    )
        if normalize is not None:
            if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
                raise ValueError(
                    f"normalize={normalize!r} must be None or a mapping with keys 'mean' and "
                    "'std', e.g. {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}."
                )
            normalize = {k: [float(v) for v in normalize[k]] for k in ("mean", "std")}
            if len(normalize["mean"]) != len(normalize["std"]) or min(normalize["std"]) <= 0:
                raise ValueError(
                    f"normalize={normalize!r}: 'mean' and 'std' need the same length and std > 0."
                )

        self.input_size = input_size
        self.cj_prob = float(cj_prob)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.random_gray_scale = float(random_gray_scale)
        self.gaussian_blur = float(gaussian_blur)
        self.sigmas = sigmas
        self.solarization_prob = float(solarization_prob)
        self.vf_prob, self.hf_prob = float(vf_prob), float(hf_prob)
        self.rr_prob, self.rr_degrees = float(rr_prob), rr_degrees
        self.normalize = normalize
        self._normalize_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}
        # Colour-jitter factor ranges, as torchvision's ColorJitter._check_input.
        b, c, s = (cj_strength * v for v in (cj_bright, cj_contrast, cj_sat))
        self._jitter_ranges = {
            "brightness": (max(0.0, 1.0 - b), 1.0 + b),
            "contrast": (max(0.0, 1.0 - c), 1.0 + c),
            "saturation": (max(0.0, 1.0 - s), 1.0 + s),
            "hue": (-cj_strength * cj_hue, cj_strength * cj_hue),
        }
        # Half-width of the box kernels: covers the largest sigma, so kernels stack across samples.
        self._box_support = int(_box_radius(torch.tensor(sigmas[1], dtype=torch.float64))) + 1
        # The resolved keyword arguments: ``lightly_view_transform(**aug.config)`` gives the
        # per-image reference of this pipeline.
        self.config: dict[str, Any] = {
            "input_size": input_size,
            "cj_prob": float(cj_prob),
            "cj_strength": float(cj_strength),
            "cj_bright": float(cj_bright),
            "cj_contrast": float(cj_contrast),
            "cj_sat": float(cj_sat),
            "cj_hue": float(cj_hue),
            "min_scale": self.min_scale,
            "max_scale": self.max_scale,
            "random_gray_scale": self.random_gray_scale,
            "gaussian_blur": self.gaussian_blur,
            "sigmas": sigmas,
            "solarization_prob": self.solarization_prob,
            "vf_prob": self.vf_prob,
            "hf_prob": self.hf_prob,
            "rr_prob": self.rr_prob,
            "rr_degrees": rr_degrees,
            "normalize": normalize,
        }

    def extra_repr(self) -> str:
        """The resolved options, shown by ``repr``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    # ------------------------------------------------------------------ random parameters

    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Draw every random parameter of a batch, on the CPU, independently per sample.

        Args:
            batch_size: Number of images B.
            height: Input image height H in pixels.
            width: Input image width W in pixels.
            generator: CPU generator to draw from; None uses torch's global generator.

        Returns:
            CPU tensors of length B:
            ``crop`` (B, 4) int64 ``(top, left, height, width)`` of the crop box in input pixels;
            ``scale`` float64 crop area / image area; ``hflip``, ``vflip``, ``rotate``, ``jitter``,
            ``grayscale``, ``blur``, ``solarize`` bool; ``angle`` float32 degrees
            counter-clockwise (0 where not rotated); ``jitter_order`` (B, 4) int64, a permutation
            of the indices of :data:`JITTER_OPS`; ``brightness``, ``contrast``, ``saturation``
            float32 factors and ``hue`` float32 shift (neutral 1, 1, 1, 0 where not jittered);
            ``sigma`` float32 blur standard deviation in pixels (0 where not blurred).

        Raises:
            ValueError: A non-positive batch size, height or width, or a non-CPU generator.
        """
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"generator on {generator.device}: use a CPU torch.Generator; parameters are "
                "drawn on the CPU and moved to the images' device."
            )
        if batch_size < 1 or height < 1 or width < 1:
            raise ValueError(
                f"batch_size={batch_size}, height={height}, width={width}: all must be positive."
            )
        g = generator
        n = batch_size

        def uniform(lo: float, hi: float, *shape: int, dtype=torch.float32) -> Tensor:
            return torch.rand(*shape, generator=g, dtype=dtype) * (hi - lo) + lo

        def coin(p: float) -> Tensor:
            return torch.rand(n, generator=g) < p

        params: dict[str, Tensor] = {}

        # Random resized crop, torchvision's RandomResizedCrop.get_params for every sample at once:
        # all 10 attempts are drawn, the first valid one is kept, else the central crop.
        area = float(height * width)
        log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
        target_area = area * uniform(
            self.min_scale, self.max_scale, n, _CROP_ATTEMPTS, dtype=torch.float64
        )
        aspect = torch.exp(uniform(log_lo, log_hi, n, _CROP_ATTEMPTS, dtype=torch.float64))
        w = torch.round(torch.sqrt(target_area * aspect)).long()
        h = torch.round(torch.sqrt(target_area / aspect)).long()
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = valid.int().argmax(dim=1, keepdim=True)
        found = valid.any(dim=1)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        in_ratio = width / height
        if in_ratio < _RATIO[0]:
            fb_w, fb_h = width, int(round(width / _RATIO[0]))
        elif in_ratio > _RATIO[1]:
            fb_w, fb_h = int(round(height * _RATIO[1])), height
        else:
            fb_w, fb_h = width, height
        w = torch.where(found, w, fb_w)
        h = torch.where(found, h, fb_h)
        # torch.randint(0, H - h + 1) per sample: floor(U * (H - h + 1)).
        top = (torch.rand(n, generator=g, dtype=torch.float64) * (height - h + 1)).long()
        left = (torch.rand(n, generator=g, dtype=torch.float64) * (width - w + 1)).long()
        top = torch.where(found, top, (height - h) // 2)
        left = torch.where(found, left, (width - w) // 2)
        params["crop"] = torch.stack([top, left, h, w], dim=1)
        params["scale"] = (h * w).double() / area

        params["hflip"] = coin(self.hf_prob)
        params["vflip"] = coin(self.vf_prob)
        params["rotate"] = coin(self.rr_prob)
        if self.rr_degrees is None:
            angle = torch.full((n,), 90.0)
        elif isinstance(self.rr_degrees, float):
            angle = uniform(-self.rr_degrees, self.rr_degrees, n)
        else:
            angle = uniform(*self.rr_degrees, n)
        params["angle"] = torch.where(params["rotate"], angle, 0.0)

        jitter = coin(self.cj_prob)
        params["jitter"] = jitter
        params["jitter_order"] = torch.rand(n, 4, generator=g).argsort(dim=1)
        for name, (lo, hi) in self._jitter_ranges.items():
            neutral = 0.0 if name == "hue" else 1.0
            params[name] = torch.where(jitter, uniform(lo, hi, n), neutral)

        params["grayscale"] = coin(self.random_gray_scale)
        params["blur"] = coin(self.gaussian_blur)
        params["sigma"] = torch.where(params["blur"], uniform(*self.sigmas, n), 0.0)
        params["solarize"] = coin(self.solarization_prob)
        return params

    # ------------------------------------------------------------------ application

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
                draws: what :class:`GraphedViewAugmentation` captures.

        Returns:
            float32 (B, C, input_size, input_size) on the images' device.

        Raises:
            ValueError: As :meth:`forward`.
        """
        self._check_images(images)
        b, c, height, width = images.shape
        plan = self._plan(params, c, height, width, dense=dense)
        table = _to_device(plan["table"], images.device)
        rows = _to_device(plan["rows"], images.device)
        return self._execute(images, table, rows, plan)

    def _execute(
        self, images: Tensor, table: Tensor, rows: Tensor, plan: Mapping[str, Any]
    ) -> Tensor:
        """The device work of :meth:`apply`; ``table`` and ``rows``: the plan's, on the device."""
        b, c = images.shape[:2]
        device = images.device
        cols = plan["columns"]
        rows = dict(zip(plan["row_names"], rows.split(plan["row_counts"]), strict=True))

        def col(name: str) -> Tensor:
            lo, hi = cols[name]
            return table[:, lo:hi]

        # uint8 -> [0, 1] (a fresh tensor, so in place is safe); float input is never modified.
        x = images.float().mul_(1.0 / 255.0) if images.dtype == torch.uint8 else images.float()
        x = self._geometry(x, col("theta").view(b, 2, 3), col("clamp"), col("turn"), plan)
        if plan["jitter"]:
            x = self._color_jitter(x, col, rows)
        if c == 3 and plan["grayscale"]:
            x = torch.where(col("grayscale").view(b, 1, 1, 1) > 0, _grayscale(x), x)
        if plan["blur"]:
            blurred = rows["blur"]
            x[blurred] = self._blur(x[blurred], col("kernel")[blurred])
        if plan["solarize"]:
            mask = (col("solarize").view(b, 1, 1, 1) > 0) & (x >= SOLARIZE_THRESHOLD)
            x = torch.where(mask, 1.0 - x, x)
        if self.normalize is not None:
            scale, shift = self._normalize_on(device)
            x = torch.addcmul(shift, x, scale)  # (x - mean) / std
        return x

    def _plan(
        self,
        params: Mapping[str, Tensor],
        channels: int,
        height: int,
        width: int,
        *,
        dense: bool = False,
    ) -> dict[str, Any]:
        """Per-sample coefficients of every operation, computed on the CPU in float64.

        Returns a dict with ``table`` (B, K) float32 and ``columns`` (name -> column slice);
        ``rows``, one int64 tensor of the concatenated sample indices of the hue subsets (one
        per jitter position) and the blurred subset, with ``row_names`` and ``row_counts``; and
        booleans saying which operations run. With ``dense`` every subset is the whole batch
        and the booleans come from the configuration, not from the draws (see :meth:`apply`).
        """
        p = {k: v.detach().cpu() for k, v in params.items()}
        b = p["crop"].shape[0]
        f64 = torch.float64
        parts: dict[str, Tensor] = {}

        # Geometry: the output pixel at normalized u reads the resized crop at v = D R u
        # (R: inverse of the counter-clockwise rotation, D: flips), which is the input point
        # x_n = (w / W) v_x + (2 left + w) / W - 1 (likewise y); bilinear reads are clamped to
        # the centres of the crop box's border pixels.
        theta = torch.deg2rad(p["angle"].to(f64))
        cos, sin = torch.cos(theta), torch.sin(theta)
        quarter = p["angle"].to(f64) % 90 == 0  # exact multiples of 90 degrees: exact entries
        cos = torch.where(quarter, cos.round(), cos)
        sin = torch.where(quarter, sin.round(), sin)
        sx = 1.0 - 2.0 * p["hflip"].to(f64)
        sy = 1.0 - 2.0 * p["vflip"].to(f64)
        turn = torch.stack([sx * cos, -sx * sin, sy * sin, sy * cos], dim=1)  # D R, row-major
        top, left, crop_h, crop_w = p["crop"].to(f64).unbind(dim=1)
        ax, ay = crop_w / width, crop_h / height
        parts["theta"] = torch.stack(
            [
                ax * turn[:, 0],
                ax * turn[:, 1],
                (2 * left + crop_w) / width - 1,
                ay * turn[:, 2],
                ay * turn[:, 3],
                (2 * top + crop_h) / height - 1,
            ],
            dim=1,
        )
        parts["clamp"] = torch.stack(
            [
                (2 * left + 1) / width - 1,
                (2 * top + 1) / height - 1,
                (2 * (left + crop_w - 1) + 1) / width - 1,
                (2 * (top + crop_h - 1) + 1) / height - 1,
            ],
            dim=1,
        )
        parts["turn"] = turn

        # Colour jitter: at position k every sample runs one blend clamp(f x + (1 - f) ref)
        # with ref = 0 (brightness), mean(gray) (contrast) or gray (saturation); f = 1 where
        # the operation at k is hue (applied to that position's hue rows) or jitter is off.
        jitter = p["jitter"]
        order = p["jitter_order"]
        factors = torch.stack(
            [p["brightness"], p["contrast"], p["saturation"], torch.ones(b)], dim=1
        ).to(f64)
        if channels == 1:  # PIL "L" images: saturation and hue leave them unchanged
            factors[:, 2] = 1.0
        factors[~jitter] = 1.0
        parts["factor"] = factors.gather(1, order)
        parts["is_contrast"] = (order == 1).to(f64)
        parts["is_saturation"] = (order == 2).to(f64)
        hue_on = jitter & (p["hue"] != 0) if channels == 3 else torch.zeros(b, dtype=torch.bool)
        hue_at = [hue_on & (order[:, k] == 3) for k in range(4)]  # hue is jitter op k
        parts["hue"] = torch.stack([torch.where(m, p["hue"].to(f64), 0.0) for m in hue_at], dim=1)
        row_names = [f"hue{k}" for k in range(4)] + ["blur"]
        row_list = [m.nonzero().squeeze(1) for m in hue_at]

        parts["grayscale"] = p["grayscale"].to(f64).unsqueeze(1)
        parts["solarize"] = p["solarize"].to(f64).unsqueeze(1)
        # Blur: PIL's box kernel per sample (zeros where not blurred).
        blur = p["blur"]
        row_list.append(blur.nonzero().squeeze(1))
        r = self._box_support
        kernel = torch.zeros(b, 2 * r + 1, dtype=f64)
        kernel[:, r] = 1.0  # unit kernel: blurring leaves the sample unchanged
        if blur.any():
            radius = _box_radius(p["sigma"][blur].to(f64))
            whole = radius.floor().unsqueeze(1)
            t = torch.arange(-r, r + 1, dtype=f64).abs().unsqueeze(0)
            box = (t <= whole).to(f64) + (t == whole + 1).to(f64) * (radius.unsqueeze(1) - whole)
            kernel[blur] = box / (2 * radius + 1).unsqueeze(1)
        parts["kernel"] = kernel

        columns, start = {}, 0
        for name, part in parts.items():
            columns[name] = (start, start + part.shape[1])
            start += part.shape[1]
        if dense:  # every operation the configuration allows, on every sample
            hue_rows = torch.arange(b) if channels == 3 else torch.zeros(0, dtype=torch.long)
            row_list = [hue_rows] * 4 + [torch.arange(b)]
            runs = {
                "rotate_free": self.rr_prob > 0 and self.rr_degrees is not None,
                "jitter": self.cj_prob > 0,
                "grayscale": self.random_gray_scale > 0,
                "blur": self.gaussian_blur > 0,
                "solarize": self.solarization_prob > 0,
            }
        else:
            runs = {
                "rotate_free": bool((~quarter).any()),  # angle is 0 where not rotated
                "jitter": bool(jitter.any()),
                "grayscale": bool(p["grayscale"].any()),
                "blur": bool(blur.any()),
                "solarize": bool(p["solarize"].any()),
            }
        return {
            "table": torch.cat(list(parts.values()), dim=1).to(torch.float32),
            "columns": columns,
            "rows": torch.cat(row_list),
            "row_names": row_names,
            "row_counts": [len(r) for r in row_list],
            **runs,
        }

    def _normalize_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(1 / std, -mean / std) as (1, C, 1, 1) tensors on ``device``, cached."""
        if device not in self._normalize_cache:
            mean = torch.tensor(self.normalize["mean"], dtype=torch.float64)
            std = torch.tensor(self.normalize["std"], dtype=torch.float64)
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
        if self.normalize is not None and len(self.normalize["mean"]) != images.shape[1]:
            raise ValueError(
                f"normalize has {len(self.normalize['mean'])} channel(s) but the images have "
                f"{images.shape[1]}; give one mean and std per channel."
            )

    def _geometry(
        self, x: Tensor, theta: Tensor, clamp: Tensor, turn: Tensor, plan: Mapping[str, Any]
    ) -> Tensor:
        """Crop, resize, flip and rotate in one bilinear resample (see :meth:`_plan`).

        Output O = Rotate(Flip(ResizedCrop(I))). ``theta`` (B, 2, 3) maps output pixel centres
        to input coordinates (``F.affine_grid``, align_corners=False); reads are clamped to the
        crop box (``clamp``: x_lo, y_lo, x_hi, y_hi) so that the crop's border pixels are
        replicated, as resizing the cropped image does. Under a rotation by a free angle, the
        points whose pre-rotation position v = ``turn`` u falls outside [-1, 1]^2 are the
        rotated-in corners and are filled with 0, as torchvision's ``RandomRotation(fill=0)``.
        """
        b, c = x.shape[:2]
        size = (b, c, self.input_size, self.input_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        grid = torch.clamp(grid, min=clamp[:, None, None, :2], max=clamp[:, None, None, 2:])
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if plan["rotate_free"]:
            linear = F.pad(turn.view(b, 2, 2), (0, 1))  # no translation
            v = F.affine_grid(linear, size, align_corners=False)
            inside = (v.abs() <= 1 + 1e-6).all(dim=-1, keepdim=True).movedim(-1, 1)
            out = out * inside
        return out

    def _color_jitter(
        self, x: Tensor, col: Callable[[str], Tensor], rows: Mapping[str, Tensor]
    ) -> Tensor:
        """Colour jitter with per-sample factors and per-sample operation order.

        Brightness, contrast and saturation are all blends ``clamp(f x + (1 - f) ref)`` with
        ref = 0, mean(gray(x)) and gray(x) respectively, so at each of the four positions of the
        random order one blend serves every sample (f = 1 for samples whose operation at that
        position is hue, or which are not jittered). Hue runs on that position's hue rows only.
        """
        b, c = x.shape[:2]
        factor, is_con, is_sat = col("factor"), col("is_contrast"), col("is_saturation")
        hue = col("hue")
        for k in range(4):
            gray = _grayscale(x) if c == 3 else x
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            ref = torch.addcmul(
                is_con[:, k].view(b, 1, 1, 1) * mean, is_sat[:, k].view(b, 1, 1, 1), gray
            )
            x = torch.lerp(ref, x, factor[:, k].view(b, 1, 1, 1)).clamp_(0.0, 1.0)
            hue_rows = rows[f"hue{k}"]
            if hue_rows.numel():
                x[hue_rows] = _adjust_hue(x[hue_rows], hue[hue_rows, k])
        return x

    def _blur(self, x: Tensor, kernel: Tensor) -> Tensor:
        """PIL's ``GaussianBlur(radius=sigma)`` with one sigma per sample, edges replicated.

        PIL approximates a Gaussian of standard deviation sigma by three box blurs per axis
        (Pillow ``BoxBlur.c``): a box of fractional radius R (:func:`_box_radius`, chosen so
        that the three passes have variance sigma^2) weighs the 2 floor(R) + 1 central pixels
        1 / (2R + 1) and the two next ones (R - floor(R)) / (2R + 1). We run the same three
        passes along the width, then three along the height, as grouped convolutions with one
        kernel per sample, replicating edge pixels before each pass as PIL does.

        Args:
            x: (N, C, H, W).
            kernel: (N, 2 r + 1) box kernels, one per sample.
        """
        n, c, h, w = x.shape
        r = self._box_support
        kernel = kernel.unsqueeze(1).expand(n, c, -1).reshape(n * c, -1)  # one per channel
        y = x.reshape(1, n * c, h, w)
        for _ in range(_BLUR_PASSES):  # along the width
            y = F.conv2d(
                F.pad(y, (r, r, 0, 0), mode="replicate"), kernel.view(n * c, 1, 1, -1), groups=n * c
            )
        for _ in range(_BLUR_PASSES):  # along the height
            y = F.conv2d(
                F.pad(y, (0, 0, r, r), mode="replicate"), kernel.view(n * c, 1, -1, 1), groups=n * c
            )
        return y.view(n, c, h, w)


class GraphedViewAugmentation:
    """A :class:`ViewAugmentation` whose device work is replayed as one CUDA graph.

    On a GPU the batched views need little arithmetic but about 200 kernel launches per call, and
    the host time of those launches, not the kernels, bounds the speed (docs/benchmarks.md). A CUDA
    graph launches them all at once. The plan is made dense (``apply(..., dense=True)``) so that
    the kernels and their shapes do not depend on the draws; one graph is captured per input shape
    and dtype on first use, after a warm-up on a side stream. Inputs not on a GPU run eagerly; if
    capture fails, a warning names the error and the views run eagerly.

    Args:
        aug: The view's augmentation; its parameters are drawn exactly as for an eager call, so a
            seed gives the same views (up to float rounding) with or without graphs.
    """

    def __init__(self, aug: ViewAugmentation):
        self.aug = aug
        self._graphs: dict[tuple, dict[str, Any] | None] = {}

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Views of a batch, as :meth:`ViewAugmentation.forward`."""
        if images.device.type != "cuda":
            return self.aug(images, generator)
        self.aug._check_images(images)
        b, c, h, w = images.shape
        params = self.aug.sample_params(b, h, w, generator=generator)
        plan = self.aug._plan(params, c, h, w, dense=True)
        key = (tuple(images.shape), images.dtype, images.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images, plan)
        graph = self._graphs[key]
        if graph is None:  # capture failed (warned once)
            return self.aug.apply(images, params)
        graph["images"].copy_(images)
        graph["table"].copy_(plan["table"].pin_memory(), non_blocking=True)
        graph["graph"].replay()
        return graph["out"].clone()  # the next replay overwrites the static output

    def _capture(self, images: Tensor, plan: Mapping[str, Any]) -> dict[str, Any] | None:
        static = {
            "images": images.clone(),
            "table": _to_device(plan["table"], images.device),
            "rows": _to_device(plan["rows"], images.device),
        }
        run = (static["images"], static["table"], static["rows"], plan)
        try:
            side = torch.cuda.Stream(device=images.device)
            side.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(side):  # warm-up: cuDNN autotuning and allocations
                for _ in range(3):
                    self.aug._execute(*run)
            torch.cuda.current_stream(images.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.aug._execute(*run)
        except RuntimeError as err:
            log.warning(
                "CUDA-graph capture of the view augmentation failed (%s); running it eagerly. "
                "Set trainer.cuda_graphs=false to skip the attempt.",
                err,
            )
            return None
        return {**static, "graph": graph, "out": out}


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU tensor to ``device``; to a GPU from pinned memory, so the host never waits."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _box_radius(sigma: Tensor, passes: int = 3) -> Tensor:
    """Pillow's ``_gaussian_blur_radius``: box radius of ``passes`` boxes with variance sigma^2.

    Extended box filtering: Gwosdek et al. 2011, "Theoretical foundations of Gaussian convolution
    by extended box filtering".
    """
    sigma2 = sigma**2 / passes
    length = torch.sqrt(12.0 * sigma2 + 1.0)
    whole = torch.floor((length - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2)
    frac = frac / (6 * (sigma2 - (whole + 1) ** 2))
    return whole + frac


def _grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, torchvision's rgb_to_grayscale weights."""
    r, g, b = x.unbind(dim=1)  # cheaper than a 1x1 convolution on the CPU
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift the HSV hue of (N, 3, H, W) images in [0, 1] by ``shift`` (N,) turns.

    RGB -> HSV hue as torchvision's ``_rgb2hsv``, in sixths of a turn:
    ``h = (g - b) / C`` where max = r, ``2 + (b - r) / C`` where max = g, else
    ``4 + (r - g) / C``, with chroma C = max - min (h is irrelevant where C = 0). HSV -> RGB by the
    closed form ``c_n = V - V S clamp(min(k, 4 - k), 0, 1)``, ``k = (n + h') mod 6``,
    n = 5, 3, 1 for R, G, B, with V = max, V S = C and h' = h + 6 shift. Value and saturation
    are unchanged, as in torchvision's ``adjust_hue``.
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = chroma.clamp_min(1e-12).reciprocal_()  # where C = 0, r = g = b: numerators are 0
    # torchvision's precedence on ties: max = r first, then g, then b (in-place to save memory)
    hue = torch.where(maxc == g, (b - r).mul_(inv).add_(2.0), (r - g).mul_(inv).add_(4.0))
    hue = torch.where(maxc == r, (g - b).mul_(inv), hue)
    hue.add_((6.0 * shift).view(-1, 1, 1))
    # 5, 3, 1 made on the device: a host-to-device copy would break CUDA-graph capture
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (hue.unsqueeze(1) + n).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(chroma.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))  # V - C ramp


def _resolve_kwargs(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check keyword names against ViewAugmentation's and return them as a plain dict."""
    valid = [
        name
        for name, prm in inspect.signature(ViewAugmentation.__init__).parameters.items()
        if prm.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown augmentation option(s) {unknown} in {where}. Choose from: {', '.join(valid)}."
        )
    return dict(kwargs)


def lightly_view_transform(**kwargs: Any) -> Callable[[Any], Tensor]:
    """The per-image reference: the same keyword arguments on lightly's ``BYOLView1Transform``.

    ``BYOLView1Transform`` accepts every option of :class:`ViewAugmentation` (solarization
    included); unspecified options take :class:`ViewAugmentation`'s defaults, so
    ``lightly_view_transform(**kw)`` and ``ViewAugmentation(**kw)`` describe the same view.
    ``max_scale`` (absent from lightly) is set on the transform's ``RandomResizedCrop``.

    Args:
        **kwargs: :class:`ViewAugmentation` keyword arguments.

    Returns:
        A callable mapping a PIL image to a float32 (C, input_size, input_size) tensor. It draws
        from torch's and numpy's global generators (lightly's blur, solarization and quarter-turn
        rotation use ``np.random``).

    Raises:
        ValueError: An unknown option or an invalid value.

    Examples:
        >>> from PIL import Image
        >>> t = lightly_view_transform(input_size=8, normalize=None)
        >>> tuple(t(Image.new("RGB", (10, 10))).shape)
        (3, 8, 8)
    """
    from lightly.transforms.byol_transform import BYOLView1Transform

    config = ViewAugmentation(**_resolve_kwargs(kwargs, "lightly_view_transform")).config
    lightly_kwargs = {k: v for k, v in config.items() if k != "max_scale"}
    transform = BYOLView1Transform(**lightly_kwargs)
    crop = transform.transform.transforms[0]
    if type(crop).__name__ != "RandomResizedCrop":  # guard against a reordered lightly pipeline
        raise ValueError(
            f"lightly's BYOLView1Transform starts with {type(crop).__name__}, expected "
            "RandomResizedCrop; this lightly version is not supported by lightly_view_transform."
        )
    crop.scale = (config["min_scale"], config["max_scale"])
    return transform


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
    base = _resolve_kwargs(common, "build_views(common)")
    views = []
    for i, overrides in enumerate(per_view):
        kwargs = {**base, **_resolve_kwargs(overrides, f"build_views(per_view[{i}])")}
        views.append(ViewAugmentation(**kwargs))
    return views
