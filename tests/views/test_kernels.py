"""The device kernels, each against its per-image reference (torchvision's kernels, PIL's blur).

The kernels run through ViewAugmentation.apply with some drawn parameters forced, so each test
isolates one operation.
"""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF  # noqa: N812
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode

from labelfree.views import JITTER_OPS, ViewAugmentation

# ---------------------------------------------------------------- geometry vs torchvision


def test_flips_on_asymmetric_image(identity, gen, forced):
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5) / 150
    aug = ViewAugmentation(input_size=5, **identity)
    out, _ = forced(aug, images, hflip=True)
    torch.testing.assert_close(out, images.flip(-1), atol=1e-6, rtol=0)
    out, _ = forced(aug, images, vflip=True)
    torch.testing.assert_close(out, images.flip(-2), atol=1e-6, rtol=0)
    out, _ = forced(aug, images, hflip=True, vflip=True)
    torch.testing.assert_close(out, images.flip(-1, -2), atol=1e-6, rtol=0)
    # hf_prob=1 draws every flip.
    out = ViewAugmentation(input_size=5, **{**identity, "hf_prob": 1.0})(images, gen(0))
    torch.testing.assert_close(out, images.flip(-1), atol=1e-6, rtol=0)


def test_quarter_turn_matches_torchvision_rotate(identity, gen, random_images, forced):
    images = random_images(n=3, h=9, w=9, dtype=torch.float32)
    aug = ViewAugmentation(input_size=9, **{**identity, "rr_prob": 1.0})  # rr_degrees=None
    out = aug(images, gen(0))
    torch.testing.assert_close(out, TF.rotate(images, 90.0), atol=1e-5, rtol=0)
    # lightly rotates the flipped crop: flip first, then rotate.
    out, _ = forced(aug, images, hflip=True)
    torch.testing.assert_close(out, TF.rotate(images.flip(-1), 90.0), atol=1e-5, rtol=0)


def test_free_rotation_matches_torchvision_inside_the_image(identity, random_images, forced):
    images = random_images(n=4, h=15, w=15, dtype=torch.float32)
    aug = ViewAugmentation(input_size=15, **{**identity, "rr_prob": 1.0}, rr_degrees=(-40, 40))
    out, params = forced(aug, images)
    for i in range(4):
        ref = TF.rotate(images[i], float(params["angle"][i]), InterpolationMode.BILINEAR)
        # Away from the rotated-in corners both are plain bilinear reads of the same points.
        torch.testing.assert_close(out[i, :, 5:10, 5:10], ref[:, 5:10, 5:10], atol=1e-5, rtol=0)
        # The corners are filled with 0, as torchvision's fill=0.
        assert abs(float(params["angle"][i])) < 5 or out[i, :, 0, 0].abs().max() == 0


@pytest.mark.parametrize(("height", "width", "size"), [(32, 32, 32), (40, 28, 16), (12, 20, 24)])
def test_resized_crop_matches_torchvision(height, width, size, identity, random_images, forced):
    images = random_images(n=12, h=height, w=width, dtype=torch.float32)
    aug = ViewAugmentation(input_size=size, **{**identity, "min_scale": 0.08})
    out, params = forced(aug, images, seed=5)
    for i in range(12):
        top, left, h, w = params["crop"][i].tolist()
        ref = TF.resized_crop(images[i], top, left, h, w, [size, size], antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert params["scale"].lt(1).any()


# ---------------------------------------------------------------- colour ops vs torchvision


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_torchvision_in_sampled_order(
    channels, identity, random_images, forced
):
    images = random_images(n=48, c=channels, h=10, w=10, dtype=torch.float32)
    aug = ViewAugmentation(input_size=10, **{**identity, "cj_prob": 0.7})
    out, params = forced(aug, images, seed=2)
    kernels = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    assert params["jitter"].any()
    assert not params["jitter"].all()
    for i in range(48):
        ref = images[i]
        if params["jitter"][i]:
            for op in params["jitter_order"][i].tolist():
                ref = kernels[op](ref, float(params[JITTER_OPS[op]][i]))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_grayscale_and_solarization_match_torchvision(identity, random_images, forced):
    images = random_images(n=4, h=8, w=8, dtype=torch.float32)
    aug = ViewAugmentation(input_size=8, **identity)
    out, _ = forced(aug, images, grayscale=True)
    torch.testing.assert_close(out, TF.rgb_to_grayscale(images, num_output_channels=3))
    out, _ = forced(aug, images, solarize=True)
    torch.testing.assert_close(out, torch.where(images >= 0.5, 1 - images, images))


def test_blur_matches_pil_gaussian_blur(identity, random_images, forced):
    """PIL's GaussianBlur(radius=sigma), as lightly calls it, within PIL's 8-bit rounding."""
    images = random_images(n=12, h=32, w=32)
    aug = ViewAugmentation(input_size=32, **{**identity, "gaussian_blur": 1.0})
    out, params = forced(aug, images, seed=1)
    ref = []
    for i in range(12):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(params["sigma"][i])))
        ref.append(torch.from_numpy(np.array(pil)).permute(2, 0, 1).float())
    diff = (out * 255 - torch.stack(ref)).abs()
    assert diff.max() < 3.5  # PIL rounds to 8 bits after each of its 6 box passes
    assert diff.mean() < 0.5
    assert float(params["sigma"].min()) < 0.6  # small and large sigmas both covered
    assert float(params["sigma"].max()) > 1.5
