"""Copy-paste of small objects (Kisantal et al. 2019, arXiv 1902.07296).

Few training images hold small objects, and those that do hold few. Pasting each small object again at a free
place (its mask, not its box) gives the detector more small positives without new labelling. This module holds
the per-image paste used both on the fly (the training dataset calls :func:`paste_small_objects`) and offline
(:mod:`sodet.data.oversample`), and the choice of which images appear again in an epoch.

Coordinates are pixels of the image handed in, boxes xyxy. A pasted object never overlaps (positive-area
intersection) an existing object box, a crowd region or another pasted object, and lies fully inside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from sodet.data.coco import polygon_parts

SCALE_JITTER = (0.8, 1.2)  # uniform scale factor range of jittered pastes
ROTATION_JITTER = (-15.0, 15.0)  # uniform rotation range in degrees of jittered pastes


@dataclass
class PasteResult:
    """What a paste produced: the new image and the NEW objects only (the caller appends them)."""

    img: np.ndarray  # the image holding the pastes (the input array itself when nothing was pasted)
    boxes: np.ndarray  # (P, 4) float32 xyxy pixels of the pasted objects
    polygons: list = field(default_factory=list)  # length P: list of (K, 2) float32 parts, or None (box paste)
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (P,) index of the source object
    pasted: int = 0
    skipped: int = 0  # pastes for which no free place was found in max_tries positions (or nothing to paste)


@dataclass
class _Piece:
    """An object cut out of an image, in a frame where the patch's top-left pixel sits at ``origin``.

    A piece cut from the image keeps the image's own coordinates (origin = where the patch was cut), so pasting
    it is a pure shift; a jittered piece has its own frame (origin 0, 0).
    """

    patch: np.ndarray  # (h, w, C) source pixels
    mask: np.ndarray  # (h, w) bool: which of them belong to the object
    origin: tuple[int, int]  # (x, y) of the patch's top-left pixel in the piece's frame
    box: tuple[float, float, float, float]  # the object's xyxy box
    polygon: list | None  # the object's polygon parts (float32 (K, 2)), or None
    footprint: tuple[float, float, float, float]  # covers ``box`` and every patch pixel: what needs a free place


def _as_boxes(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1, 4)


def coco_polygon_mask(parts: list[np.ndarray], window: tuple[int, int, int, int]) -> np.ndarray:
    """The object's mask as COCO defines it (pycocotools' rasteriser, the one that computed its ``area``), in the
    image pixels of ``window`` (x0, y0, x1, y1). cv2.fillPoly marks about 18% more pixels on small objects.

    Rasterised in image coordinates (pycocotools' rounding depends on them: a polygon shifted by whole pixels can
    come out different), on a canvas that ends at the window's bottom-right corner instead of the image's."""
    from pycocotools import mask as mask_utils

    x0, y0, x1, y1 = window
    flat = [np.asarray(p, np.float64).ravel().tolist() for p in parts]
    canvas = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, y1, x1)))
    return canvas[y0:y1, x0:x1].astype(bool)


def _cut_piece(img: np.ndarray, box: list[float], polygon) -> _Piece | None:
    """Cut one object: the pixels under its polygon mask, or its rounded box patch without a polygon."""
    h, w = img.shape[:2]
    parts = polygon_parts(polygon) or []
    if parts:
        allpts = np.concatenate(parts)
        (x0, y0), (x1, y1) = np.floor(allpts.min(0)).astype(int).tolist(), np.ceil(allpts.max(0)).astype(int).tolist()
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
        if x1 <= x0 or y1 <= y0:
            return None
        mask = coco_polygon_mask(parts, (x0, y0, x1, y1))
        if not mask.any():
            return None
    else:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            return None
        mask = np.ones((y1 - y0, x1 - x0), bool)
        parts = None
    footprint = (min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1))
    return _Piece(img[y0:y1, x0:x1], mask, (x0, y0), tuple(box), parts, footprint)


def _jitter_piece(piece: _Piece, rng: np.random.Generator) -> _Piece | None:
    """Scale and rotate a piece about its centre; the new box is the tight box of the transformed mask."""
    scale = rng.uniform(*SCALE_JITTER)
    angle = rng.uniform(*ROTATION_JITTER)
    ph, pw = piece.mask.shape
    m = cv2.getRotationMatrix2D((pw / 2.0, ph / 2.0), angle, scale)
    corners = np.array([[0, 0, 1], [pw, 0, 1], [0, ph, 1], [pw, ph, 1]], np.float64) @ m.T
    m[:, 2] -= corners.min(0)
    out_w, out_h = (np.ceil(corners.max(0) - corners.min(0)).astype(int) + 1).tolist()
    mask = cv2.warpAffine(piece.mask.astype(np.uint8), m, (out_w, out_h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    ty0, ty1, tx0, tx1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    patch = cv2.warpAffine(piece.patch, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    patch = patch.reshape(out_h, out_w, -1)[ty0:ty1, tx0:tx1]
    if piece.patch.ndim == 2:
        patch = patch[..., 0]
    mask = mask[ty0:ty1, tx0:tx1]
    polygon = None
    if piece.polygon is not None:
        shift = np.array(piece.origin, np.float64) @ m[:, :2].T + np.array([tx0, ty0], np.float64)
        polygon = [(p.astype(np.float64) @ m[:, :2].T + m[:, 2] - shift).astype(np.float32) for p in piece.polygon]
    box = (0.0, 0.0, float(tx1 - tx0), float(ty1 - ty0))
    return _Piece(patch, mask, (0, 0), box, polygon, box)


CHECK_BLOCK = 8  # candidate places checked per vectorised step: most images have room, so the first block wins


def _free_offset(footprint: tuple[float, float, float, float], occupied: np.ndarray, width: int, height: int,
                 rng: np.random.Generator, max_tries: int) -> tuple[int, int] | None:
    """A uniformly random integer shift putting ``footprint`` inside the image, clear of all ``occupied`` boxes.

    All ``max_tries`` candidates are drawn at once (the draw does not depend on the image's contents), then
    checked against all boxes at once, a block at a time; the first free one wins. Touching is allowed.
    """
    fx0, fy0, fx1, fy1 = footprint
    lo_x, hi_x = math.ceil(-fx0), math.floor(width - fx1)
    lo_y, hi_y = math.ceil(-fy0), math.floor(height - fy1)
    if hi_x < lo_x or hi_y < lo_y or max_tries < 1:
        return None
    u = rng.random((max_tries, 2))
    dx = np.minimum(lo_x + np.floor(u[:, 0] * (hi_x - lo_x + 1)), hi_x)
    dy = np.minimum(lo_y + np.floor(u[:, 1] * (hi_y - lo_y + 1)), hi_y)
    if len(occupied) == 0:
        return int(dx[0]), int(dy[0])
    ox0, oy0, ox1, oy1 = occupied.T
    for start in range(0, max_tries, CHECK_BLOCK):
        x, y = dx[start:start + CHECK_BLOCK, None], dy[start:start + CHECK_BLOCK, None]
        free = ((x + fx1 <= ox0) | (x + fx0 >= ox1) | (y + fy1 <= oy0) | (y + fy0 >= oy1)).all(1)
        hit = np.flatnonzero(free)
        if hit.size:
            return int(x[hit[0], 0]), int(y[hit[0], 0])
    return None


def paste_small_objects(img, boxes, polygons, small, blocked, rng, copies=1, jitter=False, max_tries=50) -> PasteResult:
    """Paste every ``small`` object ``copies`` times at random free places of ``img``.

    ``boxes`` (N, 4) xyxy pixels; ``polygons`` length N, each None or a list of (K, 2) parts in pixels;
    ``small`` (N,) bool picks the objects to paste; ``blocked`` (M, 4) xyxy crowd regions (never pasted, never
    pasted over). Pixels always come from the ORIGINAL ``img`` (never modified in place). All randomness comes
    from ``rng``. Returns the new objects only.
    """
    boxes = _as_boxes(boxes)
    blocked = _as_boxes(blocked) if blocked is not None else np.zeros((0, 4))
    small = np.asarray(small, dtype=bool).reshape(-1)
    if len(small) != len(boxes) or len(polygons) != len(boxes):
        raise ValueError(f"boxes ({len(boxes)}), polygons ({len(polygons)}) and small ({len(small)}) differ in length")
    height, width = img.shape[:2]
    to_paste = np.flatnonzero(small).tolist()
    # every box a paste must avoid: objects, crowd regions, then each paste as it lands
    occupied = np.empty((len(boxes) + len(blocked) + len(to_paste) * copies, 4))
    n_occupied = len(boxes) + len(blocked)
    occupied[:len(boxes)], occupied[len(boxes):n_occupied] = boxes, blocked
    box_list = boxes.tolist()
    out = img
    new_boxes, new_polygons, sources = [], [], []
    skipped = 0
    for i in to_paste:
        base = _cut_piece(img, box_list[i], polygons[i])
        for _ in range(copies):
            piece = base if (base is None or not jitter) else _jitter_piece(base, rng)
            offset = None if piece is None else _free_offset(piece.footprint, occupied[:n_occupied], width, height,
                                                             rng, max_tries)
            if offset is None:
                skipped += 1
                continue
            dx, dy = offset
            if out is img:
                out = img.copy()
            ph, pw = piece.mask.shape
            px, py = piece.origin[0] + dx, piece.origin[1] + dy
            dest = out[py:py + ph, px:px + pw]
            np.copyto(dest, piece.patch, where=piece.mask if dest.ndim == 2 else piece.mask[..., None])
            f = piece.footprint
            occupied[n_occupied] = (f[0] + dx, f[1] + dy, f[2] + dx, f[3] + dy)
            n_occupied += 1
            b = piece.box
            new_boxes.append((b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy))
            shift = np.array([dx, dy], np.float32)
            new_polygons.append(None if piece.polygon is None else [p + shift for p in piece.polygon])
            sources.append(i)
    return PasteResult(
        img=out,
        boxes=np.asarray(new_boxes, np.float32).reshape(-1, 4),
        polygons=new_polygons,
        source=np.asarray(sources, np.int64),
        pasted=len(new_boxes),
        skipped=skipped,
    )


def extra_sample_count(n_with_small: int, oversample: float) -> int:
    """How many extra appearances per epoch ``oversample`` gives ``n_with_small`` images holding small objects."""
    if oversample < 0:
        raise ValueError(f"oversample must be >= 0, got {oversample}")
    whole = math.floor(oversample)
    return whole * n_with_small + math.floor((oversample - whole) * n_with_small + 0.5)


def uniform_extra_indices(n_images: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` extra appearances spread over all ``n_images`` (sorted, with repeats): every image ``count //
    n_images`` times, plus a ``rng``-chosen set of others once more. The control that gives a baseline as many
    samples per epoch as copy-paste without favouring the images that hold small objects."""
    if count <= 0 or n_images <= 0:
        return np.zeros(0, np.int64)
    whole, rest = divmod(int(count), int(n_images))
    picked = rng.choice(n_images, size=rest, replace=False) if rest else np.zeros(0, np.int64)
    return np.sort(np.concatenate([np.repeat(np.arange(n_images), whole), picked]).astype(np.int64))


def oversample_indices(has_small: np.ndarray, oversample: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the images that appear once more per epoch (sorted, with repeats).

    Each image holding small objects is listed ``floor(oversample)`` times, plus a ``rng``-chosen fraction of
    them once more for the remainder (0.5 -> half of them once). The epoch is ``range(N)`` plus these.
    """
    candidates = np.flatnonzero(np.asarray(has_small, dtype=bool))
    whole = math.floor(oversample)
    n_extra = extra_sample_count(len(candidates), oversample) - whole * len(candidates)
    picked = rng.choice(candidates, size=n_extra, replace=False) if n_extra else np.zeros(0, np.int64)
    return np.sort(np.concatenate([np.repeat(candidates, whole), picked]).astype(np.int64))
