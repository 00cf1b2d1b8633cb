"""Rebuild this embedded subset from the HIT-UAV COCO conversion (``../shared/data/hit-uav``).

    python datasets/hit-uav-mini/make.py ../shared/data/hit-uav

Takes every k-th image (by image id) of each split, so altitudes, camera angles, day and night stay mixed, and
copies images byte for byte with their annotations unchanged (ids, boxes, areas).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

COUNTS = {"train": 64, "val": 32}


def main(src: str) -> None:
    src_dir, out = Path(src), Path(__file__).resolve().parent
    for split, n in COUNTS.items():
        d = json.loads((src_dir / "annotations" / f"{split}.json").read_text())
        images = sorted(d["images"], key=lambda im: im["id"])
        step = len(images) / n
        keep = [images[int(i * step)] for i in range(n)]
        ids = {im["id"] for im in keep}
        sub = {**{k: v for k, v in d.items() if k not in {"images", "annotations"}},
               "images": keep, "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"{split}.json").write_text(json.dumps(sub))
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for im in keep:
            shutil.copyfile(src_dir / "images" / split / im["file_name"], out / "images" / split / im["file_name"])
        small = sum(a["area"] < 32 * 32 for a in sub["annotations"])
        print(f"{split}: {len(keep)} images, {len(sub['annotations'])} objects ({small} small)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/hit-uav")
