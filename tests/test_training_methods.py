"""sodet's methods combined in one training run, and what the run records of them."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml

import sodet  # noqa: F401
from sodet.assets import COCO_MINI, embedded_data


def test_copy_paste_with_weighted_loss_records_counts(tmp_path):
    """--copy-paste and --weighted-loss in one run: the epoch has N + K samples, the run records the
    oversampled images and the pastes, and the checkpoint keeps both options."""
    from sodet.api import train

    run = train(model="yolox-nano", data=str(embedded_data(COCO_MINI)), copy_paste=True, weighted_loss=0.95, epochs=1, imgsz=128, batch=16,
                device="cpu", workers=0, plots=False, val=False, project=str(tmp_path), name="cpwl")
    d = json.loads((embedded_data(COCO_MINI) / "annotations" / "train.json").read_text())
    small = {a["image_id"] for a in d["annotations"] if a["area"] < 1024 and not a["iscrowd"]}
    record = yaml.safe_load((run / "copy_paste.yaml").read_text())
    assert record["oversampled_images"] == record["extra_samples"] == len(small)
    assert record["pasted"] > 0 and record["pasted"] + record["skipped"] >= len(small)
    ckpt = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    opts = (ckpt.get("ema") or ckpt["model"]).sodet
    assert opts.copy_paste and opts.weighted_loss == 0.95
    assert np.isfinite([float(x) for x in (run / "results.csv").read_text().splitlines()[1].split(",")[2:6]]).all()
