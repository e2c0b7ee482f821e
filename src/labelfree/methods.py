"""SSL methods: one small class per method, built from lightly's heads, losses, momentum utils.

A method answers two questions for the shared training loop in :mod:`labelfree.train`: the loss
for a list of augmented views, and the features of a batch for evaluation. Methods with a momentum
(EMA) encoder derive from :class:`MomentumSSLMethod`, which updates the targets after each optimizer
step, so the loop never asks which method it runs.

Registry: ``METHODS[name]``; ``conf/method/<name>.yaml`` holds the class's keyword arguments plus
the reserved keys ``name``, ``optimizer`` (read by the trainer) and ``views`` (per-view
augmentation overrides). Defaults follow each paper's CIFAR setting; deviations are stated in the
docstrings.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
    VICRegProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

# Keys of a method config that are not keyword arguments of the method class.
CONFIG_ONLY_KEYS = ("name", "optimizer", "views")


class SSLMethod(nn.Module):
    """Base class: a backbone, a projector, and the hooks the training loop calls.

    Subclasses set ``self.projector`` and implement :meth:`loss`.

    Args:
        backbone: encoder returning (B, dim) features.
        dim: feature dimension of the backbone.
    """

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone, self.dim = backbone, dim
        self.projector: nn.Module = nn.Identity()

    def embed(self, x: Tensor) -> Tensor:
        """Backbone features (B, dim): what the label-free metrics are computed on by default."""
        return self.backbone(x).flatten(start_dim=1)

    def features(self, x: Tensor, *, where: str = "backbone") -> Tensor:
        """Evaluation features: backbone output (default) or ``where="projector"`` output."""
        if where == "backbone":
            return self.embed(x)
        if where == "projector":
            return self.projector(self.embed(x))
        raise ValueError(f"Unknown embedding '{where}'. Choose one of: backbone, projector.")

    def loss(self, views: list[Tensor]) -> Tensor:
        """The SSL loss of a batch given as a list of augmented views, each (B, C, H, W)."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step; nothing to do by default."""


class MomentumSSLMethod(SSLMethod):
    """A method with an EMA target network: frozen copies of the backbone and projector.

    Subclasses build ``self.projector`` and then call :meth:`init_targets`. After every optimizer
    step the targets move towards the online network with a momentum that follows a cosine schedule
    from ``momentum`` to ``momentum_end`` (BYOL, Grill et al. 2020; constant when they are equal, as
    in MoCo).

    Args:
        backbone: encoder returning (B, dim) features.
        dim: feature dimension of the backbone.
        momentum: EMA coefficient at the start of training.
        momentum_end: EMA coefficient at the end of training.
    """

    def __init__(self, backbone: nn.Module, dim: int, *, momentum: float, momentum_end: float):
        super().__init__(backbone, dim)
        self.momentum, self.momentum_end = momentum, momentum_end

    def init_targets(self) -> None:
        """Create the frozen target copies of the (already built) backbone and projector."""
        self.backbone_target = _frozen_copy(self.backbone)
        self.projector_target = _frozen_copy(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs updated by EMA; subclasses extend it as ``super() + [...]``."""
        return [(self.backbone, self.backbone_target), (self.projector, self.projector_target)]

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """Target-network projection of a view (no gradient)."""
        return self.projector_target(self.backbone_target(x).flatten(start_dim=1))

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Move every target towards its online module with the momentum scheduled at ``step``."""
        m = cosine_schedule(step, max(total_steps, 1), self.momentum, self.momentum_end)
        for online, target in self.momentum_pairs():
            update_momentum(online, target, m=m)


def _persist_buffers(module: nn.Module) -> None:
    """Re-register a module's buffers as persistent, so checkpoints hold them.

    lightly's memory bank (the MoCo queue) registers its buffers with ``persistent=False``; without
    the queue in ``last.pt`` a resumed run would continue with a different set of negatives.
    """
    for name, buffer in list(module.named_buffers(recurse=False)):
        delattr(module, name)
        module.register_buffer(name, buffer, persistent=True)


def _frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


class SimCLR(SSLMethod):
    """SimCLR: NT-Xent between two views through a 2-layer MLP projector.

    Defaults: projector hidden = feature dim, output 128, temperature 0.5 (the paper's CIFAR-10
    setting).

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
        ICML 2020, arXiv:2002.05709 (Appendix B.9 for CIFAR-10).
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        temperature: float = 0.5,
        gather_distributed: bool = False,
    ):
        super().__init__(backbone, dim)
        self.projector = SimCLRProjectionHead(dim, hidden_dim or dim, out_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def loss(self, views: list[Tensor]) -> Tensor:
        """NT-Xent between the two views' projections."""
        z0, z1 = (self.projector(self.embed(v)) for v in views)  # (B, out_dim) each
        return self.criterion(z0, z1)


class MoCoV2(MomentumSSLMethod):
    """MoCo v2: InfoNCE against a momentum key encoder and a queue (memory bank) of negatives.

    Defaults for CIFAR: 2-layer MLP projector to 128-d, temperature 0.1, queue 4,096, momentum
    0.99 held constant (``momentum_end=0.99``). The loss is symmetrised over the two views, as in
    lightly's benchmarks; the original is one-directional. Single-process shuffle-BN is omitted.

    References:
        He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
        arXiv:1911.05722.
        Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020,
        arXiv:2003.04297.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        temperature: float = 0.1,
        memory_bank_size: int = 4096,
        momentum: float = 0.99,
        momentum_end: float = 0.99,
        gather_distributed: bool = False,
    ):
        super().__init__(backbone, dim, momentum=momentum, momentum_end=momentum_end)
        self.projector = MoCoProjectionHead(dim, hidden_dim or dim, out_dim)
        self.init_targets()
        self.criterion = NTXentLoss(
            temperature=temperature,
            memory_bank_size=(memory_bank_size, out_dim),
            gather_distributed=gather_distributed,
        )
        _persist_buffers(self.criterion.memory_bank)

    def loss(self, views: list[Tensor]) -> Tensor:
        """Symmetrised InfoNCE of each view's query against the other view's key and the queue."""
        q0, q1 = (self.projector(self.embed(v)) for v in views)
        k0, k1 = (self.target(v) for v in views)
        return 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))


class SimSiam(SSLMethod):
    """SimSiam: symmetric negative cosine similarity with a predictor and stop-gradient.

    Defaults follow the paper's CIFAR-10 setting: 2,048-d projector output, predictor bottleneck
    512. lightly's projection head has three layers (the ImageNet variant); the CIFAR one has two.

    References:
        Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, arXiv:2011.10566.
    """

    def __init__(
        self, backbone: nn.Module, dim: int, *, proj_dim: int = 2048, pred_hidden_dim: int = 512
    ):
        super().__init__(backbone, dim)
        self.projector = SimSiamProjectionHead(dim, proj_dim, proj_dim)
        self.predictor = SimSiamPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[Tensor]) -> Tensor:
        """Symmetric negative cosine similarity of predictions against stop-gradient projections."""
        z0, z1 = (self.projector(self.embed(v)) for v in views)
        p0, p1 = self.predictor(z0), self.predictor(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))


class BYOL(MomentumSSLMethod):
    """BYOL: an online network predicts a momentum target network's projection of the other view.

    Defaults: projector 4,096 hidden / 256 out, predictor 4,096 hidden, target momentum 0.99
    rising to 1 with a cosine schedule (the CIFAR value used by solo-learn; the paper uses 0.996 on
    ImageNet).

    References:
        Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, arXiv:2006.07733.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
    ):
        super().__init__(backbone, dim, momentum=momentum, momentum_end=momentum_end)
        self.projector = BYOLProjectionHead(dim, hidden_dim, out_dim)
        self.predictor = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.init_targets()
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[Tensor]) -> Tensor:
        """Symmetric negative cosine similarity of online predictions against target projections."""
        p0, p1 = (self.predictor(self.projector(self.embed(v))) for v in views)
        t0, t1 = (self.target(v) for v in views)
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))


class BarlowTwins(SSLMethod):
    """Barlow Twins: drive the cross-correlation matrix of two views' projections to the identity.

    Defaults: 3-layer projector of width 2,048 (the common CIFAR size; 8,192 on ImageNet),
    off-diagonal weight lambda = 5e-3.

    References:
        Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
        ICML 2021, arXiv:2103.03230.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        proj_dim: int = 2048,
        lambda_param: float = 5e-3,
        gather_distributed: bool = False,
    ):
        super().__init__(backbone, dim)
        self.projector = BarlowTwinsProjectionHead(dim, proj_dim, proj_dim)
        self.criterion = BarlowTwinsLoss(
            lambda_param=lambda_param, gather_distributed=gather_distributed
        )

    def loss(self, views: list[Tensor]) -> Tensor:
        """Barlow Twins loss of the two views' projections."""
        z0, z1 = (self.projector(self.embed(v)) for v in views)
        return self.criterion(z0, z1)


class VICReg(SSLMethod):
    """VICReg: invariance + variance + covariance terms on two views' projections.

    Defaults: 3-layer projector of width 2,048 (CIFAR; 8,192 on ImageNet), coefficients 25 / 25 / 1.

    References:
        Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
        Self-Supervised Learning", ICLR 2022, arXiv:2105.04906.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        proj_dim: int = 2048,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gather_distributed: bool = False,
    ):
        super().__init__(backbone, dim)
        self.projector = VICRegProjectionHead(dim, proj_dim, proj_dim, num_layers=3)
        self.criterion = VICRegLoss(
            lambda_param=lambda_param,
            mu_param=mu_param,
            nu_param=nu_param,
            gather_distributed=gather_distributed,
        )

    def loss(self, views: list[Tensor]) -> Tensor:
        """VICReg loss of the two views' projections."""
        z0, z1 = (self.projector(self.embed(v)) for v in views)
        return self.criterion(z0, z1)


METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "simsiam": SimSiam,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
}


def build_method(cfg: Mapping, backbone: nn.Module, dim: int) -> SSLMethod:
    """Instantiate ``METHODS[cfg["name"]]`` with the config's keyword arguments."""
    name = cfg["name"]
    if name not in METHODS:
        raise ValueError(f"Unknown method '{name}'. Choose one of: {', '.join(sorted(METHODS))}.")
    kwargs = {k: v for k, v in cfg.items() if k not in CONFIG_ONLY_KEYS}
    try:
        return METHODS[name](backbone, dim, **kwargs)
    except TypeError as err:  # an unknown key in conf/method/<name>.yaml or an override
        raise ValueError(
            f"method={name}: {err}. Valid keys are the arguments of {METHODS[name].__name__}."
        ) from None
