"""Datasets for SSL training and evaluation, held in memory as uint8 image tensors.

Every dataset yields two labelled splits of images at ``image_size``: ``train`` (the SSL training
set; its labels are used only by the linear probe and kNN references, never by the SSL loss) and
``test`` (the evaluation split that the label-free metrics are computed on). Views for the SSL loss
are made from the uint8 tensors by :mod:`labelfree.views` (batched, on the training device, or by
lightly's per-image transforms, the reference recipe); both take parameters from ``data.augment``.

Registry: ``DATASETS[loader]`` is a loader ``(**kwargs) -> (train, test, classes)``; the keys of
``conf/data/<loader>.yaml`` other than :data:`CONFIG_ONLY_KEYS` are its keyword arguments.
``data.name`` is the dataset's identity in run names and tables (for ``imagefolder`` the folder's
name, so two folders are two datasets); ``data.loader`` picks the loader.
"""

from __future__ import annotations

import fcntl
import logging
import tarfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

# Keys of a data config that describe the dataset to other groups rather than feed its loader.
CONFIG_ONLY_KEYS = ("name", "loader", "channels", "num_classes", "normalize", "augment")


@dataclass(frozen=True)
class Split:
    """Labelled images of one split.

    Attributes:
        images: (N, C, H, W) uint8 tensor.
        labels: (N,) int64 tensor of class indices.
    """

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """Train split (labels hidden from the SSL loss) and test split of one dataset."""

    name: str
    train: Split
    test: Split
    classes: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Image channels (1 grey, 3 colour)."""
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image side length in pixels."""
        return int(self.train.images.shape[-1])


def _resize(images: Tensor, size: int) -> Tensor:
    """Resize a uint8 (N, C, H, W) batch to size x size with antialiased bilinear interpolation."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def balanced_subset(labels: np.ndarray, per_class: int | None, *, seed: int) -> np.ndarray:
    """Indices of a class-balanced random subset with ``per_class`` samples of every class.

    Args:
        labels: (N,) class indices.
        per_class: samples per class, or None for all samples (returned in their original order).
        seed: seed of the draw, so every run of a sweep sees the same subset.

    Raises:
        ValueError: when a class has fewer than ``per_class`` samples.
    """
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(
                f"Class {c} has only {len(members)} samples but {per_class} per class were "
                f"requested: lower data.train_per_class / data.test_per_class to at most "
                f"{len(members)}."
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _split(images: Tensor, labels: np.ndarray, per_class: int | None, seed: int) -> Split:
    idx = balanced_subset(labels, per_class, seed=seed)
    return Split(images[torch.from_numpy(idx)], torch.as_tensor(labels[idx], dtype=torch.int64))


def load_digits(
    *,
    image_size: int = 16,
    test_fraction: float = 0.25,
    split_seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> tuple[Split, Split, list[str]]:
    """scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes), upsampled.

    Shipped with scikit-learn, so it works offline anywhere: the embedded default dataset.
    A stratified split with ``split_seed`` holds out ``test_fraction`` of the images.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    images = _resize(pixels, image_size)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    train = _split(images[train_idx], labels[train_idx], train_per_class, split_seed)
    test = _split(images[test_idx], labels[test_idx], test_per_class, split_seed + 1)
    return train, test, [str(d) for d in range(10)]


def load_cifar(
    *,
    variant: str = "CIFAR10",
    root: str = "data",
    download: bool = False,
    image_size: int = 32,
    split_seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> tuple[Split, Split, list[str]]:
    """CIFAR-10 or CIFAR-100 through torchvision (50,000 train / 10,000 test 32x32 colour images).

    Args:
        variant: ``CIFAR10`` (10 classes) or ``CIFAR100`` (100 classes): the torchvision class.
        root: folder holding (or receiving, with ``download``) the torchvision files.
        download: fetch the files when missing (needs internet).
        image_size: side length after resizing (32 keeps the originals).
        split_seed: seed of the class-balanced subsets.
        train_per_class: training images per class (None: all).
        test_per_class: test images per class (None: all).
    """
    import torchvision.datasets

    dataset_cls = getattr(torchvision.datasets, variant)
    splits = []
    for train, per_class, seed in (
        (True, train_per_class, split_seed),
        (False, test_per_class, split_seed + 1),
    ):
        try:
            ds = dataset_cls(root=str(Path(root).expanduser()), train=train, download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
            raise FileNotFoundError(
                f"{variant} not found under data.root={root} ({err}). Set data.download=true "
                f"to download it there, or data.root=<folder that holds it>."
            ) from None
        images = _resize(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), image_size)
        splits.append(_split(images, np.asarray(ds.targets, dtype=np.int64), per_class, seed))
    return splits[0], splits[1], list(ds.classes)


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a .tar/.tar.gz archive into ``dest`` once (a marker file records completion).

    Concurrent callers (the jobs of a local sweep starting at once) take turns on an OS lock
    beside ``dest``: one extracts, the others wait and find the marker.

    Returns the folder that holds ``train/`` and ``test/``: ``dest`` or its single top folder.
    """
    archive, dest = Path(archive).expanduser(), Path(dest).expanduser()
    marker = dest / ".extracted"
    if not marker.exists():
        if not archive.is_file():
            raise FileNotFoundError(
                f"data.archive={archive} does not exist: point data.archive at the .tar.gz "
                f"(e.g. ../shared/data/cifar10-jpeg.tar.gz) or data.root at an extracted folder."
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.parent / f".{dest.name}.extract.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
            if not marker.exists():
                log.info("Extracting %s into %s", archive, dest)
                dest.mkdir(parents=True, exist_ok=True)
                with tarfile.open(archive) as tar:
                    tar.extractall(dest, filter="data")
                marker.touch()
    if (dest / "train").is_dir():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir() and (p / "train").is_dir()]
    return subdirs[0] if len(subdirs) == 1 else dest


def _decode(path: str, mode: str, size: int) -> np.ndarray | str:
    """The image as a (size, size, C) uint8 array, or why it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)  # decodes the whole file: a truncated one fails here
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # PIL's decode errors
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_all(
    paths: list[str], mode: str, size: int, *, threads: int, skip_bad: bool
) -> tuple[list[np.ndarray], list[int]]:
    """Decode every file; returns the arrays and the indices kept.

    Bad files stop the load (naming the first 10) unless ``skip_bad``, which leaves them out and
    logs them.
    """
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        decoded = list(pool.map(lambda p: _decode(p, mode, size), paths))
    bad = [(p, d) for p, d in zip(paths, decoded, strict=True) if isinstance(d, str)]
    if bad:
        listed = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        if not skip_bad:
            raise ValueError(
                f"{len(bad)} image file(s) cannot be decoded: {listed}{more}. Replace or remove "
                f"them, or set data.skip_bad_images=true to leave them out."
            )
        log.warning("data.skip_bad_images=true: left out %d file(s): %s%s", len(bad), listed, more)
    keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    return [decoded[i] for i in keep], keep


def load_imagefolder(
    *,
    root: str,
    archive: str | None = None,
    image_size: int = 32,
    grayscale: bool = False,
    split_seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    decode_threads: int = 4,
    skip_bad_images: bool = False,
) -> tuple[Split, Split, list[str]]:
    """Any folder laid out as ``root/train/<class>/*`` and ``root/test/<class>/*``.

    Images are decoded once (class-balanced subsets are drawn before decoding), resized to
    ``image_size`` x ``image_size`` and held in memory: sized for CIFAR/STL-scale folders.
    With ``archive`` set and ``root`` not yet extracted, the archive is extracted into ``root``.
    Files that do not decode (empty, truncated, not an image) stop the load with their names,
    unless ``skip_bad_images``, which leaves them out (a subset may then be short of a class).
    """
    from torchvision.datasets import ImageFolder

    folder = Path(root).expanduser()
    if archive is not None:
        folder = extract_archive(archive, folder)
    missing = [s for s in ("train", "test") if not (folder / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"data.root={root} has no {'/ and '.join(missing)}/ folder: imagefolder expects "
            f"<root>/train/<class>/ and <root>/test/<class>/; fix data.root or set "
            f"data.archive=<.tar.gz>."
        )
    mode = "L" if grayscale else "RGB"
    splits, classes = [], None
    for name, per_class, seed in (
        ("train", train_per_class, split_seed),
        ("test", test_per_class, split_seed + 1),
    ):
        folder_ds = ImageFolder(str(folder / name))
        if classes is not None and folder_ds.classes != classes:
            raise ValueError(
                f"train/ and test/ under data.root={root} have different class folders."
            )
        classes = folder_ds.classes
        labels = np.asarray(folder_ds.targets, dtype=np.int64)
        idx = balanced_subset(labels, per_class, seed=seed)
        paths = [folder_ds.samples[i][0] for i in idx]
        arrays, keep = _decode_all(
            paths, mode, image_size, threads=decode_threads, skip_bad=skip_bad_images
        )
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(images, torch.from_numpy(labels[idx][keep])))
    return splits[0], splits[1], classes


DATASETS: dict[str, Callable[..., tuple[Split, Split, list[str]]]] = {
    "digits": load_digits,
    "cifar10": partial(load_cifar, variant="CIFAR10"),
    "cifar100": partial(load_cifar, variant="CIFAR100"),
    "imagefolder": load_imagefolder,
}


def build_dataset(cfg: Mapping) -> Dataset:
    """Load the dataset described by a ``conf/data/*.yaml`` node and check it against the config.

    Raises:
        ValueError: unknown dataset name, or loaded data that contradicts
        ``channels``/``num_classes``.
        FileNotFoundError: missing files, with the config key to fix.
    """
    name = cfg["name"]
    loader = cfg.get("loader") or name  # checkpoints written before data.loader existed
    if loader not in DATASETS:
        raise ValueError(
            f"Unknown data.loader '{loader}'. Choose one of: {', '.join(sorted(DATASETS))}."
        )
    kwargs = {k: v for k, v in cfg.items() if k not in CONFIG_ONLY_KEYS}
    train, test, classes = DATASETS[loader](**kwargs)
    dataset = Dataset(name, train, test, list(classes))
    if dataset.channels != cfg["channels"]:
        raise ValueError(
            f"data.channels={cfg['channels']} but {name} images have {dataset.channels} "
            f"channel(s): set data.channels={dataset.channels}."
        )
    if dataset.num_classes != cfg["num_classes"]:
        raise ValueError(
            f"data.num_classes={cfg['num_classes']} but {name} has {dataset.num_classes} classes: "
            f"set data.num_classes={dataset.num_classes}."
        )
    log.info(
        "Dataset %s: %d train / %d test images, %d classes, %dx%dx%d",
        name,
        len(train),
        len(test),
        dataset.num_classes,
        dataset.channels,
        dataset.image_size,
        dataset.image_size,
    )
    return dataset


def to_float(images: Tensor, normalize: Mapping | None) -> Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], then normalized per channel (no augmentation)."""
    x = images.float().div_(255.0)
    if normalize:
        mean = torch.as_tensor(list(normalize["mean"]), device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(list(normalize["std"]), device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x
