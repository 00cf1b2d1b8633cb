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

from sodet.errors import SodetError
from sodet.losses.atss import grid_points
from sodet.losses.gfl import GflLoss
from sodet.losses.giou import RuleGIoULoss
from sodet.models.adapter import EngineAdapter
from sodet.models.batchnorm import FrozenBatchNormTraining, batchnorms
from sodet.models.family import Family
from sodet.models.registry import register_family
from sodet.models.weights import load_by_name, model_names

STRIDES = (8, 16, 32, 64, 128)  # P3..P7
REG_MAX = 16  # distances are distributions over 0..16 strides
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


def distance2bbox(points: torch.Tensor, distance: torch.Tensor, max_shape=None) -> torch.Tensor:
    """(x, y) and (left, top, right, bottom) -> xyxy (the engine's ``dist2bbox``), clamped to ``max_shape`` (H, W)."""
    from ultralytics.utils.tal import dist2bbox

    boxes = dist2bbox(distance, points, xywh=False, dim=-1)
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


class GflDetector(FrozenBatchNormTraining, EngineAdapter):
    """GFL (ResNet + FPN P3-P7 + GFL head) that the engine can train, validate, checkpoint, resume and deep-copy.

    Submodules ``backbone``, ``neck``, ``bbox_head`` carry MMDetection's names, so ``state_dict()`` is an
    MMDetection GFL checkpoint.
    """

    task = "detect"
    nominal_batch = NOMINAL_BATCH
    parts = ("backbone", "neck", "bbox_head")
    norm_eval = True  # BatchNorm in eval mode while training (see train)

    def __init__(self, name: str = "gfl-r50", nc: int = 80, names: dict | None = None, depth: int = 50):
        # per-level strides, as every family's; the engine pads its inputs to multiples of the largest (128), where
        # MMDetection pads to 32 (P6/P7 then take odd sizes): ``detect`` takes either
        super().__init__("gfl", name, nc, names, STRIDES, depth=depth)
        self.backbone = ResNet(depth)
        self.neck = FPN(self.backbone.out_channels[1:], 256, len(STRIDES))
        self.bbox_head = GflHead(nc)
        self.gfl_loss = GflLoss()  # no parameters: the state dict stays MMDetection's
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1) / 255.0, persistent=False)

    def train(self, mode: bool = True):
        """MMDetection's ``norm_eval``: BatchNorm stays in eval mode while training (its affine parameters still
        learn, except in the frozen stem and layer1; ``--freeze-bn`` freezes them all)."""
        super().train(mode)
        if mode:
            for bn in batchnorms(self.backbone):
                bn.eval()
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
        # GFL's recipe is SGD at lr 0.01 per 16 images on this batch-mean loss (the engine's nbs is 16 for GFL)
        return total * self.mean_loss_scale(img.shape[0]), items

    @torch.no_grad()
    def fuse_inplace(self) -> None:
        """Fold the BatchNorm layers into the backbone's convolutions (GFL's BatchNorm is always in eval mode). The
        state dict loses the ``bn`` keys: for inference copies only."""
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


GFL_CONSTANTS = ("bbox_head.integral.project", "num_batches_tracked")  # buffers older MMDetection files may lack


class StepLR:
    """Learning-rate factor x0.1 at each milestone epoch (a class, not a lambda: the trainer's state pickles)."""

    def __init__(self, milestones: tuple[int, ...], gamma: float = 0.1):
        self.milestones, self.gamma = tuple(milestones), gamma

    def __call__(self, epoch: int) -> float:
        return self.gamma ** sum(epoch >= m for m in self.milestones)


class GflFamily(Family):
    name, display = "gfl", "GFL"
    refused_options = {
        "box": "its loss weights are GFL's own (QFL + 2 x GIoU + 0.25 x DFL)", "cls": "its loss weights are GFL's own",
        "dfl": "its DFL weight is GFL's own (0.25)", "freeze": "GFL freezes its stem and layer1, as MMDetection does",
    }

    def build(self, entry, nc, names=None):
        return GflDetector(entry.name, nc, names, int(entry.arch.lstrip("r")))

    def load_state(self, model, ckpt, origin):
        """An MMDetection GFL checkpoint (``{'meta', 'state_dict'}`` or a bare state dict; keys ``backbone.*``,
        ``neck.*``, ``bbox_head.*``) loaded strict, the class rows of ``gfl_cls`` by name (an 80-class head is
        COCO's order); or a torchvision ImageNet ResNet (``conv1.*``, ``layer*``, ``fc.*``) loaded strict into the
        backbone, the rest keeping MMDetection's init."""
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SodetError(f"{origin}: not a state dict (expected an MMDetection GFL checkpoint or a torchvision ResNet)")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if "conv1.weight" in state and not any(k.startswith("backbone.") for k in state):  # torchvision ImageNet ResNet
            backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
            own = model.backbone.state_dict()
            bad = sorted(set(own) ^ set(backbone)) or [k for k in own if own[k].shape != backbone[k].shape]
            if bad:
                raise SodetError(f"{origin} does not fit {model.yaml['name']}'s ResNet-{model.backbone.depth} backbone (e.g. {bad[0]})")
            model.backbone.load_state_dict(backbone)
            return
        load_by_name(model, state, ("bbox_head.gfl_cls.",), origin, optional=GFL_CONSTANTS)

    def load_module(self, model, source, origin):
        load_by_name(model, source.float().state_dict(), ("bbox_head.gfl_cls.",), origin, model_names(source), GFL_CONSTANTS)

    def verify_weights(self, entry, path, part="all"):
        """MMDetection files load strictly into an 80-class GFL; torchvision files strictly into its ResNet."""
        from sodet.models.weights import coco80_names, read_checkpoint

        model = self.build(entry, 80, dict(enumerate(coco80_names())))
        ckpt = read_checkpoint(path)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        is_backbone = isinstance(state, dict) and "conv1.weight" in state
        if (part == "backbone") != is_backbone:
            raise SodetError(f"{path}: expected {'a torchvision ResNet' if part == 'backbone' else 'an MMDetection GFL checkpoint'}")
        self.load_state(model, ckpt, path)

    def install_box_rule(self, model, rule):
        model.gfl_loss.box_loss = RuleGIoULoss(rule)
        model.gfl_loss.assign_nwd_c = rule.nwd_c if rule.assign == "nwd" else None  # ATSS on NWD (--nwd-assign)

    def feature_modules(self, model, on):
        return [model.neck] if on == "neck" else [model.bbox_head.gfl_cls]

    # MMDetection's recipe, unless the user asks for the engine's schedule (cos_lr, lrf or warmup_epochs set) ----
    @staticmethod
    def recipe_applies(trainer) -> bool:
        from ultralytics.utils import DEFAULT_CFG

        a = trainer.args
        return not a.cos_lr and a.lrf == DEFAULT_CFG.lrf and a.warmup_epochs == DEFAULT_CFG.warmup_epochs

    def scheduler(self, trainer):
        """x0.1 at epochs 8 and 11 of 12, scaled to the run's epochs (the engine has only linear and cosine)."""
        if not self.recipe_applies(trainer):
            return None
        return StepLR((round(trainer.epochs * 8 / 12), round(trainer.epochs * 11 / 12)))

    def warmup_iterations(self, trainer, batches_per_epoch):
        """Linear warm-up over 500 iterations of 16 images, counted in this run's batches (and, as the engine
        does, leaving the last epoch out of it)."""
        if not self.recipe_applies(trainer):
            return None
        return min(round(500 * 16 / trainer.batch_size), max(trainer.epochs - 1, 0) * batches_per_epoch)

    def adjust_optimizer(self, trainer, optimizer):
        """MMDetection's SGD (plain momentum, weight decay on every parameter) where the engine's is Nesterov with
        no decay on norms and biases."""
        from ultralytics.utils import LOGGER, colorstr

        if not self.recipe_applies(trainer) or not isinstance(optimizer, torch.optim.SGD):
            return
        decay = max(g["weight_decay"] for g in optimizer.param_groups)
        for g in optimizer.param_groups:
            g["nesterov"], g["weight_decay"] = False, decay
        LOGGER.info(f"{colorstr('sodet:')} GFL's SGD: plain momentum, weight_decay={decay} on every group")


register_family(GflFamily())
