"""Tests for labelfree.augment: exact per-operation references, then statistics vs lightly."""

import doctest
import itertools
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF  # noqa: N812
from PIL import Image, ImageFilter
from scipy import stats
from torchvision.transforms import InterpolationMode, RandomResizedCrop

import labelfree.augment as augment_module
from labelfree.augment import (
    JITTER_OPS,
    GraphedViewAugmentation,
    ViewAugmentation,
    build_views,
    lightly_view_transform,
)

CIFAR_ARCHIVE = Path(
    os.environ.get(
        "LABELFREE_CIFAR10_ARCHIVE",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz",
    )
)
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


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n=8, c=3, h=20, w=20, seed=0, dtype=torch.uint8):
    images = torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)
    return images if dtype == torch.uint8 else images.to(dtype) / 255


# ---------------------------------------------------------------- shapes, dtypes, determinism


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_shape_dtype_range(channels, dtype):
    images = random_images(n=6, c=channels, h=40, w=36, dtype=dtype)
    aug = ViewAugmentation(input_size=24, solarization_prob=0.5, rr_prob=0.5, rr_degrees=30)
    out = aug(images, generator=gen(0))
    assert out.shape == (6, channels, 24, 24)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_normalize(channels):
    images = random_images(c=channels)
    stats_ = {"mean": [0.4] * channels, "std": [0.2] * channels}
    plain = ViewAugmentation(input_size=16)(images, generator=gen(3))
    normed = ViewAugmentation(input_size=16, normalize=stats_)(images, generator=gen(3))
    torch.testing.assert_close(normed, (plain - 0.4) / 0.2)


def test_same_seed_same_views_different_seed_different_views():
    images = random_images(n=16, dtype=torch.float32)
    original = images.clone()
    aug = ViewAugmentation(**FULL)
    a, b, c = aug(images, gen(7)), aug(images, gen(7)), aug(images, gen(8))
    assert torch.equal(a, b)
    assert torch.equal(images, original)  # the input is never modified in place
    # Different seeds: every view differs (a tie would need identical crops, flips, jitter...).
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_samples_get_independent_parameters():
    params = ViewAugmentation(**FULL).sample_params(64, 32, 32, generator=gen(0))
    assert params["crop"].unique(dim=0).shape[0] > 50
    assert params["brightness"].unique().numel() > 40


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_settings_reproduce_input(channels, dtype):
    images = random_images(c=channels, h=24, w=24, dtype=dtype)
    out = ViewAugmentation(input_size=24, **IDENTITY)(images, generator=gen(0))
    expected = images.float() / 255 if dtype == torch.uint8 else images
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- geometry vs torchvision


def forced(aug, images, seed=0, **overrides):
    """Sample parameters, overwrite some (broadcast to the batch), apply."""
    n, _, h, w = images.shape
    params = aug.sample_params(n, h, w, generator=gen(seed))
    for key, value in overrides.items():
        params[key] = torch.as_tensor(value, dtype=params[key].dtype).expand_as(params[key])
    return aug.apply(images, params), params


def test_flips_on_asymmetric_image():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5) / 150
    aug = ViewAugmentation(input_size=5, **IDENTITY)
    out, _ = forced(aug, images, hflip=True)
    torch.testing.assert_close(out, images.flip(-1), atol=1e-6, rtol=0)
    out, _ = forced(aug, images, vflip=True)
    torch.testing.assert_close(out, images.flip(-2), atol=1e-6, rtol=0)
    out, _ = forced(aug, images, hflip=True, vflip=True)
    torch.testing.assert_close(out, images.flip(-1, -2), atol=1e-6, rtol=0)
    # hf_prob=1 draws every flip.
    out = ViewAugmentation(input_size=5, **{**IDENTITY, "hf_prob": 1.0})(images, gen(0))
    torch.testing.assert_close(out, images.flip(-1), atol=1e-6, rtol=0)


def test_quarter_turn_matches_torchvision_rotate():
    images = random_images(n=3, h=9, w=9, dtype=torch.float32)
    aug = ViewAugmentation(input_size=9, **{**IDENTITY, "rr_prob": 1.0})  # rr_degrees=None
    out = aug(images, gen(0))
    torch.testing.assert_close(out, TF.rotate(images, 90.0), atol=1e-5, rtol=0)
    # lightly rotates the flipped crop: flip first, then rotate.
    out, _ = forced(aug, images, hflip=True)
    torch.testing.assert_close(out, TF.rotate(images.flip(-1), 90.0), atol=1e-5, rtol=0)


def test_free_rotation_matches_torchvision_inside_the_image():
    images = random_images(n=4, h=15, w=15, dtype=torch.float32)
    aug = ViewAugmentation(input_size=15, **{**IDENTITY, "rr_prob": 1.0}, rr_degrees=(-40, 40))
    out, params = forced(aug, images)
    for i in range(4):
        ref = TF.rotate(images[i], float(params["angle"][i]), InterpolationMode.BILINEAR)
        # Away from the rotated-in corners both are plain bilinear reads of the same points.
        torch.testing.assert_close(out[i, :, 5:10, 5:10], ref[:, 5:10, 5:10], atol=1e-5, rtol=0)
        # The corners are filled with 0, as torchvision's fill=0.
        assert abs(float(params["angle"][i])) < 5 or out[i, :, 0, 0].abs().max() == 0


@pytest.mark.parametrize(("height", "width", "size"), [(32, 32, 32), (40, 28, 16), (12, 20, 24)])
def test_resized_crop_matches_torchvision(height, width, size):
    images = random_images(n=12, h=height, w=width, dtype=torch.float32)
    aug = ViewAugmentation(input_size=size, **{**IDENTITY, "min_scale": 0.08})
    out, params = forced(aug, images, seed=5)
    for i in range(12):
        top, left, h, w = params["crop"][i].tolist()
        ref = TF.resized_crop(images[i], top, left, h, w, [size, size], antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert params["scale"].lt(1).any()


# ---------------------------------------------------------------- colour ops vs torchvision


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_torchvision_in_sampled_order(channels):
    images = random_images(n=48, c=channels, h=10, w=10, dtype=torch.float32)
    aug = ViewAugmentation(input_size=10, **{**IDENTITY, "cj_prob": 0.7})
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


def test_grayscale_and_solarization_match_torchvision():
    images = random_images(n=4, h=8, w=8, dtype=torch.float32)
    aug = ViewAugmentation(input_size=8, **IDENTITY)
    out, _ = forced(aug, images, grayscale=True)
    torch.testing.assert_close(out, TF.rgb_to_grayscale(images, num_output_channels=3))
    out, _ = forced(aug, images, solarize=True)
    torch.testing.assert_close(out, torch.where(images >= 0.5, 1 - images, images))


def test_blur_matches_pil_gaussian_blur():
    """PIL's GaussianBlur(radius=sigma), as lightly calls it, within PIL's 8-bit rounding."""
    images = random_images(n=12, h=32, w=32)
    aug = ViewAugmentation(input_size=32, **{**IDENTITY, "gaussian_blur": 1.0})
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


# ---------------------------------------------------------------- parameter distributions


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(32, 32, (0.08, 1.0)), (20, 40, (0.08, 1.0)), (32, 24, (0.5, 0.9))],
)
def test_crop_distribution_matches_torchvision_get_params(height, width, scale):
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


def test_crop_area_fraction_is_uniform_where_every_attempt_is_accepted():
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


def test_event_frequencies_match_probabilities():
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
    params = ViewAugmentation(**FULL).sample_params(n, 32, 32, generator=gen(9))
    for key, p in probs.items():
        k = int(params[key].sum())
        assert stats.binomtest(k, n, p).pvalue > 1e-3, f"{key}: {k}/{n} vs p={p}"


def test_factor_order_and_angle_distributions():
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


def test_brightness_range_clipped_at_zero():
    aug = ViewAugmentation(input_size=8, cj_prob=1.0, cj_bright=1.5, cj_contrast=0.0)
    params = aug.sample_params(2000, 8, 8, generator=gen(0))
    assert params["brightness"].min() >= 0.0
    assert params["brightness"].max() <= 2.5
    assert (params["contrast"] == 1.0).all()  # zero jitter: torchvision skips the op


# ---------------------------------------------------------------- statistics vs lightly


@pytest.fixture(scope="module")
def cifar_images(tmp_path_factory):
    """256 CIFAR-10 test JPEGs (26 per class at most), extracted with tarfile into tmp."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    root = tmp_path_factory.mktemp("cifar10")
    per_class: dict[str, int] = {}
    with tarfile.open(CIFAR_ARCHIVE, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and parts[0] == "test" and member.name.endswith(".jpg")):
                continue
            if per_class.get(parts[1], 0) < 26:
                per_class[parts[1]] = per_class.get(parts[1], 0) + 1
                tar.extract(member, root, filter="data")
            if sum(per_class.values()) >= 256:
                break
    files = sorted(root.glob("test/*/*.jpg"))[:256]
    return [Image.open(f).convert("RGB") for f in files]


def synthetic_images(n=256, size=32):
    """Smooth random colour fields with some texture (used whatever the archive's state)."""
    g = gen(123)
    low = torch.rand(n, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)
    noisy = smooth + 0.08 * torch.randn(n, 3, size, size, generator=g)
    array = (noisy.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def view_features(views):
    """Per-view summary statistics: brightness, contrast, colourfulness, sharpness."""
    return {
        "mean": views.mean(dim=(1, 2, 3)),
        "std": views.std(dim=(1, 2, 3)),
        "saturation": (views.amax(dim=1) - views.amin(dim=1)).mean(dim=(1, 2)),
        "gradient": (views[..., 1:] - views[..., :-1]).abs().mean(dim=(1, 2, 3)),
    }


def compare_with_lightly(pil_images, config, repeats=8, seed=0):
    """KS p-values of per-view statistics, ours vs lightly's per-image transform."""
    batch = torch.stack([torch.from_numpy(np.array(im)) for im in pil_images])
    batch = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    aug, reference = ViewAugmentation(**config), lightly_view_transform(**config)
    ours = torch.cat([aug(batch, gen(seed * 100 + r)) for r in range(repeats)])
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002  lightly's blur, solarization and quarter turns use np.random
    theirs = torch.stack([reference(im) for _ in range(repeats) for im in pil_images])
    assert ours.shape == theirs.shape
    fo, ft = view_features(ours), view_features(theirs)
    pvalues = {k: stats.ks_2samp(fo[k].numpy(), ft[k].numpy()).pvalue for k in fo}
    channel_means = (ours.mean(dim=(0, 2, 3)), theirs.mean(dim=(0, 2, 3)))
    channel_stds = (ours.std(dim=(2, 3)).mean(0), theirs.std(dim=(2, 3)).mean(0))
    return pvalues, channel_means, channel_stds, (ours, theirs)


def assert_same_view_statistics(pil_images, config):
    pvalues, means, stds, _ = compare_with_lightly(pil_images, config)
    assert min(pvalues.values()) > 1e-3, pvalues
    # Tolerances in [0, 1] pixel units, scaled by normalization. PIL truncates to 8 bits after
    # each blend (about -0.4 levels per colour op), hence 0.02 for the means.
    unit = 1 / min(config["normalize"]["std"]) if config.get("normalize") else 1.0
    torch.testing.assert_close(means[0], means[1], atol=0.02 * unit, rtol=0)
    torch.testing.assert_close(stds[0], stds[1], atol=0.01 * unit, rtol=0)


def test_view_statistics_match_lightly_on_cifar10(cifar_images):
    assert_same_view_statistics(cifar_images, FULL)


def test_view_statistics_match_lightly_on_cifar10_grayscale(cifar_images):
    gray = [im.convert("L") for im in cifar_images[:128]]
    assert_same_view_statistics(gray, {**FULL, "normalize": {"mean": [0.5], "std": [0.25]}})


def test_view_statistics_match_lightly_on_synthetic_images():
    assert_same_view_statistics(synthetic_images(), {**FULL, "rr_degrees": 20})


def test_statistics_test_detects_a_wrong_pipeline():
    """The comparison has power: a doubled jitter strength is caught."""
    images = synthetic_images(128)
    batch = torch.stack([torch.from_numpy(np.array(im)) for im in images]).permute(0, 3, 1, 2)
    stronger = ViewAugmentation(**{**FULL, "cj_strength": 1.0})
    reference = lightly_view_transform(**FULL)
    ours = torch.cat([stronger(batch, gen(r)) for r in range(8)])
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  lightly's blur uses np.random
    theirs = torch.stack([reference(im) for _ in range(8) for im in images])
    fo, ft = view_features(ours), view_features(theirs)
    assert min(stats.ks_2samp(fo[k].numpy(), ft[k].numpy()).pvalue for k in fo) < 1e-6


def test_grayscale_fraction_of_views_matches_lightly(cifar_images):
    config = {**FULL, "random_gray_scale": 0.3}
    _, _, _, (ours, theirs) = compare_with_lightly(cifar_images[:128], config, repeats=8)

    def is_gray(v):
        return ((v[:, 0] - v[:, 1]).abs().amax(dim=(1, 2)) < 1e-6) & (
            (v[:, 1] - v[:, 2]).abs().amax(dim=(1, 2)) < 1e-6
        )

    for views in (ours, theirs):
        k = int(is_gray(views).sum())
        assert stats.binomtest(k, len(views), 0.3).pvalue > 1e-3


# ---------------------------------------------------------------- builders and errors


def test_lightly_view_transform_uses_our_defaults_and_max_scale():
    transform = lightly_view_transform(input_size=16, max_scale=0.5, hf_prob=0.0)
    crop = transform.transform.transforms[0]
    assert tuple(crop.scale) == (0.08, 0.5)
    out = transform(Image.new("RGB", (20, 20), (10, 200, 30)))
    assert out.shape == (3, 16, 16)
    assert out.dtype == torch.float32
    assert out.max() <= 1.0  # normalize=None by default


def test_config_round_trip():
    aug = ViewAugmentation(
        input_size=16, sigmas=[0.2, 1.0], rr_degrees=[-10, 10], normalize=IMAGENET
    )
    again = ViewAugmentation(**aug.config)
    assert again.config == aug.config
    assert aug.config["sigmas"] == (0.2, 1.0)
    assert aug.config["rr_degrees"] == (-10.0, 10.0)
    assert "cj_strength=1.0" in repr(aug)


def test_build_views_byol_asymmetry():
    views = build_views(
        {"input_size": 32, "cj_strength": 0.5},
        [
            {"gaussian_blur": 1.0, "solarization_prob": 0.0},
            {"gaussian_blur": 0.1, "solarization_prob": 0.2},
        ],
    )
    assert [v.solarization_prob for v in views] == [0.0, 0.2]
    assert [v.gaussian_blur for v in views] == [1.0, 0.1]
    assert all(v.config["cj_strength"] == 0.5 for v in views)
    assert len(build_views({"input_size": 8})) == 2


def test_build_views_accepts_omegaconf():
    from omegaconf import OmegaConf

    common = OmegaConf.create({"input_size": 8, "sigmas": [0.1, 2.0], "normalize": IMAGENET})
    (view,) = build_views(common, OmegaConf.create([{"rr_degrees": [-5, 5]}]))
    assert view.sigmas == (0.1, 2.0)
    assert view.rr_degrees == (-5.0, 5.0)
    assert view(random_images(n=2), gen(0)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 0}, "input_size=0"),
        ({"input_size": 8, "hf_prob": 1.5}, "hf_prob=1.5"),
        ({"input_size": 8, "min_scale": 0.0}, "min_scale=0.0"),
        ({"input_size": 8, "min_scale": 0.9, "max_scale": 0.5}, "max_scale=0.5"),
        ({"input_size": 8, "sigmas": (2.0, 1.0)}, "sigmas="),
        ({"input_size": 8, "cj_hue": 0.6}, "exceeds 0.5"),
        ({"input_size": 8, "cj_bright": -1}, "cj_bright=-1"),
        ({"input_size": 8, "rr_degrees": (10, -10)}, "rr_degrees="),
        ({"input_size": 8, "normalize": {"mean": [0.5]}}, "keys 'mean' and 'std'"),
        ({"input_size": 8, "normalize": {"mean": [0.5], "std": [0.0]}}, "std > 0"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewAugmentation(**kwargs)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown augmentation option\(s\) \['cj_strenght'\]"):
        build_views({"input_size": 8, "cj_strenght": 0.5})
    with pytest.raises(ValueError, match="Choose from: input_size, cj_prob"):
        lightly_view_transform(input_size=8, colour=1)
    with pytest.raises(ValueError, match="per_view is empty"):
        build_views({"input_size": 8}, [])


def test_invalid_images():
    aug = ViewAugmentation(input_size=8)
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\)"):
        aug(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 8, 8\)"):
        aug(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="normalize has 3 channel"):
        ViewAugmentation(input_size=8, normalize=IMAGENET)(torch.zeros(2, 1, 8, 8))


def test_docstring_examples():
    result = doctest.testmod(augment_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4
    assert result.failed == 0


# ---------------------------------------------------------------- GPU


# ---------------------------------------------------------------- dense plan / CUDA graphs


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "config",
    [FULL, {**FULL, "rr_degrees": 30.0}, {"input_size": 24}],
    ids=["full", "free", "default"],
)
def test_dense_plan_gives_the_same_views(channels, config):
    """The dense plan (every op on the whole batch, identity parameters where not drawn) that CUDA
    graphs replay must give the subset plan's views: hue shift 0 and the unit blur kernel are
    identities up to float rounding."""
    images = random_images(n=64, c=channels, h=32, w=32)
    norm = {"mean": IMAGENET["mean"][:channels], "std": IMAGENET["std"][:channels]}
    aug = ViewAugmentation(**config, normalize=norm)
    params = aug.sample_params(64, 32, 32, generator=gen(3))
    subset = aug.apply(images, params)
    dense = aug.apply(images, params, dense=True)
    torch.testing.assert_close(dense, subset, atol=2e-5, rtol=0)
    # the dense plan's shapes do not depend on the draws (what a captured graph needs)
    other = aug.sample_params(64, 32, 32, generator=gen(4))
    a, b = (aug._plan(p, channels, 32, 32, dense=True) for p in (params, other))
    assert a["table"].shape == b["table"].shape
    assert a["row_counts"] == b["row_counts"]
    assert {k: v for k, v in a.items() if isinstance(v, bool)} == {
        k: v for k, v in b.items() if isinstance(v, bool)
    }


def test_graphed_views_run_eagerly_off_gpu():
    images = random_images(n=16, h=32, w=32)
    aug = ViewAugmentation(**FULL)
    graphed = GraphedViewAugmentation(aug)
    torch.testing.assert_close(graphed(images, gen(1)), aug(images, gen(1)), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_seed():
    images = random_images(n=64, h=32, w=32)
    aug = ViewAugmentation(**FULL, normalize=IMAGENET)
    cpu = aug(images, gen(5))
    cuda = aug(images.cuda(), gen(5))
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="use a CPU torch.Generator"):
        aug(images.cuda(), torch.Generator("cuda").manual_seed(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager_views():
    """Captured once, replayed for new batches and new draws: the same views as eager calls."""
    aug = ViewAugmentation(**FULL, normalize=IMAGENET)
    graphed = GraphedViewAugmentation(aug)
    g_eager, g_graph = gen(7), gen(7)
    for seed in range(3):
        images = random_images(n=64, h=32, w=32, seed=seed).cuda()
        eager = aug(images, g_eager)
        replay = graphed(images, g_graph)
        torch.testing.assert_close(replay, eager, atol=2e-5, rtol=0)
    assert all(g is not None for g in graphed._graphs.values()), "capture failed (see warning)"
