"""``EngineAdapter``: the engine's model contract, written once for sodet's own model classes (YOLOX, GFL).

What the engine reads from a model (``../shared/notes/engine.md``): ``stride``, ``names``, ``nc``, ``args``,
``yaml``, ``criterion``, an indexable ``model``, ``set_head_attr``, ``forward(batch dict) -> loss`` and
``forward(images) -> (B, 4 + nc, N)`` predictions, ``fuse()``, ``half()``. A subclass names its parts, and writes
``predict``, ``loss`` and ``fuse_inplace``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EngineAdapter(nn.Module):
    nominal_batch: int = 64  # the batch the family's recipe quotes its learning rate for
    parts: tuple[str, ...] = ()  # the submodules, in order, that ``model`` lists

    def __init__(self, family: str, name: str, nc: int, names: dict | None, strides, **yaml):
        super().__init__()
        self.nc = nc
        self.names = names or {i: str(i) for i in range(nc)}
        self.stride = torch.tensor([float(s) for s in strides])
        self.yaml = {"family": family, "name": name, "nc": nc, "channels": 3, **yaml}
        self.args = {}
        self.criterion = None  # the loss lives in the model; the engine only checks the attribute
        self.max_det = 300

    @property
    def model(self) -> nn.ModuleList:
        """Indexable view (the engine reads ``model[-1]`` as the head); the real modules keep their own names, so
        state-dict keys stay those of the official checkpoints."""
        return nn.ModuleList([getattr(self, p) for p in self.parts])

    @classmethod
    def mean_loss_scale(cls, batch_size: int) -> float:
        """What ``loss`` multiplies a batch-mean loss by (a term added to the loss is scaled the same way): the
        engine steps ``lr0`` on the loss summed over ``nbs`` images, so ``batch / nominal_batch`` of a batch
        mean reproduces the recipe's learning rate per ``nominal_batch`` images."""
        return batch_size / cls.nominal_batch

    def forward(self, x, *args, **kwargs):
        if isinstance(x, dict):  # training step: the engine passes the batch
            return self.loss(x, *args, **kwargs)
        return self.predict(x)

    def predict(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: dict, preds=None):
        raise NotImplementedError

    def half(self):
        """Weights stay fp32. The engine stores checkpoints after ``.half()`` (and half-precision validation calls
        it); fp16 weights would not score what was validated (YOLOX-Nano's scores move by up to 0.016). Inputs are
        cast to the weights' dtype; CUDA training still computes in fp16 under AMP autocast."""
        return self

    def fuse(self, verbose: bool = False, **kwargs):
        """An inference copy in eval mode with BatchNorm folded (same outputs, faster); the model itself is left
        as it is (the engine's AutoBackend fuses whatever it is handed, in training mode too). ``kwargs``: what
        the engine passes its own models (the exporter gives ``imgsz``)."""
        fused = copy.deepcopy(self).eval()
        fused.fuse_inplace()
        return fused

    def fuse_inplace(self) -> None:
        """Fold BatchNorm into the convolutions of this (eval-mode) model."""

    def set_head_attr(self, **kwargs):
        """The engine sets NMS-related head attributes; NMS happens in sodet's validator, so only record them."""
        for k, v in kwargs.items():
            setattr(self, k, v)
