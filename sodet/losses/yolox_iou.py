"""Small-object weighting for pixeltable-yolox's box loss, by subclassing ``IouLoss``.

``YoloxHead.get_losses`` calls ``self.iou_loss(pred_cxcywh, target_cxcywh)`` on the matched pairs, boxes in
input pixels, and sums the per-target result itself; replacing ``head.iou_loss`` with this subclass changes the
IoU term only (obj, cls and L1 terms and the 5.0 box gain stay the head's own).
"""

from __future__ import annotations

import torch
from yolox.models.losses import IouLoss

from sodet.losses.small_weighted import check_small_weighting, small_target_loss
from sodet.options import SMALL_AREA


class SmallWeightedIouLoss(IouLoss):
    """``IouLoss`` whose small targets get ``1 - W*IoU^2`` (study) or ``W*(1 - IoU^2)`` (scale).

    The per-target values come from ``IouLoss.forward`` itself (``1 - IoU^2``, or ``1 - GIoU`` with
    ``loss_type="giou"``), so ``weight=1`` is the stock loss bit for bit. Per-target output only
    (``reduction="none"``), which is how the head uses it.
    """

    def __init__(
        self, weight: float = 1.0, small_area: float = SMALL_AREA, form: str = "study", loss_type: str = "iou"
    ):
        check_small_weighting(weight, small_area, form)
        super().__init__(reduction="none", loss_type=loss_type)
        self.weight = float(weight)
        self.small_area = float(small_area)
        self.form = form

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        box_loss = super().forward(pred, target)
        target_area = target.reshape(-1, 4)[:, 2:].prod(1)  # cx, cy, w, h in input pixels
        return small_target_loss(box_loss, target_area, self.weight, self.small_area, self.form)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, small_area={self.small_area}, form={self.form!r}, loss_type={self.loss_type!r}"


def install_yolox(head, weight: float, small_area: float = SMALL_AREA, form: str = "study"):
    """Replace ``head.iou_loss`` of a ``YoloxHead`` with the weighted loss; installing again replaces it again.

    Returns the head.
    """
    current = getattr(head, "iou_loss", None)
    if not isinstance(current, IouLoss):
        raise TypeError(f"expected a YoloxHead with an IouLoss at .iou_loss, got {type(head).__name__}")
    weighted = SmallWeightedIouLoss(weight, small_area, form, loss_type=current.loss_type)
    head.iou_loss = weighted.train(current.training)
    return head
