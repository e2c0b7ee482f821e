"""Every method x arch composes from the shipped YAML and takes one step on a tiny batch."""

import pytest
import torch

from labelfree.backbones import ARCHS, build_backbone
from labelfree.methods import METHODS, build_method
from labelfree.optim import build_optimizer

ARCH_NAMES = sorted(ARCHS)
METHOD_NAMES = sorted(METHODS)


@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_one_step(compose_train, method, arch):
    cfg = compose_train(f"method={method}", f"arch={arch}")
    torch.manual_seed(0)
    backbone, dim = build_backbone(
        cfg.arch, in_channels=cfg.data.channels, image_size=cfg.data.image_size
    )
    model = build_method(cfg.method, backbone, dim)
    optimizer = build_optimizer(model, cfg.method.optimizer, batch_size=4)
    size = cfg.data.image_size
    views = [torch.randn(4, cfg.data.channels, size, size) for _ in cfg.method.views]
    before = [p.detach().clone() for p in model.backbone.parameters()]

    loss = model.loss(views)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.on_step_end(0, 10)

    changed = any(
        not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters(), strict=True)
    )
    assert changed, "the optimizer step did not update the backbone"
    assert model.features(views[0]).shape == (4, dim)
    assert model.features(views[0], where="projector").shape[0] == 4


def test_momentum_targets_follow_online_network(compose_train):
    cfg = compose_train("method=byol", "method.hidden_dim=32", "method.out_dim=16")
    backbone, dim = build_backbone(cfg.arch, in_channels=1, image_size=16)
    model = build_method(cfg.method, backbone, dim)
    online, target = model.momentum_pairs()[0]
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    gap_before = sum(
        float((a - b).detach().abs().sum())
        for a, b in zip(online.parameters(), target.parameters(), strict=True)
    )
    model.on_step_end(0, 100)  # momentum 0.99: target moves 1% of the way
    gap_after = sum(
        float((a - b).detach().abs().sum())
        for a, b in zip(online.parameters(), target.parameters(), strict=True)
    )
    assert gap_after == pytest.approx(0.99 * gap_before, rel=1e-4)


def test_unknown_method_key_names_the_class(compose_train):
    cfg = compose_train()
    backbone, dim = build_backbone(cfg.arch, in_channels=1, image_size=16)
    with pytest.raises(ValueError, match="method=simclr.*SimCLR"):
        build_method({**cfg.method, "temprature": 0.1}, backbone, dim)


def test_unknown_method_lists_choices():
    with pytest.raises(
        ValueError, match="Unknown method 'simclar'. Choose one of: barlow_twins, byol"
    ):
        build_method({"name": "simclar"}, torch.nn.Identity(), 4)


def test_moco_queue_is_checkpointed(compose_train):
    cfg = compose_train("method=moco_v2", "method.memory_bank_size=32")
    backbone, dim = build_backbone(cfg.arch, in_channels=1, image_size=16)
    model = build_method(cfg.method, backbone, dim)
    model.loss([torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)])  # enqueues keys
    state = model.state_dict()
    assert state["criterion.memory_bank.bank"].shape == (32, 128)
    assert int(state["criterion.memory_bank.bank_ptr"]) != 0
