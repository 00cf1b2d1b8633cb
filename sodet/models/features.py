"""Feature maps for distillation: which modules give them (each family says, ``Family.feature_modules``), and a
context that captures them.

``neck``: the maps the detection head reads, one per stride. ``head``: the class logits of every level. Maps are
captured by forward hooks that live only inside the ``FeatureTap`` context, so no hook is ever pickled, deep-copied (EMA) or saved with a model.
"""

from __future__ import annotations

from torch import nn

from sodet.errors import SodetError
from sodet.models.registry import family_of

DISTILL_POINTS = ("neck", "head")


def feature_modules(model: nn.Module, on: str) -> list[nn.Module]:
    """The modules whose outputs are the ``on`` maps of ``model``, in stride order: its family says which."""
    if on not in DISTILL_POINTS:
        raise SodetError(f"--distill-on must be one of {list(DISTILL_POINTS)}, not '{on}'")
    family = family_of(model)
    if family is None:
        raise SodetError(f"distillation does not know where {type(model).__name__}'s features are")
    return family.feature_modules(model, on)


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
