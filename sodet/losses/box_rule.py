"""``BoxRule``: what sodet changes in a detector's per-target box loss, the same for every family.

Each family hands its own per-target box loss (``1 - s``: YOLOX's IoU^2, Ultralytics' CIoU, GFL's GIoU) with the
predicted and assigned boxes in input pixels; the rule returns the loss to use. Today: the small-object weighting
(``--weighted-loss``); a new box-loss method is one more field and one more line here, and reaches every family
through the place each family module installs the rule (``Family.install_box_rule``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sodet.losses.small_weighted import small_target_loss
from sodet.options import SMALL_AREA


@dataclass(frozen=True)
class BoxRule:
    """The box-loss options of a run (checked where they are given, ``sodet.options``)."""

    weight: float | None = None  # small-object weighting W (None: off)
    small_area: float = SMALL_AREA
    form: str = "study"  # "study": 1 - W*s ; "scale": W*(1 - s)

    @classmethod
    def from_options(cls, options) -> "BoxRule | None":
        """The rule a run's RunOptions ask for, or None when they leave the family's loss as it is."""
        if getattr(options, "weighted_loss", None) is None:
            return None
        return cls(float(options.weighted_loss), float(options.small_area), options.weight_form)

    def __call__(self, box_loss: torch.Tensor, pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        """``box_loss`` (N,) or (N, 1) the family's own per-target loss; boxes (N, 4) xyxy in input pixels."""
        if self.weight is None:
            return box_loss
        area = (target_xyxy[:, 2] - target_xyxy[:, 0]) * (target_xyxy[:, 3] - target_xyxy[:, 1])
        return small_target_loss(box_loss, area.reshape(box_loss.shape), self.weight, self.small_area, self.form)

    def describe(self) -> str:
        if self.weight is None:
            return "the family's own"
        form = f"1 - {self.weight:g}*s" if self.form == "study" else f"{self.weight:g}*(1 - s)"
        return f"{form} on targets below {self.small_area:g} px²"


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
