"""Training throughput: labelfree's loop against the usual PIL-in-workers recipe, same device.

SimCLR with ResNet-18 (CIFAR stem) at batch 512 on 32x32 images (CIFAR-10 JPEGs from the archive,
or random images with --synthetic). Variants, each on a fresh model with the same seed:

  reference   lightly SimCLRTransform on PIL images in DataLoader workers, fp32, NCHW (usual recipe)
  ours        labelfree.train's epoch loop: uint8 images on the device, batched per-sample views
              (labelfree.views), bf16 autocast, channels_last; last, the same with each view's
              augmentation replayed as a CUDA graph (trainer.cuda_graphs=true)
  ablations   each change alone, to show where the speed comes from

With --eval it also times one full evaluation (metrics=full on the 10,000-image test split, probe
on the 50,000 train images) against one training epoch over the 50,000 train images.

    python scripts/bench_train.py --archive ../shared/data/cifar10-jpeg.tar.gz --eval
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from lightly.transforms import SimCLRTransform
from omegaconf import OmegaConf

from labelfree.backbones import build_backbone
from labelfree.data import build_dataset
from labelfree.distributed import World
from labelfree.evaluation import Evaluator
from labelfree.loop import Trainer, train_epoch
from labelfree.methods import build_method
from labelfree.optim import build_optimizer
from labelfree.views import PILViews, ViewLoader, build_views


def compose_cfg(root: str | None, overrides: list[str]):
    data = ["data=imagefolder", f"data.root={root}"] if root else ["data=cifar10"]
    with initialize_config_module("labelfree.conf", version_base="1.3"):
        return compose(
            "train", overrides=["method=simclr", "arch=resnet18_cifar", *data, *overrides]
        )


def new_model(cfg, device, channels_last: bool):
    torch.manual_seed(0)
    backbone, dim = build_backbone(cfg.arch, in_channels=3, image_size=32)
    model = build_method(cfg.method, backbone, dim).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.method.optimizer, batch_size=cfg.trainer.batch_size)
    return model, optimizer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_reference(cfg, images, device, *, precision, channels_last, steps, warmup, workers):
    """The usual recipe: lightly's SimCLRTransform per PIL image in DataLoader workers."""
    model, optimizer = new_model(cfg, device, channels_last)
    aug = OmegaConf.to_container(cfg.data.augment, resolve=True)
    transform = SimCLRTransform(
        input_size=32,
        cj_prob=aug["cj_prob"],
        cj_strength=aug["cj_strength"],
        min_scale=aug["min_scale"],
        random_gray_scale=aug["random_gray_scale"],
        gaussian_blur=aug["gaussian_blur"],
        hf_prob=aug["hf_prob"],
        normalize=aug["normalize"],
    )
    dataset = PILViews(images, [transform])  # SimCLRTransform returns both views of an image
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.trainer.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    done, start = 0, None
    while done < warmup + steps:
        for batch in loader:
            views = [v.to(device, non_blocking=True, memory_format=fmt) for v in batch[0]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model.loss(views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            if done == warmup + steps:
                break
    sync(device)
    return steps * cfg.trainer.batch_size / (time.perf_counter() - start)


def time_ours(cfg, images, device, *, precision, channels_last, epochs, cuda_graphs=False):
    """labelfree's epoch loop (``labelfree.loop.train_epoch``) fed by its ViewLoader (batched)."""
    model, optimizer = new_model(cfg, device, channels_last)
    aug = OmegaConf.to_container(cfg.data.augment, resolve=True)
    views = OmegaConf.to_container(cfg.method.views, resolve=True)
    loader = ViewLoader(
        images, aug, views, batch_size=cfg.trainer.batch_size, device=device,
        cuda_graphs=cuda_graphs,
    )  # fmt: skip
    trainer = Trainer(
        model=model, loss_fn=model.loss, optimizer=optimizer,
        base_lrs=[g["lr"] for g in optimizer.param_groups], loader=loader, world=World(),
        device=device, precision=precision, channels_last=channels_last, seed=0,
        epochs=epochs + 1, warmup_epochs=0,
    )  # fmt: skip
    start = None
    for epoch in range(epochs + 1):  # the first epoch warms up (cuDNN autotuning, allocator)
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        train_epoch(trainer, epoch=epoch + 1, step=epoch * len(loader))
    sync(device)
    return epochs * len(loader) * cfg.trainer.batch_size / (time.perf_counter() - start), model


def crop_scale_quantiles(n: int = 20000) -> dict:
    """Crop-area fractions of our sampler vs torchvision's RandomResizedCrop (what lightly uses)."""
    from torchvision.transforms import RandomResizedCrop

    ours = build_views({"input_size": 32, "min_scale": 0.08}, [{}])[0]
    g = torch.Generator().manual_seed(0)
    scale_ours = ours.sample_params(n, 32, 32, generator=g)["scale"].numpy()
    torch.manual_seed(0)
    ref = []
    for _ in range(n):
        _, _, h, w = RandomResizedCrop.get_params(
            torch.empty(3, 32, 32), (0.08, 1.0), (3 / 4, 4 / 3)
        )
        ref.append(h * w / 1024)
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    return {
        "quantiles": qs,
        "ours": np.quantile(scale_ours, qs).round(3).tolist(),
        "torchvision": np.quantile(ref, qs).round(3).tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archive", help="cifar10-jpeg.tar.gz (else --synthetic)")
    p.add_argument("--synthetic", action="store_true", help="random 32x32 images instead of CIFAR")
    p.add_argument(
        "--images", type=int, default=10240, help="training images for the throughput runs"
    )
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed steps of the reference loop")
    p.add_argument(
        "--epochs", type=int, default=1, help="timed epochs of our loop (images/batch steps each)"
    )
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--eval", action="store_true", help="also time a full evaluation vs a training epoch"
    )
    p.add_argument("--train-per-class", type=int, help="class-balanced train subset (default: all)")
    p.add_argument("--test-per-class", type=int, help="class-balanced test subset (default: all)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    root = None
    if args.archive:
        from labelfree.data import extract_archive

        root = str(
            extract_archive(args.archive, Path(tempfile.gettempdir()) / "labelfree-cifar10-jpeg")
        )
    overrides = [f"trainer.batch_size={args.batch_size}", "metrics=full"]
    if args.train_per_class:
        overrides.append(f"data.train_per_class={args.train_per_class}")
    if args.test_per_class:
        overrides.append(f"data.test_per_class={args.test_per_class}")
    cfg = compose_cfg(root, overrides)
    if args.synthetic or root is None:
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
        dataset = None
    else:
        dataset = build_dataset(cfg.data)
        images = dataset.train.images[torch.randperm(len(dataset.train))[: args.images]]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device: {name} | torch {torch.__version__} | {len(images)} images | "
        f"batch {args.batch_size} | {args.workers} workers"
    )

    results = {
        "device": name,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "images": len(images),
    }
    variants = [
        ("reference: PIL workers, fp32, NCHW", "reference", "fp32", False),
        ("reference + bf16 + channels_last", "reference", "bf16", True),
        ("ours: batched on device, fp32, NCHW", "ours", "fp32", False),
        ("ours: batched on device, bf16, channels_last", "ours", "bf16", True),
        ("ours + CUDA graphs for the views", "ours+graphs", "bf16", True),
    ]
    rates = {}
    for label, loop, precision, cl in variants:
        if loop == "ours+graphs" and device.type != "cuda":
            continue  # CUDA graphs need a GPU
        if loop == "reference":
            rate = time_reference(
                cfg,
                images,
                device,
                precision=precision,
                channels_last=cl,
                steps=args.steps,
                warmup=3,
                workers=args.workers,
            )
        else:
            rate, _ = time_ours(
                cfg, images, device, precision=precision, channels_last=cl, epochs=args.epochs,
                cuda_graphs=loop == "ours+graphs",
            )  # fmt: skip
        rates[label] = rate
        print(f"{label:<48} {rate:10.0f} images/s")
    ref, ours = rates[variants[0][0]], max(v for k, v in rates.items() if k.startswith("ours"))
    print(f"speed-up ours (best variant) / reference: {ours / ref:.2f}x")
    results["images_per_s"] = rates
    results["speedup"] = ours / ref
    results["crop_scale"] = crop_scale_quantiles()
    print("crop area fraction quantiles", results["crop_scale"])

    if args.eval and dataset is not None:
        rate, model = time_ours(
            cfg, dataset.train.images, device, precision="bf16", channels_last=True, epochs=1
        )
        epoch_s = len(dataset.train) / rate
        evaluator = Evaluator(
            dataset,
            cfg.metrics,
            normalize=cfg.data.normalize,
            device=device,
            precision="bf16",
            seed=0,
        )
        evaluator(model, epoch=0)  # warm-up (kernels, cuBLAS handles)
        sync(device)
        start = time.perf_counter()
        metrics = evaluator(model, epoch=1)
        sync(device)
        eval_s = time.perf_counter() - start
        print(
            f"one training epoch ({len(dataset.train)} images): {epoch_s:.1f} s | "
            f"one full evaluation ({len(dataset.test)} test, {len(dataset.train)} probe-train): "
            f"{eval_s:.1f} s | "
            f"ratio {eval_s / epoch_s:.2f}"
        )
        results.update(epoch_s=epoch_s, eval_s=eval_s, eval_metrics=metrics)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
