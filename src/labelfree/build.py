"""From a config to the objects of a run: checks, device, precision, data, model, evaluator.

One copy of each, used by ``labelfree-train`` and by ``labelfree-eval checkpoint=``.

The checks that need no data (:func:`validate_config`) run before anything is built; the ones
that need the dataset (:func:`validate_data`) right after it is loaded. Each failure is one line
naming the key, the value and the fix.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from labelfree.backbones import build_backbone
from labelfree.config import as_container
from labelfree.data import Dataset, build_dataset
from labelfree.distributed import World, set_gather_distributed
from labelfree.evaluation import Evaluator, eval_epochs
from labelfree.methods import SSLMethod, build_method
from labelfree.metrics import check_metrics_config
from labelfree.optim import check_optimizer_config
from labelfree.views import ViewLoader, build_views

#: ``trainer.augmentation`` values.
AUGMENTATIONS = ("batched", "lightly")
#: ``trainer.precision`` values.
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(spec: str | torch.device | None, *, key: str = "trainer.device") -> torch.device:
    """``auto`` (or None) -> CUDA when present, else CPU; anything else is a ``torch.device``.

    Raises:
        ValueError: not a device name, or CUDA asked for where there is none (naming ``key``).
    """
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(
            f"{key}={spec} is not a torch device: use auto, cpu, cuda or cuda:1."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}={spec} but CUDA is not available here: use {key}=auto or cpu.")
    return device


def resolve_precision(spec: str, device: torch.device) -> str:
    """``auto`` -> bf16 autocast on CUDA, fp32 elsewhere."""
    if spec not in PRECISIONS:
        raise ValueError(f"trainer.precision={spec} is not one of: {', '.join(PRECISIONS)}.")
    if spec == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return spec


def resolve_channels_last(spec: bool | str, device: torch.device) -> bool:
    """``auto`` -> channels_last memory format on CUDA (faster bf16 convolutions), not on CPU."""
    if spec == "auto":
        return device.type == "cuda"
    if not isinstance(spec, bool):
        raise ValueError(f"trainer.channels_last={spec} is not one of: auto, true, false.")
    return spec


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data: each failure is one line naming the key, the value and the fix."""
    for key in ("trainer.epochs", "trainer.batch_size"):
        value = OmegaConf.select(cfg, key)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key}={value} must be a positive integer: set {key}=<n >= 1>.")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise ValueError(
            f"seed={cfg.seed!r} must be a non-negative integer: set seed=0 (or 1, 2...)."
        )
    warmup = cfg.trainer.warmup_epochs
    if not _is_int(warmup) or warmup < 0:
        raise ValueError(
            f"trainer.warmup_epochs={warmup!r} must be an integer >= 0: e.g. "
            "trainer.warmup_epochs=2."
        )
    check_optimizer_config(cfg.method.optimizer)
    if cfg.resume in ("", None):
        raise ValueError("resume is empty: use resume=auto | never | restart | PATH.")
    if cfg.trainer.augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"trainer.augmentation={cfg.trainer.augmentation} is not one of: "
            f"{', '.join(AUGMENTATIONS)}."
        )
    if not isinstance(cfg.trainer.cuda_graphs, bool):
        raise ValueError(f"trainer.cuda_graphs={cfg.trainer.cuda_graphs} must be true or false.")
    if cfg.eval.embedding not in ("backbone", "projector"):
        raise ValueError(f"eval.embedding={cfg.eval.embedding} is not one of: backbone, projector.")
    eval_epochs(cfg.eval.schedule, cfg.trainer.epochs)


def validate_data(cfg: DictConfig, dataset: Dataset) -> None:
    """Checks that need the loaded dataset."""
    if cfg.trainer.batch_size > len(dataset.train):
        raise ValueError(
            f"trainer.batch_size={cfg.trainer.batch_size} is larger than the "
            f"{len(dataset.train)} training "
            f"images of data={dataset.name}: set trainer.batch_size<={len(dataset.train)}."
        )
    check_metrics_config(
        cfg.metrics,
        n_samples=len(dataset.test),
        n_classes=dataset.num_classes,
        n_train=len(dataset.train),
    )


def build_model(cfg: DictConfig, world: World | None = None) -> tuple[Dataset, SSLMethod]:
    """The dataset and the SSL method (seeded backbone and heads) described by ``cfg``.

    Under DDP (``world``) a method's ``gather_distributed`` option is switched on.
    """
    dataset = build_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    backbone, dim = build_backbone(
        cfg.arch, in_channels=dataset.channels, image_size=dataset.image_size
    )
    method_cfg = set_gather_distributed(as_container(cfg.method), world or World())
    return dataset, build_method(method_cfg, backbone, dim)


def build_loader(
    cfg: DictConfig, dataset: Dataset, *, device: torch.device, world: World
) -> ViewLoader:
    """The training views of ``dataset``, this rank's share of every global batch.

    ``data.augment`` with the per-view overrides of ``method.views`` (:class:`ViewLoader`).
    """
    return ViewLoader(
        dataset.train.images,
        as_container(cfg.data.augment),
        as_container(cfg.method.views),
        batch_size=cfg.trainer.batch_size,
        backend=cfg.trainer.augmentation,
        device=device,
        num_workers=cfg.trainer.num_workers,
        rank=world.rank,
        world_size=world.world_size,
        cuda_graphs=cfg.trainer.cuda_graphs,
    )


def build_evaluator(cfg: DictConfig, dataset: Dataset, *, device: torch.device) -> Evaluator:
    """The run's evaluator, as training builds it.

    Its metrics, embedding, batch size, probe split and seed, and the precision that
    ``trainer.precision`` resolves to on ``device``. With ``lidar`` in ``metrics.compute`` it
    also gets the view augmentation of ``data.augment`` (the options all training views share;
    a method's per-view overrides, e.g. BYOL's asymmetric blur, are left out), batched on
    ``device`` whatever ``trainer.augmentation`` says.
    """
    augment = None
    if "lidar" in cfg.metrics.compute:
        (augment,) = build_views(as_container(cfg.data.augment), [{}])
    return Evaluator(
        dataset,
        cfg.metrics,
        normalize=as_container(cfg.data.normalize),
        device=device,
        embedding=cfg.eval.embedding,
        batch_size=cfg.eval.batch_size,
        train_per_class=cfg.eval.train_per_class,
        precision=resolve_precision(cfg.trainer.precision, device),
        seed=cfg.seed,
        augment=augment,
    )
