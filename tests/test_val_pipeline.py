"""`sodet val` end to end: fidelity with YOLOX's own pipeline, metrics.json contents, class mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sodet  # noqa: F401
from sodet.assets import COCO_MINI, embedded_data
from sodet.errors import SodetError
from sodet.eval.cocoeval import METRIC_KEYS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO_PC = SHARED / "data" / "coco-pc"


@pytest.mark.skipif(not COCO_PC.is_dir(), reason="../shared/data/coco-pc not present")
def test_yolox_nano_fidelity_on_coco_pc_val(tmp_path):
    """Official YOLOX-Nano weights, 416 px, person + car on coco-pc val: the numbers of Megvii's own pipeline
    (AP 0.238, APs 0.095; ../shared/weights/SOURCE.md) within 0.02."""
    from sodet.api import val

    out, m = val(model="yolox-nano", data=str(COCO_PC), split="val", imgsz=416, out=str(tmp_path / "v"), device="cpu")
    assert m["AP"] == pytest.approx(0.238, abs=0.02)
    assert m["APs"] == pytest.approx(0.095, abs=0.02)
    saved = json.loads((out / "metrics.json").read_text())
    assert all(k in saved for k in METRIC_KEYS) and set(saved["per_class"]) == {"person", "car"}
    assert set(saved["speed"]) == {"preprocess", "inference", "postprocess"} and saved["speed"]["inference"] > 0
    assert saved["dataset"]["classes"] == ["person", "car"] and saved["dataset"]["num_images"] == 40
    preds = json.loads((out / "predictions.json").read_text())
    gt_ids = {i["id"] for i in json.loads((COCO_PC / "annotations" / "val.json").read_text())["images"]}
    assert preds and {p["image_id"] for p in preds} <= gt_ids and {p["category_id"] for p in preds} <= {1, 3}


def test_checkpoint_classes_must_match_data(tmp_path):
    """A checkpoint trained on (car) validated on data without that class: one clear message."""
    from sodet.api import train, val

    run = train(model="yolox-nano", data=str(embedded_data(COCO_MINI)), classes=["car"], epochs=1, imgsz=128, batch=16, device="cpu", workers=0,
                plots=False, val=False, project=str(tmp_path), name="car")
    bad = tmp_path / "persons"
    (bad / "annotations").mkdir(parents=True)
    d = json.loads((embedded_data(COCO_MINI) / "annotations" / "val.json").read_text())
    d["categories"] = [c for c in d["categories"] if c["name"] == "person"]
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] == 1]
    (bad / "annotations" / "val.json").write_text(json.dumps(d))
    (bad / "images").mkdir()
    (bad / "images" / "val").symlink_to(embedded_data(COCO_MINI) / "images" / "val", target_is_directory=True)
    with pytest.raises(SodetError, match=r"checkpoint classes \['car'\] do not hold the data classes \['person'\]"):
        val(model=str(run / "weights" / "best.pt"), data=str(bad), out=str(tmp_path / "v"), device="cpu")


def yolo_copy_of_mini(root: Path) -> Path:
    """coco-pc-mini as an Ultralytics YOLO-txt dataset (non-crowd boxes; class 0 person, 1 car)."""
    src = embedded_data(COCO_MINI)
    for split in ("train", "val"):
        d = json.loads((src / "annotations" / f"{split}.json").read_text())
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for im in d["images"]:
            (root / "images" / split / im["file_name"]).write_bytes((src / "images" / split / im["file_name"]).read_bytes())
            rows = [
                f"{ {1: 0, 3: 1}[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / im['width']:.6f} "
                f"{(a['bbox'][1] + a['bbox'][3] / 2) / im['height']:.6f} {a['bbox'][2] / im['width']:.6f} "
                f"{a['bbox'][3] / im['height']:.6f}"
                for a in d["annotations"]
                if a["image_id"] == im["id"] and not a["iscrowd"]
            ]
            (root / "labels" / split / f"{Path(im['file_name']).stem}.txt").write_text("\n".join(rows))
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n")
    return root / "data.yaml"


def test_yolo_txt_data_with_class_subset(tmp_path):
    """An Ultralytics YAML dataset: ground truth built from the labels (box areas), a class picked by name."""
    from sodet.api import val

    data = yolo_copy_of_mini(tmp_path / "yolo")
    out, m = val(model="yolox-nano", data=str(data), classes=["car"], out=str(tmp_path / "v"), device="cpu")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"]["classes"] == ["car"] and saved["dataset"]["num_images"] == 16
    preds = json.loads((out / "predictions.json").read_text())
    assert {p["category_id"] for p in preds} == {1}  # car is class 0 of this run: category id 1
    assert m["AP"] is not None and m["AP"] > 0.05  # the COCO car rows of the shipped head, taken by name
    assert list(m["per_class"]) == ["car"]
