"""The device kernels of the batched views: whole-batch tensor functions, no random draws.

Each function applies one operation of the view pipeline to a float ``(B, C, H, W)`` batch in
[0, 1], with per-sample coefficients that :mod:`labelfree.views.plan` derived on the CPU. They run
on any device and only launch kernels (no host sync, no host-to-device copy), so that a CUDA graph
can capture them. Per operation they match torchvision's tensor kernels (``adjust_*``,
``rgb_to_grayscale``, ``resized_crop``, ``rotate``) to 1e-5, and the blur matches PIL's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

__all__ = [
    "SOLARIZE_THRESHOLD",
    "adjust_hue",
    "blur",
    "box_radius",
    "color_jitter",
    "geometry",
    "grayscale",
    "luma",
    "normalize",
    "solarize",
]

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale and PIL's convert("L").
_LUMA = (0.2989, 0.587, 0.114)
# Pixels at or above this value (in [0, 1]) are inverted by solarization. PIL inverts uint8 values
# >= 128; a continuous value rounds to >= 128 exactly when it is >= 127.5 / 255 = 0.5.
SOLARIZE_THRESHOLD = 0.5
# PIL's GaussianBlur runs this many box blurs per axis.
_BLUR_PASSES = 3


def geometry(
    x: Tensor, theta: Tensor, clamp: Tensor, turn: Tensor, *, size: int, rotate_free: bool
) -> Tensor:
    """Crop, resize, flip and rotate in one bilinear resample (coefficients: the plan's).

    Output O = Rotate(Flip(ResizedCrop(I))). ``theta`` (B, 2, 3) maps output pixel centres
    to input coordinates (``F.affine_grid``, align_corners=False); reads are clamped to the
    crop box (``clamp``: x_lo, y_lo, x_hi, y_hi) so that the crop's border pixels are
    replicated, as resizing the cropped image does. Under a rotation by a free angle
    (``rotate_free``), the points whose pre-rotation position v = ``turn`` u falls outside
    [-1, 1]^2 are the rotated-in corners and are filled with 0, as torchvision's
    ``RandomRotation(fill=0)``.

    Args:
        x: (B, C, H, W) float images.
        theta: (B, 2, 3) affine maps from output to input coordinates.
        clamp: (B, 4) crop box in normalized input coordinates.
        turn: (B, 4) flip-and-rotation matrix D R, row-major.
        size: Output height and width in pixels.
        rotate_free: Whether any sample rotates by an angle that is not a quarter turn.
    """
    b, c = x.shape[:2]
    out_size = (b, c, size, size)
    grid = F.affine_grid(theta, out_size, align_corners=False)
    grid = torch.clamp(grid, min=clamp[:, None, None, :2], max=clamp[:, None, None, 2:])
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if rotate_free:
        linear = F.pad(turn.view(b, 2, 2), (0, 1))  # no translation
        v = F.affine_grid(linear, out_size, align_corners=False)
        inside = (v.abs() <= 1 + 1e-6).all(dim=-1, keepdim=True).movedim(-1, 1)
        out = out * inside
    return out


def color_jitter(
    x: Tensor,
    factor: Tensor,
    is_contrast: Tensor,
    is_saturation: Tensor,
    hue: Tensor,
    hue_rows: Sequence[Tensor],
) -> Tensor:
    """Colour jitter with per-sample factors and per-sample operation order.

    Brightness, contrast and saturation are all blends ``clamp(f x + (1 - f) ref)`` with
    ref = 0, mean(gray(x)) and gray(x) respectively, so at each of the four positions of the
    random order one blend serves every sample (f = 1 for samples whose operation at that
    position is hue, or which are not jittered). Hue runs on that position's hue rows only.

    Args:
        x: (B, C, H, W) float images in [0, 1].
        factor: (B, 4) blend factor at each position of the order.
        is_contrast: (B, 4) 1 where the operation at that position is contrast, else 0.
        is_saturation: (B, 4) 1 where it is saturation, else 0.
        hue: (B, 4) hue shift in turns at each position (0 where that position is not hue).
        hue_rows: Per position, the indices of the samples whose operation there is hue.
    """
    b, c = x.shape[:2]
    for k in range(4):
        gray = luma(x) if c == 3 else x
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        ref = torch.addcmul(
            is_contrast[:, k].view(b, 1, 1, 1) * mean, is_saturation[:, k].view(b, 1, 1, 1), gray
        )
        x = torch.lerp(ref, x, factor[:, k].view(b, 1, 1, 1)).clamp_(0.0, 1.0)
        rows = hue_rows[k]
        if rows.numel():
            x[rows] = adjust_hue(x[rows], hue[rows, k])
    return x


def grayscale(x: Tensor, selected: Tensor) -> Tensor:
    """Replace the selected samples of an RGB batch by their luma on all 3 channels.

    Args:
        x: (B, 3, H, W) float images.
        selected: (B, 1) > 0 for the samples to convert.
    """
    return torch.where(selected.view(-1, 1, 1, 1) > 0, luma(x), x)


def blur(x: Tensor, kernel: Tensor) -> Tensor:
    """PIL's ``GaussianBlur(radius=sigma)`` with one sigma per sample, edges replicated.

    PIL approximates a Gaussian of standard deviation sigma by three box blurs per axis
    (Pillow ``BoxBlur.c``): a box of fractional radius R (:func:`box_radius`, chosen so
    that the three passes have variance sigma^2) weighs the 2 floor(R) + 1 central pixels
    1 / (2R + 1) and the two next ones (R - floor(R)) / (2R + 1). We run the same three
    passes along the width, then three along the height, as grouped convolutions with one
    kernel per sample, replicating edge pixels before each pass as PIL does.

    Args:
        x: (N, C, H, W).
        kernel: (N, 2 r + 1) box kernels, one per sample.
    """
    n, c, h, w = x.shape
    r = kernel.shape[1] // 2
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


def solarize(x: Tensor, selected: Tensor) -> Tensor:
    """``x -> 1 - x`` where ``x >= 0.5``, in the selected samples ((B, 1) > 0) only."""
    mask = (selected.view(-1, 1, 1, 1) > 0) & (x >= SOLARIZE_THRESHOLD)
    return torch.where(mask, 1.0 - x, x)


def normalize(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel, as ``x * scale + shift`` with (1, C, 1, 1) tensors."""
    return torch.addcmul(shift, x, scale)


def box_radius(sigma: Tensor, passes: int = _BLUR_PASSES) -> Tensor:
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


def luma(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, torchvision's rgb_to_grayscale weights."""
    r, g, b = x.unbind(dim=1)  # cheaper than a 1x1 convolution on the CPU
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
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
