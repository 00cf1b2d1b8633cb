"""COCO box AP/AR per object size, overall and per class.

The numbers are COCOeval's (pycocotools is the reference). faster-coco-eval computes the same arrays several times
faster and is used when installed; pycocotools is the fallback. Per-class numbers are read from the one accumulated
precision/recall array (COCOeval evaluates categories independently, so slicing category k gives what a run with
``params.catIds=[k]`` gives) instead of re-running the evaluation once per class.
"""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from sodet.errors import SodetError

# The 12 COCOeval summary numbers in COCOeval.summarize's order; AR100 is AR at ``max_dets`` (100 by default).
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("auto", "faster-coco-eval", "pycocotools")
# (precision or recall, IoU threshold or None for the .50:.95 mean, area label, index into maxDets)
_SUMMARY_SPEC = {
    "AP": ("precision", None, "all", -1),
    "AP50": ("precision", 0.5, "all", -1),
    "AP75": ("precision", 0.75, "all", -1),
    "APs": ("precision", None, "small", -1),
    "APm": ("precision", None, "medium", -1),
    "APl": ("precision", None, "large", -1),
    "AR1": ("recall", None, "all", 0),
    "AR10": ("recall", None, "all", 1),
    "AR100": ("recall", None, "all", -1),
    "ARs": ("recall", None, "small", -1),
    "ARm": ("recall", None, "medium", -1),
    "ARl": ("recall", None, "large", -1),
}
_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


def evaluate(
    gt: Mapping[str, Any] | str | PathLike,
    detections: Iterable[Mapping[str, Any]],
    max_dets: int = 100,
    backend: str = "auto",
    protocols: Sequence[Any] = (),
) -> dict[str, Any]:
    """Score COCO-format ``detections`` against ``gt`` (a COCO dict or json path, already restricted to the
    classes of interest).

    Returns the 12 numbers of METRIC_KEYS plus ``per_class`` ({class name: 12 numbers}); a number whose bucket has
    no ground truth (COCO's -1) is None. Only the ``max_dets`` highest-scoring detections of each image are scored
    (the COCO detection rule), so the result does not depend on how a backend truncates. Each of ``protocols``
    (``sodet.eval.protocols``) is COCOeval run with its own ranges, IoU thresholds and detection caps, under
    ``protocols[name]`` with its own numbers and ``per_class``. Neither input is modified.
    """
    if max_dets < 10:
        raise SodetError(f"max_dets must be at least 10 (AR1 and AR10 are part of the summary), got {max_dets}")
    gt_dict = load_gt(gt)
    backend = resolve_backend(backend)
    with _collector_paused():
        columns = check_detections(gt_dict, detections)
        keep = top_indices(columns.image_ids, columns.scores, max_dets)
        precision, recall, params = _accumulate(gt_dict, columns, keep, max_dets, backend)
    names = {c["id"]: c["name"] for c in gt_dict["categories"]}
    metrics: dict[str, Any] = summarize(precision, recall, params)
    metrics["per_class"] = {
        names[cat_id]: summarize(precision, recall, params, category_index=k) for k, cat_id in enumerate(params["catIds"])
    }
    if protocols:
        metrics["protocols"] = {p.name: evaluate_protocol(gt_dict, columns, p, backend, names) for p in protocols}
    return metrics


def evaluate_protocol(gt: Mapping[str, Any], columns: "DetectionColumns", protocol, backend: str, names: dict) -> dict:
    """One protocol's numbers (and per class), COCOeval with the protocol's parameters."""
    if protocol.ignore_field:  # TinyPerson's ignore regions: matched as COCO matches crowd regions
        gt = dict(gt, annotations=[dict(a, iscrowd=1) if a.get("ignore") else a for a in gt["annotations"]])
    cap = max(protocol.max_dets)
    with _collector_paused():
        keep = top_indices(columns.image_ids, columns.scores, cap)
        precision, recall, params = _accumulate(gt, columns, keep, cap, backend, protocol)
    out: dict[str, Any] = summarize_stats(precision, recall, params, protocol.stats)
    out["per_class"] = {names[c]: summarize_stats(precision, recall, params, protocol.stats, k) for k, c in enumerate(params["catIds"])}
    return out


def load_gt(gt: Mapping[str, Any] | str | PathLike) -> dict[str, Any]:
    """A COCO ground-truth dict from a dict or a json path, checked for the fields COCOeval reads."""
    if isinstance(gt, (str, PathLike)):
        path = Path(gt)
        if not path.is_file():
            raise SodetError(f"ground-truth file not found: {path}")
        from sodet.data.coco import read_json  # the one COCO json reader

        gt = read_json(path)
    if not isinstance(gt, Mapping):
        raise SodetError(f"ground truth must be a COCO dict or a json path, got {type(gt).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in gt]
    if missing:
        raise SodetError(f"ground truth is not COCO format: missing {', '.join(missing)}")
    names = [c["name"] for c in gt["categories"]]
    if len(set(names)) != len(names):
        raise SodetError(f"ground truth has duplicate category names: {names}")
    lacking_area = sum(1 for a in gt["annotations"] if "area" not in a)
    if lacking_area:
        raise SodetError(
            f"{lacking_area} ground-truth annotations lack 'area' (COCOeval's size buckets use it; keep COCO's mask area)"
        )
    return dict(gt)


@dataclass
class DetectionColumns:
    """Detections as columns: ids as given, boxes [N, 4] (x, y, w, h) and scores [N] as float64."""

    image_ids: list[Any]
    category_ids: list[Any]
    boxes: np.ndarray
    scores: np.ndarray


def check_detections(gt: Mapping[str, Any], detections: Iterable[Mapping[str, Any]]) -> DetectionColumns:
    """Detections as columns; malformed input or ids that the ground truth does not know raise one-line
    SodetErrors instead of a KeyError or wrong numbers deep inside COCOeval (which silently ignores detections of
    unknown categories)."""
    detections = detections if isinstance(detections, list) else list(detections)
    try:
        image_ids = [d["image_id"] for d in detections]
        category_ids = [d["category_id"] for d in detections]
        bboxes = [d["bbox"] for d in detections]
        scores_list = [d["score"] for d in detections]
    except (KeyError, TypeError, IndexError):
        i, d = next(((i, d) for i, d in enumerate(detections) if not _is_result(d)), (0, detections[0]))
        raise SodetError(
            f"prediction #{i} is not a COCO result: expected keys {', '.join(_DETECTION_KEYS)}, got {d!r:.120}"
        ) from None
    try:
        boxes = np.asarray(bboxes, dtype=np.float64).reshape(len(bboxes), -1 if bboxes else 4)
        scores = np.asarray(scores_list, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SodetError(f"predictions need 'bbox' as 4 numbers [x, y, w, h] and a numeric 'score' ({e})") from None
    if boxes.shape[1] != 4 or scores.ndim != 1:
        raise SodetError("predictions need 'bbox' as 4 numbers [x, y, w, h] in original image pixels and one 'score'")
    bad = ~(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SodetError(f"{int(bad.sum())} predictions have non-finite bbox or score (e.g. prediction #{i})")

    known_images = {img["id"] for img in gt["images"]}
    unknown = [i for i in image_ids if i not in known_images]
    if unknown:
        raise SodetError(
            f"{len(unknown)} of {len(detections)} predictions are for image ids that the ground truth does not hold "
            f"(e.g. image_id {unknown[0]!r}); predictions and ground truth must come from the same split"
        )
    known_categories = {c["id"] for c in gt["categories"]}
    unknown = [c for c in category_ids if c not in known_categories]
    if unknown:
        raise SodetError(
            f"{len(unknown)} of {len(detections)} predictions have category ids that the ground truth does not hold "
            f"(e.g. category_id {unknown[0]!r}; known: {sorted(known_categories)}); map class indices to COCO category ids"
        )
    return DetectionColumns(image_ids, category_ids, boxes, scores)


def top_indices(image_ids: list[Any], scores: np.ndarray, max_dets: int) -> np.ndarray:
    """Indices, ascending, of the ``max_dets`` highest-scoring detections of each image; among equal scores the
    earlier detection wins. COCOeval itself truncates per image AND class, and backends may break ties differently."""
    if not len(image_ids):
        return np.zeros(0, dtype=np.int64)
    _, image_index = np.unique(np.asarray(image_ids), return_inverse=True)
    order = np.lexsort((-np.asarray(scores, dtype=np.float64), image_index))  # by image, then score descending
    sorted_images = image_index[order]
    group_start = np.r_[True, sorted_images[1:] != sorted_images[:-1]]
    start_index = np.maximum.accumulate(np.where(group_start, np.arange(len(order)), 0))
    rank_in_image = np.arange(len(order)) - start_index
    return np.sort(order[rank_in_image < max_dets])


def cap_per_image(detections: list[dict[str, Any]], max_dets: int) -> list[dict[str, Any]]:
    """The ``max_dets`` highest-scoring detections of each image, in input order (see top_indices)."""
    keep = top_indices([d["image_id"] for d in detections], np.asarray([d["score"] for d in detections]), max_dets)
    return [detections[i] for i in keep]


def resolve_backend(backend: str) -> str:
    """The backend that will run: 'auto' takes faster-coco-eval when it is importable, else pycocotools."""
    if backend not in BACKENDS:
        raise SodetError(f"unknown evaluation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            return "pycocotools"
        return "faster-coco-eval"
    return backend


def summarize(
    precision: np.ndarray, recall: np.ndarray, params: Mapping[str, Any], category_index: int | None = None
) -> dict[str, float | None]:
    """The 12 numbers from accumulated arrays, like COCOeval.summarize: the mean over the entries that are not -1
    (over all categories, or over ``category_index`` only); None where every entry is -1 (no ground truth)."""
    iou_thresholds = np.asarray(params["iouThrs"])
    out: dict[str, float | None] = {}
    for key, (kind, iou, area, maxdet_index) in _SUMMARY_SPEC.items():
        a = params["areaRngLbl"].index(area)
        m = maxdet_index % len(params["maxDets"])
        t = slice(None) if iou is None else np.flatnonzero(np.isclose(iou_thresholds, iou))
        k = slice(None) if category_index is None else [category_index]
        values = precision[t, :, k, a, m] if kind == "precision" else recall[t, k, a, m]
        values = values[values > -1]
        out[key] = float(np.mean(values)) if values.size else None
    return out


def summarize_stats(precision: np.ndarray, recall: np.ndarray, params: Mapping[str, Any], stats,
                    category_index: int | None = None) -> dict[str, float | None]:
    """A protocol's numbers read as COCOeval.summarize reads its own: the mean of the entries that are not -1 at
    the stat's IoU (the mean over COCO's 0.50:0.95 for None), range and detection cap."""
    ious = np.asarray(params["iouThrs"])
    coco = np.flatnonzero(np.isclose(ious[:, None], np.linspace(0.5, 0.95, 10)[None]).any(1))
    out: dict[str, float | None] = {}
    for st in stats:
        a = params["areaRngLbl"].index(st.range)
        m = list(params["maxDets"]).index(st.max_det)
        t = coco if st.iou is None else np.flatnonzero(np.isclose(ious, st.iou))
        k = slice(None) if category_index is None else [category_index]
        values = precision[t, :, k, a, m] if st.kind == "ap" else recall[t, k, a, m]
        values = values[values > -1]
        out[st.name] = float(np.mean(values)) if values.size else None
    return out


# Above this many scored detections the categories are evaluated in several processes (COCOeval evaluates and
# accumulates each category on its own, so the per-category arrays are the same); below it a process costs more
# than it saves.
PARALLEL_MIN_DETECTIONS = 400_000
_FORKED_INPUT: tuple | None = None  # what the forked category workers read (inherited, never pickled)


def _accumulate(
    gt: Mapping[str, Any], detections: DetectionColumns, keep: np.ndarray, max_dets: int, backend: str, protocol=None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run COCOeval's evaluate + accumulate; returns precision [T,R,K,A,M], recall [T,K,A,M] and the parameters.

    Many detections (``PARALLEL_MIN_DETECTIONS``) are scored in up to one process per CPU core, each evaluating a
    contiguous share of the sorted categories, and the arrays are joined along the category axis: the numbers are
    those of one COCOeval over all categories (``tests/test_protocols.py``)."""
    global _FORKED_INPUT
    cat_ids = sorted(c["id"] for c in gt["categories"])
    n = _category_workers(len(keep), len(cat_ids))
    if n == 1:
        return _accumulate_categories(gt, detections, keep, max_dets, backend, protocol)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    kept_categories = np.asarray(detections.category_ids)[keep]
    chunks = _category_chunks(cat_ids, kept_categories, n)
    _FORKED_INPUT = (gt, detections, keep, kept_categories, max_dets, backend, protocol)
    try:
        with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_accumulate_forked, chunks))
    finally:
        _FORKED_INPUT = None
    params = dict(parts[0][2], catIds=[c for part in parts for c in part[2]["catIds"]])
    return np.concatenate([p[0] for p in parts], axis=2), np.concatenate([p[1] for p in parts], axis=1), params


def _category_workers(scored: int, categories: int) -> int:
    import multiprocessing
    import os

    if scored < PARALLEL_MIN_DETECTIONS or categories < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, categories, 8))


def _category_chunks(cat_ids: list, kept_categories: np.ndarray, n: int) -> list[list]:
    """``n`` contiguous runs of the sorted categories holding about equal numbers of detections (the cost)."""
    values, counts = np.unique(kept_categories, return_counts=True)
    per_category = dict(zip(values.tolist(), counts.tolist()))
    load = np.cumsum([per_category.get(c, 0) + 1 for c in cat_ids], dtype=np.float64)
    cuts = np.searchsorted(load, load[-1] * np.arange(1, n) / n, side="right")
    bounds = [0, *sorted({int(min(max(c, 1), len(cat_ids) - 1)) for c in cuts}), len(cat_ids)]
    return [cat_ids[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _accumulate_forked(cats: list) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    gt, detections, keep, kept_categories, max_dets, backend, protocol = _FORKED_INPUT
    wanted = set(cats)
    keep = keep[np.isin(kept_categories, np.asarray(cats))]
    gt = dict(gt, annotations=[a for a in gt["annotations"] if a["category_id"] in wanted])
    return _accumulate_categories(gt, detections, keep, max_dets, backend, protocol, cats)


def _accumulate_categories(
    gt: Mapping[str, Any], detections: DetectionColumns, keep: np.ndarray, max_dets: int, backend: str, protocol=None,
    cat_ids: list | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One COCOeval's evaluate + accumulate, over ``cat_ids`` (None: every category)."""
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = _gt_dataset(gt)
    coco_dt.dataset = _result_dataset(gt, detections, keep)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt.createIndex()
        coco_dt.createIndex()
        if backend == "faster-coco-eval":
            E = COCOeval(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        else:
            E = COCOeval(coco_gt, coco_dt, "bbox")
        E.params.maxDets = [1, 10, max_dets]
        if protocol is not None:  # the protocol's own ranges, thresholds and caps (only summarize is fixed in COCOeval)
            E.params.areaRng = [[lo, hi] for _, lo, hi in protocol.ranges]
            E.params.areaRngLbl = [name for name, _, _ in protocol.ranges]
            E.params.iouThrs = np.asarray(protocol.iou_thresholds, dtype=np.float64)
            E.params.maxDets = list(protocol.max_dets)
        if cat_ids is not None:
            E.params.catIds = list(cat_ids)
        E.evaluate()
        E.accumulate()
    p = E.params
    params = {
        "iouThrs": np.asarray(p.iouThrs),
        "areaRngLbl": list(p.areaRngLbl),
        "maxDets": list(p.maxDets),
        "catIds": list(p.catIds),
    }
    return np.asarray(E.eval["precision"]), np.asarray(E.eval["recall"]), params


def _gt_dataset(gt: Mapping[str, Any]) -> dict[str, Any]:
    """Fresh annotation dicts (COCOeval writes into them) with ids 1..N: COCOeval marks 'unmatched' with id 0, so a
    ground-truth id 0 would silently count as a miss, and duplicate ids would overwrite each other in the index."""
    annotations = []
    for new_id, a in enumerate(gt["annotations"], start=1):
        a = dict(a, id=new_id)
        a.setdefault("iscrowd", 0)
        annotations.append(a)
    return {
        "images": [dict(img) for img in gt["images"]],
        "categories": [dict(c) for c in gt["categories"]],
        "annotations": annotations,
    }


def _result_dataset(gt: Mapping[str, Any], detections: DetectionColumns, keep: np.ndarray) -> dict[str, Any]:
    """What COCO.loadRes builds for box results (area = w*h, ids 1..N, not crowd), for the kept detections, without
    its polygon copy of every box (unused for bbox IoU) and without its crash on an empty result list."""
    boxes = detections.boxes[keep]
    annotations = [
        {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score, "area": area, "id": n,
         "iscrowd": 0}
        for n, (image_id, category_id, box, score, area) in enumerate(
            zip(
                [detections.image_ids[i] for i in keep],
                [detections.category_ids[i] for i in keep],
                boxes.tolist(),
                detections.scores[keep].tolist(),
                (boxes[:, 2] * boxes[:, 3]).tolist(),
            ),
            start=1,
        )
    ]  # fmt: skip
    return {"images": list(gt["images"]), "categories": [dict(c) for c in gt["categories"]], "annotations": annotations}


def _is_result(d: Any) -> bool:
    return isinstance(d, Mapping) and all(k in d for k in _DETECTION_KEYS)


@contextlib.contextmanager
def _collector_paused():
    """Building a million small dicts (COCO indexes) sets off the cyclic garbage collector again and again; they
    form no cycles, so it is paused meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
