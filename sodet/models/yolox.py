"""The YOLOX family: pixeltable-yolox's YoloPafpn + YoloxHead behind the Ultralytics engine's model contract.

The engine feeds RGB images in 0-1 and expects ``(B, 4 + nc, N)`` predictions with activated scores and a
``loss(batch)`` returning ``(loss * batch_size, items)``. Official YOLOX weights expect BGR 0-255, so the
adapter converts at its input; YOLOX's own SimOTA loss is used unchanged (its box term goes through sodet's
``BoxRule``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from yolox.config import YoloxConfig
from yolox.models import YoloPafpn, YoloxHead, YoloxModule
from yolox.models.darknet import CspDarknet
from yolox.models.network_blocks import BaseConv, CspLayer

from sodet.errors import SodetError
from sodet.losses.yolox_iou import RuleIouLoss
from sodet.models.adapter import EngineAdapter
from sodet.models.batchnorm import FrozenBatchNormTraining
from sodet.models.family import Family
from sodet.models.registry import register_family
from sodet.models.weights import load_by_name, model_names

# pixeltable-yolox's loss enters torch.cuda.amp.autocast(enabled=False) on every step, which torch deprecates with a
# FutureWarning per call: an upstream matter the user cannot act on
warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning, module=r"yolox\.")

YOLOX_STRIDES = (8.0, 16.0, 32.0)
NOMINAL_BATCH = 64  # the engine's nbs, and the batch YOLOX's learning rate is quoted for


class CspDarknetFeatures(CspDarknet):
    """pixeltable-yolox's backbone returning stride 4 (dark2) too, and handing precomputed features through, so
    that ``YoloPafpnP2`` runs the parent PAFPN's own forward on features it computed once."""

    def forward(self, x):
        return x if isinstance(x, dict) else super().forward(x)


class YoloPafpnP2(YoloPafpn):
    """YOLOX's PAFPN with one more top-down step to stride 4: outputs (P2, P3, P4, P5). P3..P5 are the parent's own
    (its forward is reused unchanged), so pretrained weights keep their function; the P2 branch (a 1x1 reduction of
    P3, upsampling, concatenation with the backbone's stride-4 map, a CSP layer) starts from its initialisation."""

    def __init__(self, depth: float, width: float, in_channels=(256, 512, 1024), depthwise: bool = False, act: str = "silu"):
        super().__init__(depth, width, in_channels=list(in_channels), depthwise=depthwise, act=act)
        self.backbone = CspDarknetFeatures(depth, width, out_features=("dark2", "dark3", "dark4", "dark5"),
                                           depthwise=depthwise, act=act)
        c3, c2 = int(in_channels[0] * width), int(64 * width) * 2  # P3's width; the backbone's dark2 width
        self.reduce_conv2 = BaseConv(c3, c2, 1, 1, act=act)
        self.C3_p2 = CspLayer(2 * c2, c2, round(3 * depth), False, depthwise=depthwise, act=act)

    def forward(self, x):
        feats = self.backbone(x)
        p3, p4, p5 = super().forward(feats)
        p2 = self.C3_p2(torch.cat([self.upsample(self.reduce_conv2(p3)), feats["dark2"]], 1))
        return p2, p3, p4, p5


P2_STRIDES = (4.0, *YOLOX_STRIDES)


def yolox_network(arch: str, nc: int):
    """pixeltable-yolox's network for ``arch`` (a config name, ``+p2`` for the stride-4 variant), its own init."""
    config, _, variant = arch.partition("+")
    cfg = YoloxConfig.get_named_config(config)
    cfg.num_classes = nc
    if variant == "p2":
        in_channels = [128, 256, 512, 1024]  # P2 holds half P3's channels, as the backbone's stride-4 map
        cfg.model = YoloxModule(YoloPafpnP2(cfg.depth, cfg.width, depthwise=cfg.depthwise, act=cfg.act),
                                YoloxHead(nc, cfg.width, strides=[int(s) for s in P2_STRIDES], in_channels=in_channels,
                                          depthwise=cfg.depthwise, act=cfg.act))
    elif variant:
        raise SodetError(f"unknown YOLOX variant '{variant}' in {arch}")
    return cfg.get_model()  # official init: BN eps 1e-3 / momentum 0.03, prior-0.01 biases


class YoloxDetector(FrozenBatchNormTraining, EngineAdapter):
    """A YOLOX network that the engine can train, validate, checkpoint, resume and deep-copy."""

    task = "detect"
    nominal_batch = NOMINAL_BATCH
    parts = ("backbone", "head")

    def __init__(self, name: str = "yolox-nano", nc: int = 80, names: dict | None = None, arch: str | None = None):
        arch = arch or name.replace("-", "_")
        super().__init__("yolox", name, nc, names, P2_STRIDES if arch.endswith("+p2") else YOLOX_STRIDES, arch=arch)
        net = yolox_network(arch, nc)
        self.backbone, self.head = net.backbone, net.head
        # official YOLOX weights expect 0-255 pixels; weights re-conditioned by sodet (folded BatchNorm) take 0-1
        # with the 255 moved into the first convolution (see sodet.models.batchnorm)
        self.input_scale = 255.0

    def to_yolox_input(self, img: torch.Tensor) -> torch.Tensor:
        """Engine batches are RGB in 0-1; YOLOX weights expect BGR (in 0-255 for official weights)."""
        scale = getattr(self, "input_scale", 255.0)  # absent in checkpoints written before sodet 0.2
        x = img.flip(1).to(self.stem_conv.weight.dtype)
        return x * scale if scale != 1.0 else x

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The first convolution (YOLOX's Focus stem), the one that sees the pixels."""
        return self.backbone.backbone.stem.conv.conv

    @torch.no_grad()
    def pixels_in_unit_range(self) -> None:
        """Feed the network 0-1 pixels, the 255 moved into the first convolution's weights: the same function,
        but the stem's gradients and BatchNorm statistics shrink by 255 (fp16-safe, and SGD-stable)."""
        if self.input_scale != 1.0:
            self.stem_conv.weight.mul_(self.input_scale)
            self.input_scale = 1.0

    def predict(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 4 + nc, N): xywh centre boxes in input pixels, scores = objectness * class probability."""
        was = self.head.training
        self.head.training = False  # decoded outputs even inside a training-mode model
        try:
            out = self.head(self.backbone(self.to_yolox_input(img)))
        finally:
            self.head.training = was
        return torch.cat([out[..., :4], out[..., 4:5] * out[..., 5:]], -1).permute(0, 2, 1)

    @staticmethod
    def yolox_targets(batch: dict, max_objects: int | None = None) -> torch.Tensor:
        """Engine targets (normalised xywh, flat with batch_idx) as YOLOX's (B, M, 5) [cls, cx, cy, w, h] pixels."""
        img = batch["img"]
        b, _, h, w = img.shape
        idx = batch["batch_idx"].long().view(-1)
        counts = torch.bincount(idx, minlength=b) if idx.numel() else torch.zeros(b, dtype=torch.long)
        m = max(int(counts.max()) if counts.numel() else 0, 1)
        targets = img.new_zeros((b, max_objects or m, 5))
        if idx.numel():
            boxes = batch["bboxes"].to(img.dtype) * img.new_tensor([w, h, w, h])
            rows = torch.cat([batch["cls"].view(-1, 1).to(img.dtype), boxes], 1)
            order = torch.argsort(idx, stable=True)
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(idx.numel(), device=idx.device) - starts[idx[order]]
            targets[idx[order], slot] = rows[order]
        return targets

    def loss(self, batch: dict, preds=None):
        """YOLOX's own SimOTA loss. In eval mode too (the validator asks for it): only the head's own flag flips,
        so no BatchNorm statistics change."""
        img = batch["img"]
        x = self.to_yolox_input(img)
        targets = self.yolox_targets(batch)
        was = self.head.training
        self.head.training = True
        try:
            total, iou, obj, cls, l1, _ = self.head(self.backbone(x), targets, x)
        finally:
            self.head.training = was
        items = {
            "box_loss": iou.detach(),
            "obj_loss": obj.detach(),
            "cls_loss": cls.detach(),
            "l1_loss": torch.as_tensor(l1, dtype=total.dtype, device=total.device).detach(),
        }
        return total * self.mean_loss_scale(img.shape[0]), items

    def fuse_inplace(self) -> None:
        from yolox.utils import fuse_model

        fuse_model(self)


class YoloxFamily(Family):
    name, display = "yolox", "YOLOX"
    refused_options = {
        "box": "its loss weights are YOLOX's own (5 x IoU + obj + cls)", "cls": "its loss weights are YOLOX's own",
        "dfl": "YOLOX has no DFL term", "freeze": "the engine freezes 'model.N' layers, YOLOX has backbone/head",
    }
    pretrained_letterbox = "top-left"  # square, padded bottom/right: how its weights were trained and evaluated

    def build(self, entry, nc, names=None):
        return YoloxDetector(entry.name, nc, names, entry.arch)

    def load_state(self, model, ckpt, origin):
        """Megvii's release files: ``{"model": state_dict, ...}`` (sodet's shipped file too)."""
        state = ckpt.get("model") if isinstance(ckpt, dict) else None
        if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
            raise SodetError(f"{origin}: not a YOLOX checkpoint (expected {{'model': state_dict}})")
        load_by_name(model, self.transfer(model, state, origin), (".cls_preds.",), origin)

    def load_module(self, model, source, origin):
        state = self.transfer(model, source.float().state_dict(), origin)
        load_by_name(model, state, (".cls_preds.",), origin, model_names(source))
        model.input_scale = getattr(source, "input_scale", 255.0)  # the pixel range its first convolution expects

    @staticmethod
    def transfer(model, state: dict, origin) -> dict:
        """A P2 model from its base model's weights: the head's levels move up one (stride 8 was level 0), the P2
        layers keep their initialisation; logged as N of M tensors. Other models: the state as it is."""
        own = model.state_dict()
        if len(model.stride) == len(state_levels(state)) or not str(model.yaml.get("arch", "")).endswith("+p2"):
            return state
        moved = {}
        for k, v in state.items():
            parts = k.split(".")
            if parts[0] == "head" and len(parts) > 2 and parts[2].isdigit():
                parts[2] = str(int(parts[2]) + 1)
            moved[".".join(parts)] = v
        full = {k: moved.get(k, v) for k, v in own.items()}
        taken = sum(k in moved for k in own)
        from ultralytics.utils import LOGGER, colorstr

        LOGGER.info(f"{colorstr('sodet:')} {taken} of {len(own)} tensors from {origin} (the P2 layers start from their init)")
        return full

    def install_box_rule(self, model, rule):
        if rule.assign == "nwd":
            raise SodetError("--nwd-assign: YOLOX's SimOTA computes its IoU inside pixeltable-yolox's get_assignments, "
                             "which sodet does not fork; NWD assignment works on Ultralytics YOLO (TAL) and GFL (ATSS)")
        model.head.iou_loss = RuleIouLoss(rule, loss_type=model.head.iou_loss.loss_type).train(model.head.iou_loss.training)

    def feature_modules(self, model, on):
        return [model.backbone] if on == "neck" else list(model.head.cls_preds)

    def on_close_mosaic(self, model):
        model.head.use_l1 = True  # YOLOX's recipe: L1 box term in the last, unaugmented epochs


def state_levels(state: dict) -> set[int]:
    """The head levels a YOLOX state dict holds (``head.stems.<level>.*``)."""
    return {int(k.split(".")[2]) for k in state if k.startswith("head.stems.")}


register_family(YoloxFamily())
