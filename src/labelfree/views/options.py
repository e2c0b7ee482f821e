"""The options of one view: lightly's transform parameter names, checked once, in one place.

:class:`ViewOptions` holds the keyword arguments that :class:`~labelfree.views.ViewAugmentation`
and :func:`~labelfree.views.lightly_view_transform` share. They keep the names and meaning of
lightly's view transforms (``BYOLView1Transform``, ``SimCLRViewTransform``), so a config written
for lightly reads the same here. They are called *options* to keep them apart from the random
*parameters* drawn per sample (:func:`~labelfree.views.sample_params`).

:func:`resolve_kwargs` checks option names from a config (``data.augment``, ``method.views``)
before anything is built, so a typo fails with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["OPTION_NAMES", "ViewOptions", "resolve_kwargs"]

# Options that are probabilities, and the colour-jitter amounts that must be non-negative, in the
# order they are checked (the first bad one is reported).
_PROBABILITIES = (
    "cj_prob",
    "random_gray_scale",
    "gaussian_blur",
    "solarization_prob",
    "vf_prob",
    "hf_prob",
    "rr_prob",
)
_JITTER_AMOUNTS = ("cj_strength", "cj_bright", "cj_contrast", "cj_sat", "cj_hue")


@dataclass(frozen=True, kw_only=True)
class ViewOptions:
    """The options of one view, validated and resolved to plain floats, tuples and lists.

    Defaults are those of lightly's ``SimCLRTransform`` (Chen et al. 2020, arXiv:2002.05709)
    except ``solarization_prob=0`` and ``normalize=None``. After construction every probability,
    strength and scale is a float, ``sigmas`` a tuple, ``rr_degrees`` None, a float or a tuple,
    and ``normalize`` None or a dict of float lists, so two equal configurations compare equal.

    Attributes:
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
            jitter above 0.5, or a malformed ``normalize``; the message names the option.

    Examples:
        >>> ViewOptions(input_size=32, sigmas=[0.1, 2]).sigmas
        (0.1, 2.0)
        >>> ViewOptions(input_size=32, hf_prob=1.5)
        Traceback (most recent call last):
        ValueError: hf_prob=1.5 is a probability; use a value in [0, 1].
    """

    input_size: int
    cj_prob: float = 0.8
    cj_strength: float = 1.0
    cj_bright: float = 0.8
    cj_contrast: float = 0.8
    cj_sat: float = 0.8
    cj_hue: float = 0.2
    min_scale: float = 0.08
    max_scale: float = 1.0
    random_gray_scale: float = 0.2
    gaussian_blur: float = 0.5
    sigmas: Sequence[float] = (0.1, 2.0)
    solarization_prob: float = 0.0
    vf_prob: float = 0.0
    hf_prob: float = 0.5
    rr_prob: float = 0.0
    rr_degrees: float | Sequence[float] | None = None
    normalize: Mapping[str, Sequence[float]] | None = None

    def __post_init__(self) -> None:
        # The checks quote the values as given, so they run before any conversion.
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"input_size={size!r} must be a positive integer (pixels).")
        for name in _PROBABILITIES:
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name}={p!r} is a probability; use a value in [0, 1].")
        for name in _JITTER_AMOUNTS:
            v = getattr(self, name)
            if float(v) < 0:
                raise ValueError(f"{name}={v!r} must be non-negative.")
        hue = self.cj_strength * self.cj_hue
        if hue > 0.5:
            raise ValueError(
                f"cj_strength * cj_hue = {hue!r} exceeds 0.5, the largest hue shift; lower "
                "cj_hue or cj_strength."
            )
        if not 0.0 < float(self.min_scale) <= float(self.max_scale):
            raise ValueError(
                f"min_scale={self.min_scale!r}, max_scale={self.max_scale!r}: need "
                "0 < min_scale <= max_scale (crop area fractions, e.g. min_scale=0.08, "
                "max_scale=1.0)."
            )
        resolved: dict[str, Any] = {
            "sigmas": _resolve_sigmas(self.sigmas),
            "rr_degrees": _resolve_rr_degrees(self.rr_degrees),
            "normalize": _resolve_normalize(self.normalize),
        }
        for name in (*_PROBABILITIES, *_JITTER_AMOUNTS, "min_scale", "max_scale"):
            resolved[name] = float(getattr(self, name))
        for name, value in resolved.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def as_kwargs(self) -> dict[str, Any]:
        """The resolved options as keyword arguments, in declaration order.

        ``ViewOptions(**o.as_kwargs()) == o``, and ``lightly_view_transform(**o.as_kwargs())``
        is the per-image reference of the view.
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The option names, in declaration order (error messages list them in this order).
OPTION_NAMES = tuple(f.name for f in fields(ViewOptions))


def _resolve_sigmas(sigmas: Sequence[float]) -> tuple[float, float]:
    sigmas = tuple(float(s) for s in sigmas)
    if len(sigmas) != 2 or not 0.0 < sigmas[0] <= sigmas[1]:
        raise ValueError(f"sigmas={sigmas!r} must be a pair 0 < min <= max, e.g. (0.1, 2.0).")
    return sigmas


def _resolve_rr_degrees(
    rr_degrees: float | Sequence[float] | None,
) -> float | tuple[float, float] | None:
    if rr_degrees is None:
        return None
    if isinstance(rr_degrees, int | float):
        if rr_degrees < 0:
            raise ValueError(f"rr_degrees={rr_degrees!r} must be non-negative as a number.")
        return float(rr_degrees)
    rr_degrees = tuple(float(d) for d in rr_degrees)
    if len(rr_degrees) != 2 or rr_degrees[0] > rr_degrees[1]:
        raise ValueError(f"rr_degrees={rr_degrees!r} must be None, a number or a (min, max) pair.")
    return rr_degrees


def _resolve_normalize(
    normalize: Mapping[str, Sequence[float]] | None,
) -> dict[str, list[float]] | None:
    if normalize is None:
        return None
    if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
        raise ValueError(
            f"normalize={normalize!r} must be None or a mapping with keys 'mean' and 'std', "
            "e.g. {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}."
        )
    normalize = {k: [float(v) for v in normalize[k]] for k in ("mean", "std")}
    if len(normalize["mean"]) != len(normalize["std"]) or min(normalize["std"]) <= 0:
        raise ValueError(
            f"normalize={normalize!r}: 'mean' and 'std' need the same length and std > 0."
        )
    return normalize


def resolve_kwargs(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check keyword names against :data:`OPTION_NAMES` and return them as a plain dict.

    Args:
        kwargs: Option names and values, e.g. a config node (an OmegaConf ``DictConfig`` works).
        where: What the options came from, quoted in the error (``"build_views(common)"``).

    Raises:
        ValueError: An unknown name; the message lists the valid ones.
    """
    unknown = sorted(set(kwargs) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"Unknown augmentation option(s) {unknown} in {where}. "
            f"Choose from: {', '.join(OPTION_NAMES)}."
        )
    return dict(kwargs)
