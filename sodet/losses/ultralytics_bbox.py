"""Small-object weighting for Ultralytics YOLO's box loss, by subclassing ``BboxLoss``.

``v8DetectionLoss`` calls its ``bbox_loss`` with assigned targets in grid units (``target_bboxes / stride``) and
``stride`` per anchor, so ``target_bboxes * stride`` is the assigned ground truth in input pixels. The CIoU term
keeps the engine's per-target weights (summed target scores) and normalisation by ``target_scores_sum``; the
DFL (or, for ``reg_max == 1`` heads such as YOLO26, L1) term is the parent's own result.
"""

from __future__ import annotations

import torch
from ultralytics.utils.loss import BboxLoss, RotatedBboxLoss
from ultralytics.utils.metrics import bbox_iou

from sodet.losses.small_weighted import check_small_weighting, small_target_loss
from sodet.options import SMALL_AREA


class SmallWeightedBboxLoss(BboxLoss):
    """``BboxLoss`` whose small targets get ``1 - W*CIoU`` (study) or ``W*(1 - CIoU)`` (scale)."""

    def __init__(
        self, reg_max: int = 16, weight: float = 1.0, small_area: float = SMALL_AREA, form: str = "study"
    ):
        check_small_weighting(weight, small_area, form)
        super().__init__(reg_max)
        self.weight = float(weight)
        self.small_area = float(small_area)
        self.form = form

    @property
    def reg_max(self) -> int:
        """The reg_max this loss was built with (BboxLoss keeps it only inside its DFL term)."""
        return self.dfl_loss.reg_max if self.dfl_loss is not None else 1

    def forward(
        self,
        pred_dist: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        target_bboxes: torch.Tensor,
        target_scores: torch.Tensor,
        target_scores_sum: torch.Tensor,
        fg_mask: torch.Tensor,
        imgsz: torch.Tensor,
        stride: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (weighted CIoU loss, the parent's DFL/L1 loss)."""
        # The parent's CIoU term is recomputed below; its graph is dropped, so it costs no backward work.
        _, loss_dfl = super().forward(
            pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum, fg_mask, imgsz,
            stride,
        )
        fg = fg_mask.nonzero(as_tuple=True)
        score_weight = target_scores[fg].sum(-1, keepdim=True)
        ciou = bbox_iou(pred_bboxes[fg], target_bboxes[fg], xywh=False, CIoU=True)
        target_px = target_bboxes[fg] * stride.expand(*target_bboxes.shape[:-1], 1)[fg]  # xyxy, input pixels
        target_area = (target_px[:, 2:3] - target_px[:, 0:1]) * (target_px[:, 3:4] - target_px[:, 1:2])
        box_loss = small_target_loss(1.0 - ciou, target_area, self.weight, self.small_area, self.form)
        loss_iou = (box_loss * score_weight).sum() / target_scores_sum
        return loss_iou, loss_dfl

    def extra_repr(self) -> str:
        return f"reg_max={self.reg_max}, weight={self.weight}, small_area={self.small_area}, form={self.form!r}"


def _detection_losses(criterion) -> list:
    """The v8DetectionLoss-like objects inside a criterion: itself, or the two branches of an end-to-end loss."""
    branches = [getattr(criterion, name) for name in ("one2many", "one2one") if hasattr(criterion, name)]
    return branches or [criterion]


def install_ultralytics(criterion, weight: float, small_area: float = SMALL_AREA, form: str = "study"):
    """Replace the ``bbox_loss`` of a ``v8DetectionLoss`` (or of both branches of YOLO26's ``E2ELoss``).

    The replacement is built with the replaced loss's reg_max, training flag and the criterion's device;
    installing again replaces it again. Returns the criterion.
    """
    check_small_weighting(weight, small_area, form)
    for loss in _detection_losses(criterion):
        current = getattr(loss, "bbox_loss", None)
        if not isinstance(current, BboxLoss) or isinstance(current, RotatedBboxLoss):
            raise TypeError(
                f"expected an axis-aligned BboxLoss at .bbox_loss of {type(loss).__name__}, got {type(current).__name__}"
            )
        reg_max = current.dfl_loss.reg_max if current.dfl_loss is not None else 1
        weighted = SmallWeightedBboxLoss(reg_max, weight, small_area, form).to(getattr(loss, "device", None))
        loss.bbox_loss = weighted.train(current.training)
    return criterion
