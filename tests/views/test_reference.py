"""The batched views against lightly's per-image reference: view statistics, and the reference."""

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from labelfree.views import ViewAugmentation, lightly_view_transform

CIFAR_ARCHIVE = Path(
    os.environ.get(
        "LABELFREE_CIFAR10_ARCHIVE",
        Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz",
    )
)


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
    g = torch.Generator().manual_seed(123)
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
    ours = torch.cat(
        [aug(batch, torch.Generator().manual_seed(seed * 100 + r)) for r in range(repeats)]
    )
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


def test_view_statistics_match_lightly_on_cifar10(cifar_images, full):
    assert_same_view_statistics(cifar_images, full)


def test_view_statistics_match_lightly_on_cifar10_grayscale(cifar_images, full):
    gray = [im.convert("L") for im in cifar_images[:128]]
    assert_same_view_statistics(gray, {**full, "normalize": {"mean": [0.5], "std": [0.25]}})


def test_view_statistics_match_lightly_on_synthetic_images(full):
    assert_same_view_statistics(synthetic_images(), {**full, "rr_degrees": 20})


def test_statistics_test_detects_a_wrong_pipeline(full, gen):
    """The comparison has power: a doubled jitter strength is caught."""
    images = synthetic_images(128)
    batch = torch.stack([torch.from_numpy(np.array(im)) for im in images]).permute(0, 3, 1, 2)
    stronger = ViewAugmentation(**{**full, "cj_strength": 1.0})
    reference = lightly_view_transform(**full)
    ours = torch.cat([stronger(batch, gen(r)) for r in range(8)])
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  lightly's blur uses np.random
    theirs = torch.stack([reference(im) for _ in range(8) for im in images])
    fo, ft = view_features(ours), view_features(theirs)
    assert min(stats.ks_2samp(fo[k].numpy(), ft[k].numpy()).pvalue for k in fo) < 1e-6


def test_grayscale_fraction_of_views_matches_lightly(cifar_images, full):
    config = {**full, "random_gray_scale": 0.3}
    _, _, _, (ours, theirs) = compare_with_lightly(cifar_images[:128], config, repeats=8)

    def is_gray(v):
        return ((v[:, 0] - v[:, 1]).abs().amax(dim=(1, 2)) < 1e-6) & (
            (v[:, 1] - v[:, 2]).abs().amax(dim=(1, 2)) < 1e-6
        )

    for views in (ours, theirs):
        k = int(is_gray(views).sum())
        assert stats.binomtest(k, len(views), 0.3).pvalue > 1e-3


def test_lightly_view_transform_uses_our_defaults_and_max_scale():
    transform = lightly_view_transform(input_size=16, max_scale=0.5, hf_prob=0.0)
    crop = transform.transform.transforms[0]
    assert tuple(crop.scale) == (0.08, 0.5)
    out = transform(Image.new("RGB", (20, 20), (10, 200, 30)))
    assert out.shape == (3, 16, 16)
    assert out.dtype == torch.float32
    assert out.max() <= 1.0  # normalize=None by default
