"""Sliced inference (SAHI): tile coordinates map back exactly, merging removes border duplicates, off = plain."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import sodet  # noqa: F401  (offline switches first)
from sodet.assets import embedded_data
from sodet.engine.slicing import Slicer, parse_slice
from sodet.errors import SodetError

HIT = embedded_data("hit-uav-mini")
FRAME = sorted((HIT / "images" / "val").iterdir())[0]  # 640 x 512 thermal frame


def test_tiles_are_sahis_grid():
    """The grid is sahi's own (get_slice_bboxes), last row/column ending at the border."""
    from sahi.slicing import slice_image

    s = Slicer(320, 320, overlap=0.2)
    boxes = s.tiles(512, 640)
    ref = slice_image(np.zeros((512, 640, 3), np.uint8), slice_height=320, slice_width=320,
                      overlap_height_ratio=0.2, overlap_width_ratio=0.2, verbose=False)
    assert boxes == [[x, y, x + 320, y + 320] for x, y in ref.starting_pixels]
    assert boxes[0] == [0, 0, 320, 320] and boxes[-1] == [320, 192, 640, 512] and len(boxes) == 6


def test_tile_detections_map_back_to_the_full_image(tmp_path):
    """A detection on a tile (tiles batched through the model) equals the full-image detection of the same crop
    run alone through `predict`, shifted by the tile's origin (and equals sahi's own shift)."""
    from sahi.prediction import ObjectPrediction

    from sodet.api import predict

    image = cv2.imread(str(FRAME))
    slicer = Slicer(256, 256, overlap=0.25, batch=8)

    def run(source, name):
        _, res = predict(model="yolox-nano", source=source, imgsz=256, conf=0.01, device="cpu", save=False,
                         project=str(tmp_path), name=name, progress=False)
        return res

    expected = []
    for k, (x0, y0, x1, y1) in enumerate(slicer.tiles(*image.shape[:2])):
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        r = run(crop, f"crop{k}")[0]
        d = torch.cat([r.boxes.xyxy, r.boxes.conf[:, None], r.boxes.cls[:, None]], 1)
        for row in d.tolist():  # sahi's own shift of a tile prediction to the full image
            p = ObjectPrediction(bbox=row[:4], category_id=int(row[5]), score=row[4], shift_amount=[x0, y0])
            assert p.get_shifted_object_prediction().bbox.to_xyxy() == pytest.approx([row[0] + x0, row[1] + y0, row[2] + x0, row[3] + y0], abs=1e-9)
        d[:, [0, 2]] += x0
        d[:, [1, 3]] += y0
        expected.append(d)
    expected = torch.cat(expected)

    from sodet.api import inference_model
    from sodet.engine.predictor import SodetPredictor

    net, _ = inference_model("yolox-nano")
    p = SodetPredictor(overrides={"imgsz": 256, "conf": 0.01, "iou": 0.65, "device": "cpu", "save": False, "mode": "predict"},
                       save_json=False)
    p.setup_model(net, verbose=False)
    p.imgsz = [256, 256]
    got = slicer.tile_detections(p.detect_crops, image)
    assert len(expected) > 5 and got.shape == expected.shape
    order_g, order_e = got[:, 4].argsort(stable=True), expected[:, 4].argsort(stable=True)
    torch.testing.assert_close(got[order_g], expected[order_e], atol=1e-3, rtol=1e-5)


def test_merge_removes_border_duplicates():
    """An object in the overlap of two tiles (cut by the border of one, whole on the other) and found again on
    the full image is one detection after SAHI's greedy merging (the union box); NMS keeps the best one; other
    objects and other classes stay."""
    s = Slicer(320, 320, merge_mode="greedynmm", match_metric="IOS", match_threshold=0.5)
    full = torch.tensor([[300.0, 100.0, 340.0, 130.0, 0.6, 0.0], [500.0, 400.0, 520.0, 420.0, 0.7, 1.0]])
    tiles = torch.tensor([
        [300.5, 100.0, 320.0, 130.0, 0.5, 0.0],  # tile [0, 320): cut at its right border
        [299.0, 99.0, 341.0, 131.0, 0.8, 0.0],  # tile [256, 576): whole
        [301.0, 100.0, 320.0, 130.0, 0.4, 1.0],  # same place, another class: kept
        [10.0, 10.0, 30.0, 30.0, 0.9, 0.0],  # elsewhere
    ])
    merged = s.merge(full, tiles)
    assert merged[:, 4].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4])  # one per object, highest score first
    assert merged[1].tolist() == pytest.approx([299.0, 99.0, 341.0, 131.0, 0.8, 0.0])  # union of the three
    nms = Slicer(320, 320, merge_mode="nms", match_metric="IOS", match_threshold=0.5).merge(full, tiles)
    assert nms.shape == (4, 6) and nms[1].tolist() == pytest.approx([299.0, 99.0, 341.0, 131.0, 0.8, 0.0])
    iou = Slicer(320, 320, match_metric="IOU", match_threshold=0.5).merge(full, tiles)
    assert len(iou) == 5  # by IoU the cut half (0.43 of the whole) is not a duplicate
    assert len(s.merge(torch.zeros((0, 6)), torch.zeros((0, 6)))) == 0


def test_slice_option_checks():
    assert parse_slice("320") == (320, 320) and parse_slice("256,320") == (256, 320) and parse_slice(None) is None
    for bad, msg in [("16", "at least 32"), ("a", "N or H,W"), ("1,2,3", "N or H,W")]:
        with pytest.raises(SodetError, match=msg):
            parse_slice(bad)
    for kw, msg in [({"overlap": 0.95}, r"\[0, 0.9\]"), ({"overlap": -0.1}, r"\[0, 0.9\]"), ({"merge": "wbf"}, "greedynmm"),
                    ({"match": "GIOU"}, "IOS"), ({"threshold": 0}, r"\(0, 1\]")]:
        with pytest.raises(SodetError, match=msg):
            Slicer.from_options(320, **kw)


def test_val_slice_off_is_plain_and_on_writes_the_same_files(tmp_path):
    """`val --slice` off: bit-identical predictions and metrics to plain val; on: the same metrics.json /
    predictions.json layout (with the slicing recorded), so `sodet compare` reads both."""
    from sodet.api import val
    from sodet.eval.cocoeval import METRIC_KEYS

    common = dict(model="yolox-nano", data=str(HIT), classes=["person", "car", "bicycle"], imgsz=256, device="cpu", fraction=[1.0, 6], batch=2, plots=False)
    plain, m0 = val(out=str(tmp_path / "plain"), **common)
    off, m1 = val(out=str(tmp_path / "off"), slice=None, **common)
    assert (plain / "predictions.json").read_bytes() == (off / "predictions.json").read_bytes() and m0 == m1
    on, m2 = val(out=str(tmp_path / "on"), slice=192, slice_overlap=0.2, **common)
    saved = json.loads((on / "metrics.json").read_text())
    assert all(k in saved for k in METRIC_KEYS) and saved["options"]["slice"]["height"] == 192
    preds = json.loads((on / "predictions.json").read_text())
    assert preds and len(preds) != len(json.loads((plain / "predictions.json").read_text()))
    from sodet.eval.compare import compare

    assert compare([plain, on], out=tmp_path / "cmp") is not None  # sliced beside full-image
