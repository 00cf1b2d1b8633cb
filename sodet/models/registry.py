"""The model registry: one name per architecture (timm's way), so the CLI, checkpoints and studies speak the same
names. The names are data (``cfg/models.yaml``); each family module registers ONE ``Family`` object that knows
how to build and handle its models. This module imports no family: ``sodet/models/__init__.py`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sodet.assets import load_cfg
from sodet.errors import SodetError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # the registered Family's name
    arch: str  # the family's own architecture name (YOLOX config, Ultralytics model file, GFL's ResNet depth)
    imgsz: int  # default input size
    weights: str | None = None  # default weights: a file name of the weights table (cfg/weights.yaml)

    def build(self, nc: int, names: dict | None = None):
        """A model of ``nc`` classes speaking the engine's model contract (random initialisation)."""
        return get_family(self.family).build(self, nc, names)


_FAMILIES: dict[str, "Family"] = {}
_EXTRA: dict[str, ModelEntry] = {}


def register_family(family: "Family") -> "Family":
    """Called once by each family module with its Family object."""
    _FAMILIES[family.name] = family
    return family


def register_model(entry: ModelEntry) -> ModelEntry:
    """A model not in cfg/models.yaml (a family added at run time, e.g. by a plugin or a test)."""
    _EXTRA[entry.name] = entry
    return entry


def families() -> dict[str, "Family"]:
    import sodet.models  # noqa: F401  (the package's __init__ imports the family modules, which register)

    return _FAMILIES


def get_family(name: str) -> "Family":
    found = families().get(name)
    if found is None:
        raise SodetError(f"unknown model family '{name}' (known: {', '.join(families())})")
    return found


def family_of(model) -> "Family | None":
    """The family a built model belongs to (each family recognises its own models), or None."""
    return next((f for f in families().values() if f.owns(model)), None)


@lru_cache(maxsize=None)
def _entries() -> dict[str, ModelEntry]:
    return {name: ModelEntry(name=name, **spec) for name, spec in load_cfg("models.yaml").items()}


def get_entry(name: str) -> ModelEntry:
    entries = {**_entries(), **_EXTRA}
    if name not in entries:
        raise SodetError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    return entries[name]


def list_models() -> list[str]:
    return [*_entries(), *_EXTRA]
