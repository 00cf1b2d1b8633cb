"""Sliced training (SAHI's slicing-aided fine-tuning, Akyon et al. 2022): online random crops of the source image,
resized to the network input, so that small objects are seen magnified.

Not a fixed tile grid: each cropped sample draws its crop's height and width independently in [MIN, MAX] source
pixels (MMDetection's ``RandomCrop(crop_type='absolute_range')``, what the SAHI paper's configs use; fractions of
the image side when MAX <= 1) and its position uniformly. Boxes are clipped to the crop; an object keeping less than
``min_visible`` of its box area is dropped; a kept object's COCO area is scaled by its visible fraction (what
copy-paste's small test reads); polygons are clipped exactly (Sutherland-Hodgman against the crop rectangle).
"""

from __future__ import annotations

import random

import numpy as np


def crop_window(h: int, w: int, sides: list[float], rng: random.Random = random) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a crop of an ``h`` x ``w`` image: sides in [MIN, MAX] pixels (at most the image), or in
    [MIN, MAX] x the image side for fractions."""
    lo, hi = sides
    if hi <= 1:
        ch = max(1, round(h * rng.uniform(lo, hi)))
        cw = max(1, round(w * rng.uniform(lo, hi)))
    else:
        ch = rng.randint(min(h, round(lo)), min(h, round(hi)))
        cw = rng.randint(min(w, round(lo)), min(w, round(hi)))
    y0 = rng.randint(0, h - ch)
    x0 = rng.randint(0, w - cw)
    return x0, y0, x0 + cw, y0 + ch


def crop_boxes(boxes: np.ndarray, window, min_visible: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyxy ``boxes`` (N, 4) in image pixels -> (the kept ones clipped and in crop pixels, the kept mask (N,),
    the visible fraction of each box's area (N,))."""
    x0, y0, x1, y1 = window
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    clipped = np.stack([boxes[:, 0].clip(x0, x1), boxes[:, 1].clip(y0, y1), boxes[:, 2].clip(x0, x1),
                        boxes[:, 3].clip(y0, y1)], 1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    visible = np.divide(inside, area, out=np.zeros_like(area), where=area > 0)
    keep = (visible >= min_visible) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep] - np.array([x0, y0, x0, y0], np.float64), keep, visible


def clip_polygon(points: np.ndarray, window) -> np.ndarray:
    """One polygon part (K, 2) clipped to the crop rectangle (Sutherland-Hodgman: exact for a convex clip region),
    in crop pixels; fewer than 3 points when nothing of it is inside."""
    x0, y0, x1, y1 = window
    pts = [tuple(p) for p in np.asarray(points, np.float64)]
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not pts:
            break
        inside = (lambda p: p[axis] >= bound) if keep_above else (lambda p: p[axis] <= bound)
        out = []
        for a, b in zip(pts, pts[1:] + pts[:1]):
            if inside(b):
                if not inside(a):
                    out.append(_cross(a, b, axis, bound))
                out.append(b)
            elif inside(a):
                out.append(_cross(a, b, axis, bound))
        pts = out
    return np.asarray(pts, np.float64).reshape(-1, 2) - np.array([x0, y0], np.float64)


def _cross(a, b, axis: int, bound: float):
    t = (bound - a[axis]) / (b[axis] - a[axis])
    p = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]
    p[axis] = bound
    return tuple(p)


def clip_polygons(parts: list | None, window) -> list | None:
    """An object's polygon parts clipped to the crop (parts left with fewer than 3 points dropped), or None."""
    if parts is None:
        return None
    clipped = [c for c in (clip_polygon(p, window) for p in parts) if len(c) >= 3]
    return clipped or None
