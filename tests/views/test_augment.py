"""ViewAugmentation as a whole: shapes, dtypes, determinism, normalization, input checks."""

import pytest
import torch

from labelfree.views import ViewAugmentation


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_shape_dtype_range(channels, dtype, gen, random_images):
    images = random_images(n=6, c=channels, h=40, w=36, dtype=dtype)
    aug = ViewAugmentation(input_size=24, solarization_prob=0.5, rr_prob=0.5, rr_degrees=30)
    out = aug(images, generator=gen(0))
    assert out.shape == (6, channels, 24, 24)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_normalize(channels, gen, random_images):
    images = random_images(c=channels)
    stats_ = {"mean": [0.4] * channels, "std": [0.2] * channels}
    plain = ViewAugmentation(input_size=16)(images, generator=gen(3))
    normed = ViewAugmentation(input_size=16, normalize=stats_)(images, generator=gen(3))
    torch.testing.assert_close(normed, (plain - 0.4) / 0.2)


def test_same_seed_same_views_different_seed_different_views(full, gen, random_images):
    images = random_images(n=16, dtype=torch.float32)
    original = images.clone()
    aug = ViewAugmentation(**full)
    a, b, c = aug(images, gen(7)), aug(images, gen(7)), aug(images, gen(8))
    assert torch.equal(a, b)
    assert torch.equal(images, original)  # the input is never modified in place
    # Different seeds: every view differs (a tie would need identical crops, flips, jitter...).
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_settings_reproduce_input(channels, dtype, identity, gen, random_images):
    images = random_images(c=channels, h=24, w=24, dtype=dtype)
    out = ViewAugmentation(input_size=24, **identity)(images, generator=gen(0))
    expected = images.float() / 255 if dtype == torch.uint8 else images
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_invalid_images(imagenet):
    aug = ViewAugmentation(input_size=8)
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\)"):
        aug(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 8, 8\)"):
        aug(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="normalize has 3 channel"):
        ViewAugmentation(input_size=8, normalize=imagenet)(torch.zeros(2, 1, 8, 8))


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_seed(full, imagenet, gen, random_images):
    images = random_images(n=64, h=32, w=32)
    aug = ViewAugmentation(**full, normalize=imagenet)
    cpu = aug(images, gen(5))
    cuda = aug(images.cuda(), gen(5))
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="use a CPU torch.Generator"):
        aug(images.cuda(), torch.Generator("cuda").manual_seed(0))
