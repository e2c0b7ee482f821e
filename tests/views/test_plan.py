"""The plan: the dense plan that CUDA graphs replay gives the same views as the subset plan."""

import pytest
import torch

from labelfree.views import ViewAugmentation
from labelfree.views.plan import make_plan


@pytest.fixture(params=["full", "free", "default"])
def config(request, full):
    """Every operation with quarter turns, with free-angle rotations, and lightly's defaults."""
    return {"full": full, "free": {**full, "rr_degrees": 30.0}, "default": {"input_size": 24}}[
        request.param
    ]


@pytest.mark.parametrize("channels", [1, 3])
def test_dense_plan_gives_the_same_views(channels, config, imagenet, gen, random_images):
    """The dense plan (every op on the whole batch, identity parameters where not drawn) that CUDA
    graphs replay must give the subset plan's views: hue shift 0 and the unit blur kernel are
    identities up to float rounding."""
    images = random_images(n=64, c=channels, h=32, w=32)
    norm = {"mean": imagenet["mean"][:channels], "std": imagenet["std"][:channels]}
    aug = ViewAugmentation(**config, normalize=norm)
    params = aug.sample_params(64, 32, 32, generator=gen(3))
    subset = aug.apply(images, params)
    dense = aug.apply(images, params, dense=True)
    torch.testing.assert_close(dense, subset, atol=2e-5, rtol=0)
    # the dense plan's shapes do not depend on the draws (what a captured graph needs)
    other = aug.sample_params(64, 32, 32, generator=gen(4))
    a, b = (make_plan(aug.options, p, channels, 32, 32, dense=True) for p in (params, other))
    assert a["table"].shape == b["table"].shape
    assert a["row_counts"] == b["row_counts"]
    assert {k: v for k, v in a.items() if isinstance(v, bool)} == {
        k: v for k, v in b.items() if isinstance(v, bool)
    }
