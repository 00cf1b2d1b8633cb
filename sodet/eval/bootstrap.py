"""Image-level paired bootstrap of a COCO AP difference: is a gain still there when other images are scored?

Seeds tell training noise apart from a method's effect; the choice of evaluation images is a second source of
noise that a seed-only interval leaves out (a study scores every run on the same fixed images). Here the images
are resampled with replacement and COCO AP is recomputed for every resample, exactly: COCOeval's per-image
evaluation (which detection matches which ground truth, what is ignored) does not depend on the other images, so
it is run once per run (pycocotools' ``evaluate``), and each resample re-runs only COCOeval's ``accumulate`` with
every image counted as often as it was drawn. The result equals pycocotools run on a data set that holds the
drawn images (each copy under its own id, copies next to each other), which ``tests/test_study_stats.py`` checks.

The same resample is applied to the baseline's and the method's runs (a paired bootstrap); with several seeds
the difference of each resample is the mean over seeds of (method - baseline) of the same seed.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

COCO_IOUS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)
DEFAULT_RESAMPLES = 2000


@dataclass
class CategoryEval:
    """One category's detections over all images, in COCOeval's accumulate order (score descending, ties in
    image order): true / false positive flags per IoU threshold and the image each detection belongs to."""

    tp: np.ndarray  # (T, D) 1.0 where the detection is a true positive, not ignored
    fp: np.ndarray  # (T, D) 1.0 where it is a false positive, not ignored
    image: np.ndarray  # (D,) index into the image list
    npig: np.ndarray  # (n_images,) ground truths that count (not ignored) per image


@dataclass
class PerImageEval:
    """COCOeval's per-image evaluation of one run at one area range and detection cap."""

    image_ids: list
    categories: list[CategoryEval]
    area: tuple[float, float]
    max_det: int

    def ap(self, weights: np.ndarray | None = None) -> float | None:
        """COCO AP (mean over IoU thresholds, recall points and categories with ground truth) with image ``i``
        counted ``weights[i]`` times (None: each once, COCOeval's own number); None without ground truth."""
        per_category = [category_ap(c, weights) for c in self.categories]
        values = [v for v in per_category if v is not None]
        return float(np.mean(values)) if values else None


def category_ap(c: CategoryEval, weights: np.ndarray | None) -> float | None:
    """COCOeval.accumulate's interpolated precision for one category, averaged over IoU thresholds and the 101
    recall points; None when no ground truth counts (COCO's -1)."""
    npig = float(c.npig.sum() if weights is None else (c.npig * weights).sum())
    if npig == 0:
        return None
    if c.tp.shape[1] == 0:
        return 0.0
    w = np.ones(c.tp.shape[1]) if weights is None else weights[c.image].astype(np.float64)
    tp = np.cumsum(c.tp * w, axis=1)
    fp = np.cumsum(c.fp * w, axis=1)
    recall = tp / npig
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # max to the right, as COCOeval's loop
    q = np.zeros((tp.shape[0], len(RECALLS)))
    for t in range(tp.shape[0]):
        idx = np.searchsorted(recall[t], RECALLS, side="left")
        ok = idx < tp.shape[1]
        q[t, ok] = envelope[t, idx[ok]]
    return float(q.mean())


def per_image_eval(
    gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], area: tuple[float, float] = (0.0, 1e10),
    max_det: int = 100, iou_thresholds: np.ndarray = COCO_IOUS,
) -> PerImageEval:
    """Run pycocotools' COCOeval.evaluate for one area range and cap, and keep what accumulate reads."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sodet.eval.cocoeval import _gt_dataset, check_detections, load_gt, top_indices

    gt = load_gt(gt)
    columns = check_detections(gt, detections)
    keep = top_indices(columns.image_ids, columns.scores, max_det)
    from sodet.eval.cocoeval import _result_dataset

    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset, coco_dt.dataset = _gt_dataset(gt), _result_dataset(gt, columns, keep)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, "bbox")
        E.params.areaRng, E.params.areaRngLbl = [list(area)], ["range"]
        E.params.maxDets = [max_det]
        E.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        E.evaluate()
    image_ids = list(E.params.imgIds)
    n_images, n_t = len(image_ids), len(E.params.iouThrs)
    categories = []
    for k, _ in enumerate(E.params.catIds):
        entries = E.evalImgs[k * n_images:(k + 1) * n_images]  # one area range: images of category k in order
        scores, tps, fps, images = [], [], [], []
        npig = np.zeros(n_images)
        for i, e in enumerate(entries):
            if e is None:
                continue
            npig[i] = float(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            d = len(e["dtScores"][:max_det])
            if not d:
                continue
            matched = np.asarray(e["dtMatches"])[:, :d] > 0
            ignored = np.asarray(e["dtIgnore"])[:, :d].astype(bool)
            scores.append(np.asarray(e["dtScores"][:d], dtype=np.float64))
            tps.append((matched & ~ignored).astype(np.float64))
            fps.append((~matched & ~ignored).astype(np.float64))
            images.append(np.full(d, i))
        if scores:
            s = np.concatenate(scores)
            order = np.argsort(-s, kind="mergesort")  # COCOeval's sort: stable, so ties stay in image order
            tp, fp, image = np.concatenate(tps, 1)[:, order], np.concatenate(fps, 1)[:, order], np.concatenate(images)[order]
        else:
            tp = fp = np.zeros((n_t, 0))
            image = np.zeros(0, dtype=np.int64)
        # a detection ignored at every threshold adds nothing anywhere: drop it (same numbers, less work)
        used = (tp + fp).any(axis=0)
        categories.append(CategoryEval(tp[:, used], fp[:, used], image[used], npig))
    return PerImageEval(image_ids, categories, tuple(area), max_det)


@dataclass
class BootstrapCI:
    """Mean over seeds of (method - baseline) on the evaluated images, and its bootstrap percentile interval."""

    difference: float
    low: float
    high: float
    resamples: int
    seed: int
    confidence: float


def paired_bootstrap(
    base: Sequence[PerImageEval], other: Sequence[PerImageEval], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapCI | None:
    """Percentile interval of mean_k [AP(other_k) - AP(base_k)] over image resamples; ``base[k]`` and
    ``other[k]`` are the runs of seed k, scored on the same images. None without pairs or ground truth."""
    if not base or len(base) != len(other):
        return None
    ids = base[0].image_ids
    if any(run.image_ids != ids for run in (*base, *other)):
        raise ValueError("paired bootstrap needs every run scored on the same images")
    point = [(o.ap(), b.ap()) for b, o in zip(base, other)]
    if any(a is None or b is None for a, b in point):
        return None
    rng = np.random.default_rng(seed)
    n = len(ids)
    diffs = np.empty(resamples)
    for r in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        values = [(o.ap(weights), b.ap(weights)) for b, o in zip(base, other)]
        diffs[r] = np.mean([a - b for a, b in values if a is not None and b is not None])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return BootstrapCI(float(np.mean([a - b for a, b in point])), float(low), float(high), resamples, seed, confidence)
