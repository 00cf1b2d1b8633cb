"""GFL's box term (``1 - GIoU`` per positive, torchvision's) through sodet's ``BoxRule``.

GFL's weighting of each positive by its detached max class score, and the normalisation by the sum of those
weights, stay in ``GflLoss``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from sodet.losses.box_rule import BoxRule


class RuleGIoULoss(nn.Module):
    """Per-target ``1 - GIoU`` of xyxy boxes in input pixels with the rule applied; without one it is
    torchvision's ``generalized_box_iou_loss(reduction="none")``."""

    def __init__(self, rule: BoxRule | None = None, eps: float = 1e-7):
        super().__init__()
        self.rule = rule or BoxRule()
        self.eps = eps

    def forward(self, pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        box_loss = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="none", eps=self.eps)
        return self.rule(box_loss, pred_xyxy, target_xyxy)

    def __setstate__(self, state):
        """Checkpoints of sodet 0.3 hold ``SmallWeightedGIoULoss`` with weight / small_area / form attributes."""
        super().__setstate__(state)
        if "rule" not in self.__dict__:
            self.rule = BoxRule(state.get("weight"), state.get("small_area", 1024.0), state.get("form", "study"))

    def extra_repr(self) -> str:
        return f"rule={self.rule}"


SmallWeightedGIoULoss = RuleGIoULoss  # the class name sodet 0.3 pickled into checkpoints
