"""DDP building blocks on one process: the world, its checks, batch sharding across ranks."""

import pytest
import torch

from labelfree.distributed import World, check_world, detect_world, set_gather_distributed
from labelfree.views import ViewLoader

# Views of constant images without photometric or geometric changes are constant images of the
# same value: the value tells which training image a view came from.
CONSTANT_VIEWS = {
    "input_size": 8,
    "min_scale": 0.5,
    "cj_prob": 0.0,
    "random_gray_scale": 0.0,
    "gaussian_blur": 0.0,
    "hf_prob": 0.0,
    "vf_prob": 0.0,
    "rr_prob": 0.0,
    "solarization_prob": 0.0,
    "normalize": None,
}


def _loader(world_size: int, rank: int) -> ViewLoader:
    images = (torch.arange(40, dtype=torch.uint8) * 5).view(40, 1, 1, 1).expand(40, 1, 8, 8)
    return ViewLoader(
        images.contiguous(),
        CONSTANT_VIEWS,
        [{}, {}],
        batch_size=8,
        rank=rank,
        world_size=world_size,
    )


def _image_ids(loader: ViewLoader, seed: int) -> list[list[int]]:
    """Per step, the indices of the images in the batch (decoded from the first view)."""
    steps = []
    for views in loader.epoch(torch.Generator().manual_seed(seed)):
        assert len(views) == 2
        values = views[0][:, 0, 4, 4] * 255 / 5
        assert torch.allclose(values, values.round(), atol=1e-3)
        steps.append(values.round().long().tolist())
    return steps


def test_view_loader_shards_each_global_batch_across_ranks():
    single, rank0, rank1 = _loader(1, 0), _loader(2, 0), _loader(2, 1)
    assert len(single) == len(rank0) == len(rank1) == 5  # steps per epoch do not depend on W
    assert rank0.local_batch_size == 4
    full, ids0, ids1 = (_image_ids(loader, seed=3) for loader in (single, rank0, rank1))
    for step in range(5):
        assert len(full[step]) == 8
        assert len(ids0[step]) == len(ids1[step]) == 4
        # rank r takes the r-th slice of the same global batch as one process would use
        assert ids0[step] == full[step][:4]
        assert ids1[step] == full[step][4:]
    seen = sorted(i for step in ids0 + ids1 for i in step)
    assert seen == list(range(40))  # one epoch: every image once over the ranks
    assert _image_ids(_loader(2, 1), seed=3) == ids1  # an epoch replays from its seed


def test_view_loader_rejects_batch_not_divisible_by_world():
    with pytest.raises(
        ValueError, match="trainer.batch_size=8 is not divisible by the 3 processes"
    ):
        _loader(3, 0)


def test_world_single_process_and_checks(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    assert detect_world() == (0, 1, 0)
    world = World()
    assert world.is_main
    assert not world.distributed
    x = torch.tensor(2.5)
    assert world.mean(x) is x
    assert world.device(torch.device("cpu")) == torch.device("cpu")
    assert set_gather_distributed({"gather_distributed": False}, world) == {
        "gather_distributed": False
    }
    two = World(rank=1, world_size=2, local_rank=1, backend="gloo")
    assert not two.is_main
    assert set_gather_distributed({"name": "simclr", "gather_distributed": False}, two) == {
        "name": "simclr",
        "gather_distributed": True,
    }
    assert set_gather_distributed({"name": "simsiam"}, two) == {"name": "simsiam"}
    cfg = {"backend": "auto", "timeout_min": 30, "sync_batchnorm": True}
    check_world(cfg, batch_size=128, world_size=4)
    with pytest.raises(ValueError, match="trainer.batch_size=130 .* not divisible by the 4"):
        check_world(cfg, batch_size=130, world_size=4)
    with pytest.raises(ValueError, match="trainer.distributed.backend=mpi"):
        check_world({**cfg, "backend": "mpi"}, batch_size=128, world_size=1)
    with pytest.raises(ValueError, match="trainer.distributed.timeout_min=0"):
        check_world({**cfg, "timeout_min": 0}, batch_size=128, world_size=1)
