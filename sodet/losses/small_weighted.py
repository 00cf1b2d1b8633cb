"""The small-object weighting of a per-target box loss (``--weighted-loss W``): the maths, nothing else.

Every family's box term is ``1 - s`` per assigned target, for a similarity ``s`` of prediction and target (IoU^2
for YOLOX, CIoU for Ultralytics YOLO, GIoU for GFL). For targets whose assigned ground-truth box is small, the
reference study used ``1 - W*s`` ("study" form) ``= W*(1 - s) + (1 - W)``: a constant offset (nothing for the
optimiser) plus the unmodified loss times ``W``, so the box gradient is multiplied by ``W``; with the study's
``W = 0.95`` small targets are pushed 5% LESS although the loss value rises by ``(1 - W)*s``. ``W*(1 - s)``
("scale" form) is the same gradient factor without the offset; ``W > 1`` is what up-weights small targets.

The rule takes the family's OWN per-target loss ``1 - s`` rather than ``s``: ``1 - W*s == W*(1 - s) + (1 - W)``,
and working from the library's value keeps ``W = 1`` bit-identical to the unmodified loss and its gradients.
Values are checked once, where the user gives them (``sodet.options.check_train_options``).
"""

from __future__ import annotations

import torch

from sodet.options import SMALL_AREA


def is_small(target_area: torch.Tensor, small_area: float = SMALL_AREA) -> torch.Tensor:
    """COCO's rule: small means area strictly below ``small_area`` (32*32 itself is not small)."""
    return target_area < small_area


def small_target_loss(
    box_loss: torch.Tensor, target_area: torch.Tensor, weight: float, small_area: float = SMALL_AREA,
    form: str = "study",
) -> torch.Tensor:
    """Per-target box loss with small targets re-weighted: ``1 - W*s`` ("study") or ``W*(1 - s)`` ("scale") where
    ``target_area`` (input pixels of the assigned ground truth) is below ``small_area``; the rest untouched."""
    scaled = box_loss * weight
    if form == "study":
        scaled = scaled + (1.0 - weight)
    return torch.where(is_small(target_area, small_area), scaled, box_loss)
