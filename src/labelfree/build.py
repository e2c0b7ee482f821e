"""From a config to the objects of a run: checks, device, precision, data, model, evaluator.

One copy of each, used by ``labelfree-train`` and by ``labelfree-eval checkpoint=``.

The checks that need no data (:func:`validate_config`) run before anything is built; the ones
that need the dataset (:func:`validate_data`) right after it is loaded. Each failure is one line
naming the key, the value and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

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

log = logging.getLogger(__name__)

#: ``trainer.augmentation`` values: ``auto`` resolves to one of the two view paths.
AUGMENTATIONS = ("auto", "batched", "lightly")
#: Fewest DataLoader workers from which lightly's PIL views outrun our batched views on a GPU
#: (:func:`choose_augmentation`).
LIGHTLY_MIN_WORKERS = 9
#: Most DataLoader workers ``trainer.num_workers=auto`` starts (the reference recipe's 16).
MAX_AUTO_WORKERS = 16
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


def choose_augmentation(device_type: str, *, workers: int) -> str:
    """The faster view path for a device and a number of DataLoader workers (``auto``'s rule).

    Rule: ``lightly`` (lightly's PIL transforms in ``workers`` DataLoader processes) on CUDA when
    at least :data:`LIGHTLY_MIN_WORKERS` (9) workers feed the GPU; ``batched`` (our per-sample
    views made on the device) otherwise, and always on a CPU. Measurements (docs/benchmarks.md):

    - CUDA, H100 with 16 cores, SimCLR ResNet-18 (CIFAR stem), batch 512, bf16 + channels_last:
      our batched loop 11,511 images/s (bound by its ~200 kernel launches per view on one core),
      the PIL recipe with 16 workers 21,722, so at least 1,358 images/s per worker (more if the
      GPU was its limit). The workers win once ``workers x 1,358 > 11,511``: from 9 workers.
    - CPU, this project's 2-core machine, CIFAR images at 32 px: the two views of an image cost
      115 us of CPU batched and 1,167 us with lightly's transforms, the SimCLR step of small_cnn
      4,258 us. On a CPU the workers take their cores from the training step itself, so the
      batched path needs less CPU per image (4.4 ms against 5.4) on any number of cores. End to
      end it was faster in the least-loaded rounds (450 against 320 images/s) and within the
      noise of the shared machine under heavy load.

    Args:
        device_type: ``cuda`` or ``cpu`` (``torch.device.type``).
        workers: DataLoader workers the ``lightly`` path would get (``trainer.num_workers``
            resolved).

    Returns:
        ``batched`` or ``lightly``.

    Examples:
        >>> choose_augmentation("cuda", workers=15), choose_augmentation("cuda", workers=4)
        ('lightly', 'batched')
        >>> choose_augmentation("cpu", workers=63)
        'batched'
    """
    return "lightly" if device_type == "cuda" and workers >= LIGHTLY_MIN_WORKERS else "batched"


def cpus_per_process(environ: Mapping[str, str] = os.environ) -> int:
    """CPU cores this training process may use: its affinity mask, shared by the node's ranks.

    Under torchrun every rank of a node sees all its cores, so they are divided by
    ``LOCAL_WORLD_SIZE``. A SLURM task (``SLURM_CPUS_PER_TASK`` set) gets at most its
    ``cpus_per_task``: clusters that bind tasks to cores (``task/affinity``, ``task/cgroup``)
    show it only those in its mask, but one without binding (``task/none``, as in
    scripts/slurm_cluster.sh) shows it every core of the node.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        cores = os.cpu_count() or 1
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) >= 1:
        return min(cores, int(slurm))
    return max(1, cores // max(1, int(environ.get("LOCAL_WORLD_SIZE", 1))))


def resolve_num_workers(spec: int | str, *, cores: int | None = None) -> int:
    """``auto`` -> one DataLoader worker per core of this process but one (kept for training).

    At most :data:`MAX_AUTO_WORKERS`; an integer is returned as it is.

    Examples:
        >>> resolve_num_workers("auto", cores=16), resolve_num_workers("auto", cores=2)
        (15, 1)
        >>> resolve_num_workers(4, cores=2)
        4
    """
    if spec != "auto":
        return int(spec)
    cores = cpus_per_process() if cores is None else cores
    return min(MAX_AUTO_WORKERS, max(0, cores - 1))


def resolve_augmentation(
    spec: str, device: torch.device, *, workers: int, saved: Mapping | None = None
) -> str:
    """The view path a launch trains with: ``batched`` or ``lightly``.

    ``trainer.augmentation`` changes the run's random streams, so ``auto`` never switches the
    path of a run under way: with a saved config (the checkpoint's, or run.json's) it keeps the
    path recorded there, e.g. a run started on a GPU node with ``lightly`` resumes with
    ``lightly`` on a CPU node. Otherwise ``auto`` follows :func:`choose_augmentation`; an explicit
    value is returned as it is (a resume diff refuses it if the saved path differs).

    Args:
        spec: ``trainer.augmentation`` as launched.
        device: The training device.
        workers: DataLoader workers of the ``lightly`` path (resolved).
        saved: The run's saved config, if it has one.
    """
    if spec != "auto":
        return spec
    kept = (saved or {}).get("trainer", {}).get("augmentation")
    if kept in ("batched", "lightly"):
        log.info("trainer.augmentation=auto: keeping the run's view path, %s", kept)
        return kept
    chosen = choose_augmentation(device.type, workers=workers)
    log.info(
        "trainer.augmentation=auto -> %s (%s, %d DataLoader workers for lightly's path)",
        chosen,
        device.type,
        workers,
    )
    return chosen


def compile_model(model: SSLMethod) -> None:
    """``torch.compile`` the backbone and heads of a method in place (``trainer.compile=true``).

    Each child module with parameters (backbone, projector, predictor, momentum targets) is
    compiled with ``nn.Module.compile``, which keeps parameter names, so checkpoints load with or
    without it; the losses (and MoCo's queue inside them) stay eager.
    """
    for child in model.children():
        if any(True for _ in child.parameters()):
            child.compile()


def limit_cpu_threads(environ: Mapping[str, str] = os.environ) -> int:
    """Under SLURM, use as many CPU threads as the task has cores; returns PyTorch's thread count.

    PyTorch, OpenMP and BLAS start one thread per core of the machine, not of the allocation:
    a 1-CPU SLURM task on a 64-core node would run 64 threads on its one core. When
    ``SLURM_CPUS_PER_TASK`` is set and ``OMP_NUM_THREADS`` is not (the user's choice wins),
    PyTorch (``torch.set_num_threads``) and the OpenMP and BLAS pools of numpy, scipy and
    scikit-learn (threadpoolctl) are limited to :func:`cpus_per_process` threads. Outside SLURM
    nothing changes (torchrun sets ``OMP_NUM_THREADS`` itself).
    """
    if "OMP_NUM_THREADS" in environ or "SLURM_CPUS_PER_TASK" not in environ:
        return torch.get_num_threads()
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency

    threads = cpus_per_process(environ)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # called, not entered: the limit stays for the process
    log.info(
        "SLURM_CPUS_PER_TASK=%s: PyTorch, OpenMP and BLAS use %d thread(s) (set OMP_NUM_THREADS "
        "to choose another number)",
        environ["SLURM_CPUS_PER_TASK"],
        threads,
    )
    return torch.get_num_threads()


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
            f"{', '.join(AUGMENTATIONS)}: set trainer.augmentation=auto."
        )
    workers = cfg.trainer.num_workers
    if workers != "auto" and (not _is_int(workers) or workers < 0):
        raise ValueError(
            f"trainer.num_workers={workers} must be auto or an integer >= 0: e.g. "
            "trainer.num_workers=auto."
        )
    for key in ("cuda_graphs", "compile"):
        value = cfg.trainer[key]
        if not isinstance(value, bool):
            raise ValueError(
                f"trainer.{key}={value} must be true or false: set trainer.{key}=false."
            )
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
    cfg: DictConfig,
    dataset: Dataset,
    *,
    device: torch.device,
    world: World,
    augmentation: str,
    num_workers: int,
) -> ViewLoader:
    """The training views of ``dataset``, this rank's share of every global batch.

    ``data.augment`` with the per-view overrides of ``method.views`` (:class:`ViewLoader`), made
    by the view path ``augmentation`` (resolved: :func:`resolve_augmentation`) with
    ``num_workers`` DataLoader workers for the ``lightly`` path.
    """
    return ViewLoader(
        dataset.train.images,
        as_container(cfg.data.augment),
        as_container(cfg.method.views),
        batch_size=cfg.trainer.batch_size,
        backend=augmentation,
        device=device,
        num_workers=num_workers,
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
