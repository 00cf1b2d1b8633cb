"""`sodet export`: ONNX (and TorchScript) of every family equal to PyTorch, run by predict and val; one line for a
format that cannot work."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch

import sodet  # noqa: F401  (offline switches first)
from sodet.assets import COCO_MINI, embedded_data
from sodet.errors import SodetError

from test_predict import fake_checkpoint

MINI = embedded_data(COCO_MINI)
VAL_IMAGES = MINI / "images" / "val"
ort = pytest.importorskip("onnxruntime")


def real_inputs() -> list[torch.Tensor]:
    """A COCO image letterboxed square (160) and a batch of two at a rect size (160 x 224): dynamic axes."""
    from sodet.engine.inference import eval_letterbox

    ims = [cv2.imread(str(p)) for p in sorted(VAL_IMAGES.iterdir())[:2]]
    sq, _ = eval_letterbox(ims[:1], 160, 32, center=False)
    rect = [cv2.resize(im, (224, 160)) for im in ims]
    to_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).flip(1).float() / 255  # noqa: E731
    return [to_t(sq), to_t(rect)]


@pytest.mark.parametrize("arch", ["yolox-nano", "yolo11n"])
def test_onnx_equals_pytorch_and_runs_in_predict_and_val(tmp_path, arch):
    """Raw outputs of onnxruntime equal PyTorch's (scores within 1e-4, boxes within 1e-4 relative), for each
    family; class names and the letterbox travel in the metadata; predict and val run the file and give the
    checkpoint's detections and metrics."""
    from sodet.api import export, predict, val
    from sodet.models.resolve import exported_metadata

    ckpt = fake_checkpoint(tmp_path / f"{arch}.pt", arch, "center", 160)
    onnx_file = export(model=str(ckpt), format="onnx", imgsz=160, device="cpu")
    assert onnx_file == tmp_path / f"{arch}.onnx"
    meta = exported_metadata(onnx_file)
    assert meta["names"] == {0: "person", 1: "car"} and meta["sodet"]["letterbox"] == "center" and meta["family"] == arch.split("-")[0].replace("yolo11n", "yolo")

    net = torch.load(ckpt, weights_only=False)["model"].float().eval()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for x in real_inputs():
        with torch.no_grad():
            ref = net(x)
            ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out[:, 4:], ref[:, 4:], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out[:, :4], ref[:, :4], rtol=1e-4, atol=1e-4)

    common = dict(imgsz=160, device="cpu", max_det=100)
    _, r_pt = predict(model=str(ckpt), source=str(VAL_IMAGES), conf=0.05, save=False, project=str(tmp_path), name="pt", progress=False, **common)
    _, r_onnx = predict(model=str(onnx_file), source=str(VAL_IMAGES), conf=0.05, save=False, project=str(tmp_path), name="ox", progress=False, **common)
    assert [len(r.boxes) > 0 for r in r_pt] == [len(r.boxes) > 0 for r in r_onnx]
    matched = total = 0
    for a, b in zip(r_pt, r_onnx):  # the same detections; NMS may keep the other of two boxes whose scores tie to 1e-5
        total += max(len(a.boxes), len(b.boxes))
        for det in b.boxes.data:
            close = (a.boxes.data[:, 5] == det[5]) & ((a.boxes.data[:, :4] - det[:4]).abs().max(1).values < 2e-2)
            matched += bool((close & ((a.boxes.data[:, 4] - det[4]).abs() < 1e-3)).any())
    assert matched >= 0.95 * total, (matched, total)
    _, m_pt = val(model=str(ckpt), data=str(MINI), out=str(tmp_path / "vpt"), batch=4, **common)
    _, m_onnx = val(model=str(onnx_file), data=str(MINI), out=str(tmp_path / "vox"), batch=4, **common)
    assert m_onnx["AP"] == pytest.approx(m_pt["AP"], abs=1e-3) and m_onnx["APs"] == pytest.approx(m_pt["APs"], abs=1e-3)


def test_torchscript_export_and_unavailable_formats(tmp_path):
    """TorchScript works (fixed size: predict runs it square at its size); a format whose package is missing,
    or that needs a GPU, says so in one line."""
    from sodet.api import export, predict

    ts = export(model="yolox-nano", format="torchscript", imgsz=160, device="cpu", out=str(tmp_path / "nano.pt"))
    assert ts == tmp_path / "nano.torchscript"
    net = torch.jit.load(str(ts))
    from sodet.api import inference_model

    ref_net = copy.deepcopy(inference_model("yolox-nano")[0])
    x = real_inputs()[0]
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), ref_net(x).numpy(), rtol=1e-4, atol=1e-4)
    _, res = predict(model=str(ts), source=str(sorted(VAL_IMAGES.iterdir())[0]), conf=0.3, save=False,
                     project=str(tmp_path), name="ts", progress=False, device="cpu")
    assert len(res) == 1 and len(res[0].boxes) > 0
    with pytest.raises(SodetError, match="must be one of"):
        export(model="yolox-nano", format="tflite-nope", device="cpu")
    try:
        import openvino  # noqa: F401
    except ImportError:
        with pytest.raises(SodetError, match="not installed"):
            export(model="yolox-nano", format="openvino", imgsz=160, device="cpu", out=str(tmp_path / "ov.pt"))
    if not torch.cuda.is_available():
        with pytest.raises(SodetError, match="does not work for YOLOX models"):
            export(model="yolox-nano", format="engine", imgsz=160, device="cpu", out=str(tmp_path / "trt.pt"))
    with pytest.raises(SodetError, match="already an exported model"):
        export(model=str(ts), format="onnx")


def test_cli_export_then_val_the_onnx(tmp_path):
    """`sodet export --format onnx` then `sodet val --model X.onnx --slice 256`: the exported file, sliced."""
    from test_predict import sodet_cli

    ckpt = fake_checkpoint(tmp_path / "nano.pt", "yolox-nano", "top-left", 128)
    r = sodet_cli("export", "--model", str(ckpt), "--format", "onnx", "--imgsz", "128", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "nano.onnx").is_file(), r.stderr
    r = sodet_cli("val", "--model", str(tmp_path / "nano.onnx"), "--data", str(MINI), "--imgsz", "128", "--device", "cpu",
                  "--slice", "256", "-o", "max_det=20", "-o", "fraction=[1.0,4]", "--out", str(tmp_path / "v"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert saved["options"]["slice"]["height"] == 256 and saved["options"]["sodet"]["letterbox"] == "top-left"
