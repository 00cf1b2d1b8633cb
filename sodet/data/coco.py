"""COCO dataset folders (``DIR/annotations/<split>.json`` + ``DIR/images/<split>/``) as training labels.

The original json stays the ground truth for evaluation (its ``area`` decides the COCO size buckets), so this
module only *reads* it: it checks every image and annotation once, keeps polygons (copy-paste pastes masks),
crowd regions (never pasted, nothing pasted over them) and COCO areas, and caches the result next to the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sodet.errors import SodetError
from sodet.files import write_bytes_atomic

CACHE_VERSION = 3  # 3: duplicate ids refused


@dataclass
class ImageLabels:
    """One image's objects: boxes normalised xywh like the engine's labels, plus what sodet needs besides."""

    file: str  # absolute image path
    image_id: int  # COCO image id
    shape: tuple[int, int]  # original (height, width)
    cls: np.ndarray  # (n, 1) float32 class index
    bboxes: np.ndarray  # (n, 4) float32 normalised xywh (centre)
    area: np.ndarray  # (n,) float32 COCO area in original pixels (mask area for polygons)
    polygons: list  # n items: None or list of (k, 2) float32 arrays, normalised xy
    crowd: np.ndarray  # (m, 4) float32 normalised xyxy of crowd regions


@dataclass
class SplitLabels:
    """A split of a COCO folder restricted to the chosen classes."""

    names: list[str]  # class names, index = class id used for training
    category_ids: list[int]  # COCO category id of each class index
    images: list[ImageLabels]
    gt_json: str  # ground truth json restricted to the chosen classes and the kept images
    warnings: list[str] = field(default_factory=list)


def coco_split_paths(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The annotation json and image folder of a split, or a one-line error saying what to put where."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SodetError(f"data folder not found: {data_dir} (expected {data_dir}/annotations/<split>.json and images/<split>/)")
    ann, img = data_dir / "annotations" / f"{split}.json", data_dir / "images" / split
    if not ann.is_file():
        raise SodetError(f"annotation file not found: {ann} (a COCO folder needs annotations/{split}.json)")
    if not img.is_dir():
        raise SodetError(f"image folder not found: {img} (a COCO folder needs images/{split}/)")
    return ann, img


def is_coco_dir(data: str | Path) -> bool:
    """True for a folder laid out as a COCO dataset."""
    p = Path(data)
    return p.is_dir() and (p / "annotations").is_dir()


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SodetError(f"cannot read COCO json {path}: {e}") from None
    if not isinstance(d, dict) or not {"images", "annotations", "categories"} <= d.keys():
        raise SodetError(f"{path} is not a COCO annotation file (needs 'images', 'annotations', 'categories')")
    return d


def check_unique_ids(d: dict, path: Path) -> None:
    """Two images (or categories) under one id would silently merge their ground truth: refused, naming them."""
    from collections import Counter

    for key in ("images", "categories"):
        dup = sorted(i for i, n in Counter(x.get("id") for x in d[key]).items() if n > 1)
        if dup:
            shown = ", ".join(map(str, dup[:5])) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
            raise SodetError(f"{path}: duplicate {key[:-1]} id {shown} (every {key[:-1]} needs its own id)")


def select_categories(categories: list[dict], classes: list[str] | None, source: Path) -> list[dict]:
    """The categories to train on, in the order given by ``classes`` (default: the file's order)."""
    by_name = {c["name"]: c for c in categories}
    if not classes:
        return sorted(categories, key=lambda c: c["id"])
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise SodetError(f"classes {missing} not in {source} (it has: {', '.join(by_name)})")
    return [by_name[c] for c in classes]


def check_image(path: Path) -> str | None:
    """None when the image decodes, else why not (the engine would fail on it mid-epoch)."""
    from PIL import Image

    import cv2

    # OpenCV first: the engine's patched Image.open answers an unknown format by trying to install a HEIF plugin
    if cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
        return "not a decodable image (unknown format or corrupt data)"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def polygon_parts(segmentation, dtype=np.float64) -> list[np.ndarray] | None:
    """A COCO polygon as its parts, each (k, 2) xy in the segmentation's own pixels with at least 3 points; None
    for RLE or missing masks. The one parser of polygons (COCO's flat lists, or parts already as arrays)."""
    if not isinstance(segmentation, (list, tuple)) or not len(segmentation):
        return None
    parts = [np.asarray(p, dtype=dtype).reshape(-1, 2) for p in segmentation]
    return [p for p in parts if len(p) >= 3] or None


def normalised_parts(segmentation, w: int, h: int) -> list | None:
    """COCO polygon parts normalised to 0-1 (how the training labels hold them)."""
    parts = polygon_parts(segmentation, np.float32)
    return None if parts is None else [p / np.array([w, h], dtype=np.float32) for p in parts]


def parse_split(ann_path: Path, img_dir: Path, classes: list[str] | None) -> tuple[SplitLabels, dict]:
    """Read and check a COCO split: unusable images and annotations are skipped with a warning naming them.
    Returns the labels and the ground-truth json of what was kept."""
    d = read_json(ann_path)
    check_unique_ids(d, ann_path)
    cats = select_categories(d["categories"], classes, ann_path)
    known_ids = {c["id"] for c in d["categories"]}
    index_of = {c["id"]: i for i, c in enumerate(cats)}
    warnings: list[str] = []

    per_image: dict[int, list[dict]] = {}
    unknown, degenerate = [], []
    for a in d["annotations"]:
        if a.get("category_id") not in known_ids:
            unknown.append(a)
            continue
        if a["category_id"] not in index_of:
            continue
        bbox = a.get("bbox") or [0, 0, 0, 0]
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            degenerate.append(a)
            continue
        per_image.setdefault(a["image_id"], []).append(a)
    if unknown:
        cids = sorted({str(a.get("category_id")) for a in unknown})
        warnings.append(
            f"{ann_path.name}: skipped {len(unknown)} annotation(s) with unknown category_id {', '.join(cids)} "
            f"(e.g. annotation id {unknown[0].get('id')})"
        )
    if degenerate:
        warnings.append(
            f"{ann_path.name}: skipped {len(degenerate)} annotation(s) with a zero-area box "
            f"(ids {', '.join(str(a.get('id')) for a in degenerate[:5])}{'...' if len(degenerate) > 5 else ''})"
        )

    images, kept_ids = [], []
    for im in sorted(d["images"], key=lambda i: i["id"]):
        f = img_dir / im["file_name"]
        if not f.is_file():
            warnings.append(f"skipped image {f}: file not found")
            continue
        why = check_image(f)
        if why:
            warnings.append(f"skipped corrupt image {f}: {why}")
            continue
        w, h = int(im["width"]), int(im["height"])
        objs = [a for a in per_image.get(im["id"], []) if not a.get("iscrowd", 0)]
        crowd = [a for a in per_image.get(im["id"], []) if a.get("iscrowd", 0)]
        scale = np.array([w, h, w, h], dtype=np.float32)
        boxes = np.array([a["bbox"] for a in objs], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xyxy
        boxes = np.clip(boxes, 0, scale) / scale
        xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
        crowd_xyxy = np.array([a["bbox"] for a in crowd], dtype=np.float32).reshape(-1, 4)
        crowd_xyxy[:, 2:] += crowd_xyxy[:, :2]
        images.append(
            ImageLabels(
                file=str(f.resolve()),
                image_id=int(im["id"]),
                shape=(h, w),
                cls=np.array([[index_of[a["category_id"]]] for a in objs], dtype=np.float32).reshape(-1, 1),
                bboxes=xywh.astype(np.float32),
                area=np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in objs], dtype=np.float32),
                polygons=[normalised_parts(a.get("segmentation"), w, h) for a in objs],
                crowd=(np.clip(crowd_xyxy, 0, scale) / scale).astype(np.float32),
            )
        )
        kept_ids.append(im["id"])
    if not images:
        raise SodetError(f"no usable images in {img_dir} for {ann_path}")

    keep = set(kept_ids)
    gt = {
        "info": d.get("info", {}),
        "licenses": d.get("licenses", []),
        "images": [im for im in d["images"] if im["id"] in keep],
        "annotations": [a for i in kept_ids for a in per_image.get(i, [])],
        "categories": cats,
    }
    return SplitLabels(
        names=[c["name"] for c in cats],
        category_ids=[c["id"] for c in cats],
        images=images,
        gt_json="",
        warnings=warnings,
    ), gt


def cache_dir_for(data_dir: Path) -> Path:
    """``DIR/.sodet`` when writable (next to the data), else a per-folder dir under the user cache."""
    local = Path(data_dir) / ".sodet"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    key = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    p = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sodet" / "data" / key
    p.mkdir(parents=True, exist_ok=True)
    return p


def load_split(data_dir: str | Path, split: str, classes: list[str] | None = None) -> SplitLabels:
    """Labels of a COCO split, from the cache when the json and image folder are unchanged."""
    data_dir = Path(data_dir).resolve()
    ann, img_dir = coco_split_paths(data_dir, split)
    st, ist = ann.stat(), img_dir.stat()
    tag = hashlib.sha1(
        json.dumps([CACHE_VERSION, str(ann), st.st_size, st.st_mtime_ns, ist.st_mtime_ns, classes]).encode()
    ).hexdigest()[:12]
    cdir = cache_dir_for(data_dir)
    cache, gt_path = cdir / f"{split}-{tag}.pkl", cdir / f"{split}-{tag}-gt.json"
    if cache.is_file() and gt_path.is_file():
        try:
            with open(cache, "rb") as f:
                return pickle.load(f)
        except Exception:
            pass  # unreadable cache: rebuild
    labels, gt = parse_split(ann, img_dir, classes)
    labels.gt_json = str(gt_path)
    # several processes may build the same cache at once (a study's cells side by side): each writes its own
    # temporary files and renames them into place, so a reader never sees half a file and no rename loses its source
    write_bytes_atomic(gt_path, json.dumps(gt).encode())
    write_bytes_atomic(cache, pickle.dumps(labels))
    return labels
