"""GFL's training loss as MMDetection 3.3.0's ``GFLHead.loss_by_feat`` computes it: ATSS targets, Quality Focal
Loss (IoU as the soft class target), GIoU and Distribution Focal Loss on the positives.

Normalisation (what makes the numbers MMDetection's): QFL is summed over every location and class and divided by
the number of positives in the batch; GIoU (x2.0) and DFL (x0.25, the 4 sides averaged) are weighted per positive
by its detached max class score and divided by the sum of those weights (at least 1). Box quantities are in
stride units, where MMDetection computes them. The per-positive GIoU term ``1 - GIoU`` goes through ``box_loss``
(``RuleGIoULoss``), where sodet's ``BoxRule`` (e.g. ``--weighted-loss``) applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sodet.losses.atss import atss_assign, grid_points, level_anchors
from sodet.losses.giou import RuleGIoULoss

EPS = torch.finfo(torch.float32).eps  # MMDetection adds it to every avg_factor


def aligned_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of each row of ``a`` with the same row of ``b`` (xyxy), union floored at ``eps`` as MMDetection's."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return overlap / torch.clamp(area_a + area_b - overlap, min=eps)


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, score: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """(N, C) logits; labels (N,) with C = background; score (N,) the IoU target of positives -> (N,) summed over
    classes. Negatives: BCE towards 0 times sigmoid^beta; a positive's class: BCE towards its IoU times
    |IoU - sigmoid|^beta."""
    sig = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * sig.pow(beta)
    pos = ((labels >= 0) & (labels < logits.shape[1])).nonzero().squeeze(1)
    cls = labels[pos].long()
    loss[pos, cls] = F.binary_cross_entropy_with_logits(logits[pos, cls], score[pos], reduction="none") * (
        score[pos] - sig[pos, cls]).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, reg_max + 1) logits, (N,) continuous targets -> (N,): cross-entropy to the two integers around the
    target, weighted by the linear split."""
    left = target.long()
    right = left + 1
    return (F.cross_entropy(pred, left, reduction="none") * (right.float() - target)
            + F.cross_entropy(pred, right, reduction="none") * (target - left.float()))


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over GPUs (MMDetection averages its normalisers across the DDP group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return x


class GflLoss(nn.Module):
    """GFL's loss for one batch. No parameters: it reads the head's reg_max, strides and Integral."""

    def __init__(self, topk: int = 9, beta: float = 2.0, weight_cls: float = 1.0, weight_bbox: float = 2.0,
                 weight_dfl: float = 0.25):
        super().__init__()
        self.topk, self.beta = topk, beta
        self.weight_cls, self.weight_bbox, self.weight_dfl = weight_cls, weight_bbox, weight_dfl
        self.box_loss = RuleGIoULoss()  # torchvision's 1 - GIoU; the GFL family installs a run's BoxRule here
        self.assign_nwd_c = None  # ATSS ranks anchors by IoU; by NWD of this C (px) with --nwd-assign

    def targets(self, head, sizes, gt_bboxes: list[torch.Tensor], gt_labels: list[torch.Tensor], device):
        """Anchors, points, per-anchor strides and, per image, the ATSS assignment, class labels (background =
        num_classes) and box targets (xyxy input pixels)."""
        anchors = level_anchors(sizes, head.strides, device)
        num_level = [a.shape[0] for a in anchors]
        points = torch.cat(grid_points(sizes, head.strides, device))
        strides = torch.cat([points.new_full((n,), float(s)) for n, s in zip(num_level, head.strides)])
        anchors = torch.cat(anchors)
        assigns, labels, boxes = [], [], []
        for bb, lb in zip(gt_bboxes, gt_labels):
            a = atss_assign(anchors, num_level, bb.float(), lb, self.topk, getattr(self, "assign_nwd_c", None))
            pos = a.gt_inds > 0
            lab = a.gt_inds.new_full(a.gt_inds.shape, head.num_classes)
            lab[pos] = lb[a.gt_inds[pos] - 1].long()
            box = anchors.new_zeros(anchors.shape)
            box[pos] = bb.float()[a.gt_inds[pos] - 1]
            assigns.append(a), labels.append(lab), boxes.append(box)
        return anchors, points, strides, assigns, torch.stack(labels), torch.stack(boxes)

    def forward(self, head, cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor],
                gt_bboxes: list[torch.Tensor], gt_labels: list[torch.Tensor], details: bool = False) -> dict:
        """Losses of a batch: ``loss_cls``, ``loss_bbox``, ``loss_dfl`` (MMDetection's names and values)."""
        nc, nbins = head.num_classes, head.reg_max + 1
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        anchors, points, strides, assigns, labels, boxes = self.targets(head, sizes, gt_bboxes, gt_labels, device)
        n_img = len(gt_bboxes)
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(n_img, -1, nc) for c in cls_scores], 1).reshape(-1, nc).float()
        reg = torch.cat([r.permute(0, 2, 3, 1).reshape(n_img, -1, 4 * nbins) for r in bbox_preds], 1).reshape(-1, 4 * nbins).float()
        labels, boxes = labels.reshape(-1), boxes.reshape(-1, 4)
        points, strides = points.repeat(n_img, 1), strides.repeat(n_img)

        pos = ((labels >= 0) & (labels < nc)).nonzero().squeeze(1)
        num_pos = reduce_mean(torch.tensor(float(pos.numel()), device=device)).item()
        score = cls.new_zeros(labels.shape, dtype=torch.float32)
        out = {}
        if pos.numel():
            s = strides[pos, None]
            centre = points[pos] / s
            weight = cls.detach().sigmoid().max(dim=1)[0][pos]
            pred_dist = head.integral(reg[pos])
            pred_box = torch.cat([centre - pred_dist[:, :2], centre + pred_dist[:, 2:]], 1)  # stride units
            target_box = boxes[pos] / s
            score[pos] = aligned_iou(pred_box.detach(), target_box)
            giou = self.box_loss(pred_box * s, boxes[pos])  # 1 - GIoU per positive (small-weighted), pixels
            loss_bbox = self.weight_bbox * (giou * weight).sum() / (1.0 + EPS)
            sides = torch.cat([centre - target_box[:, :2], target_box[:, 2:] - centre], 1).clamp(0, head.reg_max - 0.1)
            dfl = distribution_focal_loss(reg[pos].reshape(-1, nbins), sides.reshape(-1))
            loss_dfl = self.weight_dfl * (dfl * weight[:, None].expand(-1, 4).reshape(-1)).sum() / (4.0 + EPS)
            weight_sum = weight.sum()
            if details:
                out.update(pos_inds=pos, giou_weight=weight, pos_decode_bbox_pred=pred_box.detach(),
                           pos_decode_bbox_targets=target_box, qfl_score=score)
        else:
            loss_bbox = loss_dfl = reg.sum() * 0
            weight_sum = reg.new_tensor(0.0)
        loss_cls = self.weight_cls * quality_focal_loss(cls, labels, score, self.beta).sum() / (num_pos + EPS)
        avg = reduce_mean(weight_sum.detach()).clamp(min=1).item()
        out.update(loss_cls=loss_cls, loss_bbox=loss_bbox / avg, loss_dfl=loss_dfl / avg)
        if details:
            out.update(assign=assigns, labels=labels, bbox_targets=boxes, anchors=anchors)
        return out
