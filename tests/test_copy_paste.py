"""Copy-paste of small objects: where pastes land, what they carry, and how often images come back."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sodet.data.copy_paste import extra_sample_count, oversample_indices, paste_small_objects

MINI = Path(__file__).resolve().parents[1] / "datasets" / "coco-pc-mini"


def positive_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) True where two xyxy boxes share positive area."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return (iw > 0) & (ih > 0)


def source_mask(shape, polygon) -> np.ndarray:
    """The object's COCO mask at its own place in the image: pycocotools' decode of its polygon (the reference)."""
    from pycocotools import mask as mask_utils

    h, w = shape[:2]
    rle = mask_utils.merge(mask_utils.frPyObjects([np.asarray(p, float).ravel().tolist() for p in polygon], h, w))
    return mask_utils.decode(rle).astype(bool)


def shoelace(parts) -> float:
    return sum(0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))))
               for p in (np.asarray(q, float) for q in parts))


@pytest.fixture
def scene():
    """A noisy 320x480 image with two small polygon objects, one small box-only object, a large object, a crowd."""
    rng = np.random.default_rng(123)
    img = rng.integers(0, 256, (320, 480, 3), dtype=np.uint8)
    boxes = np.array([[20.3, 30.6, 44.8, 61.2], [300.0, 20.0, 318.0, 34.0], [60.4, 200.2, 79.6, 215.7],
                      [150.0, 100.0, 290.0, 250.0]])
    polygons = [
        [np.array([[20.3, 30.6], [44.8, 40.0], [35.0, 61.2], [22.0, 50.0]])],
        [np.array([[300.0, 20.0], [318.0, 20.0], [309.0, 34.0]]), np.array([[300.0, 30.0], [303.0, 30.0], [301.0, 33.0]])],
        None,
        [np.array([[150.0, 100.0], [290.0, 100.0], [290.0, 250.0], [150.0, 250.0]])],
    ]
    small = np.array([True, True, True, False])
    blocked = np.array([[330.0, 150.0, 470.0, 310.0]])
    return img, boxes, polygons, small, blocked


def test_pastes_are_inside_and_overlap_nothing(scene):
    img, boxes, polygons, small, blocked = scene
    for seed in range(20):
        res = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(seed), copies=3)
        assert res.pasted + res.skipped == 3 * small.sum()
        assert res.pasted == len(res.boxes) == len(res.polygons) == len(res.source)
        b = res.boxes
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= img.shape[1]).all() and (b[:, 3] <= img.shape[0]).all()
        assert not positive_overlap(b, boxes).any()
        assert not positive_overlap(b, blocked).any()
        pair = positive_overlap(b, b)
        np.fill_diagonal(pair, False)
        assert not pair.any()
        assert set(res.source.tolist()) <= {0, 1, 2}


def test_polygon_paste_copies_exactly_the_source_pixels_under_the_mask(scene):
    img, boxes, polygons, small, blocked = scene
    original = img.copy()
    res = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(1), copies=2)
    assert np.array_equal(img, original), "input image modified in place"
    assert res.img is not img
    changed = np.zeros(img.shape[:2], bool)
    checked = 0
    for box, poly, src in zip(res.boxes, res.polygons, res.source):
        if polygons[src] is None:
            continue
        offset = box[:2] - boxes[src, :2]
        assert np.allclose(offset, np.round(offset), atol=1e-3), "paste shifts by whole pixels"
        dx, dy = np.round(offset).astype(int)
        for p_new, p_src in zip(poly, polygons[src]):
            assert np.allclose(p_new, p_src + [dx, dy], atol=1e-3)
        ys, xs = np.nonzero(source_mask(img.shape, polygons[src]))
        assert np.array_equal(res.img[ys + dy, xs + dx], img[ys, xs])
        changed[ys + dy, xs + dx] = True
        checked += 1
    assert checked >= 2
    box_pastes = [(b, s) for b, s in zip(res.boxes, res.source) if polygons[s] is None]
    for box, src in box_pastes:
        x0, y0, x1, y1 = np.round(boxes[src]).astype(int)
        dx, dy = np.round(box[:2] - boxes[src, :2]).astype(int)
        changed[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = True
    assert np.array_equal(res.img[~changed], img[~changed]), "pixels outside the pasted masks changed"


def test_box_paste_copies_the_rounded_box_patch(scene):
    img, boxes, polygons, _, blocked = scene
    small = np.array([False, False, True, False])
    res = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(5), copies=3)
    assert res.pasted == 3 and all(p is None for p in res.polygons)
    x0, y0, x1, y1 = np.round(boxes[2]).astype(int)
    for box in res.boxes:
        dx, dy = np.round(box[:2] - boxes[2, :2]).astype(int)
        assert np.allclose(box, boxes[2] + [dx, dy, dx, dy], atol=1e-3)
        assert np.array_equal(res.img[y0 + dy:y1 + dy, x0 + dx:x1 + dx], img[y0:y1, x0:x1])


def test_crowd_regions_are_never_pasted_or_pasted_over():
    img = np.full((100, 100, 3), 7, np.uint8)
    boxes = np.array([[2.0, 2.0, 8.0, 8.0]])
    blocked = np.array([[10.0, 0.0, 100.0, 100.0], [0.0, 10.0, 10.0, 100.0]])  # only the 10x10 corner is free
    res = paste_small_objects(img, boxes, [None], np.array([True]), blocked, np.random.default_rng(0), copies=5)
    assert res.pasted == 0 and res.skipped == 5 and res.img is img
    # with a free strip the pastes go there and only there
    blocked = np.array([[10.0, 0.0, 100.0, 60.0]])
    res = paste_small_objects(img, boxes, [None], np.array([True]), blocked, np.random.default_rng(0), copies=5)
    assert res.pasted > 0 and not positive_overlap(res.boxes, blocked).any()


def test_full_image_skips_and_counts():
    img = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[0.0, 0.0, 64.0, 64.0], [10.0, 10.0, 20.0, 20.0]])  # one object fills the image
    res = paste_small_objects(img, boxes, [None, None], np.array([False, True]), np.zeros((0, 4)),
                              np.random.default_rng(0), copies=4, max_tries=10)
    assert (res.pasted, res.skipped) == (0, 4)
    assert res.img is img and res.boxes.shape == (0, 4) and res.source.shape == (0,)


def test_nothing_small_returns_the_same_image(scene):
    img, boxes, polygons, _, blocked = scene
    res = paste_small_objects(img, boxes, polygons, np.zeros(4, bool), blocked, np.random.default_rng(0))
    assert res.img is img and res.pasted == res.skipped == 0
    res = paste_small_objects(img, np.zeros((0, 4)), [], np.zeros(0, bool), np.zeros((0, 4)), np.random.default_rng(0))
    assert res.img is img and res.pasted == 0


def test_same_seed_same_result(scene):
    img, boxes, polygons, small, blocked = scene
    for jitter in (False, True):
        a = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(42), copies=2, jitter=jitter)
        b = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(42), copies=2, jitter=jitter)
        assert np.array_equal(a.img, b.img) and np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.source, b.source) and (a.pasted, a.skipped) == (b.pasted, b.skipped)
        # another seed with the SAME settings places the objects elsewhere
        c = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(43), copies=2, jitter=jitter)
        assert not np.array_equal(a.boxes, c.boxes)


def test_jitter_scales_within_20_percent_and_keeps_labels_consistent(scene):
    img, boxes, polygons, _, blocked = scene
    small = np.array([True, False, False, False])  # the 4-point polygon
    src_area = shoelace(polygons[0])
    scales = []
    for seed in range(30):
        res = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(seed), jitter=True)
        assert res.pasted == 1
        scale = (shoelace(res.polygons[0]) / src_area) ** 0.5
        assert 0.8 - 1e-6 <= scale <= 1.2 + 1e-6
        scales.append(scale)
        box = res.boxes[0]
        pts = np.concatenate(res.polygons[0])
        # the box is the tight box of the transformed mask; the transformed polygon lies (almost) on it
        assert np.all(pts.min(0) >= box[:2] - 1.5) and np.all(pts.max(0) <= box[2:] + 1.5)
        side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        src_side = np.sqrt((boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1]))
        assert 0.6 < side / src_side < 1.6  # rotation by <= 15 deg widens a box by at most ~1.3x
        assert not positive_overlap(res.boxes, boxes).any() and not positive_overlap(res.boxes, blocked).any()
    assert np.ptp(scales) > 0.1, "jitter should vary the size"


def test_jitter_off_keeps_size(scene):
    img, boxes, polygons, small, blocked = scene
    res = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(0))
    sizes = res.boxes[:, 2:] - res.boxes[:, :2]
    assert np.allclose(sizes, boxes[res.source, 2:] - boxes[res.source, :2], atol=1e-3)


def test_real_coco_image_polygon_paste():
    """On a real coco-pc-mini image: mask pixels copied exactly, nothing overlapped."""
    d = json.loads((MINI / "annotations" / "train.json").read_text())
    anns_of = {}
    for a in d["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    im = next(i for i in d["images"]
              if sum(a["area"] < 1024 and not a["iscrowd"] for a in anns_of.get(i["id"], [])) >= 3)
    img = cv2.imread(str(MINI / "images" / "train" / im["file_name"]))
    objs = [a for a in anns_of[im["id"]] if not a["iscrowd"]]
    crowd = [a for a in anns_of[im["id"]] if a["iscrowd"]]
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
    boxes = np.array([xyxy(a["bbox"]) for a in objs])
    blocked = np.array([xyxy(a["bbox"]) for a in crowd]).reshape(-1, 4)
    polygons = [[np.array(p).reshape(-1, 2) for p in a["segmentation"]] for a in objs]
    small = np.array([a["area"] < 1024 for a in objs])
    res = paste_small_objects(img, boxes, polygons, small, blocked, np.random.default_rng(0))
    assert res.pasted + res.skipped == small.sum() and res.pasted >= 1
    assert not positive_overlap(res.boxes, np.concatenate([boxes, blocked])).any()
    for box, src in zip(res.boxes, res.source):
        dx, dy = np.round(box[:2] - boxes[src, :2]).astype(int)
        ys, xs = np.nonzero(source_mask(img.shape, polygons[src]))
        assert np.array_equal(res.img[ys + dy, xs + dx], img[ys, xs])


def test_oversample_indices_counts():
    has_small = np.array([True, False, True, True, False, True, True, False, True, True])  # K = 7 of N = 10
    k = int(has_small.sum())
    idx = oversample_indices(has_small, 1.0, np.random.default_rng(0))
    assert len(has_small) + len(idx) == 10 + 7  # default: N + K samples
    assert sorted(idx.tolist()) == np.flatnonzero(has_small).tolist()
    half = oversample_indices(has_small, 0.5, np.random.default_rng(0))
    assert len(half) == extra_sample_count(k, 0.5) == 4 and len(set(half.tolist())) == 4
    assert has_small[half].all()
    two_half = oversample_indices(has_small, 2.5, np.random.default_rng(0))
    assert len(two_half) == extra_sample_count(k, 2.5) == 2 * 7 + 4
    counts = np.bincount(two_half, minlength=10)
    assert set(counts[has_small].tolist()) <= {2, 3} and (counts[~has_small] == 0).all()
    assert np.array_equal(oversample_indices(has_small, 0.5, np.random.default_rng(9)),
                          oversample_indices(has_small, 0.5, np.random.default_rng(9)))
    assert len(oversample_indices(has_small, 0.0, np.random.default_rng(0))) == 0
    assert len(oversample_indices(np.zeros(5, bool), 1.5, np.random.default_rng(0))) == 0
    with pytest.raises(ValueError):
        extra_sample_count(3, -1)


# --- through the engine's training dataset (the lead's SodetDataset) ---------------------------------------------


@pytest.fixture(scope="module")
def mini_datasets():
    """The plain training set of coco-pc-mini and the same set with copy-paste on, at 320 px with mosaic."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.utils import check_det_dataset

    from sodet.data.spec import resolve_data
    from sodet.engine.build import build_dataset
    from sodet.options import RunOptions

    data = check_det_dataset(str(resolve_data(MINI)))
    cfg = get_cfg(overrides=dict(imgsz=320, mosaic=1.0, seed=0))
    plain = build_dataset(cfg, data["train"], 4, data, "train", 32, RunOptions(copy_paste=False))
    pasted = build_dataset(cfg, data["train"], 4, data, "train", 32, RunOptions(copy_paste=True))
    return plain, pasted


def _xyxy_pixels(label: dict) -> np.ndarray:
    """Pixel xyxy boxes of a ``get_image_and_label`` result (normalised xywh there)."""
    h, w = label["img"].shape[:2]
    b = np.asarray(label["instances"].bboxes, float).reshape(-1, 4)
    return np.stack([(b[:, 0] - b[:, 2] / 2) * w, (b[:, 1] - b[:, 3] / 2) * h,
                     (b[:, 0] + b[:, 2] / 2) * w, (b[:, 1] + b[:, 3] / 2) * h], 1)


def test_epoch_holds_n_plus_k_samples(mini_datasets):
    plain, pasted = mini_datasets
    d = json.loads((MINI / "annotations" / "train.json").read_text())
    n = len(d["images"])
    k = len({a["image_id"] for a in d["annotations"] if a["area"] < 1024 and not a["iscrowd"]})
    assert len(plain) == n and len(pasted) == n + k
    assert sorted(pasted.sample_index[n:].tolist()) == sorted(
        i for i, lb in enumerate(pasted.meta) if (lb["area"] < 1024).any())


def test_original_samples_are_bit_identical_to_the_plain_set(mini_datasets):
    plain, pasted = mini_datasets
    for i in range(len(plain)):
        a, b = plain.get_image_and_label(i), pasted.get_image_and_label(i)
        assert np.array_equal(a["img"], b["img"])
        assert np.array_equal(a["cls"], b["cls"])
        assert np.array_equal(a["instances"].bboxes, b["instances"].bboxes)


def test_extra_samples_add_pasted_objects_that_overlap_nothing(mini_datasets):
    plain, pasted = mini_datasets
    n, total_new = len(plain), 0
    for index in range(n, len(pasted)):
        src = int(pasted.sample_index[index])
        orig, extra = plain.get_image_and_label(src), pasted.get_image_and_label(index)
        m = len(orig["cls"])
        assert np.array_equal(extra["cls"][:m], orig["cls"]), "original labels come first, unchanged"
        assert np.allclose(extra["instances"].bboxes[:m], orig["instances"].bboxes, atol=1e-5)
        new = _xyxy_pixels(extra)[m:]
        total_new += len(new)
        assert not positive_overlap(new - [0, 0, 1e-3, 1e-3], _xyxy_pixels(orig)).any()
        again = pasted.get_image_and_label(index)
        assert np.array_equal(again["img"], extra["img"]), "same seed and index, same paste"
    assert total_new > 0 and pasted.paste_stats["pasted"] >= total_new


def test_labels_stay_valid_through_mosaic(mini_datasets):
    import random

    from ultralytics.data.dataset import YOLODataset

    _, pasted = mini_datasets
    random.seed(0)
    n = len(pasted.labels)
    samples = [pasted[i] for i in list(range(n, len(pasted))) + [0, 5, 17]]
    for s in samples:
        assert tuple(s["img"].shape) == (3, 320, 320)
        b = s["bboxes"].numpy()
        assert len(b) == len(s["cls"]) == len(s["batch_idx"])
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2:] > 0).all()
        assert set(s["cls"].flatten().tolist()) <= {0.0, 1.0}
    batch = YOLODataset.collate_fn(samples[:8])
    assert batch["img"].shape[0] == 8 and len(batch["batch_idx"]) == len(batch["bboxes"])


def test_pasted_mask_is_cocos_on_real_small_objects():
    """On the embedded COCO objects, the cut-out mask is pixel for pixel pycocotools' mask (whose pixel count is the
    annotation's ``area``), not cv2.fillPoly's larger one."""
    import json

    from sodet.assets import resource_dir
    from sodet.data.copy_paste import _cut_piece

    root = resource_dir("datasets") / "coco-pc-mini"
    d = json.loads((root / "annotations" / "train.json").read_text())
    images = {im["id"]: im for im in d["images"]}
    checked, ours, fill_poly, areas = 0, 0, 0, 0.0
    for a in d["annotations"]:
        if a.get("iscrowd") or a["area"] >= 32 * 32 or not isinstance(a["segmentation"], list):
            continue
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        img = np.zeros((h, w, 3), np.uint8)
        parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in a["segmentation"]]
        x, y, bw, bh = a["bbox"]
        piece = _cut_piece(img, [x, y, x + bw, y + bh], parts)
        full = source_mask((h, w), parts)
        x0, y0 = piece.origin
        ph, pw = piece.mask.shape
        assert full.sum() == piece.mask.sum()  # nothing of the mask lies outside the window
        assert np.array_equal(full[y0:y0 + ph, x0:x0 + pw], piece.mask)
        ours += int(piece.mask.sum())
        filled = np.zeros((h, w), np.uint8)
        cv2.fillPoly(filled, [np.rint(p).astype(np.int32) for p in parts], 1)
        fill_poly += int(filled.sum())
        areas += a["area"]
        checked += 1
    assert checked >= 20
    # and every polygon object of the set, any size, rasterised where it lies, equals its whole-image decode
    for a in d["annotations"]:
        if a.get("iscrowd") or not isinstance(a["segmentation"], list):
            continue
        im = images[a["image_id"]]
        parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in a["segmentation"] if len(p) >= 6]
        full = source_mask((im["height"], im["width"]), parts)
        x, y, bw, bh = a["bbox"]
        piece = _cut_piece(np.zeros((im["height"], im["width"], 3), np.uint8), [x, y, x + bw, y + bh], parts)
        x0, y0 = piece.origin
        assert np.array_equal(full[y0:y0 + piece.mask.shape[0], x0:x0 + piece.mask.shape[1]], piece.mask)
        assert full.sum() == piece.mask.sum()
    # summed over the small objects, COCO's mask matches their annotated areas; fillPoly's is far larger
    assert abs(ours / areas - 1) < 0.05 and fill_poly / areas > 1.10
