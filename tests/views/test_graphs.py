"""GraphedViewAugmentation: eager off the GPU, graph replay equal to eager calls on it."""

import pytest
import torch

from labelfree.views import GraphedViewAugmentation, ViewAugmentation


def test_graphed_views_run_eagerly_off_gpu(full, gen, random_images):
    images = random_images(n=16, h=32, w=32)
    aug = ViewAugmentation(**full)
    graphed = GraphedViewAugmentation(aug)
    torch.testing.assert_close(graphed(images, gen(1)), aug(images, gen(1)), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager_views(full, imagenet, gen, random_images):
    """Captured once, replayed for new batches and new draws: the same views as eager calls."""
    aug = ViewAugmentation(**full, normalize=imagenet)
    graphed = GraphedViewAugmentation(aug)
    g_eager, g_graph = gen(7), gen(7)
    for seed in range(3):
        images = random_images(n=64, h=32, w=32, seed=seed).cuda()
        eager = aug(images, g_eager)
        replay = graphed(images, g_graph)
        torch.testing.assert_close(replay, eager, atol=2e-5, rtol=0)
    assert all(g is not None for g in graphed._graphs.values()), "capture failed (see warning)"
