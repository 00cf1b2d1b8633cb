"""`sodet val` end to end: fidelity with YOLOX's own pipeline, metrics.json contents, class mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sodet  # noqa: F401
from sodet.assets import default_data_dir
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

    run = train(model="yolox-nano", classes=["car"], epochs=1, imgsz=128, batch=16, device="cpu", workers=0,
                plots=False, val=False, project=str(tmp_path), name="car")
    bad = tmp_path / "persons"
    (bad / "annotations").mkdir(parents=True)
    d = json.loads((default_data_dir() / "annotations" / "val.json").read_text())
    d["categories"] = [c for c in d["categories"] if c["name"] == "person"]
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] == 1]
    (bad / "annotations" / "val.json").write_text(json.dumps(d))
    (bad / "images").mkdir()
    (bad / "images" / "val").symlink_to(default_data_dir() / "images" / "val", target_is_directory=True)
    with pytest.raises(SodetError, match=r"classes \['car'\] not in"):
        val(model=str(run / "weights" / "best.pt"), data=str(bad), out=str(tmp_path / "v"), device="cpu")
