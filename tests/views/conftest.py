"""Shared fixtures for the view tests: seeded generators and images, view option sets."""

import pytest
import torch

# Every random operation switched off: the pipeline is a pure resize of the whole image.
IDENTITY = {
    "cj_prob": 0.0,
    "random_gray_scale": 0.0,
    "gaussian_blur": 0.0,
    "solarization_prob": 0.0,
    "hf_prob": 0.0,
    "vf_prob": 0.0,
    "rr_prob": 0.0,
    "min_scale": 1.0,
}
# A view that exercises every operation (SimCLR-CIFAR jitter strength plus blur, solarization,
# vertical flips and quarter turns).
FULL = {
    "input_size": 32,
    "cj_strength": 0.5,
    "gaussian_blur": 0.5,
    "solarization_prob": 0.2,
    "vf_prob": 0.2,
    "rr_prob": 0.3,
}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_images(n=8, c=3, h=20, w=20, seed=0, dtype=torch.uint8):
    images = torch.randint(0, 256, (n, c, h, w), generator=_gen(seed), dtype=torch.uint8)
    return images if dtype == torch.uint8 else images.to(dtype) / 255


def _forced(aug, images, seed=0, **overrides):
    """Sample parameters, overwrite some (broadcast to the batch), apply."""
    n, _, h, w = images.shape
    params = aug.sample_params(n, h, w, generator=_gen(seed))
    for key, value in overrides.items():
        params[key] = torch.as_tensor(value, dtype=params[key].dtype).expand_as(params[key])
    return aug.apply(images, params), params


@pytest.fixture
def identity() -> dict:
    """Options that switch every random operation off (a pure resize of the whole image)."""
    return dict(IDENTITY)


@pytest.fixture
def full() -> dict:
    """Options of a 32 px view that exercises every operation."""
    return dict(FULL)


@pytest.fixture
def imagenet() -> dict:
    """ImageNet's per-channel ``normalize`` statistics."""
    return {k: list(v) for k, v in IMAGENET.items()}


@pytest.fixture
def gen():
    """``gen(seed)``: a seeded CPU ``torch.Generator``."""
    return _gen


@pytest.fixture
def random_images():
    """``random_images(n, c, h, w, seed, dtype)``: seeded uniform images, uint8 or float."""
    return _random_images


@pytest.fixture
def forced():
    """``forced(aug, images, seed, **overrides)``: apply with some parameters overwritten."""
    return _forced
