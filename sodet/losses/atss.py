"""ATSS assignment (Zhang et al. 2020) as MMDetection 3.3.0's ``ATSSAssigner`` computes it.

Per ground-truth box: on each level the ``topk`` anchors whose centres are nearest its centre are candidates; the
IoU threshold is the candidates' mean + (unbiased) std; a candidate is positive when its IoU reaches the threshold
AND its centre lies inside the box by more than 0.01 px. An anchor claimed by several boxes takes the one it
overlaps most. The operations follow MMDetection's order so that ties (equal distances, equal IoUs) resolve the
same way: the assignment is tested exact against MMDetection's own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchvision.ops import box_iou

INF = 100000000
ANCHOR_SCALE = 8  # ATSS's one square anchor per location: side 8 x stride


def grid_points(sizes: list[tuple[int, int]], strides, device=None, dtype=torch.float32) -> list[torch.Tensor]:
    """Per level: (H*W, 2) anchor centres (x*stride, y*stride), row-major: the engine's ``make_anchors`` with
    MMDetection's offset 0 (not half a stride), scaled to pixels."""
    from ultralytics.utils.tal import make_anchors

    feats = [torch.empty((1, 1, h, w), device=device, dtype=dtype) for h, w in sizes]
    points, _ = make_anchors(feats, torch.as_tensor([float(s) for s in strides]), grid_cell_offset=0.0)
    out, start = [], 0
    for (h, w), s in zip(sizes, strides):
        out.append(points[start:start + h * w] * s)
        start += h * w
    return out


def level_anchors(sizes: list[tuple[int, int]], strides, device=None, dtype=torch.float32) -> list[torch.Tensor]:
    """Per level: (H*W, 4) xyxy square anchors of side ANCHOR_SCALE x stride (what ATSS matches against)."""
    out = []
    for p, s in zip(grid_points(sizes, strides, device, dtype), strides):
        half = ANCHOR_SCALE * s * 0.5
        out.append(torch.cat([p - half, p + half], 1))
    return out


class Assignment(NamedTuple):
    gt_inds: torch.Tensor  # (A,) 0 = negative, k = ground truth k-1 (MMDetection's convention)
    max_overlaps: torch.Tensor  # (A,) IoU with the assigned box, -INF for negatives
    labels: torch.Tensor  # (A,) class of the assigned box, -1 for negatives


def centres(boxes: torch.Tensor) -> torch.Tensor:
    return torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0), dim=1)


def atss_assign(anchors: torch.Tensor, num_level_anchors: list[int], gt_bboxes: torch.Tensor,
                gt_labels: torch.Tensor, topk: int = 9, nwd_c: float | None = None) -> Assignment:
    """Assign each of ``anchors`` (A, 4 xyxy, levels concatenated) to one of ``gt_bboxes`` (G, 4 xyxy) or none.
    ``nwd_c``: rank and threshold the candidates by NWD of that C instead of IoU (the NWD paper's assignment)."""
    num_gt, num_anchors = gt_bboxes.shape[0], anchors.shape[0]
    gt_inds = anchors.new_zeros((num_anchors,), dtype=torch.long)
    if num_gt == 0 or num_anchors == 0:
        return Assignment(gt_inds, anchors.new_zeros((num_anchors,)), gt_inds.new_full((num_anchors,), -1))
    if nwd_c is None:
        overlaps = box_iou(anchors, gt_bboxes)  # (A, G)
    else:
        from sodet.losses.nwd import nwd

        overlaps = nwd(anchors[:, None, :], gt_bboxes[None, :, :], nwd_c)
    distances = (centres(anchors)[:, None, :] - centres(gt_bboxes)[None, :, :]).pow(2).sum(-1).sqrt()

    candidates, start = [], 0
    for n in num_level_anchors:
        _, idx = distances[start:start + n].topk(min(topk, n), dim=0, largest=False)
        candidates.append(idx + start)
        start += n
    candidates = torch.cat(candidates, 0)  # (k * levels, G)
    gt_cols = torch.arange(num_gt, device=anchors.device)
    cand_overlaps = overlaps[candidates, gt_cols]
    threshold = cand_overlaps.mean(0) + cand_overlaps.std(0)
    is_pos = cand_overlaps >= threshold[None, :]

    cxy = centres(anchors)[candidates]  # (k * levels, G, 2)
    inside = torch.stack([cxy[..., 0] - gt_bboxes[:, 0], cxy[..., 1] - gt_bboxes[:, 1],
                          gt_bboxes[:, 2] - cxy[..., 0], gt_bboxes[:, 3] - cxy[..., 1]], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & inside

    # (G, A) flattened as MMDetection builds it, so that max over boxes breaks ties the same way
    flat = candidates + gt_cols[None, :] * num_anchors
    claimed = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = flat.view(-1)[is_pos.view(-1)]
    claimed[index] = overlaps.t().contiguous().view(-1)[index]
    max_overlaps, argmax = claimed.view(num_gt, -1).t().max(dim=1)
    pos = max_overlaps != -INF
    gt_inds[pos] = argmax[pos] + 1
    labels = gt_inds.new_full((num_anchors,), -1)
    labels[pos] = gt_labels[gt_inds[pos] - 1].long()
    return Assignment(gt_inds, max_overlaps, labels)
