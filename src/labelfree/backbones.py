"""Encoders (backbones) that map images to a flat feature vector.

Registry: ``ARCHS[name]`` builds ``(module, feature_dim)``; the keys of ``conf/arch/<name>.yaml``
other than ``name`` are its keyword arguments, next to ``in_channels`` and ``image_size`` from the
data config. Every backbone returns (B, feature_dim) features: the classifier is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Sequential):
    """A VGG-style CNN sized for a 2-core CPU: one 3x3 conv-BN-ReLU block per stage.

    Stages after the first halve the resolution (stride 2).

    With the default widths (32, 64, 128, 256) it has 0.39 M parameters; the output is the global
    average of the last stage, so its dimension is ``widths[-1]``.
    """

    def __init__(self, in_channels: int, *, widths: Sequence[int] = (32, 64, 128, 256)):
        layers, c_in = [], in_channels
        for i, width in enumerate(widths):
            layers.append(_conv_bn_relu(c_in, width, stride=1 if i == 0 else 2))
            c_in = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def small_cnn(*, in_channels: int, image_size: int, widths: Sequence[int] = (32, 64, 128, 256)):
    """The default CPU-sized encoder (:class:`SmallCNN`)."""
    return SmallCNN(in_channels, widths=list(widths)), int(widths[-1])


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> tuple[nn.Module, int]:
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        # CIFAR variant (SimCLR appendix B.9): 3x3 stride-1 first conv and no max-pool for 32 px
        # inputs.
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def resnet18_cifar(*, in_channels: int, image_size: int):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool); 512-d features."""
    return _torchvision_resnet("resnet18", in_channels, cifar_stem=True)


def resnet18(*, in_channels: int, image_size: int):
    """Standard torchvision ResNet-18 (ImageNet stem); 512-d features."""
    return _torchvision_resnet("resnet18", in_channels, cifar_stem=False)


def resnet50(*, in_channels: int, image_size: int):
    """Standard torchvision ResNet-50 (ImageNet stem); 2048-d features."""
    return _torchvision_resnet("resnet50", in_channels, cifar_stem=False)


class _ViTFeatures(nn.Module):
    """torchvision VisionTransformer returning the class token (its head removed)."""

    def __init__(self, vit: torchvision.models.VisionTransformer):
        super().__init__()
        vit.heads = nn.Identity()
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x)


def vit_tiny(
    *,
    in_channels: int,
    image_size: int,
    patch_size: int = 4,
    num_layers: int = 12,
    num_heads: int = 3,
    hidden_dim: int = 192,
    mlp_dim: int = 768,
):
    """ViT-Tiny (Touvron et al. 2021: 12 layers, 3 heads, width 192), 4x4 patches for 32 px."""
    if image_size % patch_size:
        raise ValueError(
            f"arch.patch_size={patch_size} does not divide data.image_size={image_size}: "
            f"choose a patch size that divides the image size."
        )
    vit = torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    if in_channels != 3:
        vit.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
    return _ViTFeatures(vit), hidden_dim


ARCHS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "small_cnn": small_cnn,
    "resnet18_cifar": resnet18_cifar,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit_tiny": vit_tiny,
}


def build_backbone(cfg: Mapping, *, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """Build the encoder named by ``cfg["name"]``; returns ``(module, feature_dim)``."""
    name = cfg["name"]
    if name not in ARCHS:
        raise ValueError(f"Unknown arch '{name}'. Choose one of: {', '.join(sorted(ARCHS))}.")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    backbone, dim = ARCHS[name](in_channels=in_channels, image_size=image_size, **kwargs)
    with torch.no_grad():  # check the declared feature size on a dummy batch
        backbone.eval()
        out = backbone(torch.zeros(2, in_channels, image_size, image_size))
        backbone.train()
    if out.shape != (2, dim):
        raise RuntimeError(
            f"arch {name} returned features of shape {tuple(out.shape)}, expected (2, {dim})."
        )
    return backbone, dim
