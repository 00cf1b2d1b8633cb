"""``sodet data slice``: a COCO folder's split cut into overlapping tiles, written as a COCO folder, through the
``sahi`` package's ``slice_coco`` (its defaults: 512 px tiles, overlap 0.2, the edge tiles shifted inside the image,
objects keeping less than 0.1 of their area in a tile dropped). The offline counterpart of ``--crop-train``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sodet.data.coco import coco_split_paths
from sodet.errors import SodetError


def slice_coco_folder(data: str | Path, split: str, out: str | Path, size: int = 512, overlap: float = 0.2,
                      min_area_ratio: float = 0.1, keep_empty: bool = True) -> Path:
    """Write ``out/images/<split>/`` (the tiles) and ``out/annotations/<split>.json``; returns the json."""
    from sahi.slicing import slice_coco

    ann, img_dir = coco_split_paths(Path(data), split)
    out = Path(out)
    if out.resolve() == Path(data).resolve():
        raise SodetError("--out must differ from --data (the tiles are written as a new COCO folder)")
    if not 32 <= size:
        raise SodetError(f"--size must be at least 32 pixels, got {size}")
    if not 0 <= overlap < 1 or not 0 < min_area_ratio <= 1:
        raise SodetError("--overlap must be in [0, 1) and --min-area-ratio in (0, 1]")
    tiles = out / "images" / split
    if tiles.exists():
        shutil.rmtree(tiles)
    tiles.mkdir(parents=True)
    coco, _ = slice_coco(str(ann), str(img_dir), "", output_dir=str(tiles), ignore_negative_samples=not keep_empty,
                         slice_height=size, slice_width=size, overlap_height_ratio=overlap, overlap_width_ratio=overlap,
                         min_area_ratio=min_area_ratio, verbose=False)
    for i, im in enumerate(coco["images"], 1):  # ids from 1: COCOeval reads an id 0 as "unmatched"
        old = im["id"]
        im["id"] = i
        for a in coco["annotations"]:
            if a["image_id"] == old:
                a["image_id"] = -i
    for a in coco["annotations"]:
        a["image_id"] = -a["image_id"]
    for j, a in enumerate(coco["annotations"], 1):
        a["id"] = j
        a.setdefault("iscrowd", 0)
    target = out / "annotations" / f"{split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(coco))
    return target
