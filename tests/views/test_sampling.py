"""Per-sample random parameters: independence and distributions against torchvision's."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from labelfree.views import ViewAugmentation


def test_samples_get_independent_parameters(full, gen):
    params = ViewAugmentation(**full).sample_params(64, 32, 32, generator=gen(0))
    assert params["crop"].unique(dim=0).shape[0] > 50
    assert params["brightness"].unique().numel() > 40


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(32, 32, (0.08, 1.0)), (20, 40, (0.08, 1.0)), (32, 24, (0.5, 0.9))],
)
def test_crop_distribution_matches_torchvision_get_params(height, width, scale, gen):
    n = 4000
    aug = ViewAugmentation(input_size=32, min_scale=scale[0], max_scale=scale[1])
    ours = aug.sample_params(n, height, width, generator=gen(11))["crop"].double()
    torch.manual_seed(11)
    image = torch.zeros(1, height, width)
    ref = torch.tensor(
        [RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    ).double()
    area = height * width
    for name, fn in [
        ("area fraction", lambda c: c[:, 2] * c[:, 3] / area),
        ("aspect ratio", lambda c: c[:, 3] / c[:, 2]),
        ("centre row", lambda c: c[:, 0] + c[:, 2] / 2),
        ("centre column", lambda c: c[:, 1] + c[:, 3] / 2),
    ]:
        result = stats.ks_2samp(fn(ours).numpy(), fn(ref).numpy())
        assert result.pvalue > 1e-3, f"{name}: KS {result}"
    # Crops stay inside the image.
    assert (ours[:, 0] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] + ours[:, 3] <= width).all()


def test_crop_area_fraction_is_uniform_where_every_attempt_is_accepted(gen):
    """Closed form: a target area s <= 3/4 always fits (aspect ratio in [3/4, 4/3]), so on a
    large image (negligible rounding) the sampled area fraction is U(min_scale, 1) there.
    Above 3/4 wide or tall attempts are rejected and redrawn, which thins the density."""
    scale = (
        ViewAugmentation(input_size=32, min_scale=0.2)
        .sample_params(4000, 512, 512, generator=gen(4))["scale"]
        .numpy()
    )
    low = scale[scale < 0.7]
    assert stats.kstest(low, stats.uniform(0.2, 0.5).cdf).pvalue > 1e-3
    # Fewer crops above 3/4 than U(0.2, 1) would give (rejections), yet a fair share.
    assert 0.05 < (scale > 0.75).mean() < 0.25 / 0.8


def test_event_frequencies_match_probabilities(full, gen):
    probs = {
        "hflip": 0.5,
        "vflip": 0.2,
        "rotate": 0.3,
        "jitter": 0.8,
        "grayscale": 0.2,
        "blur": 0.5,
        "solarize": 0.2,
    }
    n = 20000
    params = ViewAugmentation(**full).sample_params(n, 32, 32, generator=gen(9))
    for key, p in probs.items():
        k = int(params[key].sum())
        assert stats.binomtest(k, n, p).pvalue > 1e-3, f"{key}: {k}/{n} vs p={p}"


def test_factor_order_and_angle_distributions(gen):
    n = 12000
    aug = ViewAugmentation(input_size=32, cj_strength=0.5, rr_prob=1.0, rr_degrees=(-30, 45))
    params = aug.sample_params(n, 32, 32, generator=gen(6))
    on = params["jitter"]
    for key, (lo, hi) in [
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.6, 1.4)),
        ("saturation", (0.6, 1.4)),
        ("hue", (-0.1, 0.1)),
    ]:
        values = params[key][on].numpy()
        assert stats.kstest(values, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3, key
        neutral = 0.0 if key == "hue" else 1.0
        assert (params[key][~on] == neutral).all()
    angles = params["angle"].numpy()
    assert stats.kstest(angles, stats.uniform(-30, 75).cdf).pvalue > 1e-3
    blur = ViewAugmentation(input_size=32, gaussian_blur=1.0, sigmas=(0.1, 2.0))
    sigma = blur.sample_params(n, 32, 32, generator=gen(6))["sigma"].numpy()
    assert stats.kstest(sigma, stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3
    # Every one of the 24 operation orders is equally likely (torchvision's randperm(4)).
    index = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount(
        [index[tuple(row)] for row in params["jitter_order"].tolist()], minlength=24
    )
    assert stats.chisquare(counts).pvalue > 1e-3


def test_brightness_range_clipped_at_zero(gen):
    aug = ViewAugmentation(input_size=8, cj_prob=1.0, cj_bright=1.5, cj_contrast=0.0)
    params = aug.sample_params(2000, 8, 8, generator=gen(0))
    assert params["brightness"].min() >= 0.0
    assert params["brightness"].max() <= 2.5
    assert (params["contrast"] == 1.0).all()  # zero jitter: torchvision skips the op
