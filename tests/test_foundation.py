"""Foundation: the YOLOX adapter against pixeltable-yolox (and ONNX), learning on the engine, round trips, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sodet  # noqa: F401  (offline switches first)
from sodet.assets import COCO_MINI, embedded_data, shipped_weights
from sodet.errors import SodetError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINI = embedded_data(COCO_MINI)


def sodet_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sodet.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_adapter_matches_pixeltable_yolox_and_onnx():
    """sodet's yolox-nano with the shipped weights gives yolox's own raw outputs on the same image."""
    from yolox.config import YoloxConfig

    from sodet.models.weights import load_weights
    from sodet.models.yolox import YoloxDetector

    ref = YoloxConfig.get_named_config("yolox_nano").get_model()
    ref.load_state_dict(torch.load(shipped_weights("yolox_nano_coco_fusedbn.pth"), map_location="cpu")["model"])
    ref.eval()
    ours = YoloxDetector("yolox-nano", 80)
    load_weights(ours, shipped_weights("yolox_nano_coco_fusedbn.pth"))
    ours.eval()

    import cv2

    img = cv2.imread(str(next((MINI / "images" / "val").glob("*.jpg"))))  # BGR
    r = 416 / max(img.shape[:2])
    img = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)))
    padded = np.full((416, 416, 3), 114, np.uint8)
    padded[: img.shape[0], : img.shape[1]] = img
    bgr255 = torch.from_numpy(padded).permute(2, 0, 1)[None].float()
    rgb01 = bgr255.flip(1) / 255.0  # what the engine feeds
    with torch.no_grad():
        expected = ref(bgr255)  # (1, N, 85): boxes, obj, 80 class probabilities
        got = ours(rgb01)  # (1, 84, N): boxes, obj * class
    torch.testing.assert_close(got[0, :4].T, expected[0, :, :4], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got[0, 4:].T, expected[0, :, 4:5] * expected[0, :, 5:], rtol=1e-4, atol=1e-5)

    onnx_file = SHARED / "weights" / "yolox_nano_coco.onnx"
    if not onnx_file.is_file():
        pytest.skip(f"{onnx_file} not present (../shared lies beside the clone in CI)")
    import onnxruntime as ort  # a test dependency: its absence is a failure, not a skip

    raw = ort.InferenceSession(str(onnx_file)).run(None, {"images": bgr255.numpy()})[0]  # undecoded boxes
    ours.head.decode_in_inference = False
    with torch.no_grad():
        undecoded = ours.head(ours.backbone(bgr255))
    np.testing.assert_allclose(undecoded.numpy(), raw, rtol=1e-3, atol=2e-3)


def test_class_subset_taken_by_name():
    """An 80-class checkpoint loaded for (car, person) takes COCO rows 2 and 0 of the class head."""
    from sodet.models.weights import load_weights
    from sodet.models.yolox import YoloxDetector

    state = torch.load(shipped_weights("yolox_nano_coco_fusedbn.pth"), map_location="cpu")["model"]
    m = YoloxDetector("yolox-nano", 2, {0: "car", 1: "person"})
    load_weights(m, shipped_weights("yolox_nano_coco_fusedbn.pth"))
    for k in range(3):
        w = m.state_dict()[f"head.cls_preds.{k}.weight"]
        assert torch.equal(w[0], state[f"head.cls_preds.{k}.weight"][2])
        assert torch.equal(w[1], state[f"head.cls_preds.{k}.weight"][0])


def test_yolox_targets_layout():
    from sodet.models.yolox import YoloxDetector

    batch = {
        "img": torch.zeros(2, 3, 64, 128),
        "batch_idx": torch.tensor([1.0, 0.0, 1.0]),
        "cls": torch.tensor([[1.0], [0.0], [0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.25, 0.5], [0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.1, 0.1]]),
    }
    t = YoloxDetector.yolox_targets(batch)
    assert t.shape == (2, 2, 5)
    assert t[0, 0].tolist() == [0.0, 32.0, 16.0, 64.0, 32.0] and t[0, 1].abs().sum() == 0
    assert t[1, 0].tolist() == [1.0, 64.0, 32.0, 32.0, 32.0]
    torch.testing.assert_close(t[1, 1], torch.tensor([0.0, 96.0, 48.0, 12.8, 6.4]))


def test_folded_batchnorm_unfolds_without_changing_outputs():
    from sodet.models.batchnorm import batchnorm_folded, unfold_batchnorm
    from sodet.models.weights import load_weights
    from sodet.models.yolox import YoloxDetector

    m = YoloxDetector("yolox-nano", 80)
    load_weights(m, shipped_weights("yolox_nano_coco_fusedbn.pth"))
    assert batchnorm_folded(m)
    x = torch.rand(2, 3, 160, 160)
    m.eval()
    with torch.no_grad():
        before = m(x)
    unfold_batchnorm(m, [x])
    assert not batchnorm_folded(m)
    with torch.no_grad():
        after = m(x)
    torch.testing.assert_close(after[:, 4:], before[:, 4:], rtol=0, atol=2e-3)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=1e-3, atol=0.1)


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory) -> Path:
    """8 training images of the embedded set (the first ones without objects under 32x32 px, which at 320 px
    input would be a few pixels wide), as their own COCO folder (train = val)."""
    root = tmp_path_factory.mktemp("overfit8")
    d = json.loads((MINI / "annotations" / "train.json").read_text())
    small = {a["image_id"] for a in d["annotations"] if a["area"] < 1024 and not a["iscrowd"]}
    keep = [i for i in sorted(d["images"], key=lambda i: i["id"]) if i["id"] not in small][:8]
    ids = {i["id"] for i in keep}
    sub = {**d, "images": keep, "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}
    for split in ("train", "val"):
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(sub))
        (root / "images" / split).mkdir(parents=True)
        for im in keep:
            shutil.copy(MINI / "images" / "train" / im["file_name"], root / "images" / split / im["file_name"])
    return root


# no augmentation and rect batches: the model sees each image placed exactly as the validator places it (an overfit
# model also memorises where things are); a decaying learning rate lets BatchNorm statistics catch up at the end
LEARN = dict(imgsz=320, batch=8, device="cpu", workers=0, mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0,
             translate=0.0, scale=0.0, close_mosaic=0, warmup_epochs=0, optimizer="AdamW", lr0=0.004, lrf=0.1,
             plots=False, val=False, nbs=8, seed=0, deterministic=False, rect=True)


def test_yolox_nano_learns_from_scratch(overfit_data, tmp_path):
    """From random init, 8 images, no augmentation: mAP50 >= 0.5 on those images (targets, loss, decoding, NMS agree)."""
    from sodet.api import train

    run = train(model="yolox-nano", data=str(overfit_data), weights="none", epochs=200, project=str(tmp_path), name="x", **LEARN)
    m = json.loads((run / "metrics.json").read_text())
    assert m["AP50"] >= 0.5, m["AP50"]


def test_ultralytics_yolo_learns_from_scratch(overfit_data, tmp_path):
    from sodet.api import train

    run = train(model="yolov8n", data=str(overfit_data), weights="none", epochs=200, project=str(tmp_path), name="y", **{**LEARN, "lr0": 0.01})
    m = json.loads((run / "metrics.json").read_text())
    assert m["AP50"] >= 0.5, m["AP50"]


def test_round_trip_and_resume(tmp_path):
    """best.pt reloads for val with the same numbers; an interrupted run resumes with --resume."""
    from sodet.api import train, val

    common = dict(data=str(MINI), imgsz=160, batch=8, device="cpu", workers=0, plots=False, project=str(tmp_path), seed=0)
    run = train(model="yolox-nano", epochs=2, name="rt", weighted_loss=0.95, **common)
    m_train = json.loads((run / "metrics.json").read_text())
    # the trainer validates with twice the training batch; same batches (rect shapes), same numbers
    out, m_val = val(model=str(run / "weights" / "best.pt"), out=str(tmp_path / "v"), device="cpu", batch=16)
    assert m_val["AP"] == pytest.approx(m_train["AP"], abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["options"]["sodet"]["weighted_loss"] == 0.95

    # an interrupted run: last.pt of epoch 1 of 3 (simulated by training 3 epochs and keeping epoch-1 state)
    run3 = train(model="yolox-nano", epochs=3, name="rs", save_period=1, **common)
    last = run3 / "weights" / "last.pt"
    ck = torch.load(run3 / "weights" / "epoch0.pt", weights_only=False)
    torch.save(ck, last)
    resumed = train(resume=str(last), device="cpu")
    assert resumed == run3
    rows = (run3 / "results.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]][-2:] == ["2", "3"]
    ck = torch.load(last, weights_only=False)
    assert (ck.get("ema") or ck["model"]).sodet.model == "yolox-nano"  # options survive resume


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "does/not/exist"], "data not found"),
        (["train", "--weights", "missing.pth", "--epochs", "1"], "weights file not found"),
        (["val", "--model", "missing.pt"], "weights file not found"),
        (["train", "--model", "yolox-huge"], "unknown model"),
        (["train", "--epochs", "0"], "--epochs must be a number above 0"),
        (["train", "--oversample", "-1"], "--oversample must be a number above 0"),
        (["train", "--paste-copies", "-1"], "--paste-copies must be 0 (oversampling without pasting) or more"),
        (["train", "--oversample-pool", "some"], "--oversample-pool must be one of"),
        (["train", "--imgsz", "-5"], "--imgsz must be at least 32 pixels"),
        (["val", "--imgsz", "0"], "--imgsz must be at least 32 pixels"),
        (["predict", "--source", ".", "--imgsz", "8"], "--imgsz must be at least 32 pixels"),
        (["export", "--imgsz", "-1"], "--imgsz must be at least 32 pixels"),
        (["train", "--small-area", "0"], "--small-area must be a number above 0"),
        (["train", "--batch", "0"], "--batch must be at least 1"),
        (["train", "--weight-form", "double"], "--weight-form must be one of"),
        (["train", "-o", "fraction="], "has no value"),
        (["train", "-o", "box=2"], "does not apply to YOLOX"),
        (["train", "-o", "classes=[0]"], "use --classes"),
        (["train", "-o", "no_such_option=1", "--epochs", "1"], "no_such_option"),
        (["train", "-o", "weights=x.pth"], "sodet's own option: use --weights"),
        (["val", "-o", "weights=x.pth"], "sodet's own option: use --weights"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    r = sodet_cli(*args, cwd=tmp_path)
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_broken_annotations_and_corrupt_image_are_skipped_with_warnings(tmp_path):
    """Unknown category, zero-area box and a corrupt image: warned by name and skipped; the rest loads."""
    from sodet.data.coco import load_split

    root = tmp_path / "broken"
    shutil.copytree(MINI, root, ignore=shutil.ignore_patterns(".sodet"))
    ann = root / "annotations" / "val.json"
    d = json.loads(ann.read_text())
    d["annotations"][0]["category_id"] = 999
    d["annotations"][1]["bbox"] = [10, 10, 0, 5]
    bad = root / "images" / "val" / d["images"][2]["file_name"]
    bad.write_bytes(b"not a jpeg at all")
    ann.write_text(json.dumps(d))
    split = load_split(root, "val")
    text = "\n".join(split.warnings)
    assert "unknown category_id 999" in text
    assert "zero-area box" in text
    assert f"corrupt image {bad}: not a decodable image" in text and "pi_heif" not in text
    assert len(split.images) == len(d["images"]) - 1
    gt = json.loads(Path(split.gt_json).read_text())
    assert d["images"][2]["id"] not in {i["id"] for i in gt["images"]}


def test_missing_split_and_unknown_class_errors(tmp_path):
    from sodet.data.spec import resolve_data

    with pytest.raises(SodetError, match="annotation file not found"):
        resolve_data(str(MINI), None, splits=("test",))
    with pytest.raises(SodetError, match=r"classes \['bicycle'\] not in"):
        resolve_data(str(MINI), ["bicycle"])


def test_engine_overrides_parse_like_the_engine_cli():
    from sodet.options import parse_overrides

    assert parse_overrides(["name=no", "lr0=0.001", "fliplr=0", "amp=False", "classes=None", "cache=ram"]) == {
        "name": "no", "lr0": 0.001, "fliplr": 0, "amp": False, "classes": None, "cache": "ram"}


def test_fraction_is_honoured(tmp_path):
    """-o fraction=F trains on the first F of the COCO split's images (the engine's meaning), never silently all."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.utils import check_det_dataset

    from sodet.data.spec import resolve_data
    from sodet.engine.build import build_dataset
    from sodet.options import RunOptions

    data = check_det_dataset(str(resolve_data(str(MINI), None)))
    full = build_dataset(get_cfg(overrides=dict(imgsz=160)), data["train"], 8, data, "train", 32, RunOptions())
    half = build_dataset(get_cfg(overrides=dict(imgsz=160, fraction=0.5)), data["train"], 8, data, "train", 32, RunOptions())
    assert len(full) == 32 and len(half) == 16
    assert [lb["im_file"] for lb in half.labels] == [lb["im_file"] for lb in full.labels][:16]


def _build_split_cache(root: str, start, counts, k: int) -> None:
    from sodet.data.coco import load_split

    start.wait()
    counts[k] = len(load_split(root, "val").images)


def test_label_cache_built_by_several_processes_at_once(tmp_path):
    """A study's cells side by side on a fresh data folder build the same label cache together: every one of
    them gets the labels (each writes its own temporary files; once the rename of a shared one raced)."""
    import multiprocessing as mp

    from sodet.data.coco import load_split

    ctx = mp.get_context("fork")
    for attempt in range(3):
        root = tmp_path / f"copy{attempt}"
        shutil.copytree(MINI, root, ignore=shutil.ignore_patterns(".sodet"))
        start, counts = ctx.Barrier(4), ctx.Array("i", [-1] * 4)
        procs = [ctx.Process(target=_build_split_cache, args=(str(root), start, counts, k)) for k in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        n = len(load_split(root, "val").images)
        assert list(counts) == [n] * 4 and n > 0
        assert not [p.name for p in (root / ".sodet").iterdir() if p.name.endswith(".tmp")]
