"""Per-sample random parameters of a batch of views, drawn on the CPU from one generator.

:func:`sample_params` draws, independently for every sample, what lightly's per-image transforms
draw on each call: the crop box, flips, rotation, colour-jitter factors and their order,
grayscale, blur sigma and solarization. Everything is drawn on the CPU from one
``torch.Generator``, so a seed gives the same views on every device and the device never waits
for the host. The order of the draws is fixed: changing it changes every view of a seeded run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labelfree.views.options import ViewOptions

__all__ = ["JITTER_OPS", "jitter_ranges", "sample_params"]

# torchvision's RandomResizedCrop defaults, used by every lightly view transform.
_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_ATTEMPTS = 10
# Index of each colour-jitter operation in ``params["jitter_order"]`` (torchvision's fn_idx).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def jitter_ranges(options: ViewOptions) -> dict[str, tuple[float, float]]:
    """Colour-jitter factor ranges, as torchvision's ``ColorJitter._check_input``."""
    s = options.cj_strength
    b, c, sat = (s * v for v in (options.cj_bright, options.cj_contrast, options.cj_sat))
    return {
        "brightness": (max(0.0, 1.0 - b), 1.0 + b),
        "contrast": (max(0.0, 1.0 - c), 1.0 + c),
        "saturation": (max(0.0, 1.0 - sat), 1.0 + sat),
        "hue": (-s * options.cj_hue, s * options.cj_hue),
    }


def sample_params(
    options: ViewOptions,
    batch_size: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Draw every random parameter of a batch, on the CPU, independently per sample.

    Args:
        options: The view's options (probabilities and ranges).
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

    def coin(p: float) -> Tensor:
        return torch.rand(n, generator=g) < p

    params = _crop_box(options, n, height, width, g)

    params["hflip"] = coin(options.hf_prob)
    params["vflip"] = coin(options.vf_prob)
    params["rotate"] = coin(options.rr_prob)
    if options.rr_degrees is None:
        angle = torch.full((n,), 90.0)
    elif isinstance(options.rr_degrees, float):
        angle = _uniform(g, -options.rr_degrees, options.rr_degrees, n)
    else:
        angle = _uniform(g, *options.rr_degrees, n)
    params["angle"] = torch.where(params["rotate"], angle, 0.0)

    jitter = coin(options.cj_prob)
    params["jitter"] = jitter
    params["jitter_order"] = torch.rand(n, 4, generator=g).argsort(dim=1)
    for name, (lo, hi) in jitter_ranges(options).items():
        neutral = 0.0 if name == "hue" else 1.0
        params[name] = torch.where(jitter, _uniform(g, lo, hi, n), neutral)

    params["grayscale"] = coin(options.random_gray_scale)
    params["blur"] = coin(options.gaussian_blur)
    params["sigma"] = torch.where(params["blur"], _uniform(g, *options.sigmas, n), 0.0)
    params["solarize"] = coin(options.solarization_prob)
    return params


def _uniform(
    g: torch.Generator | None, lo: float, hi: float, *shape: int, dtype=torch.float32
) -> Tensor:
    """``shape`` draws from U(lo, hi): one ``torch.rand`` call on ``g``, scaled and shifted."""
    return torch.rand(*shape, generator=g, dtype=dtype) * (hi - lo) + lo


def _crop_box(
    options: ViewOptions, n: int, height: int, width: int, g: torch.Generator | None
) -> dict[str, Tensor]:
    """``crop`` and ``scale`` of :func:`sample_params`: the first draws from the generator.

    torchvision's ``RandomResizedCrop.get_params`` for every sample at once: all 10 attempts are
    drawn, the first valid one is kept, else the central crop.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    f64 = torch.float64
    target_area = area * _uniform(
        g, options.min_scale, options.max_scale, n, _CROP_ATTEMPTS, dtype=f64
    )
    aspect = torch.exp(_uniform(g, log_lo, log_hi, n, _CROP_ATTEMPTS, dtype=f64))
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
    return {"crop": torch.stack([top, left, h, w], dim=1), "scale": (h * w).double() / area}
