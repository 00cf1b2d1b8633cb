"""Image-level paired bootstrap of a COCO AP difference: is a gain still there when other images are scored?

Seeds tell training noise apart from a method's effect; the choice of evaluation images is a second source of
noise that a seed-only interval leaves out (a study scores every run on the same fixed images). Here the images
are resampled with replacement and COCO AP is recomputed for every resample, exactly: COCOeval's per-image
evaluation (which detection matches which ground truth, what is ignored) does not depend on the other images, so
it is run once per run (pycocotools' ``evaluate``), and each resample re-runs only COCOeval's ``accumulate`` with
every image counted as often as it was drawn. The result equals pycocotools run on a data set that holds the
drawn images (each copy under its own id, copies next to each other), which ``tests/test_study.py`` checks.
Resamples are scored in batches, each run once per study (``resampled_ap``): 2,000 resamples of a 579-image
test split take seconds per run, not minutes.

The same resample is applied to the baseline's and the method's runs (a paired bootstrap); with several seeds
the difference of each resample is the mean over seeds of (method - baseline) of the same seed.
"""

from __future__ import annotations

import contextlib
import io
import warnings
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

    def ap_batch(self, weights: np.ndarray) -> np.ndarray:
        """``ap`` for every row of ``weights`` (R, n_images) at once; NaN where no ground truth counts."""
        values = np.stack([category_ap_batch(c, weights) for c in self.categories]) if self.categories else None
        if values is None:
            return np.full(len(weights), np.nan)
        counted = ~np.isnan(values)
        n = counted.sum(0)
        with np.errstate(invalid="ignore"):
            return np.where(n > 0, np.where(counted, values, 0.0).sum(0) / np.maximum(n, 1), np.nan)


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


def category_ap_batch(c: CategoryEval, weights: np.ndarray) -> np.ndarray:
    """``category_ap`` for every row of ``weights`` (R, n_images), NaN for None. Only true positives move the
    interpolated precision (COCO's envelope is a maximum to the right, and precision falls along false positives),
    so each threshold's curve is evaluated at its true positives alone, with the false positives before each one
    summed per gap: the counts are whole numbers, so every sum is exact and the result equals ``category_ap``'s."""
    weights = np.asarray(weights, dtype=np.float64)
    n_runs = len(weights)
    npig = weights @ c.npig
    out = np.zeros(n_runs)
    for tp_image, fp_per_gap in _threshold_curves(c, weights.shape[1]):
        if not len(tp_image):
            continue  # no true positive at this threshold: precision 0 at every recall
        tp = np.cumsum(weights[:, tp_image], axis=1)
        fp = np.cumsum(np.asarray((fp_per_gap @ weights.T).T), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp / npig[:, None]
        precision = tp / (fp + tp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for r in range(n_runs):
            idx = np.searchsorted(recall[r], RECALLS, side="left")
            out[r] += envelope[r, idx[idx < len(tp_image)]].sum()
    out /= c.tp.shape[0] * len(RECALLS)
    out[npig == 0] = np.nan
    return out


def _threshold_curves(c: CategoryEval, n_images: int) -> list[tuple]:
    """Per IoU threshold: the images of the true positives in score order, and a sparse (true positives x images)
    count of the false positives in the gap before each true positive (after the last one they change nothing);
    cached on ``c``."""
    from scipy.sparse import csr_matrix

    cached = getattr(c, "_curves", None)
    if cached is None:
        cached = []
        for t in range(c.tp.shape[0]):
            tp_pos, fp_pos = np.flatnonzero(c.tp[t]), np.flatnonzero(c.fp[t])
            gap = np.searchsorted(tp_pos, fp_pos)  # true positives before each false positive
            inside = gap < len(tp_pos)
            counts = csr_matrix((np.ones(int(inside.sum())), (gap[inside], c.image[fp_pos[inside]])),
                                shape=(len(tp_pos), n_images))
            cached.append((c.image[tp_pos], counts))
        c._curves = cached
    return cached


def per_image_eval(
    gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], area: tuple[float, float] = (0.0, 1e10),
    max_det: int = 100, iou_thresholds: np.ndarray = COCO_IOUS,
) -> PerImageEval:
    """Run pycocotools' COCOeval.evaluate for one area range and cap, and keep what accumulate reads."""
    from sodet.eval.cocoeval import capped, check_detections, load_gt
    from sodet.eval.scoring import pycocotools_eval

    gt = load_gt(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        E = pycocotools_eval(gt, capped(check_detections(gt, detections), max_det))
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
    weights = resample_weights(len(ids), resamples, seed)
    per_seed = np.stack([o_ap - b_ap for o_ap, b_ap in ((resampled_ap(o, weights, seed), resampled_ap(b, weights, seed))
                                                          for b, o in zip(base, other))])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no ground truth in range: skipped
        diffs = np.nanmean(per_seed, axis=0)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return BootstrapCI(float(np.mean([a - b for a, b in point])), float(low), float(high), resamples, seed, confidence)


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n): how often each image is drawn in each resample (n draws with replacement, seeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)


def resampled_ap(run: PerImageEval, weights: np.ndarray, seed: int, chunk: int = 200) -> np.ndarray:
    """The run's AP on every resample; kept on the run, so that a run met in several comparisons (the baseline,
    a control) is scored on the same resamples once."""
    key = (weights.shape, seed)
    cache = run.__dict__.setdefault("_resampled", {})
    if key not in cache:
        cache[key] = np.concatenate([run.ap_batch(weights[i:i + chunk]) for i in range(0, len(weights), chunk)])
    return cache[key]
