"""CUDA-graph replay of a :class:`~labelfree.views.ViewAugmentation`'s device work."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from labelfree.views.augment import ViewAugmentation
from labelfree.views.plan import make_plan, plan_on_device

log = logging.getLogger(__name__)

__all__ = ["GraphedViewAugmentation"]


class GraphedViewAugmentation:
    """A :class:`ViewAugmentation` whose device work is replayed as one CUDA graph.

    On a GPU the batched views need little arithmetic but about 200 kernel launches per call, and
    the host time of those launches, not the kernels, bounds the speed (docs/benchmarks.md). A CUDA
    graph launches them all at once. The plan is made dense (``apply(..., dense=True)``) so that
    the kernels and their shapes do not depend on the draws; one graph is captured per input shape
    and dtype on first use, after a warm-up on a side stream. Inputs not on a GPU run eagerly; if
    capture fails, a warning names the error and the views run eagerly.

    Args:
        aug: The view's augmentation; its parameters are drawn exactly as for an eager call, so a
            seed gives the same views (up to float rounding) with or without graphs.
    """

    def __init__(self, aug: ViewAugmentation):
        self.aug = aug
        self._graphs: dict[tuple, dict[str, Any] | None] = {}

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Views of a batch, as :meth:`ViewAugmentation.forward`."""
        if images.device.type != "cuda":
            return self.aug(images, generator)
        self.aug._check_images(images)
        b, c, h, w = images.shape
        params = self.aug.sample_params(b, h, w, generator=generator)
        plan = make_plan(self.aug.options, params, c, h, w, dense=True)
        key = (tuple(images.shape), images.dtype, images.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images, plan)
        graph = self._graphs[key]
        if graph is None:  # capture failed (warned once)
            return self.aug.apply(images, params)
        graph["images"].copy_(images)
        graph["table"].copy_(plan["table"].pin_memory(), non_blocking=True)
        graph["graph"].replay()
        return graph["out"].clone()  # the next replay overwrites the static output

    def _capture(self, images: Tensor, plan: Mapping[str, Any]) -> dict[str, Any] | None:
        static = {"images": images.clone()}
        static["table"], static["rows"] = plan_on_device(plan, images.device)
        run = (static["images"], static["table"], static["rows"], plan)
        try:
            side = torch.cuda.Stream(device=images.device)
            side.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(side):  # warm-up: cuDNN autotuning and allocations
                for _ in range(3):
                    self.aug._execute(*run)
            torch.cuda.current_stream(images.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.aug._execute(*run)
        except RuntimeError as err:
            log.warning(
                "CUDA-graph capture of the view augmentation failed (%s); running it eagerly. "
                "Set trainer.cuda_graphs=false to skip the attempt.",
                err,
            )
            return None
        return {**static, "graph": graph, "out": out}
