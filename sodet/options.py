"""sodet's own run options, and the rules for the engine's options that sodet runs accept.

The engine's ``get_cfg`` rejects unknown keys, so sodet's options cannot travel in ``args``. They live in a
``RunOptions`` object attached to the model as ``model.sodet``: the EMA copy, every checkpoint, the multi-GPU
launcher's pickled model and a resumed run all carry it with the weights.

Every option value is checked here, once, at the API boundary (``check_train_options``, ``check_distill_options``);
the code that uses an option trusts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sodet.errors import SodetError

SMALL_AREA = 32 * 32  # COCO's "small": area below 32x32 pixels
MEDIUM_AREA = 96 * 96  # COCO's "medium": below 96x96 pixels (and not small); "large" above
WEIGHT_FORMS = ("study", "scale")  # 1 - W*s ; W*(1 - s)
BOX_LOSSES = ("iou", "nwd", "iou+nwd")


@dataclass
class DistillOptions:
    """Channel-wise distillation from a frozen teacher (``sodet distill``); stored in ``RunOptions.distill``."""

    teacher: str = ""  # registry name, or a sodet / Ultralytics checkpoint (absolute path)
    teacher_weights: str | None = None  # the teacher's weights file (a registry teacher's from the weights table)
    on: str = "neck"  # "neck": the neck / FPN outputs; "head": the class logits of every level
    tau: float = 1.0  # softmax temperature of CWD
    weight: float = 1.0  # CWD loss weight per level
    stop: float = 1.0  # fraction of the epochs with distillation on (mmyolo's RTMDet: 280/300)
    max_ratio: float = 100.0  # stop the run when CWD / detection loss stays above this (0: never)


@dataclass
class RunOptions:
    """What sodet adds to an engine run; stored on the model as ``model.sodet``."""

    model: str = "yolox-nano"  # registry name of the architecture
    weights: str | None = None  # initial weights file (resolved: a table file is its cached path)
    small_area: float = SMALL_AREA  # below this area a target/object counts as small
    weighted_loss: float | None = None  # W of the small-object weighted box loss (None: off)
    weight_form: str = "study"  # "study": 1 - W*IoU^2 ; "scale": W*(1 - IoU^2)
    copy_paste: bool = False  # copy-paste oversampling of images with small objects
    oversample: float = 1.0  # extra appearances per epoch of each image holding small objects
    paste_copies: int = 1  # pastes of each small object in an extra appearance (0: oversampling alone)
    paste_jitter: bool = False  # scale +-20 %, rotation +-15 deg on pasted objects
    oversample_pool: str = "small"  # "small": the extra appearances are of images holding small objects; "all":
    # the same NUMBER of extra appearances drawn from every image (the compute-matched control of copy-paste)
    box_loss: str = "iou"  # "iou": the family's own; "nwd": 1 - NWD; "iou+nwd": nwd_ratio x own + the rest x NWD
    nwd_ratio: float = 0.5  # the family's own loss's share of the "iou+nwd" blend
    nwd_c: float | None = None  # NWD's C in input pixels (None: the training set's mean object size, measured once)
    nwd_assign: bool = False  # NWD instead of IoU in the label assignment (Ultralytics TAL, GFL ATSS)
    crop_train: list[float] | None = None  # sliced training: random crop sides [min, max] in source pixels (or
    # fractions of the image side, when <= 1)
    crop_p: float = 2 / 3  # share of the samples cropped (SAHI's fine-tuning: 2 of 3 augmentation policies)
    crop_min_visible: float = 0.1  # objects keeping less of their area inside the crop are dropped
    freeze_bn: bool | None = None  # BatchNorm in eval mode with frozen affine (None: sodet decides, see trainer)
    letterbox: str = "center"  # evaluation padding: "center" (the engine's, as sodet trains) or "top-left"
    # (YOLOX's own pipeline, for official YOLOX weights evaluated as they were trained)
    protocol: str = "coco"  # size protocols scored beside COCO's 12 numbers: coco, aitod, tinyperson (comma list)
    size_edges: list[float] | None = None  # custom size buckets: edges in pixels of sqrt(area), e.g. [8, 16, 32, 96]
    size_names: list[str] | None = None  # their names (default "0-8", "8-16", ...)
    classes: list[str] | None = None  # class names selected from the data
    data: str | None = None  # the data the user named (COCO folder or YAML)
    distill: DistillOptions | None = None  # set by ``sodet distill``

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunOptions":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("distill"), dict):
            known["distill"] = DistillOptions(**known["distill"])
        return cls(**known)


# checks ------------------------------------------------------------------------------------------------------
def check_choice(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise SodetError(f"{what} must be one of {sorted(allowed)}, not '{value}'")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_positive(name: str, v: Any) -> None:
    if not (is_number(v) and v > 0):
        raise SodetError(f"{name} must be a number above 0, got {v!r}")


def check_train_options(
    small_area: float = SMALL_AREA, weighted_loss: float | None = None, weight_form: str = "study",
    oversample: float = 1.0, paste_copies: int = 1, oversample_pool: str = "small", box_loss: str = "iou",
    nwd_ratio: float = 0.5, nwd_c: float | None = None, crop_train=None, crop_p: float = 2 / 3,
    crop_min_visible: float = 0.1, **engine: Any,
) -> None:
    """One line for any invalid value, before any work is done."""
    check_choice("--box-loss", box_loss, BOX_LOSSES)
    if not (is_number(nwd_ratio) and 0 <= nwd_ratio <= 1):
        raise SodetError(f"--nwd-ratio must be in [0, 1] (the IoU loss's share of the blend), got {nwd_ratio!r}")
    if nwd_c is not None:
        check_positive("--nwd-c", nwd_c)
    if crop_train is not None:
        parse_crop(crop_train)
    if not (is_number(crop_p) and 0 < crop_p <= 1):
        raise SodetError(f"--crop-p must be in (0, 1] (the share of samples cropped), got {crop_p!r}")
    if not (is_number(crop_min_visible) and 0 < crop_min_visible <= 1):
        raise SodetError(f"--crop-min-visible must be in (0, 1], got {crop_min_visible!r}")
    check_positive("--small-area", small_area)
    check_positive("--oversample", oversample)
    if weighted_loss is not None:
        check_positive("--weighted-loss", weighted_loss)
    if not (is_number(paste_copies) and paste_copies >= 0):
        raise SodetError(f"--paste-copies must be 0 (oversampling without pasting) or more, got {paste_copies!r}")
    if not float(paste_copies).is_integer():
        raise SodetError(f"--paste-copies must be a whole number, got {paste_copies!r}")
    check_choice("--weight-form", weight_form, WEIGHT_FORMS)
    check_choice("--oversample-pool", oversample_pool, {"small", "all"})
    check_engine_values(engine)
    check_engine_keys(engine)


def check_engine_values(engine: dict) -> None:
    """The engine options sodet's commands name themselves (``--epochs --imgsz --batch --workers``)."""
    for key in ("epochs", "patience"):
        if engine.get(key) is not None:
            check_positive(f"--{key}", engine[key])
    if engine.get("imgsz") is not None:
        check_imgsz(engine["imgsz"])
    batch = engine.get("batch")
    if batch is not None and not (is_number(batch) and (batch >= 1 or batch == -1 or 0 < batch < 1)):
        raise SodetError(f"--batch must be at least 1 (or -1 / a GPU-memory fraction for the engine's auto batch), got {batch!r}")
    workers = engine.get("workers")
    if workers is not None and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
        raise SodetError(f"--workers must be 0 or more, got {workers!r}")


def parse_crop(value) -> list[float]:
    """``--crop-train MIN,MAX`` (one number: a fixed side): pixels of the source image, or fractions of its side
    when both are at most 1."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    try:
        sides = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise SodetError(f"--crop-train must be MIN,MAX (pixels, or fractions of the image side), got {value!r}") from None
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(is_number(x) and x > 0 for x in sides) or sides[0] > sides[1]:
        raise SodetError(f"--crop-train must be MIN,MAX with 0 < MIN <= MAX, got {value!r}")
    if sides[1] > 1 and sides[0] < 32:
        raise SodetError(f"--crop-train sides in pixels must be at least 32, got {value!r}")
    return sides


MIN_IMGSZ = 32  # one cell of the coarsest stride of YOLOX / Ultralytics YOLO; GFL needs 128 (its P7)


def check_imgsz(imgsz: Any, min_size: int = MIN_IMGSZ) -> None:
    """A size the model can see anything at: a whole number of at least ``min_size`` pixels (the engine rounds
    a valid size up to a multiple of the model's largest stride and says so)."""
    sizes = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    if not sizes or not all(is_number(s) and float(s).is_integer() for s in sizes):
        raise SodetError(f"--imgsz must be a whole number of pixels, got {imgsz!r}")
    if min(sizes) < min_size:
        raise SodetError(f"--imgsz must be at least {min_size} pixels, got {imgsz!r}")


def check_distill_options(opts: DistillOptions) -> None:
    for name, v in {"--tau": opts.tau, "--cwd-weight": opts.weight}.items():
        check_positive(name, v)
    if not (is_number(opts.stop) and 0 < opts.stop <= 1):
        raise SodetError(f"--stop-distill must be in (0, 1] (the fraction of the epochs with distillation on), got {opts.stop!r}")
    if not (is_number(opts.max_ratio) and opts.max_ratio >= 0):
        raise SodetError(f"--cwd-max-ratio must be 0 (off) or above, got {opts.max_ratio!r}")
    check_choice("--distill-on", opts.on, {"neck", "head"})


# engine options ----------------------------------------------------------------------------------------------
# engine options that sodet's runs do not honour, and what to use instead (refused rather than silently dropped)
NOT_HONOURED = {
    "model": "--model", "data": "--data", "classes": "--classes (class names)", "pretrained": "--weights",
    "copy_paste": "--copy-paste (sodet's small-object copy-paste)", "single_cls": "a data set with one class",
}
SODET_OWN = ("weights", "resume", "small_area", "weighted_loss", "copy_paste", "oversample", "freeze_bn")


def parse_overrides(items: list[str] | None) -> dict:
    """``-o key=value`` pairs for any other engine argument, values parsed as the engine's own CLI parses them
    (``name=no`` stays a string); unknown keys and bad types are refused by the engine's argument check."""
    from ultralytics.cfg import smart_value

    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise SodetError(f"override '{item}' is not KEY=VALUE")
        if not v.strip():
            raise SodetError(f"override '{item}' has no value")
        out[k.strip()] = smart_value(v.strip())
    return out


def refuse_sodet_own(engine: dict) -> None:
    """sodet's own options given as engine options (``-o weights=...``) are refused, naming the flag to use."""
    for key in SODET_OWN:
        if key in engine:
            raise SodetError(f"-o {key}=... is sodet's own option: use --{key.replace('_', '-')}")


def check_engine_keys(engine: dict) -> None:
    """Engine options that sodet's runs would not honour, and sodet's own options given as engine options, are
    refused, naming what to use instead."""
    refuse_sodet_own(engine)
    for key, use in NOT_HONOURED.items():
        if key in engine and engine[key] not in (None, False, 0.0):
            raise SodetError(f"-o {key}=... is not used by sodet runs: use {use}")


def check_known_engine_keys(engine: dict) -> None:
    """Keys the engine knows (what a study checks once instead of failing in every cell)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    check_engine_keys(engine)
    unknown = sorted(k for k in engine if k not in DEFAULT_CFG_DICT)
    if unknown:
        raise SodetError(f"-o {unknown[0]}=...: not an engine argument")
