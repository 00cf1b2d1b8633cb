"""Model registry: one name per architecture, like timm's, so the CLI and checkpoints speak the same names.

The names and their defaults are data (``cfg/models.yaml``); each family registers how to build one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from sodet.errors import SodetError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "yolox" | "yolo" (Ultralytics) | "gfl"
    arch: str  # the family's own architecture name (YOLOX config, Ultralytics model file)
    imgsz: int  # default input size
    weights: str | None = None  # default weights shipped with sodet (file name in sodet/weights)

    def build(self, nc: int, names: dict | None = None):
        """A model of ``nc`` classes speaking the engine's model contract."""
        return family_builder(self.family)(self, nc, names)


_FAMILIES: dict[str, Callable] = {}


def register_family(family: str):
    """Decorator for ``build(entry, nc, names) -> nn.Module`` of a family."""

    def deco(build):
        _FAMILIES[family] = build
        return build

    return deco


def family_builder(family: str) -> Callable:
    from sodet.models import gfl, yolo, yolox  # noqa: F401  (families register at import)

    return _FAMILIES[family]


def load_yaml(name: str) -> dict:
    import yaml

    from sodet.assets import resource_dir

    return yaml.safe_load((resource_dir("cfg") / name).read_text())


@lru_cache(maxsize=None)
def _entries() -> dict[str, ModelEntry]:
    return {name: ModelEntry(name=name, **spec) for name, spec in load_yaml("models.yaml").items()}


def model_family(model) -> str | None:
    """The family a built model belongs to: sodet's models say so in ``yaml["family"]``; an engine model whose
    yaml has no family is Ultralytics YOLO; None for anything else."""
    y = getattr(model, "yaml", None)
    if not isinstance(y, dict):
        return None
    return y.get("family", "yolo")


def family_defaults(family: str, finetune: bool = False) -> dict:
    """The engine arguments sodet sets for a family (``cfg/defaults.yaml``), with the fine-tuning ones on top
    when the run starts from pretrained weights."""
    cfg = load_yaml("defaults.yaml")
    out = dict(cfg.get(family) or {})
    if finetune:
        out.update((cfg.get("finetune") or {}).get(family) or {})
    return out


def get_entry(name: str) -> ModelEntry:
    if name not in _entries():
        raise SodetError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    return _entries()[name]


def list_models() -> list[str]:
    return list(_entries())
