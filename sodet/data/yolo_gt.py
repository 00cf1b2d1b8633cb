"""COCO ground truth for YOLO-txt datasets, which have no json: built from the labels.

``area`` is the box area in original pixels (the only size a box label has); no crowd regions.
"""

from __future__ import annotations

from pathlib import Path


def gt_from_labels(labels: list[dict], meta: list[dict], names: list[str]) -> dict:
    images, annotations = [], []
    for lb, m in zip(labels, meta):
        h, w = m["shape"]
        images.append({"id": int(m["image_id"]), "file_name": Path(lb["im_file"]).name, "width": int(w), "height": int(h)})
        for c, (cx, cy, bw, bh) in zip(lb["cls"].ravel(), lb["bboxes"]):
            box = [float((cx - bw / 2) * w), float((cy - bh / 2) * h), float(bw * w), float(bh * h)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(m["image_id"]),
                    "category_id": int(c) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
