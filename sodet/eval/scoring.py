"""COCOeval's evaluate + accumulate on detection columns: what ``sodet.eval.cocoeval`` reads its numbers from.

Two backends compute the same arrays (pycocotools is the reference):

- faster-coco-eval, fed from the columns (``PreparedEval``): its C++ evaluator reads, per (image, category) pair,
  each detection's id, score, area and crowd / ignore flags; here that store is filled in one call per COCOeval,
  each pair's detections already in score order, and the IoUs are computed from the box columns, instead of going
  through COCO indexes of millions of result dicts and reading the boxes back out of them.
- pycocotools: COCO indexes of the ground truth and the results, as ``COCO.loadRes`` builds them.

Many detections (``PARALLEL_MIN_DETECTIONS``) are scored by category in a pool of one process per core: COCOeval
evaluates and accumulates each category on its own, so the arrays of COCOevals over runs of the sorted categories,
joined along the category axis, are those of one. There are more runs than workers, about ``DETECTIONS_PER_CHUNK``
detections each: the C++ accumulate walks a category's detections in score order, jumping between the images'
results, and that walk is bound by memory latency; a small run's results stay in the processor's caches (measured
with ``bench/eval_speed.py``'s AI-TOD case at 2,500 images: about 45 s with one run per worker, 35 s with runs of 50,000).

Caps at or above the most detections any (image, category) pair holds give the same arrays, so they are evaluated
once (``_accumulate_categories``): AI-TOD's 100 and 1500 where no pair has more than 100.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DetectionColumns:
    """Detections as columns: image and category ids as given (arrays), boxes [N, 4] (x, y, w, h) and scores [N]
    as float64; ``ranks``: each one's rank in its image by score, set where the per-image caps are applied."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    image_index: np.ndarray  # each detection's image: its index in the ground truth's sorted_image_ids
    ranks: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> "DetectionColumns":
        """The detections at ``rows``, in that order."""
        return DetectionColumns(self.image_ids[rows], self.category_ids[rows], self.boxes[rows], self.scores[rows],
                                self.image_index[rows])


def sorted_image_ids(gt: Mapping[str, Any]) -> np.ndarray:
    """The ground truth's image ids, sorted: COCOeval's image order."""
    return np.asarray(sorted(img["id"] for img in gt["images"]))


def index_in(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each value's index in the sorted array ``known``, -1 where it is not there."""
    if not len(known):
        return np.full(len(values), -1, dtype=np.int64)
    if values.dtype.kind in "iuf" and known.dtype.kind in "iuf":
        at = np.minimum(np.searchsorted(known, values), len(known) - 1)
        return np.where(known[at] == values, at, -1)
    position = {k: i for i, k in enumerate(known.tolist())}
    return np.fromiter((position.get(v, -1) for v in values.tolist()), dtype=np.int64, count=len(values))


# Above this many scored detections the categories are evaluated in several processes; below it a process costs
# more than it saves.
PARALLEL_MIN_DETECTIONS = 400_000
# About how many detections one COCOeval in the pool scores (a category with more is one run on its own).
DETECTIONS_PER_CHUNK = 50_000
_FORKED_INPUT: tuple | None = None  # what the forked category workers read (inherited, never pickled)


def accumulate(
    gt: Mapping[str, Any], detections: DetectionColumns, max_dets: int, backend: str, protocol=None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """COCOeval's evaluate + accumulate of ``detections`` against ``gt`` with maxDets [1, 10, ``max_dets``] (or
    the ``protocol``'s ranges, IoU thresholds and caps); returns precision [T,R,K,A,M], recall [T,K,A,M] and the
    parameters. The numbers are those of one COCOeval over all categories, however the work is split
    (``tests/test_protocols.py``)."""
    global _FORKED_INPUT
    cat_ids = sorted(c["id"] for c in gt["categories"])
    n = _category_workers(len(detections.scores), len(cat_ids))
    if n == 1:
        return _accumulate_categories(gt, detections, max_dets, backend, protocol)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = _category_chunks(cat_ids, detections.category_ids, _chunk_count(n, len(detections.scores), len(cat_ids)))
    by_category = np.argsort(detections.category_ids, kind="stable")  # each category's rows in input order
    sorted_categories = detections.category_ids[by_category]
    gt_by_category: dict[Any, list] = {}
    for a in gt["annotations"]:
        gt_by_category.setdefault(a["category_id"], []).append(a)
    _FORKED_INPUT = (gt, detections, by_category, sorted_categories, gt_by_category, max_dets, backend, protocol)
    try:
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
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


def _chunk_count(workers: int, scored: int, categories: int) -> int:
    """At least one run per worker, and about ``DETECTIONS_PER_CHUNK`` detections per run."""
    return max(workers, min(categories, -(-scored // DETECTIONS_PER_CHUNK)))


def _category_chunks(cat_ids: list, categories: np.ndarray, n: int) -> list[list]:
    """``n`` contiguous runs of the sorted categories holding about equal numbers of detections (the cost)."""
    values, counts = np.unique(categories, return_counts=True)
    per_category = dict(zip(values.tolist(), counts.tolist()))
    load = np.cumsum([per_category.get(c, 0) + 1 for c in cat_ids], dtype=np.float64)
    cuts = np.searchsorted(load, load[-1] * np.arange(1, n) / n, side="right")
    bounds = [0, *sorted({int(min(max(c, 1), len(cat_ids) - 1)) for c in cuts}), len(cat_ids)]
    return [cat_ids[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _accumulate_forked(cats: list) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    gt, detections, by_category, sorted_categories, gt_by_category, max_dets, backend, protocol = _FORKED_INPUT
    first = np.searchsorted(sorted_categories, cats[0], side="left")
    last = np.searchsorted(sorted_categories, cats[-1], side="right")
    rows = np.sort(by_category[first:last])  # the run's detections in input order
    gt = dict(gt, annotations=[a for c in cats for a in gt_by_category.get(c, ())])
    return _accumulate_categories(gt, detections.take(rows), max_dets, backend, protocol, cats)


def _accumulate_categories(
    gt: Mapping[str, Any], detections: DetectionColumns, max_dets: int, backend: str, protocol=None,
    cat_ids: list | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One COCOeval's evaluate + accumulate, over ``cat_ids`` (None: every category).

    COCOeval's numbers at a detection cap depend only on each (image, category)'s best ``cap`` detections, so caps
    at or above the most detections any pair has give the same arrays: such caps are evaluated once, at that
    count, and the result stands for each of them (AI-TOD's 100 and 1500 where no pair has more than 100)."""
    caps = list(protocol.max_dets) if protocol is not None else [1, 10, max_dets]
    most = _most_per_pair(detections)
    evaluated = sorted({min(cap, most) for cap in caps}) if most else caps
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        E = _prepared_eval(gt, detections) if backend == "faster-coco-eval" else pycocotools_eval(gt, detections)
        if protocol is not None:  # the protocol's own ranges, thresholds and caps (only summarize is fixed in COCOeval)
            E.params.areaRng = [[lo, hi] for _, lo, hi in protocol.ranges]
            E.params.areaRngLbl = [name for name, _, _ in protocol.ranges]
            E.params.iouThrs = np.asarray(protocol.iou_thresholds, dtype=np.float64)
        E.params.maxDets = list(evaluated)
        if cat_ids is not None:
            E.params.catIds = list(cat_ids)
        E.evaluate()
        E.accumulate()
    p = E.params
    precision, recall = np.asarray(E.eval["precision"]), np.asarray(E.eval["recall"])
    if evaluated != caps:  # each cap's column: the one evaluated at min(cap, most)
        columns = [evaluated.index(min(cap, most)) for cap in caps]
        precision, recall = precision[..., columns], recall[..., columns]
    params = {
        "iouThrs": np.asarray(p.iouThrs),
        "areaRngLbl": list(p.areaRngLbl),
        "maxDets": caps,
        "catIds": list(p.catIds),
    }
    return precision, recall, params


def _most_per_pair(detections: DetectionColumns) -> int:
    """The most detections any (image, category) pair has (0 without detections)."""
    if not len(detections.scores):
        return 0
    return int(np.unique(_pair_keys(detections.image_index, detections.category_ids), return_counts=True)[1].max())


def _pair_keys(image_index: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """One integer per (image, category) pair, in the pairs' (image, category) order."""
    category_values, category_index = np.unique(categories, return_inverse=True)
    return image_index.astype(np.int64) * len(category_values) + category_index.ravel()


def pycocotools_eval(gt: Mapping[str, Any], detections: DetectionColumns):
    """pycocotools' COCOeval over COCO indexes of the ground truth and the detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = _gt_dataset(gt)
    coco_dt.dataset = _result_dataset(gt, detections)
    coco_gt.createIndex()
    coco_dt.createIndex()
    return COCOeval(coco_gt, coco_dt, "bbox")


def _prepared_eval(gt: Mapping[str, Any], detections: DetectionColumns):
    """faster-coco-eval's COCOeval with its per-(image, category) store filled from the columns."""
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval.core import mask as mask_utils

    class PreparedEval(COCOeval_faster):
        """faster-coco-eval's ``_prepare`` fills its C++ store from COCO indexes (query, load, mark ignore, append
        one by one), and its ``computeIoU`` reads each (image, category)'s boxes back out of that store as dicts.
        Here the store gets what its C++ reads (id, score, area, crowd, ignore), one list per pair, the detections
        in score order (stable: the order its C++ sorts them into); the pairs that hold both kinds are marked for
        IoU; each pair's IoUs come from the same IoU function over the same boxes in the same order, capped."""

        def _prepare(self):
            self.gt_dataset.load_tuple((len(gt_pairs), [(i, c, gts[a:b]) for (i, c), (a, b) in gt_pairs.items()]))
            self.dt_dataset.load_tuple((len(dt_pairs), [(i, c, dts[a:b]) for (i, c), (a, b) in dt_pairs.items()]))
            self._nonempty_iou_pairs = gt_pairs.keys() & dt_pairs.keys()

        def computeIoU(self, imgId, catId):
            g, d = gt_pairs.get((imgId, catId)), dt_pairs.get((imgId, catId))
            if g is None or d is None:
                return []
            ground_truth = gts[g[0]:g[1]]
            d_end = min(d[1], d[0] + self.params.maxDets[-1])
            ious = mask_utils.iou(dt_boxes[d[0]:d_end].tolist(), [a["bbox"] for a in ground_truth],
                                  [a["iscrowd"] for a in ground_truth])
            return ious.tolist()  # nested lists: what its C++ takes, without a numpy scalar per IoU

    image_ids = sorted_image_ids(gt)
    gts = _gt_dataset(gt)["annotations"]
    gt_index = index_in(np.asarray([a["image_id"] for a in gts]), image_ids)
    gts = [a for a, i in zip(gts, gt_index.tolist()) if i >= 0]  # COCOeval reads only its images' annotations
    gt_images, gt_categories = np.asarray([a["image_id"] for a in gts]), np.asarray([a["category_id"] for a in gts])
    gt_order, gt_pairs = _pairs(gt_images, gt_index[gt_index >= 0], gt_categories)
    gts = [gts[r] for r in gt_order.tolist()]
    for a in gts:
        a["ignore"] = a["iscrowd"] = int(a["iscrowd"])  # COCOeval: a crowd region is an ignore region
    dt_order, dt_pairs = _pairs(detections.image_ids, detections.image_index, detections.category_ids, detections.scores)
    dt_boxes = detections.boxes[dt_order]
    dts = [{"id": n, "score": score, "area": area}  # not crowd, not ignored: its C++'s defaults
           for n, score, area in zip(range(1, len(dt_order) + 1), detections.scores[dt_order].tolist(),
                                     (dt_boxes[:, 2] * dt_boxes[:, 3]).tolist())]  # fmt: skip
    E = PreparedEval(None, None, "bbox", print_function=lambda *a, **k: None)
    E.params.imgIds = image_ids.tolist()
    E.params.catIds = sorted(c["id"] for c in gt["categories"])
    return E


def _pairs(images: np.ndarray, image_index: np.ndarray, categories: np.ndarray, scores: np.ndarray | None = None
           ) -> tuple[np.ndarray, dict]:
    """The rows grouped by (image, category): (``order``, {(image id, category id): (start, end) in ``order``}).
    Within a pair the rows keep their input order or, with ``scores``, go by descending score (stable: among equal
    scores the earlier row first, as COCOeval orders a pair's detections)."""
    if not len(images):
        return np.zeros(0, dtype=np.int64), {}
    pair = _pair_keys(image_index, categories)
    pair = pair.astype(np.min_scalar_type(int(pair.max())))  # small integers sort by radix
    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(len(pair))
    order = order[np.argsort(pair[order], kind="stable")]
    sorted_pair = pair[order]
    bounds = np.flatnonzero(np.r_[True, sorted_pair[1:] != sorted_pair[:-1], True])
    firsts = order[bounds[:-1]]
    keys = zip(images[firsts].tolist(), categories[firsts].tolist())
    return order, dict(zip(keys, zip(bounds[:-1].tolist(), bounds[1:].tolist())))


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


def _result_dataset(gt: Mapping[str, Any], detections: DetectionColumns) -> dict[str, Any]:
    """What COCO.loadRes builds for box results (area = w*h, ids 1..N, not crowd), without its polygon copy of
    every box (unused for bbox IoU) and without its crash on an empty result list."""
    boxes = detections.boxes
    annotations = [
        {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score, "area": area, "id": n,
         "iscrowd": 0}
        for n, (image_id, category_id, box, score, area) in enumerate(
            zip(detections.image_ids.tolist(), detections.category_ids.tolist(), boxes.tolist(),
                detections.scores.tolist(), (boxes[:, 2] * boxes[:, 3]).tolist()),
            start=1,
        )
    ]  # fmt: skip
    return {"images": list(gt["images"]), "categories": [dict(c) for c in gt["categories"]], "annotations": annotations}
