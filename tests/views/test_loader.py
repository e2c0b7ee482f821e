"""build_views from config blocks, and ViewLoader epochs that replay from their seed."""

import pytest
import torch

from labelfree.config import as_container
from labelfree.data import build_dataset
from labelfree.views import ViewLoader, build_views


def test_build_views_byol_asymmetry():
    views = build_views(
        {"input_size": 32, "cj_strength": 0.5},
        [
            {"gaussian_blur": 1.0, "solarization_prob": 0.0},
            {"gaussian_blur": 0.1, "solarization_prob": 0.2},
        ],
    )
    assert [v.solarization_prob for v in views] == [0.0, 0.2]
    assert [v.gaussian_blur for v in views] == [1.0, 0.1]
    assert all(v.config["cj_strength"] == 0.5 for v in views)
    assert len(build_views({"input_size": 8})) == 2


def test_build_views_accepts_omegaconf(imagenet, gen, random_images):
    from omegaconf import OmegaConf

    common = OmegaConf.create({"input_size": 8, "sigmas": [0.1, 2.0], "normalize": imagenet})
    (view,) = build_views(common, OmegaConf.create([{"rr_degrees": [-5, 5]}]))
    assert view.sigmas == (0.1, 2.0)
    assert view.rr_degrees == (-5.0, 5.0)
    assert view(random_images(n=2), gen(0)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("backend", ["batched", "lightly"])
def test_view_loader_replays_from_seed(compose_train, backend):
    cfg = compose_train()
    ds = build_dataset(cfg.data)
    loader = ViewLoader(
        ds.train.images,
        as_container(cfg.data.augment),
        as_container(cfg.method.views),
        batch_size=128,
        backend=backend,
        num_workers=0,
    )
    first = [v for views in loader.epoch(torch.Generator().manual_seed(5)) for v in views]
    again = [v for views in loader.epoch(torch.Generator().manual_seed(5)) for v in views]
    other = next(loader.epoch(torch.Generator().manual_seed(6)))
    assert len(loader) == 1347 // 128
    assert len(first) == 2 * len(loader)
    assert first[0].shape == (128, 1, 16, 16)
    assert first[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1]), "the two views of a batch must differ"
