"""Model registry: one name per architecture, like timm's, so the CLI and checkpoints speak the same names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sodet.errors import SodetError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "yolox" | "yolo" (Ultralytics)
    build: Callable  # build(nc, names) -> nn.Module speaking the engine's model contract
    imgsz: int  # default input size
    weights: str | None = None  # default weights shipped with sodet (file name in sodet/weights)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, family: str, imgsz: int, weights: str | None = None):
    def deco(build):
        _REGISTRY[name] = ModelEntry(name, family, build, imgsz, weights)
        return build

    return deco


def get_entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _REGISTRY:
        raise SodetError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    return _REGISTRY[name]


def list_models() -> list[str]:
    _load_families()
    return list(_REGISTRY)


def _load_families() -> None:
    from sodet.models import yolo, yolox  # noqa: F401  (registration happens at import)
