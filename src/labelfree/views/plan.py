"""From a batch's random parameters to the per-sample coefficients that the device kernels read.

:func:`make_plan` turns the draws of :func:`~labelfree.views.sample_params` into one float32
table (affine matrices, crop boxes, blend factors, blur kernels, masks; one row per sample),
computed on the CPU in float64, plus the index subsets that only some samples go through (hue,
blur) and flags saying which operations run at all. :func:`plan_on_device` moves the table and
the subsets to the images' device in two copies, so the device runs whole-batch kernels only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from labelfree.views.kernels import box_radius
from labelfree.views.options import ViewOptions

__all__ = ["box_support", "make_plan", "plan_on_device"]


def box_support(max_sigma: float) -> int:
    """Half-width of the box kernels: covers the largest sigma, so kernels stack across samples."""
    return int(box_radius(torch.tensor(max_sigma, dtype=torch.float64))) + 1


def make_plan(
    options: ViewOptions,
    params: Mapping[str, Tensor],
    channels: int,
    height: int,
    width: int,
    *,
    dense: bool = False,
) -> dict[str, Any]:
    """Per-sample coefficients of every operation, computed on the CPU in float64.

    Args:
        options: The view's options.
        params: The batch's draws, as :func:`~labelfree.views.sample_params` returns them.
        channels: Image channels C (1 or 3).
        height: Input image height H in pixels.
        width: Input image width W in pixels.
        dense: Plan every operation the options allow on the whole batch (see
            :meth:`~labelfree.views.ViewAugmentation.apply`).

    Returns:
        A dict with ``table`` (B, K) float32 and ``columns`` (name -> column slice);
        ``rows``, one int64 tensor of the concatenated sample indices of the hue subsets (one
        per jitter position) and the blurred subset, with ``row_names`` and ``row_counts``; and
        booleans saying which operations run. With ``dense`` every subset is the whole batch
        and the booleans come from the options, not from the draws.
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
    parts["kernel"] = _blur_kernels(p["sigma"], blur, box_support(options.sigmas[1]))

    columns, start = {}, 0
    for name, part in parts.items():
        columns[name] = (start, start + part.shape[1])
        start += part.shape[1]
    if dense:  # every operation the options allow, on every sample
        hue_rows = torch.arange(b) if channels == 3 else torch.zeros(0, dtype=torch.long)
        row_list = [hue_rows] * 4 + [torch.arange(b)]
        runs = {
            "rotate_free": options.rr_prob > 0 and options.rr_degrees is not None,
            "jitter": options.cj_prob > 0,
            "grayscale": options.random_gray_scale > 0,
            "blur": options.gaussian_blur > 0,
            "solarize": options.solarization_prob > 0,
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


def _blur_kernels(sigma: Tensor, blur: Tensor, r: int) -> Tensor:
    """(B, 2 r + 1) float64 box kernels of PIL's blur where ``blur``, unit kernels elsewhere."""
    f64 = torch.float64
    kernel = torch.zeros(len(blur), 2 * r + 1, dtype=f64)
    kernel[:, r] = 1.0  # unit kernel: blurring leaves the sample unchanged
    if blur.any():
        radius = box_radius(sigma[blur].to(f64))
        whole = radius.floor().unsqueeze(1)
        t = torch.arange(-r, r + 1, dtype=f64).abs().unsqueeze(0)
        box = (t <= whole).to(f64) + (t == whole + 1).to(f64) * (radius.unsqueeze(1) - whole)
        kernel[blur] = box / (2 * radius + 1).unsqueeze(1)
    return kernel


def plan_on_device(plan: Mapping[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """The plan's ``table`` and ``rows`` on ``device``, in that order of copies."""
    return _to_device(plan["table"], device), _to_device(plan["rows"], device)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU tensor to ``device``; to a GPU from pinned memory, so the host never waits."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
