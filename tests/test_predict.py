"""`sodet predict`: the same detections as `sodet val`, outputs of a run, sources, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import sodet  # noqa: F401  (offline switches first)
from sodet.assets import COCO_MINI, embedded_data
from sodet.errors import SodetError

REPO = Path(__file__).resolve().parents[1]
MINI = embedded_data(COCO_MINI)
VAL_IMAGES = MINI / "images" / "val"


def sodet_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sodet.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def fake_checkpoint(path: Path, arch: str, letterbox: str, imgsz: int) -> Path:
    """A sodet checkpoint as training writes it (model object carrying its RunOptions), without training: yolox-nano
    from the shipped COCO weights, or an Ultralytics model with seeded random weights."""
    from sodet.engine.build import build_model
    from sodet.options import RunOptions

    weights = str(sodet.assets.shipped_weights("yolox_nano_coco_fusedbn.pth")) if arch.startswith("yolox") else None
    opts = RunOptions(model=arch, weights=weights, classes=["person", "car"], data=str(MINI), letterbox=letterbox)
    torch.manual_seed(0)
    net = build_model(opts, 2, {0: "person", 1: "car"}).eval()
    torch.save({"model": net, "train_args": {"imgsz": imgsz}}, path)
    return path


def by_file(dets: list[dict], names: dict) -> dict:
    """{file: sorted [(class name, bbox, score)]}."""
    out: dict = {}
    for d in dets:
        out.setdefault(names[d["image_id"]], []).append((d["cat"], tuple(d["bbox"]), d["score"]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize(
    "model,letterbox",
    [("yolox-nano", "top-left"), ("yolox-nano.pt", "center"), ("yolo11n.pt", "center")],
    ids=["registry-yolox-topleft", "ckpt-yolox-center", "ckpt-yolo11n-center"],
)
def test_predict_detections_equal_val(tmp_path, model, letterbox):
    """Same model, image, imgsz, conf, iou and max_det: `predict` writes exactly the detections `val` scores."""
    from sodet.api import predict, val

    if model.endswith(".pt"):
        model = str(fake_checkpoint(tmp_path / model, model[:-3], letterbox, 256))
    common = dict(imgsz=256, device="cpu", max_det=100)
    out, _ = val(model=model, data=str(MINI), split="val", batch=1, out=str(tmp_path / "val"), **common)
    gt = json.loads((MINI / "annotations" / "val.json").read_text())
    files = {im["id"]: im["file_name"].split("/")[-1] for im in gt["images"]}
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    val_dets = [{**d, "cat": cats[d["category_id"]]} for d in json.loads((out / "predictions.json").read_text())]

    pdir, results = predict(model=model, source=str(VAL_IMAGES), conf=0.001, classes=["person", "car"], save=False,
                            project=str(tmp_path), name="p", progress=False, **common)
    pred = json.loads((pdir / "predictions.json").read_text())
    pfiles = {d["image_id"]: d["file_name"] for d in pred}
    pred_dets = [{**d, "cat": d["category_name"]} for d in pred]
    got, want = by_file(pred_dets, pfiles), by_file(val_dets, files)
    assert len(want) >= 10 and sum(map(len, want.values())) > 100
    assert got == want
    # the Results objects hold the same boxes (xyxy pixels) as the json
    r = next(r for r in results if len(r.boxes))
    assert r.boxes.xyxy.shape[1] == 4 and r.names[0] == "person"


def test_predict_outputs_txt_classes_and_bad_images(tmp_path, caplog):
    """Annotated images, YOLO txt labels, --classes filter; an unreadable image is skipped with a warning naming it."""
    from ultralytics.utils import LOGGER

    from sodet.api import predict

    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(VAL_IMAGES.iterdir())[:3]:
        (src / f.name).symlink_to(f)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    LOGGER.addHandler(caplog.handler)  # the engine's logger does not propagate to the root logger caplog watches
    try:
        out, results = predict(model="yolox-nano", source=str(src), imgsz=256, device="cpu", save_txt=True,
                               classes=["person"], conf=0.1, project=str(tmp_path), name="run", progress=False)
    finally:
        LOGGER.removeHandler(caplog.handler)
    assert out == tmp_path / "run" and len(results) == 3
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(f.name for f in src.iterdir() if f.name != "broken.jpg")
    labels = list((out / "labels").glob("*.txt"))
    rows = [ln.split() for f in labels for ln in f.read_text().splitlines()]
    assert rows and all(r[0] == "0" for r in rows)  # COCO class 0 = person (the 80-class model)
    assert all(r.names[int(c)] == "person" for r in results for c in r.boxes.cls)
    dets = json.loads((out / "predictions.json").read_text())
    assert len(dets) == len(rows) == sum(len(r.boxes) for r in results) and {d["category_name"] for d in dets} == {"person"}
    assert "broken.jpg" in caplog.text


def test_predict_video_and_unreadable_video(tmp_path):
    """A video (frames annotated into a video file), and a corrupt one beside it skipped with a warning."""
    from sodet.api import predict

    src = tmp_path / "clips"
    src.mkdir()
    im = cv2.imread(str(sorted(VAL_IMAGES.iterdir())[0]))
    writer = cv2.VideoWriter(str(src / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (im.shape[1], im.shape[0]))
    for _ in range(3):
        writer.write(im)
    writer.release()
    (src / "bad.mp4").write_bytes(b"\x00" * 100)
    out, results = predict(model="yolox-nano", source=str(src), imgsz=160, device="cpu", conf=0.3,
                           project=str(tmp_path), name="v", progress=False)
    assert len(results) == 3 and (out / "clip.avi").is_file()
    dets = json.loads((out / "predictions.json").read_text())
    assert {d["frame"] for d in dets} <= {1, 2, 3} and {d["file_name"] for d in dets} <= {"clip.avi"}


def test_bad_input_one_line(tmp_path):
    from sodet.api import predict

    (tmp_path / "empty").mkdir()
    with pytest.raises(SodetError, match="No images or videos found"):
        predict(model="yolox-nano", source=str(tmp_path / "empty"), device="cpu", progress=False, project=str(tmp_path))
    with pytest.raises(SodetError, match="source not found"):
        predict(model="yolox-nano", source=str(tmp_path / "nope.jpg"), device="cpu", progress=False, project=str(tmp_path))
    with pytest.raises(SodetError, match="weights file not found"):
        predict(model=str(tmp_path / "missing.pt"), source=str(VAL_IMAGES), device="cpu", project=str(tmp_path))
    with pytest.raises(SodetError, match="model file not found"):
        predict(model=str(tmp_path / "missing.onnx"), source=str(VAL_IMAGES), device="cpu", project=str(tmp_path))
    with pytest.raises(SodetError, match="unknown model"):
        predict(model="yolox-huge", source=str(VAL_IMAGES), device="cpu", project=str(tmp_path))
    with pytest.raises(SodetError, match="not one of the model's classes"):
        predict(model="yolox-nano", source=str(VAL_IMAGES), classes=["zebra-crossing"], device="cpu", project=str(tmp_path))


def test_cli_predict_one_line_errors_and_run(tmp_path):
    """The CLI: a run into runs/predict/exp, and bad values end in one line."""
    img = sorted(VAL_IMAGES.iterdir())[0]
    r = sodet_cli("predict", "--model", "yolox-nano", "--source", str(img), "--imgsz", "160", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "predict" / "exp" / img.name).is_file()
    assert (tmp_path / "runs" / "predict" / "exp" / "predictions.json").is_file()
    for args, msg in [
        (["--slice", "16"], "--slice must be at least 32"),
        (["--slice", "320", "--slice-overlap", "0.95"], "--slice-overlap must be in [0, 0.9]"),
        (["--model", str(tmp_path / "none.pt")], "weights file not found"),
    ]:
        r = sodet_cli("predict", "--source", str(img), "--device", "cpu", *args, cwd=tmp_path)
        assert r.returncode == 1 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_detector_class_mirrors_the_cli(tmp_path):
    """`Detector(...).predict` returns per image xyxy boxes, scores, class ids and names equal to `predict`'s
    Results (sliced too); `.val` gives `sodet val`'s metrics; nothing is written unless asked."""
    from sodet import Detector
    from sodet.api import predict, val

    img = str(sorted(VAL_IMAGES.iterdir())[0])
    det = Detector("yolox-nano", device="cpu")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = det.predict(img, imgsz=256, conf=0.2)
        sliced = det(img, imgsz=256, conf=0.2, slice=160, slice_overlap=0.25)
        assert not (tmp_path / "runs").exists()
    finally:
        os.chdir(cwd)
    _, ref = predict(model="yolox-nano", source=img, imgsz=256, conf=0.2, device="cpu", save=False,
                     project=str(tmp_path), name="ref", progress=False)
    d = out[0]
    assert len(out) == 1 and len(d) == len(ref[0].boxes) > 0
    np.testing.assert_array_equal(d.boxes, ref[0].boxes.xyxy.numpy())
    np.testing.assert_array_equal(d.scores, ref[0].boxes.conf.numpy())
    assert d.class_ids.tolist() == ref[0].boxes.cls.int().tolist() and d.names == [ref[0].names[i] for i in d.class_ids]
    assert len(sliced) == 1 and sliced[0].boxes.shape[1] == 4
    m = Detector("yolox-nano", device="cpu").val(data=str(MINI), imgsz=160, out=str(tmp_path / "dv"))
    _, m_ref = val(model="yolox-nano", data=str(MINI), imgsz=160, out=str(tmp_path / "v"), device="cpu")
    assert m["AP"] == m_ref["AP"] and m["APs"] == m_ref["APs"]


def test_import_is_light_and_version():
    """`import sodet` loads neither torch nor the engine; `sodet --version` prints the version."""
    code = "import sys, sodet; print(sodet.__version__, 'torch' in sys.modules, 'ultralytics' in sys.modules, 'sahi' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.stdout.split() == [sodet.__version__, "False", "False", "False"]
    r = sodet_cli("--version", cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == f"sodet {sodet.__version__}"
