"""Loading weights into sodet's models: official YOLOX checkpoints, MMDetection GFL checkpoints, torchvision
ImageNet ResNets (GFL's backbone), Ultralytics ``.pt`` and sodet's own runs.

When a checkpoint predicts the 80 COCO classes and the data holds a subset (person, car), the class outputs
are taken by class NAME, so a subset keeps its pretrained classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.utils import LOGGER

from sodet.errors import SodetError
from sodet.models.registry import model_family

COCO80 = None  # filled lazily from the engine's coco.yaml


def coco80_names() -> list[str]:
    global COCO80
    if COCO80 is None:
        from ultralytics.utils import ROOT, YAML

        COCO80 = list(YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].values())
    return COCO80


def require_weights_file(path: str | Path) -> Path:
    """The path, or a one-line error saying what to put where."""
    p = Path(path)
    if not p.is_file():
        raise SodetError(
            f"weights file not found: {p} (official YOLOX weights: github.com/Megvii-BaseDetection/YOLOX releases; "
            "GFL: MMDetection's gfl_*.pth from its model zoo, or a torchvision ImageNet ResNet such as "
            "resnet50-0676ba61.pth; put the file there or pass --weights FILE)"
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


def class_rows(src_names: list[str], dst_names: list[str]) -> list[int | None]:
    """For each target class, the row of the same name in the source head (None when absent)."""
    pos = {n: i for i, n in enumerate(src_names)}
    return [pos.get(n) for n in dst_names]


def load_yolox_state(model, state: dict, src_names: list[str] | None = None) -> None:
    """Load a YOLOX state dict; class prediction rows are picked by name when the class counts differ."""
    own = model.state_dict()
    dst_names = [model.names[i] for i in range(model.nc)]
    new = {}
    for k, v in state.items():
        if k not in own:
            raise SodetError(f"weights do not fit {model.yaml['name']}: unexpected key {k}")
        if ".cls_preds." in k and (v.shape[0] != own[k].shape[0] or (src_names and src_names != dst_names)):
            rows = class_rows(src_names or coco80_names()[: v.shape[0]], dst_names)  # by class name
            if all(r is None for r in rows):
                raise SodetError(f"checkpoint classes share no name with the data classes {dst_names}")
            t = own[k].clone()
            for i, r in enumerate(rows):
                if r is not None:
                    t[i] = v[r]
            v = t
        if v.shape != own[k].shape:
            raise SodetError(
                f"weights do not fit {model.yaml['name']}: {k} is {tuple(v.shape)}, model has {tuple(own[k].shape)}"
            )
        new[k] = v
    missing = [k for k in own if k not in new]
    if missing:
        raise SodetError(f"weights do not fit {model.yaml['name']}: {len(missing)} keys missing, e.g. {missing[0]}")
    model.load_state_dict(new)
    absent = [n for n, r in zip(dst_names, class_rows(src_names or coco80_names(), dst_names)) if r is None]
    if absent and any(".cls_preds." in k for k in state) and (src_names or coco80_names()) != dst_names:
        LOGGER.warning(f"classes {absent} not in the checkpoint: their outputs start untrained")


def load_weights(model, path: str | Path) -> None:
    """Load any supported checkpoint file into a sodet model (YOLOX adapter or Ultralytics DetectionModel)."""
    ckpt = read_checkpoint(path)
    source = checkpoint_model(ckpt) if isinstance(ckpt, dict) else ckpt
    family = model_family(model)
    if isinstance(source, torch.nn.Module):  # an engine checkpoint (sodet's or Ultralytics')
        load_module_weights(model, source, path)
        return
    if isinstance(source, dict) and family == "yolox":  # official YOLOX: {"model": state_dict}
        load_yolox_state(model, source)
        return
    if isinstance(ckpt, dict) and family == "gfl":  # MMDetection {'meta', 'state_dict'}, a bare one, or torchvision's
        load_gfl_state(model, ckpt.get("state_dict", ckpt), path)
        return
    raise SodetError(f"{path}: unsupported checkpoint layout for a {family} model")


def load_module_weights(model, source: torch.nn.Module, origin: str | Path = "the checkpoint") -> None:
    """Weights from a model object of an engine checkpoint (sodet's or Ultralytics'), classes matched by name."""
    family, source_family = model_family(model), model_family(source)
    if family == "gfl" or source_family == "gfl":
        if family != source_family:
            raise SodetError(f"{origin} holds a {source_family} model, not a {family} one")
        names = getattr(source, "names", None)
        load_gfl_state(model, source.float().state_dict(), origin, [names[i] for i in range(len(names))] if names else None)
        return
    if family == "yolox":
        if source_family != "yolox":
            raise SodetError(f"{origin} is not a YOLOX checkpoint (cannot load into {model.yaml['name']})")
        names = getattr(source, "names", None)
        load_yolox_state(model, source.float().state_dict(), [names[i] for i in range(len(names))] if names else None)
        model.input_scale = getattr(source, "input_scale", 255.0)  # the pixel range its first convolution expects
    else:
        if source_family == "yolox":
            raise SodetError(f"{origin} holds a YOLOX model, not an Ultralytics YOLO one")
        model.load(source.float())


GFL_CONSTANTS = ("bbox_head.integral.project", "num_batches_tracked")  # buffers older MMDetection files may lack


def load_gfl_state(model, state: dict, origin: str | Path = "the checkpoint", src_names: list[str] | None = None) -> None:
    """An MMDetection GFL state dict (keys ``backbone.*``, ``neck.*``, ``bbox_head.*``) loaded strict, the class
    rows of ``gfl_cls`` taken by name (an 80-class head is COCO's order); or a torchvision ImageNet ResNet file
    (``conv1.*``, ``layer*``, ``fc.*``) loaded strict into the backbone, the rest keeping MMDetection's init."""
    name = model.yaml["name"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SodetError(f"{origin}: not a state dict (expected an MMDetection GFL checkpoint or a torchvision ResNet)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "conv1.weight" in state and not any(k.startswith("backbone.") for k in state):  # torchvision ImageNet ResNet
        backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = model.backbone.state_dict()
        bad = sorted(set(own) ^ set(backbone)) or [k for k in own if own[k].shape != backbone[k].shape]
        if bad:
            raise SodetError(f"{origin} does not fit {name}'s ResNet-{model.backbone.depth} backbone (e.g. {bad[0]})")
        model.backbone.load_state_dict(backbone)
        return
    own = model.state_dict()
    new = {}
    for k, v in state.items():
        if k not in own:
            raise SodetError(f"{origin} does not fit {name}: unexpected key {k}")
        if k.startswith("bbox_head.gfl_cls.") and (v.shape[0] != own[k].shape[0] or (src_names and src_names != model_names(model))):
            v = rows_by_name(own[k], v, src_names or coco80_names()[: v.shape[0]], model_names(model), origin)
        if v.shape != own[k].shape:
            raise SodetError(f"{origin} does not fit {name}: {k} is {tuple(v.shape)}, model has {tuple(own[k].shape)}")
        new[k] = v
    missing = [k for k in own if k not in new and not k.endswith(GFL_CONSTANTS)]
    if missing:
        raise SodetError(f"{origin} does not fit {name}: {len(missing)} keys missing, e.g. {missing[0]}")
    model.load_state_dict({**own, **new})


def model_names(model) -> list[str]:
    return [model.names[i] for i in range(model.nc)]


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
