"""Training throughput: labelfree's loop against the usual PIL-in-workers recipe, same device.

SimCLR with ResNet-18 (CIFAR stem; --arch for another) at batch 512 on 32x32 images (CIFAR-10
JPEGs from the archive or from --root, the folder it was extracted into, or random images with
--synthetic). Variants (--variants, default all that run on the device), each on a fresh model
with the same seed:

  ref-fp32       lightly SimCLRTransform on PIL images in DataLoader workers, fp32, NCHW
  ref-bf16-cl    the same with bf16 autocast and channels_last (the usual recipe, tuned)
  ours-fp32      labelfree's epoch loop (labelfree.loop.train_epoch) with batched views, fp32, NCHW
  ours-bf16-cl   the same with bf16 autocast and channels_last (trainer.augmentation=batched)
  ours-lightly   our loop fed by lightly's PIL views in workers (trainer.augmentation=lightly),
                 with the device's precision and memory format
  ours-graphs    ours-bf16-cl with each view replayed as a CUDA graph (trainer.cuda_graphs=true)
  auto           what labelfree-train runs by default here: trainer.augmentation=auto's choice
                 (labelfree.build.choose_augmentation) with --workers workers
  ours-compile   ours-bf16-cl (fp32 NCHW on a CPU) with torch.compile (trainer.compile=true)

The JSON (--json) is rewritten after every variant, so a run stopped by a time limit keeps what
finished. With --eval it also times one full evaluation (metrics=full on the 10,000-image test
split, probe on the 50,000 train images) against one training epoch over the 50,000 train images.

    python scripts/bench_train.py --archive ../shared/data/cifar10-jpeg.tar.gz --eval
    python scripts/bench_train.py --archive ... --device cpu --arch small_cnn --batch-size 256 \
        --variants ours-fp32,ours-lightly --workers 1 --repeats 6 --view-cost  # CPU numbers of auto
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from lightly.transforms import SimCLRTransform
from omegaconf import OmegaConf

from labelfree.backbones import build_backbone
from labelfree.build import (
    choose_augmentation,
    compile_model,
    resolve_channels_last,
    resolve_num_workers,
    resolve_precision,
)
from labelfree.data import build_dataset
from labelfree.distributed import World
from labelfree.evaluation import Evaluator
from labelfree.loop import Trainer, train_epoch
from labelfree.methods import build_method
from labelfree.optim import build_optimizer
from labelfree.views import PILViews, ViewLoader, build_views, lightly_view_transform

#: variant -> (label, loop, precision, channels_last, options); None: the device's default.
VARIANTS = {
    "ref-fp32": ("reference: PIL workers, fp32, NCHW", "reference", "fp32", False, {}),
    "ref-bf16-cl": ("reference + bf16 + channels_last", "reference", "bf16", True, {}),
    "ours-fp32": ("ours: batched on device, fp32, NCHW", "ours", "fp32", False, {}),
    "ours-bf16-cl": ("ours: batched on device, bf16, channels_last", "ours", "bf16", True, {}),
    "ours-lightly": ("ours: lightly PIL views in workers", "ours", None, None, {"lightly": True}),
    "ours-graphs": ("ours + CUDA graphs for the views", "ours", "bf16", True, {"graphs": True}),
    "auto": ("auto: trainer.augmentation=auto's choice", "ours", None, None, {"auto": True}),
    "ours-compile": (
        "ours + torch.compile",
        "ours",
        None,
        None,
        {"compile": True},
    ),  # slowest start
}
#: Variants that need CUDA.
CUDA_ONLY = ("ref-bf16-cl", "ours-bf16-cl", "ours-graphs")


def compose_cfg(root: str | None, arch: str, overrides: list[str]):
    data = ["data=imagefolder", f"data.root={root}"] if root else ["data=cifar10"]
    with initialize_config_module("labelfree.conf", version_base="1.3"):
        return compose("train", overrides=["method=simclr", f"arch={arch}", *data, *overrides])


def new_model(cfg, device, channels_last: bool):
    torch.manual_seed(0)
    backbone, dim = build_backbone(cfg.arch, in_channels=3, image_size=32)
    model = build_method(cfg.method, backbone, dim).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.method.optimizer, batch_size=cfg.trainer.batch_size)
    return model, optimizer


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers), user + system."""
    return sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


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


def time_ours(
    cfg, images, device, *, precision, channels_last, epochs, cuda_graphs=False,
    backend="batched", workers=0, compiled=False,
):  # fmt: skip
    """labelfree's epoch loop (``labelfree.loop.train_epoch``) fed by its ViewLoader."""
    model, optimizer = new_model(cfg, device, channels_last)
    if compiled:
        compile_model(model)
    aug = OmegaConf.to_container(cfg.data.augment, resolve=True)
    views = OmegaConf.to_container(cfg.method.views, resolve=True)
    loader = ViewLoader(
        images, aug, views, batch_size=cfg.trainer.batch_size, device=device,
        cuda_graphs=cuda_graphs, backend=backend, num_workers=workers,
    )  # fmt: skip
    trainer = Trainer(
        model=model, loss_fn=model.loss, optimizer=optimizer,
        base_lrs=[g["lr"] for g in optimizer.param_groups], loader=loader, world=World(),
        device=device, precision=precision, channels_last=channels_last, seed=0,
        epochs=epochs + 1, warmup_epochs=0,
    )  # fmt: skip
    start = None
    for epoch in range(epochs + 1):  # the first warms up (cuDNN autotuning, allocator, compile)
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        train_epoch(trainer, epoch=epoch + 1, step=epoch * len(loader))
    sync(device)
    return epochs * len(loader) * cfg.trainer.batch_size / (time.perf_counter() - start), model


def view_costs(cfg, images, *, repeats: int = 7) -> dict:
    """CPU cost per image (microseconds, both views): batched views, lightly's, the SSL step.

    One torch thread and the thread's own CPU time, so a shared machine's load inflates it little
    (unlike wall-clock rates); least and median over ``repeats`` batches.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, optimizer = new_model(cfg, torch.device("cpu"), channels_last=False)
    aug = OmegaConf.to_container(cfg.data.augment, resolve=True)
    per_view = OmegaConf.to_container(cfg.method.views, resolve=True)
    views = build_views(aug, per_view)
    pil = PILViews(images, [lightly_view_transform(**{**aug, **v}) for v in per_view])
    generator = torch.Generator().manual_seed(0)
    costs = {"batched": [], "lightly": [], "step": []}
    for _ in range(repeats):
        start = time.thread_time()
        batch = [view(images, generator=generator) for view in views]
        costs["batched"].append(time.thread_time() - start)
        start = time.thread_time()
        for i in range(len(images)):
            pil[i]
        costs["lightly"].append(time.thread_time() - start)
        start = time.thread_time()
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        costs["step"].append(time.thread_time() - start)
    torch.set_num_threads(threads)
    scale = 1e6 / len(images)
    return {
        k: {"least": min(v) * scale, "median": float(np.median(v)) * scale}
        for k, v in costs.items()
    }


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
    p.add_argument("--archive", help="cifar10-jpeg.tar.gz (else --root or --synthetic)")
    p.add_argument("--root", help="an extracted archive: the folder holding train/ and test/")
    p.add_argument("--synthetic", action="store_true", help="random 32x32 images instead of CIFAR")
    p.add_argument("--arch", default="resnet18_cifar", help="conf/arch option")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)} (CUDA-only ones skip on a CPU)",
    )
    p.add_argument(
        "--crop-draws", type=int, default=20000, help="draws for the crop-area quantiles"
    )
    p.add_argument(
        "--view-cost",
        action="store_true",
        help="also the CPU cost per image of each view path and of the step (1 thread)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override"
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="rounds over the variants (median reported)"
    )
    p.add_argument(
        "--images", type=int, default=10240, help="training images for the throughput runs"
    )
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed steps of the reference loop")
    p.add_argument(
        "--epochs", type=int, default=1, help="timed epochs of our loop (images/batch steps each)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=resolve_num_workers("auto"),
        help="DataLoader workers of the PIL paths (default: what trainer.num_workers=auto gives)",
    )
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

    root = args.root
    if args.archive and not root:
        from labelfree.data import extract_archive

        root = str(
            extract_archive(args.archive, Path(tempfile.gettempdir()) / "labelfree-cifar10-jpeg")
        )
    overrides = [f"trainer.batch_size={args.batch_size}", "metrics=full", *args.set]
    if args.train_per_class:
        overrides.append(f"data.train_per_class={args.train_per_class}")
    if args.test_per_class:
        overrides.append(f"data.test_per_class={args.test_per_class}")
    cfg = compose_cfg(root, args.arch, overrides)
    if args.synthetic or root is None:
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
        dataset = None
    else:
        dataset = build_dataset(cfg.data)
        images = dataset.train.images[torch.randperm(len(dataset.train))[: args.images]]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(
        f"device: {name} | torch {torch.__version__} | {args.arch} | {len(images)} images | "
        f"batch {args.batch_size} | {args.workers} workers | {os.cpu_count()} CPUs, load {load}"
    )
    chosen = choose_augmentation(device.type, workers=args.workers)
    results = {
        "device": name,
        "torch": torch.__version__,
        "arch": args.arch,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_before": load,
        "images": len(images),
        "auto_choice": chosen,
        "images_per_s": {},
        "repeats": {},
        "images_per_cpu_s": {},
        "load": {},
    }

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from: {', '.join(VARIANTS)}")
    rates, runs = results["images_per_s"], results["repeats"]
    plan = [k for k in wanted if not (k in CUDA_ONLY and device.type != "cuda")]
    for round_ in range(args.repeats):  # round-robin: a shared machine's load hits every variant
        for key in plan:
            label, loop, precision, cl, options = VARIANTS[key]
            precision = precision or resolve_precision("auto", device)
            cl = resolve_channels_last("auto", device) if cl is None else cl
            lightly = options.get("lightly") or (options.get("auto") and chosen == "lightly")
            if options.get("auto"):
                label = f"{label} ({chosen})"
            cpu_start = cpu_seconds()
            if loop == "reference":
                done = (3 + args.steps) * args.batch_size
                rate = time_reference(
                    cfg, images, device, precision=precision, channels_last=cl,
                    steps=args.steps, warmup=3, workers=args.workers,
                )  # fmt: skip
            else:
                done = (args.epochs + 1) * (len(images) // args.batch_size) * args.batch_size
                rate, _ = time_ours(
                    cfg, images, device, precision=precision, channels_last=cl,
                    epochs=args.epochs, cuda_graphs=options.get("graphs", False),
                    backend="lightly" if lightly else "batched", workers=args.workers,
                    compiled=options.get("compile", False),
                )  # fmt: skip
            # images per CPU-second (warm-up included) depends less on a shared machine's load
            per_cpu = done / (cpu_seconds() - cpu_start)
            runs.setdefault(label, []).append(rate)
            results["images_per_cpu_s"].setdefault(label, []).append(per_cpu)
            rates[label] = float(np.median(runs[label]))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            results["load"].setdefault(label, []).append(load)
            print(
                f"[{round_ + 1}/{args.repeats}] {label:<48} {rate:8.0f} images/s "
                f"(median {rates[label]:.0f}) | {per_cpu:6.0f} images/CPU-s | load {load:.1f}",
                flush=True,
            )
            save()
    refs = [v for k, v in rates.items() if k.startswith("reference: PIL workers, fp32")]
    ours = [v for k, v in rates.items() if k.startswith(("ours", "auto"))]
    if refs and ours:
        results["speedup"] = max(ours) / refs[0]
        print(f"speed-up ours (best variant) / reference: {results['speedup']:.2f}x")
    if args.view_cost:
        results["view_cost_us_per_image"] = view_costs(cfg, images[: args.batch_size])
        for key, cost in results["view_cost_us_per_image"].items():
            print(
                f"CPU cost per image, {key}: {cost['least']:.0f} us (median {cost['median']:.0f})"
            )
    results["crop_scale"] = crop_scale_quantiles(args.crop_draws)
    print("crop area fraction quantiles", results["crop_scale"])
    save()

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
        save()


if __name__ == "__main__":
    main()
