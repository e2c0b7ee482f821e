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
