"""GIoU box loss with small-object weighting (the study's GFL form ``1 - W*GIoU``).

GFL's box term (``sodet.losses.gfl.GflLoss.box_loss``) is ``1 - GIoU`` per positive; its weighting by the
detached max class score and the normalisation by the sum of those weights stay in ``GflLoss``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from sodet.losses.small_weighted import check_small_weighting, small_target_loss
from sodet.options import SMALL_AREA


class SmallWeightedGIoULoss(nn.Module):
    """Per-target ``1 - GIoU`` of xyxy boxes in input pixels; small targets get the weighted form.

    With ``weight=1`` it is torchvision's ``generalized_box_iou_loss(reduction="none")``.
    """

    def __init__(self, weight: float = 1.0, small_area: float = SMALL_AREA, form: str = "study", eps: float = 1e-7):
        check_small_weighting(weight, small_area, form)
        super().__init__()
        self.weight = float(weight)
        self.small_area = float(small_area)
        self.form = form
        self.eps = eps

    def forward(self, pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        box_loss = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="none", eps=self.eps)
        target_area = (target_xyxy[..., 2] - target_xyxy[..., 0]) * (target_xyxy[..., 3] - target_xyxy[..., 1])
        return small_target_loss(box_loss, target_area, self.weight, self.small_area, self.form)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, small_area={self.small_area}, form={self.form!r}"
