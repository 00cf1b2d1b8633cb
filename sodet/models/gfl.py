"""GFL (Generalized Focal Loss, Li et al. 2020) as MMDetection 3.3.0's ``gfl_r50_fpn_1x_coco``, on torchvision.

No installable package runs MMDetection's GFL on current torch, so the network is written here on torchvision's
ResNet and ops and proven equal to MMDetection's outputs (``tests/test_gfl.py`` against ``../shared/fixtures``).
Module and parameter names ARE MMDetection's (``backbone.*``, ``neck.lateral_convs.i.conv.*``, ``bbox_head.*``)
so an MMDetection checkpoint loads strict. Behind the engine's model contract like ``YoloxDetector``: RGB 0-1
batches in, ``(B, 4 + nc, N)`` decoded boxes and sigmoid scores out, ``loss(batch)`` from ``sodet.losses.gfl``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import batched_nms

from sodet.models.adapter import EngineAdapter
from sodet.models.batchnorm import FrozenBatchNormTraining, batchnorms
from sodet.models.registry import register_family

STRIDES = (8, 16, 32, 64, 128)  # P3..P7
REG_MAX = 16  # distances are distributions over 0..16 strides
ANCHOR_SCALE = 8  # ATSS's one square anchor per location: side 8 x stride
PIXEL_MEAN = (123.675, 116.28, 103.53)  # MMDetection's RGB normalisation on 0-255 (ImageNet statistics)
PIXEL_STD = (58.395, 57.12, 57.375)
NOMINAL_BATCH = 16  # GFL's recipe quotes its learning rate per 16 images (cfg/defaults.yaml sets the engine's nbs to it)
DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}
TEST_CFG = dict(nms_pre=1000, score_thr=0.05, iou=0.6, max_per_img=100)  # MMDetection's test_cfg for GFL


class ResNet(nn.Module):
    """torchvision's ResNet (pytorch style: stride in the 3x3 conv) returning C2..C5, without pooling/fc.

    MMDetection's ``frozen_stages=1``: the stem and layer1 never learn. They run without autograd rather than with
    ``requires_grad=False`` because the engine re-enables gradients on every frozen parameter it finds.
    ``norm_eval`` (every BatchNorm in eval mode during training) is applied by ``GflDetector.train``.
    """

    def __init__(self, depth: int = 50, frozen_stages: int = 1):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        # MMDetection's ResNet init without a checkpoint: Kaiming fan_out, BN 1/0, last BN of each block zero
        net = getattr(torchvision.models, DEPTHS[depth])(weights=None, zero_init_residual=True)
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 1 if depth < 50 else 4  # BasicBlock / Bottleneck
        self.out_channels = [64 * expansion * 2**i for i in range(4)]  # C2..C5

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_stages < 0):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), 1):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i > self.frozen_stages):
                x = layer(x)
            outs.append(x)
        return outs


class ConvBlock(nn.Module):
    """MMDetection's ConvModule layout (``.conv`` then optional ``.gn`` and ReLU), so state-dict keys match."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, gn: bool = False, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=not gn)
        self.gn = nn.GroupNorm(32, c_out) if gn else None
        self.act = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        return self.act(x) if self.act is not None else x


class FPN(nn.Module):
    """C3..C5 -> 256-channel P3..P5 (top-down, nearest upsampling to the lower level's size), P6 = stride-2 conv on
    P5's OUTPUT and P7 = stride-2 conv on P6 with no ReLU between (``add_extra_convs='on_output'``)."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvBlock(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvBlock(out_channels, out_channels, 3) for _ in in_channels)
        self.fpn_convs.extend(ConvBlock(out_channels, out_channels, 3, stride=2) for _ in range(num_outs - len(in_channels)))
        for m in self.modules():  # MMDetection's FPN init: Xavier uniform, zero bias
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        outs = [self.fpn_convs[i](x) for i, x in enumerate(laterals)]
        for conv in self.fpn_convs[len(laterals):]:
            outs.append(conv(outs[-1]))
        return outs


class Scale(nn.Module):
    """A learnable scalar per level (MMDetection's ``Scale``), multiplying the box distribution logits."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Integral(nn.Module):
    """Expected value of each side's distribution over 0..reg_max (``project`` is in MMDetection's state dict)."""

    def __init__(self, reg_max: int = REG_MAX):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 4 * (reg_max + 1)) logits -> (N, 4) distances in strides."""
        p = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
        return F.linear(p, self.project.type_as(p)).reshape(-1, 4)


class GflHead(nn.Module):
    """Shared over levels: 4 x (3x3 conv, GroupNorm(32), ReLU) per branch, ``gfl_cls`` (class-IoU logits) and
    ``gfl_reg`` (4 side distributions over 0..reg_max, times a per-level Scale). MMDetection's init: normal std
    0.01, zero bias, class bias at prior 0.01, GroupNorm 1/0, Scales 1."""

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4,
                 reg_max: int = REG_MAX, strides: tuple[int, ...] = STRIDES):
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        chans = [in_channels] + [feat_channels] * (stacked_convs - 1)
        self.cls_convs = nn.ModuleList(ConvBlock(c, feat_channels, 3, gn=True, relu=True) for c in chans)
        self.reg_convs = nn.ModuleList(ConvBlock(c, feat_channels, 3, gn=True, relu=True) for c in chans)
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.integral = Integral(reg_max)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: class logits (B, nc, H, W) and distribution logits after Scale (B, 4*(reg_max+1), H, W)."""
        cls_scores, bbox_preds = [], []
        for x, scale in zip(feats, self.scales):
            c, r = x, x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_scores.append(self.gfl_cls(c))
            bbox_preds.append(scale(self.gfl_reg(r)).float())
        return cls_scores, bbox_preds


def grid_points(sizes: list[tuple[int, int]], strides=STRIDES, device=None, dtype=torch.float32):
    """Per level: (H*W, 2) anchor centres (x*stride, y*stride), row-major; MMDetection's offset is 0, not half a
    stride."""
    pts = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype) * s,
                                torch.arange(w, device=device, dtype=dtype) * s, indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1))
    return pts


def level_anchors(sizes: list[tuple[int, int]], strides=STRIDES, device=None, dtype=torch.float32) -> list[torch.Tensor]:
    """Per level: (H*W, 4) xyxy square anchors of side ANCHOR_SCALE x stride (what ATSS matches against)."""
    out = []
    for p, s in zip(grid_points(sizes, strides, device, dtype), strides):
        half = ANCHOR_SCALE * s * 0.5
        out.append(torch.cat([p - half, p + half], 1))
    return out


def distance2bbox(points: torch.Tensor, distance: torch.Tensor, max_shape=None) -> torch.Tensor:
    """(x, y) and (left, top, right, bottom) -> xyxy, clamped to ``max_shape`` (H, W) when given."""
    boxes = torch.cat([points - distance[:, :2], points + distance[:, 2:]], 1)
    if max_shape is not None:
        boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=max_shape[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=max_shape[0])
    return boxes


def postprocess(head: GflHead, cls_scores, bbox_preds, img_shape, cfg: dict = TEST_CFG) -> list[dict]:
    """MMDetection's test path per image: sigmoid; per level the top ``nms_pre`` (location, class) pairs above
    ``score_thr``; decode (clamped to ``img_shape``); class-aware NMS; ``max_per_img``. -> bboxes, scores, labels."""
    sizes = [tuple(c.shape[-2:]) for c in cls_scores]
    points = grid_points(sizes, head.strides, cls_scores[0].device)
    results = []
    for b in range(cls_scores[0].shape[0]):
        boxes, scores, labels = [], [], []
        for c, r, p, s in zip(cls_scores, bbox_preds, points, head.strides):
            sc = c[b].permute(1, 2, 0).reshape(-1, head.num_classes).sigmoid()
            valid = torch.nonzero(sc > cfg["score_thr"])
            v, order = sc[valid[:, 0], valid[:, 1]].sort(descending=True)
            keep = valid[order[: cfg["nms_pre"]]]
            dist = head.integral(r[b].permute(1, 2, 0).reshape(-1, 4 * (head.reg_max + 1))[keep[:, 0]]) * s
            boxes.append(distance2bbox(p[keep[:, 0]], dist, img_shape))
            scores.append(v[: cfg["nms_pre"]])
            labels.append(keep[:, 1])
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        wh_ok = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)  # min_bbox_size 0
        boxes, scores, labels = boxes[wh_ok], scores[wh_ok], labels[wh_ok]
        if boxes.numel():
            keep = batched_nms(boxes, scores, labels, cfg["iou"])[: cfg["max_per_img"]]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results.append({"bboxes": boxes, "scores": scores, "labels": labels})
    return results


class GflDetector(EngineAdapter, FrozenBatchNormTraining, nn.Module):
    """GFL (ResNet + FPN P3-P7 + GFL head) that the engine can train, validate, checkpoint, resume and deep-copy.

    Submodules ``backbone``, ``neck``, ``bbox_head`` carry MMDetection's names, so ``state_dict()`` is an
    MMDetection GFL checkpoint. For distillation, ``features(img)`` returns the 5 FPN maps and the class logits.
    """

    task = "detect"
    nominal_batch = NOMINAL_BATCH
    norm_eval = True  # BatchNorm in eval mode while training (see train)

    def __init__(self, name: str = "gfl-r50", nc: int = 80, names: dict | None = None, depth: int = 50):
        super().__init__()
        self.backbone = ResNet(depth)
        self.neck = FPN(self.backbone.out_channels[1:], 256, len(STRIDES))
        self.bbox_head = GflHead(nc)
        from sodet.losses.gfl import GflLoss

        self.gfl_loss = GflLoss()  # no parameters: the state dict stays MMDetection's
        self.nc = nc
        self.names = names or {i: str(i) for i in range(nc)}
        # per-level strides, as every family's; the engine pads its inputs to multiples of the largest (128), where
        # MMDetection pads to 32 (P6/P7 then take odd sizes): ``detect`` takes either
        self.stride = torch.tensor([float(s) for s in STRIDES])
        self.yaml = {"family": "gfl", "name": name, "nc": nc, "channels": 3, "depth": depth}
        self.args = {}
        self.criterion = None  # the loss is gfl_loss; the engine only checks the attribute
        self.max_det = 300
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1) / 255.0, persistent=False)

    @property
    def model(self) -> nn.ModuleList:
        """Indexable view (the engine reads ``model[-1]`` as the head); the modules keep MMDetection's names."""
        return nn.ModuleList([self.backbone, self.neck, self.bbox_head])

    def train(self, mode: bool = True):
        """MMDetection's ``norm_eval``: BatchNorm stays in eval mode while training (its affine parameters still
        learn, except in the frozen stem and layer1; ``--freeze-bn`` freezes them all)."""
        super().train(mode)
        if mode:
            for bn in batchnorms(self.backbone):
                bn.eval()
        return self

    def half(self):
        """Weights stay fp32 (the engine stores checkpoints after ``.half()``): a checkpoint scores what was
        validated, as MMDetection's fp32 checkpoints do. CUDA training still computes in fp16 under AMP."""
        return self

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """Engine batches are RGB 0-1; MMDetection's weights expect (RGB*255 - mean) / std."""
        x = img.to(self.backbone.conv1.weight.dtype)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def head_outputs(self, img: torch.Tensor):
        """(neck maps P3..P7, class logits per level, distribution logits per level) for engine-range input."""
        feats = self.neck(self.backbone(self.normalize(img))[1:])
        cls_scores, bbox_preds = self.bbox_head(feats)
        return feats, cls_scores, bbox_preds

    def features(self, img: torch.Tensor) -> dict:
        """For distillation: ``neck`` = the 5 FPN outputs P3..P7 (B, 256, H_l, W_l), ``head`` = class logits per
        level (B, nc, H_l, W_l), ``reg`` = box distribution logits per level."""
        feats, cls_scores, bbox_preds = self.head_outputs(img)
        return {"neck": feats, "head": cls_scores, "reg": bbox_preds}

    def forward(self, x, *args, **kwargs):
        if isinstance(x, dict):  # training step: the engine passes the batch
            return self.loss(x, *args, **kwargs)
        return self.predict(x)

    def predict(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 4 + nc, N): xywh centre boxes in input pixels (clamped to the input, as MMDetection's), sigmoid
        class scores; the engine's validator runs NMS on them."""
        _, cls_scores, bbox_preds = self.head_outputs(img)
        h, w = img.shape[-2:]
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        points = torch.cat(grid_points(sizes, self.bbox_head.strides, img.device))
        strides = torch.cat([points.new_full((a * b,), float(s)) for (a, b), s in zip(sizes, self.bbox_head.strides)])
        n = img.shape[0]
        nbins = 4 * (self.bbox_head.reg_max + 1)
        reg = torch.cat([r.permute(0, 2, 3, 1).reshape(n, -1, nbins) for r in bbox_preds], 1)
        dist = self.bbox_head.integral(reg).reshape(n, -1, 4) * strides[None, :, None]
        x1y1 = points[None] - dist[..., :2]
        x2y2 = points[None] + dist[..., 2:]
        x1y1 = torch.stack([x1y1[..., 0].clamp(0, w), x1y1[..., 1].clamp(0, h)], -1)
        x2y2 = torch.stack([x2y2[..., 0].clamp(0, w), x2y2[..., 1].clamp(0, h)], -1)
        boxes = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, self.nc) for c in cls_scores], 1).sigmoid()
        return torch.cat([boxes, scores.to(boxes.dtype)], -1).permute(0, 2, 1)

    def detect(self, img: torch.Tensor, cfg: dict = TEST_CFG) -> list[dict]:
        """MMDetection's own test path (nms_pre 1000 per level, score 0.05, NMS 0.6, 100 per image) on an input
        already padded as MMDetection pads it: per image xyxy ``bboxes``, ``scores``, ``labels``."""
        _, cls_scores, bbox_preds = self.head_outputs(img)
        return postprocess(self.bbox_head, cls_scores, bbox_preds, tuple(img.shape[-2:]), cfg)

    @staticmethod
    def gt_from_batch(batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Engine targets (normalised xywh, flat with batch_idx) as per-image xyxy pixel boxes and labels."""
        img = batch["img"]
        n, _, h, w = img.shape
        idx = batch["batch_idx"].long().view(-1)
        xywh = batch["bboxes"].float().view(-1, 4) * img.new_tensor([w, h, w, h], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        cls = batch["cls"].view(-1).long()
        return [xyxy[idx == i] for i in range(n)], [cls[idx == i] for i in range(n)]

    def loss(self, batch: dict, preds=None):
        """GFL's loss (QFL + GIoU + DFL, MMDetection's values). In eval mode too (the validator asks for it)."""
        img = batch["img"]
        _, cls_scores, bbox_preds = self.head_outputs(img)
        boxes, labels = self.gt_from_batch(batch)
        losses = self.gfl_loss(self.bbox_head, cls_scores, bbox_preds, boxes, labels)
        total = losses["loss_cls"] + losses["loss_bbox"] + losses["loss_dfl"]
        items = {"box_loss": losses["loss_bbox"].detach(), "cls_loss": losses["loss_cls"].detach(),
                 "dfl_loss": losses["loss_dfl"].detach()}
        # GFL's recipe is SGD at lr 0.01 per 16 images on this batch-mean loss; the engine steps lr0 on the sum of
        # the returned loss over nbs images (16 for GFL, cfg/defaults.yaml), so bs/16 of it reproduces the recipe
        return total * img.shape[0] / NOMINAL_BATCH, items

    # engine hooks -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, verbose: bool = False, **kwargs):
        """Fold the BatchNorm layers into the backbone's convolutions for inference (same function: GFL's BatchNorm
        is always in eval mode). The state dict loses the ``bn`` keys: for inference copies only. ``kwargs``: what
        the engine passes its own models (the exporter gives ``imgsz``), not needed here."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        for m in list(self.backbone.modules()):
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                conv, bn = getattr(m, conv_name, None), getattr(m, bn_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(m, conv_name, fuse_conv_bn_eval(conv, bn))
                    setattr(m, bn_name, nn.Identity())
            ds = getattr(m, "downsample", None)
            if isinstance(ds, nn.Sequential) and isinstance(ds[1], nn.BatchNorm2d):
                ds[0], ds[1] = fuse_conv_bn_eval(ds[0], ds[1]), nn.Identity()
        return self


@register_family("gfl")
def build_gfl(entry, nc: int, names: dict | None = None) -> GflDetector:
    depth = int(entry.arch.lstrip("r"))
    return GflDetector(entry.name, nc, names, depth)
