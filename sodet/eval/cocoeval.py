"""COCO box AP/AR per object size, overall and per class.

The numbers are COCOeval's (pycocotools is the reference). faster-coco-eval computes the same arrays several times
faster and is used when installed; pycocotools is the fallback. Per-class numbers are read from the one accumulated
precision/recall array (COCOeval evaluates categories independently, so slicing category k gives what a run with
``params.catIds=[k]`` gives) instead of re-running the evaluation once per class.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from sodet.errors import SodetError
from sodet.eval.scoring import DetectionColumns, accumulate, index_in, sorted_image_ids

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
        precision, recall, params = accumulate(gt_dict, capped(columns, max_dets), max_dets, backend)
    names = {c["id"]: c["name"] for c in gt_dict["categories"]}
    metrics: dict[str, Any] = summarize(precision, recall, params)
    metrics["per_class"] = {
        names[cat_id]: summarize(precision, recall, params, category_index=k) for k, cat_id in enumerate(params["catIds"])
    }
    if protocols:
        metrics["protocols"] = {p.name: evaluate_protocol(gt_dict, columns, p, backend, names) for p in protocols}
    return metrics


def evaluate_protocol(gt: Mapping[str, Any], columns: DetectionColumns, protocol, backend: str, names: dict) -> dict:
    """One protocol's numbers (and per class), COCOeval with the protocol's parameters."""
    if protocol.ignore_field:  # TinyPerson's ignore regions: matched as COCO matches crowd regions
        gt = dict(gt, annotations=[dict(a, iscrowd=1) if a.get("ignore") else a for a in gt["annotations"]])
    cap = max(protocol.max_dets)
    with _collector_paused():
        precision, recall, params = accumulate(gt, capped(columns, cap), cap, backend, protocol)
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
        if any(len(b) != 4 for b in bboxes):
            raise ValueError("a bbox without 4 numbers")
        boxes = np.fromiter(itertools.chain.from_iterable(bboxes), dtype=np.float64, count=4 * len(bboxes)).reshape(-1, 4)
        scores = np.asarray(scores_list, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SodetError(f"predictions need 'bbox' as 4 numbers [x, y, w, h] and a numeric 'score' ({e})") from None
    if scores.ndim != 1:
        raise SodetError("predictions need 'bbox' as 4 numbers [x, y, w, h] in original image pixels and one 'score'")
    bad = ~(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SodetError(f"{int(bad.sum())} predictions have non-finite bbox or score (e.g. prediction #{i})")

    image_ids, category_ids = _id_array(image_ids), _id_array(category_ids)
    image_index = index_in(image_ids, sorted_image_ids(gt))
    unknown = np.flatnonzero(image_index < 0)
    if len(unknown):
        raise SodetError(
            f"{len(unknown)} of {len(detections)} predictions are for image ids that the ground truth does not hold "
            f"(e.g. image_id {image_ids[unknown[:1]].tolist()[0]!r}); predictions and ground truth must come from the same split"
        )
    known_categories = sorted(c["id"] for c in gt["categories"])
    unknown = np.flatnonzero(index_in(category_ids, np.asarray(known_categories)) < 0)
    if len(unknown):
        raise SodetError(
            f"{len(unknown)} of {len(detections)} predictions have category ids that the ground truth does not hold "
            f"(e.g. category_id {category_ids[unknown[:1]].tolist()[0]!r}; known: {known_categories}); map class indices to COCO "
            "category ids"
        )
    return DetectionColumns(image_ids, category_ids, boxes, scores, image_index)


def _id_array(ids: list) -> np.ndarray:
    """Ids as an array: numbers as numbers, anything else as the objects given (never converted to text)."""
    array = np.asarray(ids)
    return array if array.dtype.kind in "iuf" else np.array(ids, dtype=object)


def capped(columns: DetectionColumns, max_dets: int) -> DetectionColumns:
    """The ``max_dets`` highest-scoring detections of each image (all of them where no image has more)."""
    if columns.ranks is None:
        columns.ranks = _ranks(columns.image_index, columns.scores)
    if not len(columns.ranks) or columns.ranks.max() < max_dets:
        return columns
    return columns.take(np.flatnonzero(columns.ranks < max_dets))


def top_indices(image_ids: list[Any], scores: np.ndarray, max_dets: int) -> np.ndarray:
    """Indices, ascending, of the ``max_dets`` highest-scoring detections of each image; among equal scores the
    earlier detection wins. COCOeval itself truncates per image AND class, and backends may break ties differently."""
    return np.flatnonzero(image_ranks(image_ids, scores) < max_dets)


def image_ranks(image_ids: list[Any], scores: np.ndarray) -> np.ndarray:
    """Each detection's rank among its image's detections (0: the highest score; among equal scores the earlier
    detection first): ``top_indices`` for any cap is the detections ranked below it."""
    if not len(image_ids):
        return np.zeros(0, dtype=np.int64)
    _, image_index = np.unique(np.asarray(image_ids), return_inverse=True)
    return _ranks(image_index.ravel(), np.asarray(scores, dtype=np.float64))


def _ranks(image_index: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``image_ranks`` with each detection's image as an index 0..n-1."""
    if not len(image_index):
        return np.zeros(0, dtype=np.int64)
    image_index = image_index.astype(np.min_scalar_type(int(image_index.max())))  # small integers sort by radix
    by_score = np.argsort(-scores, kind="stable")
    order = by_score[np.argsort(image_index[by_score], kind="stable")]  # by image, then score descending
    counts = np.bincount(image_index)
    first = np.cumsum(counts) - counts  # where each image's run starts in ``order``
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - np.repeat(first, counts)
    return ranks


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
