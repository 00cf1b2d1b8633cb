"""sodet.eval.cocoeval against its references: pycocotools' COCOeval on real YOLOX-Nano detections, and a case
small enough to compute by hand. Also metrics.json / predictions.json and the metrics table."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sodet.errors import SodetError
from sodet.eval.cocoeval import METRIC_KEYS, cap_per_image, evaluate, resolve_backend
from sodet.eval.metrics_io import read_metrics, write_metrics
from sodet.eval.tables import format_table, format_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = REPO / "sodet" / "weights" / "yolox_nano_coco_fusedbn.pth"
DATASETS = {
    "coco-pc-mini": REPO / "datasets" / "coco-pc-mini",  # embedded: always present
    "coco-pc": SHARED / "data" / "coco-pc",  # beside the clone in CI
}
BACKENDS = ["pycocotools", "faster-coco-eval"]
COCO_PERSON, COCO_CAR = 0, 2  # rows of the 80-class head
CATEGORY_OF_ROW = {0: 1, 1: 3}  # sliced head row -> COCO category id


# ---------------------------------------------------------------- references


def pycocotools_stats(gt_path: Path, detections: list[dict], cat_ids: list[int] | None = None) -> np.ndarray:
    """The 12 numbers exactly as pycocotools produces them (its own loadRes, COCOeval.stats)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        E = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            E.params.catIds = cat_ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    return np.asarray(E.stats)


def top_per_image(detections: list[dict], n: int) -> list[dict]:
    """The n best-scored detections of each image in input order (earlier wins ties), written plainly."""
    by_image: dict[int, list[int]] = {}
    for i, d in enumerate(detections):
        by_image.setdefault(d["image_id"], []).append(i)
    keep = set()
    for indices in by_image.values():
        keep.update(sorted(indices, key=lambda i: -detections[i]["score"])[:n])
    return [d for i, d in enumerate(detections) if i in keep]


def as_array(metrics: dict) -> np.ndarray:
    """Metrics as COCOeval.stats: None back to -1."""
    return np.asarray([-1.0 if metrics[k] is None else metrics[k] for k in METRIC_KEYS])


# ---------------------------------------------------------------- real detections


@pytest.fixture(scope="session")
def yolox_nano():
    import torch
    from yolox.config import YoloxConfig

    model = YoloxConfig.get_named_config("yolox_nano").get_model()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu")["model"])
    return model.eval()


@pytest.fixture(scope="session")
def real_detections(yolox_nano):
    """Per dataset: (gt json path, YOLOX-Nano person+car detections) from the yolox package's own pipeline."""
    cache: dict[str, tuple[Path, list[dict]]] = {}

    def detections_for(name: str) -> tuple[Path, list[dict]]:
        root = DATASETS[name]
        if not root.is_dir():
            pytest.skip(f"{root} is absent (the shared data lies beside the clone in CI)")
        if name not in cache:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # 2 threads on a busy 2-core machine spin-wait: 20x slower, 1 thread is steady
            try:
                cache[name] = (root / "annotations" / "val.json", _run_yolox(yolox_nano, root))
            finally:
                torch.set_num_threads(threads)
        return cache[name]

    return detections_for


def _run_yolox(model, root: Path) -> list[dict]:
    """ValTransform(legacy=False) at 416; the 80-class scores sliced to person and car BEFORE NMS (so NMS sees
    only the two classes), conf 0.001, NMS IoU 0.65; boxes back to original pixels."""
    import cv2
    import torch
    from yolox.data.data_augment import ValTransform
    from yolox.utils import postprocess

    size = 416
    transform = ValTransform(legacy=False)
    gt = json.loads((root / "annotations" / "val.json").read_text())
    detections = []
    for image in gt["images"]:
        bgr = cv2.imread(str(root / "images" / "val" / image["file_name"]))
        tensor, _ = transform(bgr, None, (size, size))
        ratio = min(size / bgr.shape[0], size / bgr.shape[1])
        with torch.no_grad():
            raw = model(torch.from_numpy(tensor)[None])  # (1, N, 85): cx cy w h, obj, 80 class scores
        two_class = torch.cat([raw[..., :5], raw[..., 5 + COCO_PERSON, None], raw[..., 5 + COCO_CAR, None]], dim=-1)
        (kept,) = postprocess(two_class, num_classes=2, conf_thre=0.001, nms_thre=0.65)
        if kept is None:
            continue
        boxes = (kept[:, :4] / ratio).tolist()
        scores = (kept[:, 4] * kept[:, 5]).tolist()
        for (x1, y1, x2, y2), score, row in zip(boxes, scores, kept[:, 6].tolist()):
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": CATEGORY_OF_ROW[int(row)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return detections


def test_yolox_nano_detections_reproduce_the_reference(real_detections):
    """SOURCE.md: pycocotools on coco-pc val gives AP 0.238, APs 0.095 for these weights and this pipeline."""
    gt_path, detections = real_detections("coco-pc")
    stats = pycocotools_stats(gt_path, detections)
    assert stats[0] == pytest.approx(0.238, abs=0.02)
    assert stats[3] == pytest.approx(0.095, abs=0.02)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_evaluate_equals_pycocotools_on_real_detections(real_detections, dataset, backend):
    gt_path, detections = real_detections(dataset)
    assert max(np.unique([d["image_id"] for d in detections], return_counts=True)[1]) > 100  # the cap matters
    metrics = evaluate(gt_path, detections, backend=backend)

    capped = top_per_image(detections, 100)
    np.testing.assert_allclose(as_array(metrics), pycocotools_stats(gt_path, capped), rtol=0, atol=1e-6)

    categories = {c["name"]: c["id"] for c in json.loads(gt_path.read_text())["categories"]}
    assert set(metrics["per_class"]) == set(categories)
    for name, cat_id in categories.items():
        reference = pycocotools_stats(gt_path, capped, cat_ids=[cat_id])
        np.testing.assert_allclose(as_array(metrics["per_class"][name]), reference, rtol=0, atol=1e-6, err_msg=name)


def test_bucket_without_ground_truth_is_none_on_real_data(real_detections):
    """coco-pc-mini val has no large car: COCO's -1 must come back as None, not 0."""
    gt_path, detections = real_detections("coco-pc-mini")
    car = evaluate(gt_path, detections)["per_class"]["car"]
    assert car["APl"] is None and car["ARl"] is None
    assert car["APs"] is not None and car["APs"] > 0


def test_json_path_and_dict_give_the_same_numbers_and_inputs_stay_untouched(real_detections):
    gt_path, detections = real_detections("coco-pc-mini")
    gt = json.loads(gt_path.read_text())
    gt_before, detections_before = copy.deepcopy(gt), copy.deepcopy(detections)
    assert evaluate(gt, detections) == evaluate(gt_path, detections)
    assert gt == gt_before and detections == detections_before


# ---------------------------------------------------------------- hand-computed case


def hand_case() -> tuple[dict, list[dict]]:
    """One 100x100 image, person GT: A small (area 400), B medium (area 2500); car has no GT at all.
    Detections by score: a false positive (area 25, small), A exact, B exact, and a car box."""
    gt = {
        "images": [{"id": 7, "width": 100, "height": 100, "file_name": "x.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 0, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [40, 40, 50, 50], "area": 2500, "iscrowd": 0},
        ],
    }
    detections = [
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.95},
        {"image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [40, 40, 50, 50], "score": 0.8},
        {"image_id": 7, "category_id": 3, "bbox": [60, 0, 30, 30], "score": 0.7},
    ]
    return gt, detections


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_numbers(backend):
    """All: FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1; interpolated 2/3 everywhere: AP 2/3.
    Small: B and its detection ignored -> FP, TP: AP 1/2. Medium: A's detection ignored, the FP is outside the
    bucket -> AP 1. Large: no GT -> None. AR1 keeps only the FP -> 0. Car (no GT) is None throughout and does not
    pull the means. GT id 0 must count as a real match (COCOeval uses 0 for 'unmatched')."""
    gt, detections = hand_case()
    metrics = evaluate(gt, detections, backend=backend)
    expected = {
        "AP": 2 / 3, "AP50": 2 / 3, "AP75": 2 / 3, "APs": 0.5, "APm": 1.0, "APl": None,
        "AR1": 0.0, "AR10": 1.0, "AR100": 1.0, "ARs": 1.0, "ARm": 1.0, "ARl": None,
    }  # fmt: skip
    for key, value in expected.items():
        assert metrics[key] == (None if value is None else pytest.approx(value, abs=1e-9)), key
        assert metrics["per_class"]["person"][key] == metrics[key]
    assert all(v is None for v in metrics["per_class"]["car"].values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_of_images_outside_the_image_list_is_not_scored(backend):
    """COCOeval reads only the annotations of its images: a stray annotation of an unlisted image changes nothing."""
    gt, detections = hand_case()
    stray = dict(gt, annotations=gt["annotations"] + [dict(gt["annotations"][0], image_id=999, id=50)])
    assert evaluate(stray, detections, backend=backend) == evaluate(gt, detections, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_score_zero_or_none(backend):
    gt, _ = hand_case()
    metrics = evaluate(gt, [], backend=backend)
    for key in METRIC_KEYS:
        assert metrics[key] == (None if key in ("APl", "ARl") else 0.0), key
    assert all(v is None for v in metrics["per_class"]["car"].values())


def test_cap_keeps_best_per_image_in_input_order_with_earlier_winning_ties():
    scores = [0.1, 0.9, 0.5, 0.5, 0.9, 0.2, 0.5, 0.9]  # even positions: image 0, odd: image 1
    detections = [{"image_id": i % 2, "category_id": 1, "bbox": [i, 0, 1, 1], "score": s} for i, s in enumerate(scores)]
    kept = cap_per_image(detections, 2)
    # image 0: 0.9 @4, then 0.5 @2 beats the equal 0.5 @6; image 1: 0.9 @1 and 0.9 @7
    assert [d["bbox"][0] for d in kept] == [1, 2, 4, 7]
    assert cap_per_image(detections, 100) == detections


# ---------------------------------------------------------------- bad input


def test_unknown_image_ids_are_one_clear_error():
    gt, detections = hand_case()
    detections += [dict(detections[0], image_id=12345), dict(detections[0], image_id=999)]
    with pytest.raises(SodetError, match=r"^2 of 6 predictions .*image_id 12345") as e:
        evaluate(gt, detections)
    assert "\n" not in str(e.value)


def test_unknown_category_ids_are_one_clear_error():
    gt, detections = hand_case()
    detections.append(dict(detections[0], category_id=0))
    with pytest.raises(SodetError, match=r"1 of 5 predictions have category ids.*category_id 0"):
        evaluate(gt, detections)


@pytest.mark.parametrize(
    "broken, message",
    [({"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5]}, "expected keys"),
     ({"image_id": 7, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}, "4 numbers"),
     ({"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, float("nan")], "score": 0.5}, "non-finite")],
)  # fmt: skip
def test_malformed_predictions_are_clear_errors(broken, message):
    gt, detections = hand_case()
    with pytest.raises(SodetError, match=message):
        evaluate(gt, detections + [broken])


def test_ground_truth_without_area_is_a_clear_error():
    gt, detections = hand_case()
    del gt["annotations"][0]["area"]
    with pytest.raises(SodetError, match="lack 'area'"):
        evaluate(gt, detections)


def test_backend_choice(monkeypatch):
    assert resolve_backend("auto") == "faster-coco-eval"
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    assert resolve_backend("auto") == "pycocotools"
    with pytest.raises(SodetError, match="unknown evaluation backend"):
        resolve_backend("fast")


# ---------------------------------------------------------------- metrics.json, predictions.json, table


def test_write_metrics_round_trip(tmp_path):
    gt, detections = hand_case()
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    metrics = evaluate(gt_path, detections)
    dataset = {"gt": str(gt_path), "split": "val", "classes": ["person", "car"], "num_images": 1}
    speed = {"preprocess": 1.5, "inference": 10.0, "postprocess": 2.0}
    path = write_metrics(tmp_path / "run", metrics, options={"model": "yolox-nano", "data": tmp_path},
                         dataset=dataset, speed=speed, predictions=detections)  # fmt: skip

    raw = json.loads(path.read_text())
    assert list(raw)[:12] == list(METRIC_KEYS)
    assert raw["APl"] is None and '"APl": null' in path.read_text()
    assert raw["per_class"]["car"]["AP"] is None
    assert raw["dataset"]["gt"] == str(gt_path.resolve()) and len(raw["dataset"]["gt_sha256"]) == 64
    assert raw["dataset"]["classes"] == ["person", "car"] and raw["dataset"]["num_images"] == 1
    assert raw["speed"] == speed and raw["options"]["data"] == str(tmp_path)
    assert read_metrics(path)["AP"] == metrics["AP"]

    predictions = json.loads((path.parent / "predictions.json").read_text())
    assert evaluate(gt_path, predictions) == metrics  # the numbers can be recomputed from the files


def test_write_metrics_refuses_incomplete_records(tmp_path):
    gt, detections = hand_case()
    metrics = evaluate(gt, detections)
    with pytest.raises(SodetError, match="num_images"):
        write_metrics(tmp_path, metrics, options={}, dataset={"gt": "x", "split": "val", "classes": []},
                      speed=None, predictions=[])  # fmt: skip


def test_tables_show_na_for_missing_buckets():
    from rich.console import Console

    gt, detections = hand_case()
    metrics = evaluate(gt, detections)
    text = format_text(metrics)
    lines = text.splitlines()
    assert lines[0].split() == ["class", *METRIC_KEYS]
    assert [line.split()[0] for line in lines[1:]] == ["all", "person", "car"]
    assert lines[1].split()[1:] == ["0.667", "0.667", "0.667", "0.500", "1.000", "n/a",
                                    "0.000", "1.000", "1.000", "1.000", "1.000", "n/a"]  # fmt: skip
    assert lines[3].split()[1:] == ["n/a"] * 12

    console = Console(record=True, width=200)
    console.print(format_table(metrics))
    rendered = console.export_text()
    assert "n/a" in rendered and "person" in rendered and "0.667" in rendered
