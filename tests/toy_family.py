"""A detector family added the way docs/architecture.md says: ONE module (this one) and its registry rows.

The smallest real detector the design allows: three stride-2 convolutions to one stride-8 map, a head of class
logits and box distances per cell, each ground-truth box assigned to the cell holding its centre. Its box term
(``1 - GIoU``) goes through sodet's ``BoxRule``, so ``--weighted-loss`` works on it unchanged; its two feature
points make ``sodet distill`` work too.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from sodet.losses.box_rule import BoxRule
from sodet.models.adapter import EngineAdapter
from sodet.models.family import Family
from sodet.models.registry import ModelEntry, register_family, register_model

STRIDE = 8


class ToyDetector(EngineAdapter):
    task = "detect"
    nominal_batch = 16
    parts = ("backbone", "head")

    def __init__(self, name: str, nc: int, names: dict | None = None, width: int = 16):
        super().__init__("toy", name, nc, names, (STRIDE,))
        self.backbone = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, width, 3, 2, 1), nn.ReLU()) for c in (3, width, width)])
        self.head = nn.Conv2d(width, nc + 4, 1)
        nn.init.constant_(self.head.bias[:nc], -4.0)  # prior 0.02
        self.rule = BoxRule()

    def raw(self, img):
        out = self.head(self.backbone(img))
        return out[:, : self.nc], out[:, self.nc:]

    def decode(self, dist):
        b, _, h, w = dist.shape
        ys, xs = torch.meshgrid(torch.arange(h, device=dist.device), torch.arange(w, device=dist.device), indexing="ij")
        centre = (torch.stack([xs, ys]).float() + 0.5) * STRIDE
        d = dist.float().clamp(max=8).exp() * STRIDE
        return torch.cat([centre - d[:, :2], centre + d[:, 2:]], 1)  # (B, 4, H, W) xyxy

    def predict(self, img):
        cls, dist = self.raw(img)
        xyxy = self.decode(dist).flatten(2)
        xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        return torch.cat([xywh, cls.flatten(2).sigmoid()], 1)

    def loss(self, batch, preds=None):
        img = batch["img"]
        cls, dist = self.raw(img)
        b, _, h, w = cls.shape
        idx = batch["batch_idx"].long()
        xywh = batch["bboxes"].float() * img.new_tensor([img.shape[3], img.shape[2]] * 2)
        gx = (xywh[:, 0] / STRIDE).long().clamp(0, w - 1)
        gy = (xywh[:, 1] / STRIDE).long().clamp(0, h - 1)
        target = torch.zeros_like(cls)
        target[idx, batch["cls"].view(-1).long(), gy, gx] = 1.0
        n = max(len(idx), 1)
        loss_cls = sigmoid_focal_loss(cls, target, reduction="sum") / n
        gt = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        pred = self.decode(dist)[idx, :, gy, gx]
        box = self.rule(generalized_box_iou_loss(pred, gt, reduction="none"), pred, gt).sum() / n if len(idx) else dist.sum() * 0
        total = loss_cls + 2.0 * box
        return total * self.mean_loss_scale(b), {"box_loss": box.detach(), "cls_loss": loss_cls.detach()}


class ToyFamily(Family):
    name, display = "toy", "Toy single-level detector"

    def build(self, entry, nc, names=None):
        return ToyDetector(entry.name, nc, names)

    def load_module(self, model, source, origin):
        model.load_state_dict(source.state_dict())

    def install_box_rule(self, model, rule):
        model.rule = rule

    def feature_modules(self, model, on):
        return [model.backbone] if on == "neck" else [model.head]


register_family(ToyFamily())
register_model(ModelEntry(name="toy-s8", family="toy", arch="s8", imgsz=128))  # the row cfg/models.yaml would hold
