"""The one small-object weighting rule that every family's box loss goes through.

Every family's box term is ``1 - s`` per assigned target, for a similarity ``s`` of prediction and target
(IoU^2 for YOLOX, CIoU for Ultralytics YOLO; GIoU for GFL once that family exists). For targets whose assigned ground-truth box is
small, the reference study used ``1 - W*s`` ("study" form) ``= W*(1 - s) + (1 - W)``: a constant offset
(nothing for the optimiser) plus the unmodified loss times ``W``, so the box gradient is multiplied by ``W``;
with the study's ``W = 0.95`` small targets are pushed 5% LESS although the loss value rises by ``(1 - W)*s``.
``W*(1 - s)`` ("scale" form) is the same gradient factor without the offset; ``W > 1`` is what up-weights
small targets in either form.

The rule takes the family's OWN per-target loss ``1 - s`` rather than ``s``: ``1 - W*s == W*(1 - s) + (1 - W)``,
and working from the library's value keeps ``W = 1`` bit-identical to the unmodified loss and its gradients.
"""

from __future__ import annotations

import torch

from sodet.options import SMALL_AREA

FORMS = ("study", "scale")


def check_small_weighting(weight: float, small_area: float, form: str) -> None:
    """Reject settings that would silently do something else than asked."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if not weight > 0:
        raise ValueError(f"weight must be > 0, got {weight!r}")
    if not small_area > 0:
        raise ValueError(f"small_area must be > 0, got {small_area!r}")


def is_small(target_area: torch.Tensor, small_area: float = SMALL_AREA) -> torch.Tensor:
    """COCO's rule: small means area strictly below ``small_area`` (32*32 itself is not small)."""
    return target_area < small_area


def small_target_loss(
    box_loss: torch.Tensor,
    target_area: torch.Tensor,
    weight: float,
    small_area: float = SMALL_AREA,
    form: str = "study",
) -> torch.Tensor:
    """Per-target box loss with small targets re-weighted.

    Args:
        box_loss: the family's unmodified per-target loss ``1 - s``.
        target_area: area in input pixels of each target's assigned ground-truth box (broadcastable to box_loss).
        weight: W.
        small_area: targets with area strictly below it are small.
        form: "study" gives ``1 - W*s`` on small targets, "scale" gives ``W*(1 - s)``.

    Returns:
        Tensor shaped like ``box_loss``: ``1 - s`` on the other targets, untouched.
    """
    check_small_weighting(weight, small_area, form)
    scaled = box_loss * weight
    if form == "study":
        scaled = scaled + (1.0 - weight)
    return torch.where(is_small(target_area, small_area), scaled, box_loss)
