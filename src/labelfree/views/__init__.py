"""SSL views: lightly's view transforms, batched on the training device, and their reference.

Which file holds what (data flows down the list; each module imports only those above it):

* ``options``: :class:`ViewOptions`, the options of one view with lightly's names, validated;
  :func:`resolve_kwargs` checks option names from a config.
* ``sampling``: :func:`sample_params`, every per-sample random draw of a batch, on the CPU from
  one ``torch.Generator`` (:data:`JITTER_OPS` indexes the jitter order).
* ``kernels``: the device kernels (crop-resize-flip-rotate, colour jitter, grayscale, hue, blur,
  solarize, normalize) as whole-batch tensor functions.
* ``plan``: the draws turned into per-sample coefficients on the CPU, moved to the device.
* ``augment``: :class:`ViewAugmentation`, one view's pipeline: sampling, plan, kernels.
* ``graphs``: :class:`GraphedViewAugmentation`, the same views replayed as one CUDA graph.
* ``reference``: :func:`lightly_view_transform` and :class:`PILViews`, lightly's per-image PIL
  path (the usual recipe, and what the batched views are tested against).
* ``loader``: :func:`build_views` (one augmentation per view from a config) and
  :class:`ViewLoader` (the batches of views of each training epoch, either backend, DDP shards).
"""

from labelfree.views.augment import ViewAugmentation
from labelfree.views.graphs import GraphedViewAugmentation
from labelfree.views.loader import ViewLoader, build_views
from labelfree.views.options import OPTION_NAMES, ViewOptions, resolve_kwargs
from labelfree.views.reference import PILViews, lightly_view_transform
from labelfree.views.sampling import JITTER_OPS, sample_params

__all__ = [
    "JITTER_OPS",
    "OPTION_NAMES",
    "GraphedViewAugmentation",
    "PILViews",
    "ViewAugmentation",
    "ViewLoader",
    "ViewOptions",
    "build_views",
    "lightly_view_transform",
    "resolve_kwargs",
    "sample_params",
]
