"""Evaluation schedule and embedding."""

import pytest
import torch

from labelfree.evaluation import embed, eval_epochs


@pytest.mark.parametrize(
    ("schedule", "epochs", "expected"),
    [
        ("every:5", 12, [0, 5, 10, 12]),
        ("every:1", 3, [0, 1, 2, 3]),
        ([3, 1], 10, [0, 1, 3, 10]),
        ("log:1", 7, [0, 7]),
    ],
)
def test_eval_epochs(schedule, epochs, expected):
    assert eval_epochs(schedule, epochs) == expected


def test_log_schedule_is_dense_early():
    epochs = eval_epochs("log:12", 1000)
    assert epochs[0] == 0
    assert epochs[-1] == 1000
    gaps = [b - a for a, b in zip(epochs, epochs[1:], strict=False)]
    assert gaps == sorted(gaps), "gaps between log-spaced evaluations must grow"
    assert len(epochs) >= 10


@pytest.mark.parametrize("bad", ["every:0", "log", "weekly:3", "every:x"])
def test_bad_schedule_names_the_key(bad):
    with pytest.raises(ValueError, match="eval.schedule"):
        eval_epochs(bad, 10)


def test_schedule_list_outside_range():
    with pytest.raises(ValueError, match=r"\[11\] outside 0..trainer.epochs=10"):
        eval_epochs([2, 11], 10)


def test_embed_matches_direct_forward_in_eval_mode(compose_train):
    from labelfree.build import build_model

    cfg = compose_train()
    dataset, model = build_model(cfg)
    images = dataset.test.images[:50]
    z = embed(model, images, normalize={"mean": [0.305], "std": [0.319]}, batch_size=16)
    assert model.training, "embed must restore train mode"
    model.eval()
    with torch.no_grad():
        direct = model.backbone((images.float() / 255 - 0.305) / 0.319)
    assert z.shape == (50, 256)
    torch.testing.assert_close(z, direct, rtol=1e-4, atol=1e-5)


def test_default_evaluator_makes_no_views(compose_train):
    from labelfree.build import build_evaluator, build_model

    cfg = compose_train()
    dataset, model = build_model(cfg)
    evaluator = build_evaluator(cfg, dataset, device=torch.device("cpu"))
    assert evaluator.augment is None
    assert set(evaluator.embeddings(model)) == {"test", "train"}


def test_evaluator_embeds_views_of_fixed_images_for_lidar(compose_train):
    from labelfree.build import build_evaluator, build_model
    from labelfree.evaluation import lidar_images
    from labelfree.metrics import lidar

    cfg = compose_train("metrics=full", "metrics.lidar.n_images=12", "metrics.lidar.n_views=3")
    dataset, model = build_model(cfg)
    evaluator = build_evaluator(cfg, dataset, device=torch.device("cpu"))
    assert evaluator.augment.config["min_scale"] == cfg.data.augment.min_scale
    idx, n_views = lidar_images(len(dataset.test), cfg.metrics, seed=cfg.seed)
    assert n_views == 3
    torch.testing.assert_close(evaluator.view_images, dataset.test.images[idx], rtol=0, atol=0)
    first = evaluator.embeddings(model)
    assert model.training, "embedding the views must restore train mode"
    views = first["views"]
    assert views.shape == (12, 3, 256)
    # the same images and the same augmentation draws at every evaluation
    torch.testing.assert_close(evaluator.embeddings(model)["views"], views, rtol=0, atol=0)
    assert not torch.allclose(views[:, 0], views[:, 1])  # but different views of each image
    # a view of image i is the model's features of augment(image i)
    g = torch.Generator().manual_seed(cfg.seed)
    x = evaluator.augment(dataset.test.images[idx], generator=g)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(views[:, 0], model.backbone(x), rtol=1e-4, atol=1e-5)
    record = evaluator(model, epoch=0)
    assert record["lf/lidar"] == lidar(views)
    other = lidar_images(len(dataset.test), cfg.metrics, seed=cfg.seed + 1)[0]
    assert not torch.equal(other, idx)  # another seed, other images


def test_lidar_images_larger_than_the_split_is_one_line(compose_train):
    from labelfree.build import build_evaluator, build_model

    cfg = compose_train("metrics=full", "metrics.lidar.n_images=451")
    dataset, _ = build_model(cfg)
    with pytest.raises(ValueError, match=r"^metrics.lidar.n_images=451 is larger than the 450 "):
        build_evaluator(cfg, dataset, device=torch.device("cpu"))
