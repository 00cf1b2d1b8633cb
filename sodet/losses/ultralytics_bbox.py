"""Ultralytics YOLO's box term through sodet's ``BoxRule``, by subclassing the engine's ``BboxLoss``.

``v8DetectionLoss`` calls its ``bbox_loss`` with assigned targets in grid units (``target_bboxes / stride``) and
``stride`` per anchor, so ``box * stride`` is in input pixels. The CIoU term keeps the engine's per-target weights
(summed target scores) and normalisation by ``target_scores_sum``; the DFL (or, for ``reg_max == 1`` heads such
as YOLO26, L1) term is the parent's own result.
"""

from __future__ import annotations

import torch
from ultralytics.utils.loss import BboxLoss, RotatedBboxLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import TaskAlignedAssigner

from sodet.losses.box_rule import BoxRule
from sodet.losses.nwd import nwd


class RuleBboxLoss(BboxLoss):
    """``BboxLoss`` whose per-target ``1 - CIoU`` goes through the rule."""

    def __init__(self, reg_max: int = 16, rule: BoxRule | None = None):
        super().__init__(reg_max)
        self.rule = rule or BoxRule()

    @property
    def reg_max(self) -> int:
        """The reg_max this loss was built with (BboxLoss keeps it only inside its DFL term)."""
        return self.dfl_loss.reg_max if self.dfl_loss is not None else 1

    def forward(
        self, pred_dist: torch.Tensor, pred_bboxes: torch.Tensor, anchor_points: torch.Tensor,
        target_bboxes: torch.Tensor, target_scores: torch.Tensor, target_scores_sum: torch.Tensor,
        fg_mask: torch.Tensor, imgsz: torch.Tensor, stride: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (the CIoU loss with the rule applied, the parent's DFL/L1 loss)."""
        # The parent's CIoU term is recomputed below; its graph is dropped, so it costs no backward work.
        _, loss_dfl = super().forward(
            pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum, fg_mask, imgsz,
            stride,
        )
        fg = fg_mask.nonzero(as_tuple=True)
        score_weight = target_scores[fg].sum(-1, keepdim=True)
        ciou = bbox_iou(pred_bboxes[fg], target_bboxes[fg], xywh=False, CIoU=True)
        px = stride.expand(*target_bboxes.shape[:-1], 1)[fg]  # pixels per grid unit of each target
        box_loss = self.rule(1.0 - ciou, pred_bboxes[fg] * px, target_bboxes[fg] * px)
        loss_iou = (box_loss * score_weight).sum() / target_scores_sum
        return loss_iou, loss_dfl

    def __setstate__(self, state):
        """Checkpoints of sodet 0.3 hold ``SmallWeightedBboxLoss`` with weight / small_area / form attributes."""
        super().__setstate__(state)
        if "rule" not in self.__dict__:
            self.rule = BoxRule(state.get("weight"), state.get("small_area", 1024.0), state.get("form", "study"))

    def extra_repr(self) -> str:
        return f"reg_max={self.reg_max}, rule={self.rule}"


SmallWeightedBboxLoss = RuleBboxLoss  # the class name sodet 0.3 pickled into checkpoints


def detection_losses(criterion) -> list:
    """The v8DetectionLoss-like objects inside a criterion: itself, or the two branches of an end-to-end loss."""
    branches = [getattr(criterion, name) for name in ("one2many", "one2one") if hasattr(criterion, name)]
    return branches or [criterion]


class NwdTaskAlignedAssigner(TaskAlignedAssigner):
    """The engine's task-aligned assigner ranking candidates by NWD instead of CIoU (``--nwd-assign``): the
    alignment metric becomes score^alpha * NWD^beta (boxes in input pixels, as the criterion hands them)."""

    def __init__(self, c: float, **kwargs):
        super().__init__(**kwargs)
        self.c = float(c)

    def iou_calculation(self, gt_bboxes, pd_bboxes):
        return nwd(pd_bboxes, gt_bboxes, self.c).clamp_(0)


def install_rule(criterion, rule: BoxRule):
    """Replace the ``bbox_loss`` of a ``v8DetectionLoss`` (or of both branches of YOLO26's ``E2ELoss``) with one
    that applies ``rule``, built with the replaced loss's reg_max, training flag and device, and, where the rule
    asks for it, its assigner with the NWD one (same settings); installing again replaces them again. Returns the
    criterion."""
    for loss in detection_losses(criterion):
        current = getattr(loss, "bbox_loss", None)
        if not isinstance(current, BboxLoss) or isinstance(current, RotatedBboxLoss):
            raise TypeError(
                f"expected an axis-aligned BboxLoss at .bbox_loss of {type(loss).__name__}, got {type(current).__name__}"
            )
        reg_max = current.dfl_loss.reg_max if current.dfl_loss is not None else 1
        ruled = RuleBboxLoss(reg_max, rule).to(getattr(loss, "device", None))
        loss.bbox_loss = ruled.train(current.training)
        if rule.assign == "nwd":
            a = loss.assigner
            settings = {k: getattr(a, k) for k in ("topk", "num_classes", "alpha", "beta", "eps") if hasattr(a, k)}
            loss.assigner = NwdTaskAlignedAssigner(rule.nwd_c, **settings)
    return criterion
