"""sodet's own run options.

The engine's ``get_cfg`` rejects unknown keys, so sodet's options cannot travel in ``args``. They live in a
``RunOptions`` object attached to the model as ``model.sodet``: the EMA copy, every checkpoint, the multi-GPU
launcher's pickled model and a resumed run all carry it with the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SMALL_AREA = 32 * 32  # COCO's "small": area below 32x32 pixels
MEDIUM_AREA = 96 * 96  # COCO's "medium": below 96x96 pixels (and not small); "large" above


@dataclass
class DistillOptions:
    """Channel-wise distillation from a frozen teacher (``sodet distill``); stored in ``RunOptions.distill``."""

    teacher: str = ""  # registry name, or a sodet / Ultralytics checkpoint (absolute path)
    teacher_weights: str | None = None  # weights file for a registry-name teacher (its shipped weights otherwise)
    on: str = "neck"  # "neck": the neck / FPN outputs; "head": the class logits of every level
    tau: float = 1.0  # softmax temperature of CWD
    weight: float = 1.0  # CWD loss weight per level
    stop: float = 1.0  # fraction of the epochs with distillation on (mmyolo's RTMDet: 280/300)
    max_ratio: float = 100.0  # stop the run when CWD / detection loss stays above this (0: never)


@dataclass
class RunOptions:
    """What sodet adds to an engine run; stored on the model as ``model.sodet``."""

    model: str = "yolox-nano"  # registry name of the architecture
    weights: str | None = None  # initial weights (official YOLOX .pth or Ultralytics .pt)
    small_area: float = SMALL_AREA  # below this area a target/object counts as small
    weighted_loss: float | None = None  # W of the small-object weighted box loss (None: off)
    weight_form: str = "study"  # "study": 1 - W*IoU^2 ; "scale": W*(1 - IoU^2)
    copy_paste: bool = False  # copy-paste oversampling of images with small objects
    oversample: float = 1.0  # extra appearances per epoch of each image holding small objects
    paste_copies: int = 1  # pastes of each small object in an extra appearance (0: oversampling alone)
    oversample_pool: str = "small"  # "small": the extra appearances are of images holding small objects; "all":
    # the same NUMBER of extra appearances drawn from every image (the compute-matched control of copy-paste)
    paste_jitter: bool = False  # scale +-20 %, rotation +-15 deg on pasted objects
    freeze_bn: bool | None = None  # BatchNorm in eval mode with frozen affine (None: sodet decides, see trainer)
    letterbox: str = "center"  # evaluation padding: "center" (the engine's, as sodet trains) or "top-left"
    # (YOLOX's own pipeline, for official YOLOX weights evaluated as they were trained)
    classes: list[str] | None = None  # class names selected from the data
    data: str | None = None  # the data the user named (COCO folder or YAML)
    gt_json: dict[str, str] = field(default_factory=dict)  # split -> COCO ground-truth json (original coordinates)
    distill: DistillOptions | None = None  # set by ``sodet distill``

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunOptions":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("distill"), dict):
            known["distill"] = DistillOptions(**known["distill"])
        return cls(**known)


def options_of(model) -> RunOptions:
    """The RunOptions a (possibly wrapped) model carries, or defaults."""
    from ultralytics.utils.torch_utils import unwrap_model

    m = unwrap_model(model)
    return getattr(m, "sodet", None) or RunOptions()
