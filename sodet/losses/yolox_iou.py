"""YOLOX's box term through sodet's ``BoxRule``, by subclassing pixeltable-yolox's ``IouLoss``.

``YoloxHead.get_losses`` calls ``self.iou_loss(pred_cxcywh, target_cxcywh)`` on the matched pairs, boxes in
input pixels, and sums the per-target result itself; replacing ``head.iou_loss`` with this subclass changes the
IoU term only (obj, cls and L1 terms and the 5.0 box gain stay the head's own).
"""

from __future__ import annotations

import torch
from yolox.models.losses import IouLoss

from sodet.losses.box_rule import BoxRule, cxcywh_to_xyxy


class RuleIouLoss(IouLoss):
    """``IouLoss`` (``1 - IoU^2``, or ``1 - GIoU`` with ``loss_type="giou"``) with the rule applied per target.
    With a rule that changes nothing it is the stock loss bit for bit. Per-target output (``reduction="none"``),
    which is how the head uses it."""

    def __init__(self, rule: BoxRule | None = None, loss_type: str = "iou"):
        super().__init__(reduction="none", loss_type=loss_type)
        self.rule = rule or BoxRule()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        box_loss = super().forward(pred, target)
        p, t = pred.reshape(-1, 4), target.reshape(-1, 4)
        return self.rule(box_loss, cxcywh_to_xyxy(p), cxcywh_to_xyxy(t))

    def __setstate__(self, state):
        """Checkpoints of sodet 0.3 hold ``SmallWeightedIouLoss`` with weight / small_area / form attributes."""
        super().__setstate__(state)
        if "rule" not in self.__dict__:
            self.rule = BoxRule(state.get("weight"), state.get("small_area", 1024.0), state.get("form", "study"))

    def extra_repr(self) -> str:
        return f"loss_type={self.loss_type!r}, rule={self.rule}"


SmallWeightedIouLoss = RuleIouLoss  # the class name sodet 0.3 pickled into checkpoints
