"""Reading weights files and handing them to the family that loads them; class rows taken by class NAME.

When a checkpoint predicts the 80 COCO classes and the data holds a subset (person, car), the class outputs are
taken by name, so a subset keeps its pretrained classifier. Which keys a family's files hold is the family
module's business (``Family.load_state`` / ``Family.load_module``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from ultralytics.utils import LOGGER

from sodet.errors import SodetError


@lru_cache(maxsize=1)
def _coco80() -> tuple[str, ...]:
    from ultralytics.utils import ROOT, YAML

    return tuple(YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].values())


def coco80_names() -> list[str]:
    """COCO's 80 class names in the order of every COCO-trained head (the engine's coco.yaml)."""
    return list(_coco80())


def require_weights_file(path: str | Path) -> Path:
    """The path, or a one-line error saying what to put where."""
    p = Path(path)
    if not p.is_file():
        raise SodetError(
            f"weights file not found: {p} (a file of the weights table is fetched by its name, e.g. --weights "
            "yolox_s.pth; see 'sodet zoo'; otherwise put the file there)"
        )
    return p


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with a one-line error for missing or unreadable files."""
    p = require_weights_file(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise SodetError(f"cannot read weights file {p}: {type(e).__name__}: {e}".splitlines()[0]) from None


def checkpoint_model(ckpt):
    """The model object of an engine checkpoint (its EMA while training, ``model`` once stripped; the student of a
    distillation run), else what the file holds under ``model`` (an official YOLOX state dict) or None."""
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    return getattr(model, "student_model", model)  # a distillation run stopped before its end: the student


def model_names(model) -> list[str]:
    names = model.names
    return [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)


def class_rows(src_names: list[str], dst_names: list[str]) -> list[int | None]:
    """For each target class, the row of the same name in the source head (None when absent)."""
    pos = {n: i for i, n in enumerate(src_names)}
    return [pos.get(n) for n in dst_names]


def rows_by_name(own: torch.Tensor, src: torch.Tensor, src_names: list[str], dst_names: list[str], origin) -> torch.Tensor:
    """The model's class rows taken from ``src`` by class name; classes the source lacks keep their own init."""
    rows = class_rows(src_names, dst_names)
    if all(r is None for r in rows):
        raise SodetError(f"{origin}: its classes share no name with the data classes {dst_names}")
    out = own.clone()
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = src[r]
    absent = [n for n, r in zip(dst_names, rows) if r is None]
    if absent and src.dim() > 1:  # once per head (weight, not bias)
        LOGGER.warning(f"classes {absent} not in {origin}: their outputs start untrained")
    return out


def load_by_name(model, state: dict, class_keys: tuple[str, ...], origin, src_names: list[str] | None = None,
                 optional: tuple[str, ...] = ()) -> None:
    """A state dict loaded strictly into ``model``, except that the class rows of the tensors whose key contains
    one of ``class_keys`` are taken by class name (an 80-class head is COCO's order). Keys ending in ``optional``
    may be missing (buffers older files lack)."""
    name = model.yaml.get("name", type(model).__name__) if isinstance(getattr(model, "yaml", None), dict) else type(model).__name__
    own = model.state_dict()
    dst = model_names(model)
    new = {}
    for k, v in state.items():
        if k not in own:
            raise SodetError(f"{origin} does not fit {name}: unexpected key {k}")
        if any(c in k for c in class_keys) and (v.shape[0] != own[k].shape[0] or (src_names and src_names != dst)):
            v = rows_by_name(own[k], v, src_names or coco80_names()[: v.shape[0]], dst, origin)
        if v.shape != own[k].shape:
            raise SodetError(f"{origin} does not fit {name}: {k} is {tuple(v.shape)}, model has {tuple(own[k].shape)}")
        new[k] = v
    missing = [k for k in own if k not in new and not k.endswith(optional)]
    if missing:
        raise SodetError(f"{origin} does not fit {name}: {len(missing)} keys missing, e.g. {missing[0]}")
    model.load_state_dict({**own, **new})


def load_weights(model, path: str | Path, strict: bool = False) -> None:
    """Load any supported weights file into a sodet model: an engine checkpoint's model object (sodet's, or an
    Ultralytics .pt) or a family's own release format. ``strict``: the file must fit the model exactly (what a
    downloaded file is checked with)."""
    from sodet.models.registry import family_of

    family = family_of(model)
    if family is None:
        raise SodetError(f"{type(model).__name__} belongs to no registered family")
    ckpt = read_checkpoint(path)
    source = checkpoint_model(ckpt) if isinstance(ckpt, dict) else ckpt
    if isinstance(source, torch.nn.Module):
        source_family = family_of(source)
        if source_family is not family:
            what = source_family.display if source_family else type(source).__name__
            raise SodetError(f"{path} holds a {what} model, not a {family.display} one")
        if strict:
            check_same_tensors(model, source, path)
        family.load_module(model, source, path)
        return
    family.load_state(model, ckpt, path)


def check_same_tensors(model, source, origin) -> None:
    """Every tensor of ``source`` has a place of the same shape in ``model`` and none is missing."""
    own, theirs = model.state_dict(), source.state_dict()
    bad = sorted(set(own) ^ set(theirs)) or [k for k in own if own[k].shape != theirs[k].shape]
    if bad:
        raise SodetError(f"{origin} does not fit {model.yaml.get('name', type(model).__name__) if isinstance(model.yaml, dict) else type(model).__name__} exactly (e.g. {bad[0]})")
