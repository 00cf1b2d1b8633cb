"""Sliced inference (SAHI, Akyon et al. 2022) through the ``sahi`` package: its tile grid and its merging.

Small objects in a large frame shrink below what the detector resolves once the frame is letterboxed to the
model's size; on overlapping tiles, each resized to that size, they are magnified. The full image is also run
(SAHI's standard ``perform_standard_pred``), so large objects cut by tile borders are still found, and SAHI's
postprocess (greedy non-maximum merging with intersection-over-smaller by default) joins the pieces. ``sahi`` is
imported here only, when slicing is asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from sodet.errors import SodetError

MIN_SLICE = 32  # below one stride-32 cell a tile holds nothing a detector can see
MAX_OVERLAP = 0.9
MERGES = ("greedynmm", "nms")
METRICS = ("IOS", "IOU")


def parse_slice(value) -> tuple[int, int] | None:
    """``--slice N`` or ``H,W`` as (height, width); None/''/0 for no slicing; one line for anything else."""
    if value in (None, "", 0, "0", False):
        return None
    if isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        parts = [p.strip() for p in str(value).replace("x", ",").split(",")]
    try:
        hw = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise SodetError(f"--slice must be N or H,W in pixels, got {value!r}") from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2:
        raise SodetError(f"--slice must be N or H,W in pixels, got {value!r}")
    if min(hw) < MIN_SLICE:
        raise SodetError(f"--slice must be at least {MIN_SLICE} pixels, got {value!r}")
    return hw[0], hw[1]


@dataclass
class Slicer:
    """Tiles of ``height`` x ``width`` overlapping by ``overlap`` (a fraction of the tile), plus the full image,
    merged by SAHI's ``merge`` ("greedynmm" or "nms") at ``match_threshold`` of ``match_metric`` (IOS/IOU)."""

    height: int
    width: int
    overlap: float = 0.2
    merge_mode: str = "greedynmm"
    match_metric: str = "IOS"
    match_threshold: float = 0.5
    batch: int = 16  # tiles per forward pass

    def __post_init__(self):
        if min(self.height, self.width) < MIN_SLICE:
            raise SodetError(f"--slice must be at least {MIN_SLICE} pixels, got {self.height},{self.width}")
        if not 0 <= self.overlap <= MAX_OVERLAP:
            raise SodetError(f"--slice-overlap must be in [0, {MAX_OVERLAP}], got {self.overlap}")
        if self.merge_mode not in MERGES:
            raise SodetError(f"--slice-merge must be one of {list(MERGES)}, not '{self.merge_mode}'")
        self.match_metric = str(self.match_metric).upper()
        if self.match_metric not in METRICS:
            raise SodetError(f"--slice-match must be one of {list(METRICS)}, not '{self.match_metric}'")
        if not 0 < self.match_threshold <= 1:
            raise SodetError(f"--slice-threshold must be in (0, 1], got {self.match_threshold}")

    @classmethod
    def from_options(cls, slice=None, overlap: float = 0.2, merge: str = "greedynmm", match: str = "IOS",
                     threshold: float = 0.5, batch: int = 16) -> "Slicer | None":
        hw = parse_slice(slice)
        if hw is None:
            return None
        return cls(hw[0], hw[1], float(overlap), merge, match, float(threshold), max(1, int(batch)))

    def to_dict(self) -> dict:
        return asdict(self)

    def tiles(self, height: int, width: int) -> list[list[int]]:
        """SAHI's tile grid, [x0, y0, x1, y1] each; the last row and column end at the image border."""
        from sahi.slicing import get_slice_bboxes

        return get_slice_bboxes(
            height, width, slice_height=self.height, slice_width=self.width, auto_slice_resolution=False,
            overlap_height_ratio=self.overlap, overlap_width_ratio=self.overlap,
        )

    def tile_detections(self, detect: Callable[[list[np.ndarray]], list[torch.Tensor]], image: np.ndarray) -> torch.Tensor:
        """Detections (N, 6: xyxy, score, class) on every tile of ``image``, in image pixels. ``detect`` runs the
        model on a list of same-sized crops (one batch) and returns each crop's detections in crop pixels. An image
        that fits in one tile has no tiles (the full-image pass covers it)."""
        h, w = image.shape[:2]
        boxes = self.tiles(h, w)
        if len(boxes) <= 1 and boxes and boxes[0] == [0, 0, w, h]:
            return torch.zeros((0, 6))
        out = []
        for i in range(0, len(boxes), self.batch):
            chunk = boxes[i : i + self.batch]
            crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in chunk]
            for (x0, y0, _, _), d in zip(chunk, detect(crops)):
                d = d[:, :6].clone()
                d[:, [0, 2]] += x0
                d[:, [1, 3]] += y0
                out.append(d)
        return torch.cat(out) if out else torch.zeros((0, 6))

    def merge(self, full: torch.Tensor, tiles: torch.Tensor, max_det: int = 300, names: dict | None = None) -> torch.Tensor:
        """Full-image and tile detections merged by SAHI's postprocess (per class), highest score first, at most
        ``max_det``. Degenerate (zero-area) boxes cannot be matched by area and are dropped."""
        from sahi.postprocess.combine import GreedyNMMPostprocess, NMSPostprocess
        from sahi.prediction import ObjectPrediction

        dets = torch.cat([full[:, :6].float().cpu(), tiles[:, :6].float().cpu()])
        keep = (dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])
        dets = dets[keep]
        if not len(dets):
            return dets.to(full.device)
        names = names or {}
        preds = [
            ObjectPrediction(bbox=d[:4], category_id=int(d[5]), category_name=str(names.get(int(d[5]), int(d[5]))), score=d[4])
            for d in dets.tolist()
        ]
        post = (GreedyNMMPostprocess if self.merge_mode == "greedynmm" else NMSPostprocess)(
            match_threshold=self.match_threshold, match_metric=self.match_metric, class_agnostic=False
        )
        merged = post(preds)
        out = torch.tensor(
            [[*p.bbox.to_xyxy(), p.score.value, p.category.id] for p in merged], dtype=torch.float32
        ).reshape(-1, 6)
        out = out[out[:, 4].argsort(descending=True, stable=True)][:max_det]
        return out.to(full.device)
