"""Where each family's feature maps are read for distillation, and a context that captures them.

``neck``: the maps the detection head reads, one per stride (YOLOX's PAFPN outputs, the layers feeding an
Ultralytics ``Detect``, GFL's FPN outputs). ``head``: the class logits of every level (YOLOX ``cls_preds``,
Ultralytics ``Detect.cv3``, GFL ``gfl_cls``). Maps are captured by forward hooks that live only inside the
``FeatureTap`` context, so no hook is ever pickled, deep-copied (EMA) or saved with a model.
"""

from __future__ import annotations

from torch import nn

from sodet.errors import SodetError
from sodet.models.registry import model_family

DISTILL_POINTS = ("neck", "head")


def detect_head(model: nn.Module) -> nn.Module:
    """The Ultralytics ``Detect`` module of an engine model."""
    from ultralytics.nn.modules.head import Detect

    for m in getattr(model, "model", []):
        if isinstance(m, Detect):
            return m
    raise SodetError(f"{type(model).__name__} has no Detect head: cannot read its features")


def feature_modules(model: nn.Module, on: str) -> list[nn.Module]:
    """The modules whose outputs are the ``on`` maps, in stride order (a module may output several levels)."""
    if on not in DISTILL_POINTS:
        raise SodetError(f"--distill-on must be one of {list(DISTILL_POINTS)}, not '{on}'")
    family = model_family(model)
    if family == "yolox":
        return [model.backbone] if on == "neck" else list(model.head.cls_preds)
    if family == "gfl":
        return [model.neck] if on == "neck" else [model.bbox_head.gfl_cls]
    if family == "yolo":
        head = detect_head(model)
        if on == "head":
            return list(head.cv3)
        return [model.model[i] for i in head.f]
    raise SodetError(f"distillation does not know where {type(model).__name__}'s features are")


def level_strides(model: nn.Module) -> list[int]:
    """The stride of each detection level, smallest first."""
    return [int(s) for s in model.stride.tolist()]


class FeaturesCaptured(Exception):
    """Raised by the last hook of a tap that needs no more of the forward pass (a teacher's head is not needed)."""


class FeatureTap:
    """``with FeatureTap(modules) as tap: model(x)``; then ``tap.maps`` holds the captured maps in stride order.

    A module called several times (GFL's shared ``gfl_cls``, once per level) contributes one map per call; a
    module returning a tuple (YOLOX's PAFPN) contributes each element. ``stop`` ends the forward pass as soon as
    ``n_maps`` maps are captured (the context swallows ``FeaturesCaptured``).
    """

    def __init__(self, modules: list[nn.Module], n_maps: int | None = None, stop: bool = False):
        self.modules, self.n_maps, self.stop = modules, n_maps, stop
        self._slots: list[list] = [[] for _ in modules]
        self._handles = []

    def _hook(self, slot: int):
        def hook(module, inputs, output):
            self._slots[slot].extend(output if isinstance(output, (tuple, list)) else [output])
            if self.stop and self.n_maps is not None and sum(map(len, self._slots)) >= self.n_maps:
                raise FeaturesCaptured

        return hook

    @property
    def maps(self) -> list:
        return [m for slot in self._slots for m in slot]

    def __enter__(self) -> "FeatureTap":
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return exc_type is FeaturesCaptured
