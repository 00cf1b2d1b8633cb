"""Offline copy-paste oversampling: write a COCO folder holding the originals plus pasted copies.

The reference study did copy-paste offline (25,000 images became 30,000). Training on the fly is sodet's default;
this writer exists to reproduce the study's setting, to feed other tools, and to look at what pasting produces.
Each extra image is its source image with every small object pasted ``copies`` times more (same code as on the
fly: :func:`sodet.data.copy_paste.paste_small_objects`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from sodet.data.copy_paste import oversample_indices, paste_small_objects
from sodet.data.stats import coco_area, load_coco_split
from sodet.data.coco import polygon_parts, select_categories
from sodet.errors import SodetError
from sodet.options import SMALL_AREA

JPEG_QUALITY = 95  # extra images are re-encoded; the originals are copied byte for byte


def polygon_area(parts) -> float:
    """Area of a COCO polygon (sum of its parts' shoelace areas), what COCO's ``area`` is for polygon masks."""
    total = 0.0
    for p in parts:
        x, y = p[:, 0].astype(np.float64), p[:, 1].astype(np.float64)
        total += 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return total


def _object_arrays(anns: list[dict]) -> tuple[np.ndarray, list]:
    """xyxy boxes and pixel polygons (None for RLE / missing masks) of annotations."""
    boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes, [polygon_parts(a.get("segmentation")) for a in anns]


def _write_source_note(out_dir: Path, data_dir: Path, split: str, line: str) -> None:
    """One line per split saying how the folder was made, above the source's own attribution."""
    note = out_dir / "SOURCE.md"
    key = f"- `{split}`:"
    if note.is_file():
        lines = [ln for ln in note.read_text(encoding="utf-8").splitlines() if not ln.startswith(key)]
        at = next((i for i, ln in enumerate(lines) if ln.startswith("- `")), 2)
        lines.insert(at, line)
        note.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return
    text = [f"# {out_dir.name}: copy-paste oversampled copy of {data_dir.name}", "", line, ""]
    src_note = data_dir / "SOURCE.md"
    if src_note.is_file():
        text += ["## Source data (its SOURCE.md, unchanged)", "", src_note.read_text(encoding="utf-8")]
    note.write_text("\n".join(text) + "\n", encoding="utf-8")


def oversample_coco(data_dir, split, out_dir, small_area=SMALL_AREA, oversample=1.0, copies=1, jitter=False, seed=0,
                    classes=None) -> dict:
    """Write ``out_dir`` with ``split``'s original images plus copy-paste copies of those holding small objects.

    Small = non-crowd with COCO ``area < small_area`` (and of ``classes``, by name, when given; objects of other
    classes stay in the copies as obstacles but are not pasted). Each image with small objects gets
    ``floor(oversample)`` copies plus a seed-chosen fraction; in each copy every small object is pasted
    ``copies`` times. Deterministic for ``seed``. Returns (and prints) the counts.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    d, ann_path, img_dir = load_coco_split(data_dir, split)
    if out_dir.resolve() == data_dir.resolve():
        raise SodetError(f"--out must differ from --data ({out_dir}); the source folder is never overwritten")
    paste_ids = {c["id"] for c in select_categories(d["categories"], classes, ann_path)}

    anns_of: dict[int, list[dict]] = {}
    for a in d["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)

    def is_small(a: dict) -> bool:
        return not a.get("iscrowd", 0) and a["category_id"] in paste_ids and coco_area(a) < small_area

    images = d["images"]
    has_small = np.array([any(is_small(a) for a in anns_of.get(im["id"], [])) for im in images], bool)
    extra = oversample_indices(has_small, oversample, np.random.default_rng(seed))

    out_img_dir = out_dir / "images" / split
    out_img_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for im in images:
        src = img_dir / im["file_name"]
        if not src.is_file():
            raise SodetError(f"image not found: {src} (listed in {ann_path})")
        dst = out_img_dir / im["file_name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)

    next_image_id = max((im["id"] for im in images), default=0) + 1
    next_ann_id = max((a["id"] for a in d["annotations"]), default=0) + 1
    new_images, new_anns = [], []
    pasted = skipped = 0
    copy_number: dict[int, int] = {}
    for row in extra.tolist():
        im = images[row]
        k = copy_number[row] = copy_number.get(row, 0) + 1
        anns = anns_of.get(im["id"], [])
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        boxes, polygons = _object_arrays(objects)
        blocked, _ = _object_arrays(crowd)
        img = cv2.imread(str(img_dir / im["file_name"]), cv2.IMREAD_COLOR)  # as the engine loads it
        if img is None:
            raise SodetError(f"cannot decode image {img_dir / im['file_name']}")
        rng = np.random.default_rng([seed, int(im["id"]), k])  # per copy: independent of the order of images
        res = paste_small_objects(img, boxes, polygons, np.array([is_small(a) for a in objects], bool), blocked,
                                  rng, copies=copies, jitter=jitter)
        pasted += res.pasted
        skipped += res.skipped

        name = Path(im["file_name"])
        file_name = str(name.with_name(f"{name.stem}_cp{k}{name.suffix}"))
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if name.suffix.lower() in {".jpg", ".jpeg"} else []
        if not cv2.imwrite(str(out_img_dir / file_name), res.img, params):
            raise SodetError(f"cannot write image {out_img_dir / file_name}")
        new_im = copy.deepcopy(im)  # keeps license, urls and any other field of the source
        new_im.update(id=next_image_id, file_name=file_name, copy_paste_of=im["id"])
        new_images.append(new_im)
        for a in anns:
            new_a = copy.deepcopy(a)
            new_a.update(id=next_ann_id, image_id=next_image_id)
            new_anns.append(new_a)
            next_ann_id += 1
        for box, poly, src in zip(res.boxes.astype(np.float64), res.polygons, res.source.tolist()):
            x0, y0, x1, y1 = box.tolist()
            new_a = {"id": next_ann_id, "image_id": next_image_id, "category_id": objects[src]["category_id"],
                     "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                     "area": polygon_area(poly) if poly is not None else (x1 - x0) * (y1 - y0),
                     "iscrowd": 0, "copy_paste_of": objects[src]["id"]}
            if poly is not None:
                new_a["segmentation"] = [np.round(p.astype(np.float64), 2).reshape(-1).tolist() for p in poly]
            new_anns.append(new_a)
            next_ann_id += 1
        next_image_id += 1

    out = dict(d)
    out["info"] = dict(d.get("info") or {})
    made = (f"copy-paste oversampling of {data_dir.name}/{split}: small_area {small_area:g}, oversample "
            f"{oversample:g}, copies {copies}, jitter {jitter}, seed {seed}, classes {classes or 'all'}")
    out["info"]["description"] = f"{out['info'].get('description', data_dir.name)} + {made}"
    out["images"] = images + new_images
    out["annotations"] = d["annotations"] + new_anns
    with open(out_dir / "annotations" / f"{split}.json", "w", encoding="utf-8") as f:
        json.dump(out, f)

    stats = {"images_in": len(images), "images_out": len(images) + len(new_images),
             "images_with_small": int(has_small.sum()), "extra_images": len(new_images),
             "objects_pasted": pasted, "pastes_skipped": skipped}
    _write_source_note(out_dir, data_dir, split,
                       f"- `{split}`: made by `sodet data oversample` from `{data_dir}` ({made}); "
                       f"{stats['images_in']} -> {stats['images_out']} images, {pasted} objects pasted, "
                       f"{skipped} pastes skipped (no free place).")
    print(f"{split}: {stats['images_in']} images in, {stats['images_out']} out "
          f"({stats['extra_images']} extra from {stats['images_with_small']} with small objects), "
          f"{pasted} objects pasted, {skipped} pastes skipped")
    return stats
