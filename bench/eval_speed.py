"""Evaluation speed at COCO-val scale: sodet's evaluate vs pycocotools' COCOeval (issue 3: target >= 4x faster).

A synthetic case the size of COCO val2017 (5,000 images, 80 classes, about 35,000 ground-truth boxes with COCO's
size mix: about 41% small, 34% medium, 25% large by annotation area, 1% crowd regions; 500,000 detections =
100 per image: jittered copies of the ground truth, some with the wrong class, plus random false positives),
generated from a seed. Both are timed end to end from the same in-memory dicts (index building, loading the
results, evaluate, accumulate, summarize); sodet's time also covers its input checks and the per-class numbers.
The 12 numbers and the per-class numbers must agree to 1e-6, else the script fails. Prints a markdown block and
writes it to --out.

    python bench/eval_speed.py                      # writes bench/results/eval_speed.md
    python bench/eval_speed.py --images 500         # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sodet.eval.cocoeval import METRIC_KEYS, evaluate, resolve_backend  # noqa: E402

SIZE_MIX = {"small": (0.41, 4.0, 32.0), "medium": (0.34, 32.0, 96.0), "large": (0.25, 96.0, 500.0)}  # share, sqrt-area range


def make_case(images: int, gt_per_image: float, dets_per_image: int, classes: int, seed: int):
    """(COCO ground-truth dict, COCO results list), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    widths = rng.choice([640, 640, 500, 480, 427], images)
    heights = rng.choice([480, 427, 640, 375, 333], images)
    image_ids = np.arange(1, images + 1) * 7 + 100_000  # sparse ids like COCO's
    class_weights = 1.0 / np.arange(1, classes + 1) ** 0.8  # a few frequent classes, a long tail
    class_weights /= class_weights.sum()
    category_ids = np.arange(1, classes + 1)

    n_gt = int(images * gt_per_image)
    gt_image = rng.integers(0, images, n_gt)
    shares = np.array([s for s, _, _ in SIZE_MIX.values()])
    bucket = rng.choice(len(SIZE_MIX), n_gt, p=shares / shares.sum())
    low = np.array([lo for _, lo, _ in SIZE_MIX.values()])[bucket]
    high = np.array([hi for _, _, hi in SIZE_MIX.values()])[bucket]
    side = np.exp(rng.uniform(np.log(low), np.log(high)))  # sqrt of the mask area
    fill = rng.uniform(0.55, 0.9, n_gt)  # mask area / box area, as for COCO instances
    aspect = np.exp(rng.normal(0.0, 0.5, n_gt))
    box_area = side**2 / fill
    w = np.minimum(np.sqrt(box_area * aspect), widths[gt_image] - 1.0)
    h = np.minimum(np.sqrt(box_area / aspect), heights[gt_image] - 1.0)
    x = rng.uniform(0, widths[gt_image] - w)
    y = rng.uniform(0, heights[gt_image] - h)
    area = w * h * fill
    gt_class = rng.choice(category_ids, n_gt, p=class_weights)
    crowd = (rng.random(n_gt) < 0.01) & (area > 96**2 / 2)

    gt = {
        "images": [{"id": int(i), "width": int(wd), "height": int(ht), "file_name": f"{i:012d}.jpg"}
                   for i, wd, ht in zip(image_ids, widths, heights)],  # fmt: skip
        "categories": [{"id": int(c), "name": f"class{c}"} for c in category_ids],
        "annotations": [
            {"id": k + 1, "image_id": int(image_ids[gt_image[k]]), "category_id": int(gt_class[k]),
             "bbox": [float(x[k]), float(y[k]), float(w[k]), float(h[k])], "area": float(area[k]),
             "iscrowd": int(crowd[k])}
            for k in range(n_gt)
        ],
    }  # fmt: skip

    # detections: 0-3 jittered copies per object (more jitter, lower score), 10% with a wrong class
    copies = rng.choice([0, 1, 2, 3], n_gt, p=[0.08, 0.5, 0.3, 0.12])
    src = np.repeat(np.arange(n_gt), copies)
    jitter = rng.uniform(0.02, 0.35, len(src))
    dw = w[src] * jitter * rng.normal(size=len(src))
    dh = h[src] * jitter * rng.normal(size=len(src))
    dx = w[src] * jitter * rng.normal(size=len(src)) * 0.5
    dy = h[src] * jitter * rng.normal(size=len(src)) * 0.5
    det = {
        "image": gt_image[src],
        "x": x[src] + dx, "y": y[src] + dy,
        "w": np.maximum(w[src] + dw, 1.0), "h": np.maximum(h[src] + dh, 1.0),
        "cls": np.where(rng.random(len(src)) < 0.1, rng.choice(category_ids, len(src), p=class_weights), gt_class[src]),
        "score": np.clip(rng.beta(5, 2, len(src)) - jitter, 0.001, 1.0),
    }  # fmt: skip
    # fill every image up to dets_per_image with false positives (random place, size and class, low scores)
    per_image = np.bincount(det["image"], minlength=images)
    over = per_image > dets_per_image
    if over.any():
        raise RuntimeError("too many true-positive copies in an image; lower gt_per_image")
    fp_image = np.repeat(np.arange(images), dets_per_image - per_image)
    n_fp = len(fp_image)
    fp_side = np.exp(rng.uniform(np.log(4), np.log(400), n_fp))
    fp_aspect = np.exp(rng.normal(0.0, 0.6, n_fp))
    fp_w = np.minimum(fp_side * np.sqrt(fp_aspect), widths[fp_image] - 1.0)
    fp_h = np.minimum(fp_side / np.sqrt(fp_aspect), heights[fp_image] - 1.0)
    fp = {
        "image": fp_image,
        "x": rng.uniform(0, widths[fp_image] - fp_w), "y": rng.uniform(0, heights[fp_image] - fp_h),
        "w": fp_w, "h": fp_h,
        "cls": rng.choice(category_ids, n_fp, p=class_weights),
        "score": rng.beta(1, 6, n_fp) * 0.6 + 0.001,
    }  # fmt: skip
    all_det = {k: np.concatenate([det[k], fp[k]]) for k in det}
    order = rng.permutation(len(all_det["image"]))  # results arrive in no particular order
    detections = [
        {"image_id": int(image_ids[all_det["image"][i]]), "category_id": int(all_det["cls"][i]),
         "bbox": [round(float(all_det[k][i]), 2) for k in ("x", "y", "w", "h")], "score": round(float(all_det["score"][i]), 5)}
        for i in order
    ]  # fmt: skip
    return gt, detections


def run_pycocotools(gt: dict, detections: list[dict]):
    """The reference as users run it: COCO index, loadRes, evaluate, accumulate, summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        E = COCOeval(coco_gt, coco_dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def per_class_reference(E) -> dict[int, np.ndarray]:
    """pycocotools' per-class 12 numbers from its own accumulated arrays (its summarize has no per-class switch)."""
    p, precision, recall = E.params, E.eval["precision"], E.eval["recall"]
    areas = {"all": 0, "small": 1, "medium": 2, "large": 3}
    spec = [("p", None, "all", 2), ("p", 0, "all", 2), ("p", 5, "all", 2), ("p", None, "small", 2),
            ("p", None, "medium", 2), ("p", None, "large", 2), ("r", None, "all", 0), ("r", None, "all", 1),
            ("r", None, "all", 2), ("r", None, "small", 2), ("r", None, "medium", 2), ("r", None, "large", 2)]  # fmt: skip
    out = {}
    for k, cat_id in enumerate(p.catIds):
        values = []
        for kind, t, area, m in spec:
            t = slice(None) if t is None else slice(t, t + 1)
            s = precision[t, :, k, areas[area], m] if kind == "p" else recall[t, k, areas[area], m]
            s = s[s > -1]
            values.append(float(s.mean()) if s.size else -1.0)
        out[cat_id] = np.asarray(values)
    return out


def as_array(metrics: dict) -> np.ndarray:
    return np.asarray([-1.0 if metrics[k] is None else metrics[k] for k in METRIC_KEYS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--gt-per-image", type=float, default=7.0)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_speed.md")
    args = parser.parse_args()

    t = time.perf_counter()
    gt, detections = make_case(args.images, args.gt_per_image, args.dets_per_image, args.classes, args.seed)
    generate_s = time.perf_counter() - t
    areas = np.array([a["area"] for a in gt["annotations"]])
    mix = {"small": np.mean(areas < 32**2), "medium": np.mean((areas >= 32**2) & (areas < 96**2)),
           "large": np.mean(areas >= 96**2)}  # fmt: skip
    crowd = sum(a["iscrowd"] for a in gt["annotations"])
    print(f"case: {len(gt['images'])} images, {len(gt['annotations'])} gt ({crowd} crowd), "
          f"{len(detections)} detections, generated in {generate_s:.1f} s", flush=True)  # fmt: skip

    load_before = os.getloadavg()[0]
    backend = resolve_backend("auto")
    gt_for_sodet, dets_for_sodet = copy.deepcopy(gt), copy.deepcopy(detections)  # outside the timed region
    t = time.perf_counter()
    metrics = evaluate(gt_for_sodet, dets_for_sodet, backend="auto")
    sodet_s = time.perf_counter() - t
    print(f"sodet evaluate ({backend}): {sodet_s:.2f} s", flush=True)

    t = time.perf_counter()
    E = run_pycocotools(gt, detections)  # pycocotools writes into both: they are not reused afterwards
    pycocotools_s = time.perf_counter() - t
    print(f"pycocotools COCOeval: {pycocotools_s:.2f} s", flush=True)

    overall_diff = float(np.max(np.abs(as_array(metrics) - np.asarray(E.stats))))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    class_diff = max(
        float(np.max(np.abs(as_array(metrics["per_class"][names[cid]]) - ref)))
        for cid, ref in per_class_reference(E).items()
    )
    if overall_diff > 1e-6 or class_diff > 1e-6:
        raise SystemExit(f"numbers differ: overall max |diff| {overall_diff:.2e}, per class {class_diff:.2e}")

    ratio = pycocotools_s / sodet_s
    from importlib.metadata import version

    lines = [
        "## Evaluation speed: sodet `evaluate` vs pycocotools `COCOeval`",
        "",
        f"- command: `{' '.join(['python bench/eval_speed.py', *sys.argv[1:]])}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"faster-coco-eval {version('faster-coco-eval')}, pycocotools {version('pycocotools')}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; load average before the "
        f"timings {load_before:.2f} (other processes share the machine; both scorers ran back to back in one process)",
        f"- case (seed {args.seed}): {len(gt['images'])} images, {args.classes} classes, {len(gt['annotations'])} "
        f"ground-truth boxes (small {mix['small']:.0%}, medium {mix['medium']:.0%}, large {mix['large']:.0%}; "
        f"{crowd} crowd), {len(detections)} detections ({args.dets_per_image} per image)",
        f"- numbers: all 12 overall and per class ({args.classes} classes) equal to pycocotools within 1e-6 "
        f"(max |diff| overall {overall_diff:.1e}, per class {class_diff:.1e}); AP {metrics['AP']:.3f}, "
        f"APs {metrics['APs']:.3f}, APm {metrics['APm']:.3f}, APl {metrics['APl']:.3f}",
        "",
        "| scorer | time (s) | what is timed |",
        "|---|---|---|",
        f"| pycocotools COCOeval | {pycocotools_s:.2f} | index, loadRes, evaluate, accumulate, summarize (overall only) |",
        f"| sodet evaluate ({backend}) | {sodet_s:.2f} | checks, top-100 cap, index, evaluate, accumulate, "
        f"12 numbers overall and per class |",
        "",
        f"**sodet is {ratio:.1f}x faster** (target >= 4x).",
    ]
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
