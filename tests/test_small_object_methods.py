"""The field's small-object techniques beside the study's: NWD (hand values, the engine's and YOLOX's losses
unchanged at r = 1, the assigners), sliced training (crop geometry: boxes and masks clipped exactly, objects
dropped, areas scaled; the dataset's cropped samples), P2 models (build, transfer of the base weights), and short
runs of every family with each option."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from conftest import HIT_MINI, MINI

from sodet.errors import SodetError
from sodet.losses import BoxRule, RuleBboxLoss, RuleIouLoss
from sodet.losses.nwd import nwd, nwd_loss


# NWD ---------------------------------------------------------------------------------------------------------
def test_nwd_hand_values_identical_boxes_and_degenerate_gradients():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[2.0, 0.0, 12.0, 10.0]])  # centres 2 px apart, same size: W2 = 2
    assert nwd(a, b, 12.8).item() == pytest.approx(math.exp(-2 / 12.8), abs=1e-6)
    c = torch.tensor([[0.0, 0.0, 6.0, 14.0]])  # same centre (3, 7) vs (5, 5): |dc|^2 = 8; dw 4, dh 4: 32/4 = 8
    assert nwd(a, c, 2.0).item() == pytest.approx(math.exp(-math.sqrt(8 + 8) / 2.0), abs=1e-6)
    p = a.clone().requires_grad_()
    loss = nwd_loss(p, a, 12.8)
    assert loss.item() == 0.0  # identical boxes: exactly 0
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()
    thin = torch.tensor([[5.0, 0.0, 5.0, 10.0]], requires_grad=True)  # zero width
    nwd_loss(thin, a, 12.8).sum().backward()
    assert torch.isfinite(thin.grad).all() and thin.grad.abs().sum() > 0
    matrix = nwd(a[:, None, :], torch.cat([a, b])[None], 12.8)  # broadcasting gives the assignment matrix
    assert matrix.shape == (1, 2) and matrix[0, 0] == 1.0


def cxcywh_pairs(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.cat([torch.rand(n, 2, generator=g) * 300 + 50, torch.rand(n, 2, generator=g) * 60 + 4], 1)
    pred = target + torch.randn(n, 4, generator=g) * torch.cat([target[:, 2:], target[:, 2:]], 1) * 0.15
    pred[:, 2:] = pred[:, 2:].abs() + 1
    return pred, target


def test_the_blend_at_r_1_is_the_stock_loss_bit_for_bit_and_composes_with_the_weighting():
    from yolox.models.losses import IouLoss

    pred, target = cxcywh_pairs()
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    stock = IouLoss(reduction="none")(p1, target)
    ours = RuleIouLoss(BoxRule(ratio=1.0, nwd_c=10.0))(p2, target)
    assert torch.equal(stock, ours)
    stock.sum().backward(), ours.sum().backward()
    assert torch.equal(p1.grad, p2.grad)
    from sodet.losses.box_rule import cxcywh_to_xyxy

    px, tx = cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target)
    blend = RuleIouLoss(BoxRule(ratio=0.25, nwd_c=10.0))(pred, target)
    torch.testing.assert_close(blend, 0.25 * stock.detach() + 0.75 * nwd_loss(px, tx, 10.0), rtol=0, atol=1e-6)
    weighted = RuleIouLoss(BoxRule(weight=2.0, form="scale", ratio=0.25, nwd_c=10.0))(pred, target)
    small = target[:, 2] * target[:, 3] < 1024
    torch.testing.assert_close(weighted, torch.where(small, 2 * blend, blend))  # the weighting on the blended loss


def test_ultralytics_box_loss_at_r_1_is_the_engines():
    from ultralytics.utils.loss import BboxLoss

    g = torch.Generator().manual_seed(0)
    a = 48
    stride = torch.full((a, 1), 8.0)
    anchors = torch.rand(a, 2, generator=g) * 8 + 2
    wh = torch.rand(2, a, 2, generator=g) * 5 + 0.5
    target = torch.cat([anchors - wh / 2, anchors + wh / 2], -1)
    pred = (target + torch.randn(2, a, 4, generator=g) * 0.3).requires_grad_()
    scores = torch.rand(2, a, 3, generator=g)
    fg = torch.rand(2, a, generator=g) > 0.3
    args = (torch.randn(2, a, 64, generator=g), pred, anchors, target, scores, scores.sum(), fg, torch.tensor([96.0, 96.0]), stride)
    stock = BboxLoss(16)(*args)
    ours = RuleBboxLoss(16, BoxRule(ratio=1.0, nwd_c=10.0))(*args)
    assert all(torch.equal(x, y) for x, y in zip(stock, ours))
    nwd_only = RuleBboxLoss(16, BoxRule(ratio=0.0, nwd_c=10.0))(*args)[0]
    f = fg.nonzero(as_tuple=True)
    w = scores[f].sum(-1, keepdim=True)
    expected = (nwd_loss(pred[f] * 8, target[f] * 8, 10.0).view(-1, 1) * w).sum() / scores.sum()
    torch.testing.assert_close(nwd_only, expected)


def test_nwd_assignment_where_the_family_allows_it():
    from sodet.losses.atss import atss_assign, level_anchors
    from sodet.losses.ultralytics_bbox import NwdTaskAlignedAssigner

    gt = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float32)
    pd = torch.tensor([[1.0, 1.0, 3.0, 3.0], [20.0, 20.0, 30.0, 30.0]])
    assigner = NwdTaskAlignedAssigner(5.0, topk=10, num_classes=2)
    assert torch.equal(assigner.iou_calculation(gt.expand(2, 4), pd), nwd(pd, gt.expand(2, 4), 5.0))
    anchors = level_anchors([(8, 8), (4, 4)], (8, 16))
    tiny = torch.tensor([[13.0, 13.0, 17.0, 17.0]])  # a 4x4 px object against 64 px anchors
    by_iou = atss_assign(torch.cat(anchors), [64, 16], tiny, torch.tensor([0]))
    by_nwd = atss_assign(torch.cat(anchors), [64, 16], tiny, torch.tensor([0]), nwd_c=8.0)
    # the NWD paper's point: IoU-ranked ATSS gives such an object no positive at all, NWD-ranked ATSS gives it one
    assert int((by_iou.gt_inds > 0).sum()) == 0 and int((by_nwd.gt_inds > 0).sum()) == 1


# sliced training ---------------------------------------------------------------------------------------------
def polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_crop_geometry_boxes_masks_drops_and_areas():
    from sodet.data.crop import clip_polygon, clip_polygons, crop_boxes, crop_window

    window = (10, 20, 50, 60)  # x0, y0, x1, y1
    boxes = np.array([[0, 0, 20, 40], [15, 25, 25, 35], [45, 55, 100, 100], [60, 0, 80, 10]], np.float64)
    kept, keep, visible = crop_boxes(boxes, window, min_visible=0.1)
    assert keep.tolist() == [True, True, False, False]  # the third keeps 25 of 2475 px², the fourth nothing
    assert visible[:2].tolist() == pytest.approx([200 / 800, 1.0])
    assert kept.tolist() == [[0, 0, 10, 20], [5, 5, 15, 15]]  # clipped and in crop pixels
    square = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], np.float64)  # 40x40 at the origin
    clipped = clip_polygon(square, window)
    assert polygon_area(clipped) == pytest.approx(30 * 20)  # exactly the part inside [10, 50] x [20, 60]
    assert clipped.min(0).tolist() == [0, 0] and clipped.max(0).tolist() == [30, 20]
    triangle = np.array([[10, 20], [50, 20], [10, 60]], np.float64)  # inside, touching the crop's sides
    assert polygon_area(clip_polygon(triangle, window)) == pytest.approx(800)
    assert clip_polygons([np.array([[100, 100], [110, 100], [110, 110]])], window) is None  # nothing inside
    rng = random.Random(0)
    for _ in range(50):
        x0, y0, x1, y1 = crop_window(512, 640, [256, 512], rng)
        assert 256 <= x1 - x0 <= 512 and 256 <= y1 - y0 <= 512 and x1 <= 640 and y1 <= 512
        x0, y0, x1, y1 = crop_window(512, 640, [0.5, 0.5], rng)
        assert (x1 - x0, y1 - y0) == (320, 256)


def crop_dataset(seed: int = 0, mosaic: float = 0.0, imgsz: int = 320, **options):
    from ultralytics.cfg import get_cfg

    from sodet.data.spec import resolve_data
    from sodet.engine.build import build_dataset
    from sodet.options import RunOptions
    from ultralytics.utils import YAML

    data = YAML.load(resolve_data(str(HIT_MINI)))
    cfg = get_cfg(overrides={"imgsz": imgsz, "mosaic": mosaic, "fliplr": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "translate": 0,
                             "scale": 0, "seed": seed})
    opts = RunOptions(crop_train=[192.0, 320.0], crop_p=1.0, **options)
    return build_dataset(cfg, str(HIT_MINI / "images" / "train"), 8, {**data, "nc": len(data["names"])}, "train", 32, opts)


def test_cropped_samples_hold_the_crops_objects_and_are_deterministic_per_seed():
    ds = crop_dataset()
    random.seed(1)
    a = [ds[i] for i in range(6)]
    random.seed(1)
    b = [ds[i] for i in range(6)]
    for x, y in zip(a, b):
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["bboxes"], y["bboxes"])
    for sample in a:
        assert max(sample["img"].shape[1:]) == 320  # the crop resized to the network input
        boxes = sample["bboxes"]
        assert bool(((boxes[:, :2] - boxes[:, 2:] / 2) >= -1e-6).all()) and bool(((boxes[:, :2] + boxes[:, 2:] / 2) <= 1 + 1e-6).all())
    assert any(len(s["bboxes"]) for s in a)


def test_crops_under_mosaic_feed_the_engines_buffer():
    """Mosaic draws its other three images from the engine's buffer of recent loads; crops enter it too (a first
    cropped sample used to meet an empty buffer: IndexError), and the decoded frames kept for cropping are bounded."""
    from sodet.data import dataset as dataset_module

    ds = crop_dataset(mosaic=1.0)
    random.seed(3)
    first = ds[0]
    assert first["img"].shape[1:] == (320, 320)  # a mosaic of four crops, brought back to the input size
    for i in range(40):
        ds[i % len(ds.labels)]
    assert len(set(ds.buffer)) > 10 and len(ds.buffer) <= ds.max_buffer_length
    assert len(set(ds.buffer)) == len(ds.buffer)  # a frame queued twice is evicted while still queued: decoded again
    assert 0 < ds.full_res_bytes <= dataset_module.FULL_RES_BYTES and len(ds.full_res) == len(set(ds.full_res))


def test_copy_paste_pastes_inside_the_crop():
    ds = crop_dataset(copy_paste=True, oversample=1.0)
    extra = list(range(len(ds.labels), len(ds)))[:6]
    random.seed(2)
    samples = [ds[i] for i in extra]
    assert ds.paste_stats["pasted"] > 0
    for s in samples:
        b = s["bboxes"]
        assert bool(((b[:, :2] - b[:, 2:] / 2) >= -1e-6).all()) and bool(((b[:, :2] + b[:, 2:] / 2) <= 1 + 1e-6).all())


def test_crops_read_the_decoded_frame_without_writing_into_it(monkeypatch):
    """A crop is a view of the decoded frame (no copy), cut from the engine's own buffer where that holds the frame
    unresized (no second decode), and a paste into it leaves the frame untouched: same pixels as a fresh decode."""
    import ultralytics.utils.patches as patches

    fresh = crop_dataset(imgsz=640, copy_paste=True, oversample=1.0)
    buffered = crop_dataset(imgsz=640, copy_paste=True, oversample=1.0)
    decodes = []
    real_imread = patches.imread
    monkeypatch.setattr(patches, "imread", lambda *a, **k: decodes.append(a[0]) or real_imread(*a, **k))
    for extra in range(len(buffered.labels), len(buffered.labels) + 8):  # extra samples: pasted
        i = int(buffered.sample_index[extra])
        buffered.load_image(i)  # the engine loads frame i at its own size (640 px long side: not resized)
        frame, before = buffered.ims[i].copy(), len(decodes)
        random.seed(extra)
        a = buffered.cropped_label(i, extra, paste=True)
        assert len(decodes) == before and np.array_equal(buffered.ims[i], frame)
        random.seed(extra)
        b = fresh.cropped_label(i, extra, paste=True)
        assert np.array_equal(fresh.ims[i], frame)  # decoded by the crop, kept where the engine keeps its frames
        assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["instances"].bboxes, b["instances"].bboxes)
    assert buffered.paste_stats["pasted"] > 0 and fresh.paste_stats["pasted"] == buffered.paste_stats["pasted"]


def test_a_frame_decoded_for_a_crop_is_not_decoded_again_for_a_full_image_draw(monkeypatch):
    """Where the engine keeps a frame at its own size (its long side is the input size), a crop's decode enters the
    engine's buffer: the next full-image load of that frame (a mosaic partner, a sample not cropped) reads it from
    there. Where the engine resizes, the full-resolution frame stays in sodet's own bounded cache instead."""
    import ultralytics.utils.patches as patches

    decodes = []
    real_imread = patches.imread
    monkeypatch.setattr(patches, "imread", lambda *a, **k: decodes.append(a[0]) or real_imread(*a, **k))
    ds = crop_dataset(imgsz=640)
    random.seed(0)
    ds.cropped_label(0, 0, paste=False)
    assert len(decodes) == 1 and 0 in ds.buffer and not ds.full_res
    im, hw0, hw = ds.load_image(0)
    assert len(decodes) == 1 and hw0 == hw == im.shape[:2]
    assert np.array_equal(im, real_imread(ds.im_files[0], flags=ds.cv2_flag))

    small = crop_dataset(imgsz=320)  # the engine halves the frame: the crop needs the full resolution of its own
    small.cropped_label(0, 0, paste=False)
    assert small.ims[0] is None and small.full_res[0].shape[:2] == im.shape[:2]


def test_one_decode_serves_a_frames_crops_and_full_draws_where_the_engine_resizes(monkeypatch):
    """At an input smaller than the frames, a full-image draw of a frame decoded for a crop resizes that decode
    (the same pixels as the engine's own load_image), and a crop after a full-image draw reads the full-resolution
    frame kept then: one decode per frame either way, each frame queued once."""
    import ultralytics.data.base as engine_base
    import ultralytics.utils.patches as patches
    from ultralytics.data.dataset import YOLODataset

    decodes = []
    real_imread = patches.imread
    counting = lambda *a, **k: decodes.append(a[0]) or real_imread(*a, **k)  # noqa: E731
    monkeypatch.setattr(patches, "imread", counting)  # sodet's decodes
    monkeypatch.setattr(engine_base, "imread", counting)  # the engine's load_image
    ds = crop_dataset(imgsz=320)
    random.seed(0)
    ds.cropped_label(0, 0, paste=False)  # crop first, then full draw
    im, hw0, hw = ds.load_image(0)
    im_again, _, _ = ds.load_image(0)
    assert len(decodes) == 1 and im_again is im and hw0 == (512, 640) and hw == (256, 320) == im.shape[:2]
    engine = crop_dataset(imgsz=320)
    reference, ref_hw0, ref_hw = YOLODataset.load_image(engine, 0)  # the engine's own load of the same frame
    assert np.array_equal(im, reference) and (hw0, hw) == (ref_hw0, ref_hw) and len(decodes) == 2
    decodes.clear()
    ds.load_image(1)  # full draw first, then crops
    for _ in range(3):
        ds.cropped_label(1, 1, paste=False)
    assert len(decodes) == 1 and ds.full_res[1].shape[:2] == (512, 640)
    assert ds.buffer.count(0) == ds.buffer.count(1) == 1


# P2 models ---------------------------------------------------------------------------------------------------
def test_p2_models_build_and_start_from_their_base_weights(tmp_path, caplog):
    from ultralytics.cfg import get_cfg
    from conftest import NANO

    from sodet.engine.build import build_model
    from sodet.models.registry import get_entry
    from sodet.options import RunOptions

    names = {0: "person", 1: "car"}
    p2 = build_model(RunOptions(model="yolox-nano-p2", weights=NANO), 2, names).eval()
    base = build_model(RunOptions(model="yolox-nano", weights=NANO), 2, names).eval()
    assert p2.stride.tolist() == [4, 8, 16, 32]
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out_p2, out = p2(x), base(x)
    assert out_p2.shape[-1] == out.shape[-1] + 32 * 32
    torch.testing.assert_close(out_p2[..., 32 * 32:], out, rtol=0, atol=0)  # strides 8-32: the nano's own outputs
    for name, base_name in (("yolov8n-p2", "yolov8n"), ("yolo26n-p2", "yolo26n")):
        m = get_entry(name).build(2, names)
        assert m.stride.tolist() == [4, 8, 16, 32]
        src = get_entry(base_name).build(80)
        src.args = get_cfg()
        torch.save({"model": src}, tmp_path / f"{base_name}.pt")
        from sodet.models.weights import load_weights

        load_weights(m, tmp_path / f"{base_name}.pt")  # the engine's transfer by name and shape
        transferred = sum(torch.equal(v, src.state_dict()[k]) for k, v in m.state_dict().items()
                          if k in src.state_dict() and v.shape == src.state_dict()[k].shape and v.numel() > 1)
        assert transferred > 100
    from sodet.models.resolve import resolve_model

    assert resolve_model("yolov8n-p2", fetch=False).weights.name == "yolov8n.pt"  # its entry's base weights


# short runs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, weights, extra", [
    ("yolox-nano", None, ["--crop-train", "0.4,0.8", "--box-loss", "iou+nwd"]),
    ("yolo11n", "none", ["--crop-train", "96,256", "--box-loss", "nwd", "--nwd-assign", "--copy-paste"]),
    ("gfl-r18", "none", ["--crop-train", "96,256", "--box-loss", "iou+nwd", "--nwd-assign", "--nwd-c", "8"]),
    ("yolox-nano-p2", None, ["--weighted-loss", "2", "--weight-form", "scale"]),
])
def test_short_runs_with_each_option(cli, tmp_path, model, weights, extra):
    args = ["train", "--model", model, "--data", MINI, "--imgsz", "128", "--epochs", "1", "--batch", "8", "--workers", "0",
            "--device", "cpu", "-o", "fraction=0.25", "-o", "plots=False", "--project", tmp_path, "--name", "r", *extra]
    if weights:
        args += ["--weights", weights]
    result = cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    ck = torch.load(tmp_path / "r" / "weights" / "last.pt", weights_only=False)
    opts = ck["model"].sodet
    if "--box-loss" in extra:
        assert opts.box_loss == extra[extra.index("--box-loss") + 1] and opts.nwd_c > 0
    if "--crop-train" in extra:
        assert opts.crop_train is not None


def test_nwd_assignment_is_refused_for_yolox_in_one_line(cli, tmp_path):
    result = cli("train", "--model", "yolox-nano", "--data", MINI, "--epochs", "1", "--imgsz", "128", "--device", "cpu",
                 "--nwd-assign", "--project", tmp_path)
    assert result.exit_code != 0 and "--nwd-assign: YOLOX's SimOTA" in str(result.exception)
    for bad, message in ((["--crop-train", "600,300"], "--crop-train must be MIN,MAX"), (["--nwd-ratio", "2"], "--nwd-ratio"),
                         (["--box-loss", "giou"], "--box-loss must be one of")):
        with pytest.raises(SodetError, match=message):
            from sodet.options import check_train_options

            key = bad[0][2:].replace("-", "_")
            check_train_options(**{key: bad[1]})
