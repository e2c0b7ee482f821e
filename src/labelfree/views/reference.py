"""The per-image reference path: lightly's PIL transforms, one image at a time.

:func:`lightly_view_transform` maps the options of :class:`~labelfree.views.ViewAugmentation` onto
lightly's ``BYOLView1Transform``: the usual recipe, which the batched views are tested against
and which ``trainer.augmentation=lightly`` trains with. :class:`PILViews` serves such transforms'
views of uint8 image tensors as a torch ``Dataset``, for DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from labelfree.views.options import ViewOptions, resolve_kwargs

__all__ = ["PILViews", "lightly_view_transform"]


def lightly_view_transform(**kwargs: Any) -> Callable[[Any], Tensor]:
    """The per-image reference: the same keyword arguments on lightly's ``BYOLView1Transform``.

    ``BYOLView1Transform`` accepts every option of :class:`~labelfree.views.ViewOptions`
    (solarization included); unspecified options take its defaults, so
    ``lightly_view_transform(**kw)`` and ``ViewAugmentation(**kw)`` describe the same view.
    ``max_scale`` (absent from lightly) is set on the transform's ``RandomResizedCrop``.

    Args:
        **kwargs: :class:`~labelfree.views.ViewOptions` fields.

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

    config = ViewOptions(**resolve_kwargs(kwargs, "lightly_view_transform")).as_kwargs()
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


class PILViews(torch.utils.data.Dataset):
    """Per-image views with lightly's PIL transforms: the usual DataLoader-worker recipe.

    Args:
        images: (N, C, H, W) uint8 images, C in {1, 3} (PIL ``L`` or ``RGB``).
        transforms: One PIL-image transform per view; item ``i`` is their views of image ``i``.
    """

    def __init__(self, images: Tensor, transforms: list[Callable]):
        self.images, self.transforms = images, transforms
        self.mode = "L" if images.shape[1] == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[Tensor]:
        array = self.images[i].permute(1, 2, 0).numpy()
        img = Image.fromarray(array[:, :, 0] if self.mode == "L" else array)
        return [t(img) for t in self.transforms]
