"""``BoxRule``: what sodet changes in a detector's per-target box loss, the same for every family.

Each family hands its own per-target box loss (``1 - s``: YOLOX's IoU^2, Ultralytics' CIoU, GFL's GIoU) with the
predicted and assigned boxes in input pixels; the rule returns the loss to use: the NWD blend (``--box-loss``,
``r * own + (1 - r) * (1 - NWD)``), then the small-object weighting of the result (``--weighted-loss``). A new
box-loss method is one more field and one more line here, and reaches every family through the place each family
module installs the rule (``Family.install_box_rule``). ``assign`` asks the family's label assignment to rank
candidates by NWD instead of IoU where it can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sodet.losses.nwd import nwd_loss
from sodet.losses.small_weighted import small_target_loss
from sodet.options import SMALL_AREA


@dataclass(frozen=True)
class BoxRule:
    """The box-loss options of a run (checked where they are given, ``sodet.options``)."""

    weight: float | None = None  # small-object weighting W (None: off)
    small_area: float = SMALL_AREA
    form: str = "study"  # "study": 1 - W*s ; "scale": W*(1 - s)
    ratio: float = 1.0  # the family's own loss's share of the blend with 1 - NWD (1: no NWD)
    nwd_c: float | None = None  # NWD's C in input pixels (None: not yet measured on the training set)
    assign: str = "iou"  # "nwd": the family's label assignment ranks candidates by NWD

    @classmethod
    def from_options(cls, options) -> "BoxRule | None":
        """The rule a run's RunOptions ask for, or None when they leave the family's loss as it is."""
        weight = getattr(options, "weighted_loss", None)
        box_loss = getattr(options, "box_loss", "iou")
        assign = "nwd" if getattr(options, "nwd_assign", False) else "iou"
        if weight is None and box_loss == "iou" and assign == "iou":
            return None
        ratio = {"iou": 1.0, "nwd": 0.0}.get(box_loss, getattr(options, "nwd_ratio", 0.5))
        return cls(None if weight is None else float(weight), float(options.small_area), options.weight_form,
                   float(ratio), getattr(options, "nwd_c", None), assign)

    @property
    def uses_nwd(self) -> bool:
        return self.ratio < 1.0 or self.assign == "nwd"

    def __call__(self, box_loss: torch.Tensor, pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        """``box_loss`` (N,) or (N, 1) the family's own per-target loss; boxes (N, 4) xyxy in input pixels."""
        if self.ratio < 1.0:
            if self.nwd_c is None:
                raise RuntimeError("BoxRule: NWD's C was never set (the trainer measures it on the training set)")
            nwd_part = nwd_loss(pred_xyxy, target_xyxy, self.nwd_c).reshape(box_loss.shape).to(box_loss.dtype)
            box_loss = nwd_part if self.ratio == 0.0 else self.ratio * box_loss + (1.0 - self.ratio) * nwd_part
        if self.weight is None:
            return box_loss
        area = (target_xyxy[:, 2] - target_xyxy[:, 0]) * (target_xyxy[:, 3] - target_xyxy[:, 1])
        return small_target_loss(box_loss, area.reshape(box_loss.shape), self.weight, self.small_area, self.form)

    def describe(self) -> str:
        parts = []
        if self.ratio < 1.0:
            c = "C measured on the data" if self.nwd_c is None else f"C {self.nwd_c:.1f} px"
            parts.append("1 - NWD" if self.ratio == 0 else f"{self.ratio:g} x own + {1 - self.ratio:g} x (1 - NWD)")
            parts[-1] += f" ({c})"
        if self.weight is not None:
            form = f"1 - {self.weight:g}*s" if self.form == "study" else f"{self.weight:g}*(1 - s)"
            parts.append(f"{form} on targets below {self.small_area:g} px²")
        if self.assign == "nwd":
            parts.append("NWD in the label assignment")
        return "; ".join(parts) or "the family's own"


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
