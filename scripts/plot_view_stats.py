"""Compare labelfree's batched views with lightly's per-image views: statistics and speed.

Prints, for one view configuration (a preset, optionally overridden):
  1. crop area fraction quantiles: our sampler vs torchvision's RandomResizedCrop.get_params,
     with a two-sample KS test;
  2. per-channel mean / std of the views and KS tests of per-view statistics (brightness,
     contrast, colourfulness, sharpness): ours vs lightly's per-image transform;
  3. time per image: our batched call (median over repeated batches, on --device) vs lightly's
     per-image transform on PIL images (this process, one thread of work per image).
With --out PATH it also writes a PNG of the crop-scale CDFs and view-statistic histograms.

Images: the CIFAR-10 JPEG archive (--archive, default ../shared/data/cifar10-jpeg.tar.gz beside
the repo) or, when it is absent, synthetic smooth colour images.

  python scripts/plot_view_stats.py --preset simclr_cifar --out docs/view_stats.png
  python scripts/plot_view_stats.py --device cuda --batch-size 512
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from labelfree.views import ViewAugmentation, lightly_view_transform

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
PRESETS = {
    # lightly's SimCLR defaults with the CIFAR settings of lightly's examples
    # (cj_strength=0.5, no blur).
    "simclr_cifar": {"input_size": 32, "cj_strength": 0.5, "gaussian_blur": 0.0},
    # every operation on: blur, solarization, vertical flips, quarter turns
    "full": {
        "input_size": 32,
        "cj_strength": 0.5,
        "gaussian_blur": 0.5,
        "solarization_prob": 0.2,
        "vf_prob": 0.2,
        "rr_prob": 0.3,
    },
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def load_images(archive: Path, n: int) -> tuple[list[Image.Image], str]:
    """n CIFAR-10 test images, class-balanced, or synthetic ones when the archive is absent."""
    if archive.is_file():
        per_class = -(-n // 10)
        counts: dict[str, int] = {}
        images = []
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and parts[0] == "test" and member.name.endswith(".jpg"):
                    if counts.get(parts[1], 0) < per_class:
                        counts[parts[1]] = counts.get(parts[1], 0) + 1
                        data = tar.extractfile(member).read()
                        images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                    if len(images) >= n:
                        break
        return images, f"CIFAR-10 test JPEGs from {archive}"
    g = torch.Generator().manual_seed(123)
    low = torch.rand(n, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(low, size=32, mode="bicubic", align_corners=False)
    noisy = (smooth + 0.08 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    array = (noisy * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array], f"synthetic images ({archive} not found)"


def view_features(views: torch.Tensor) -> dict[str, np.ndarray]:
    return {
        "mean": views.mean(dim=(1, 2, 3)).numpy(),
        "std": views.std(dim=(1, 2, 3)).numpy(),
        "saturation": (views.amax(dim=1) - views.amin(dim=1)).mean(dim=(1, 2)).numpy(),
        "gradient": (views[..., 1:] - views[..., :-1]).abs().mean(dim=(1, 2, 3)).numpy(),
    }


def time_ours(aug, batch, device, repeats=30):
    batch = batch.to(device)
    g = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    for _ in range(5):
        aug(batch, g)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        aug(batch, g)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def time_lightly(transform, images, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for im in images:
            transform(im)
        times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="simclr_cifar")
    parser.add_argument("--set", default="{}", help="JSON overrides, e.g. '{\"min_scale\": 0.2}'")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=4, help="views per image for statistics")
    parser.add_argument("--batch-size", type=int, default=256, help="batch for the timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--crop-draws", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None, help="write a PNG here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = {**PRESETS[args.preset], **json.loads(args.set)}
    aug = ViewAugmentation(**config)
    try:
        reference = lightly_view_transform(**config)
    except ImportError as err:  # e.g. a GPU box without lightly: our side only
        reference = None
        print(f"lightly unavailable ({err}); reference columns skipped")

    images, source = load_images(args.archive, args.n_images)
    batch = torch.stack([torch.from_numpy(np.array(im)) for im in images]).permute(0, 3, 1, 2)
    print(f"images: {len(images)} {source}")
    print(f"config ({args.preset}): {json.dumps(aug.config)}")

    # 1. crop area fractions
    n = args.crop_draws
    ours_scale = aug.sample_params(n, 32, 32, generator=torch.Generator().manual_seed(0))["scale"]
    torch.manual_seed(0)
    img = torch.zeros(1, 32, 32)
    crop_scale = (aug.min_scale, aug.max_scale)
    boxes = [RandomResizedCrop.get_params(img, crop_scale, [3 / 4, 4 / 3]) for _ in range(n)]
    tv_scale = np.array([h * w / 1024 for _, _, h, w in boxes])
    ks = stats.ks_2samp(ours_scale.numpy(), tv_scale)
    print(f"\ncrop area fraction on 32x32, {n} draws each (quantiles {QUANTILES}):")
    print("  ours        ", np.quantile(ours_scale.numpy(), QUANTILES).round(4))
    print("  torchvision ", np.quantile(tv_scale, QUANTILES).round(4))
    print(f"  KS D={ks.statistic:.4f} p={ks.pvalue:.3g}")

    # 2. view statistics
    gens = [torch.Generator().manual_seed(r) for r in range(args.repeats)]
    ours = torch.cat([aug(batch, g) for g in gens])
    print(f"\nview statistics over {len(ours)} views:")
    header = "  channel mean / mean within-view std: "
    print(header + "ours  ", ours.mean(dim=(0, 2, 3)).numpy().round(4), end=" / ")
    print(ours.std(dim=(2, 3)).mean(0).numpy().round(4))
    theirs = None
    if reference is not None:
        torch.manual_seed(0)
        np.random.seed(0)  # noqa: NPY002  lightly's blur/solarization use the global generator
        theirs = torch.stack([reference(im) for _ in range(args.repeats) for im in images])
        print(header + "lightly", theirs.mean(dim=(0, 2, 3)).numpy().round(4), end=" / ")
        print(theirs.std(dim=(2, 3)).mean(0).numpy().round(4))
        fo, ft = view_features(ours), view_features(theirs)
        for key in fo:
            result = stats.ks_2samp(fo[key], ft[key])
            print(
                f"  per-view {key:<10} ours {fo[key].mean():.4f} lightly {ft[key].mean():.4f}"
                f"  KS D={result.statistic:.4f} p={result.pvalue:.3g}"
            )

    # 3. speed
    timing_batch = batch[torch.arange(args.batch_size) % len(batch)]
    median, best = time_ours(aug, timing_batch, torch.device(args.device))
    device_name = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    ) + f", {torch.get_num_threads()} torch threads"
    print(f"\ntiming ({device_name}):")
    print(
        f"  ours, batch {args.batch_size}x3x32x32 uint8: median {median * 1e3:.2f} ms/batch "
        f"(best {best * 1e3:.2f}) = {median / args.batch_size * 1e6:.1f} us/image"
    )
    if reference is not None:
        per_image = time_lightly(reference, images[: min(len(images), 256)])
        print(
            f"  lightly per-image PIL transform: {per_image * 1e6:.1f} us/image "
            f"(one process); ratio {per_image / (median / args.batch_size):.1f}x"
        )

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 3 if theirs is not None else 2
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
        axes[0].plot(np.sort(ours_scale.numpy()), np.linspace(0, 1, n), label="ours")
        axes[0].plot(np.sort(tv_scale), np.linspace(0, 1, n), "--", label="torchvision")
        axes[0].set(xlabel="crop area fraction", ylabel="CDF", title=f"KS p={ks.pvalue:.2g}")
        axes[0].legend()
        fo = view_features(ours)
        ft = view_features(theirs) if theirs is not None else None
        for ax, key in zip(axes[1:], ("mean", "std"), strict=False):
            bins = np.linspace(0, fo[key].max() * 1.1, 41)
            ax.hist(fo[key], bins=bins, histtype="step", linewidth=1.5, label="ours")
            if ft is not None:
                ax.hist(ft[key], bins=bins, histtype="step", linewidth=1.5, label="lightly")
            ax.set(xlabel=f"per-view {key}", ylabel="views")
            ax.legend()
        fig.suptitle(f"{args.preset}: {source.split(' (')[0]}", fontsize=9)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
