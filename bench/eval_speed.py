"""Evaluation speed: sodet's ``evaluate`` vs pycocotools' ``COCOeval`` on synthetic COCO-val-scale cases, under
COCO's protocol (issue 3) and AI-TOD's (issue 20.3); target for both: >= 4x faster, numbers equal to 1e-6.

The cases come from one seeded generator shaped like COCO val2017: 80 classes, about 7 ground-truth boxes per image
in COCO's size mix, 1% crowd. The detections are jittered copies of the ground truth plus random false positives,
filled up to a fixed count per image.

- ``coco``: 5,000 images x 100 detections. pycocotools runs index, loadRes, evaluate, accumulate, summarize.
  sodet runs ``evaluate(gt, dets)``: checks, top-100 cap, the 12 numbers overall and per class.
- ``aitod``: up to 5,000 images x 1,500 detections, with AI-TOD's protocol (``sodet/eval/protocols.py``):
  ranges all / very tiny / tiny / small / medium, maxDets [1, 100, 1500], IoU 0.25 + 0.50:0.95. pycocotools runs
  COCOeval with the same ``params`` and reads the 15 numbers from its arrays. sodet runs
  ``evaluate(gt, dets, protocols=[aitod])``, which also computes COCO's 12 numbers. The image count is lowered,
  in steps of 500, to what fits in the available memory.

Both scorers run in one process and alternate round by round (A B, B A, ...: ``common.alternate``), after an
untimed warm-up: the full case for ``coco``, a 50-image case for ``aitod``. Each call gets fresh input copies,
made outside the timed region. The report gives medians, ranges and the ratio of each round. The script exits
with an error if any checked run's numbers, overall or per class, differ from pycocotools' by more than 1e-6.

    python bench/eval_speed.py                                  # writes bench/results/eval_speed.{md,json}
    python bench/eval_speed.py --quick --out /tmp/bench-quick   # smoke check: 300 + 60 images, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, alternate, med, paired_ratios, spread  # noqa: E402  (common puts the repo on sys.path)

from sodet.eval.cocoeval import METRIC_KEYS, evaluate, resolve_backend  # noqa: E402
from sodet.eval.protocols import protocol_by_name  # noqa: E402

SIZE_MIX = {"small": (0.41, 4.0, 32.0), "medium": (0.34, 32.0, 96.0), "large": (0.25, 96.0, 500.0)}  # share, sqrt-area range
TOLERANCE = 1e-6
# AI-TOD's evaluator parameters, written out here (the reference side) and checked against sodet's protocol
AITOD_AREA_RNG = [[0.0, 1e5**2], [0.0, 8.0**2], [8.0**2, 16.0**2], [16.0**2, 32.0**2], [32.0**2, 1e5**2]]
AITOD_AREA_LBL = ["all", "verytiny", "tiny", "small", "medium"]
AITOD_MAX_DETS = [1, 100, 1500]
AITOD_IOUS = [0.25, *np.linspace(0.5, 0.95, 10)]
AITOD_WARMUP_IMAGES = 50
# peak memory of one scorer on the aitod case, measured (bench/eval_speed.py's generator, 1,000 images x 1,500
# detections: pycocotools 3.0 GB, sodet 2.8 GB peak RSS): about 3.1 MB per image at 1,500 detections, linear
GB_PER_DETECTION = 3.1e-3 / 1500


def make_case(images: int, gt_per_image: float, dets_per_image: int, classes: int, seed: int):
    """(COCO ground-truth dict, detections as columns), deterministic in ``seed``. Detections are columns (numpy)
    so that each timed call can get a fresh list of result dicts (pycocotools writes into its inputs)."""
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
    if (per_image > dets_per_image).any():
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
    columns = {
        "image_id": image_ids[all_det["image"][order]],
        "category_id": all_det["cls"][order],
        # Python's round (as a json writer would), once, here; the lists built per call reuse these floats
        "bbox": np.array([[round(v, 2) for v in row] for row in
                          np.stack([all_det[k][order] for k in ("x", "y", "w", "h")], 1).tolist()]).reshape(-1, 4),
        "score": np.array([round(v, 5) for v in all_det["score"][order].tolist()]),
    }  # fmt: skip
    return gt, columns


def detections_list(columns: dict) -> list[dict]:
    """A fresh list of COCO result dicts from the columns."""
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(columns["image_id"].tolist(), columns["category_id"].tolist(),
                                  columns["bbox"].tolist(), columns["score"].tolist())]  # fmt: skip


def fresh_gt(gt: dict) -> dict:
    """A copy of the ground truth that no scorer has written into (pycocotools adds 'ignore' to annotations)."""
    return {"images": [dict(i) for i in gt["images"]], "categories": [dict(c) for c in gt["categories"]],
            "annotations": [dict(a, bbox=list(a["bbox"])) for a in gt["annotations"]]}  # fmt: skip


def case_summary(gt: dict, columns: dict) -> dict:
    areas = np.array([a["area"] for a in gt["annotations"]])
    side = np.sqrt(areas)
    return {
        "images": len(gt["images"]), "gt": len(areas), "crowd": sum(a["iscrowd"] for a in gt["annotations"]),
        "detections": len(columns["score"]), "classes": len(gt["categories"]),
        "coco_mix": {"small": np.mean(side < 32), "medium": np.mean((side >= 32) & (side < 96)), "large": np.mean(side >= 96)},
        "aitod_mix": {"very tiny": np.mean(side < 8), "tiny": np.mean((side >= 8) & (side < 16)),
                      "small": np.mean((side >= 16) & (side < 32)), "medium": np.mean(side >= 32)},
    }  # fmt: skip


# the reference: pycocotools as users run it ------------------------------------------------------------------
def pycocotools_eval(gt: dict, detections: list[dict], aitod: bool):
    """COCO index, loadRes, evaluate, accumulate; then summarize (COCO) or AI-TOD's 15 numbers from the arrays."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        E = COCOeval(coco_gt, coco_dt, "bbox")
        if aitod:
            E.params.areaRng = [list(r) for r in AITOD_AREA_RNG]
            E.params.areaRngLbl = list(AITOD_AREA_LBL)
            E.params.maxDets = list(AITOD_MAX_DETS)
            E.params.iouThrs = np.asarray(AITOD_IOUS, dtype=np.float64)
        E.evaluate()
        E.accumulate()
        if aitod:
            E.aitod_stats = aitod_reference(E)
        else:
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


def aitod_reference(E, category_index: int | None = None) -> dict[str, float]:
    """AI-TOD's numbers (names and definitions from sodet's protocol: AP/AR = the mean over IoU 0.50:0.95, APxx at
    IoU xx, per range and maxDets) read from pycocotools' accumulated arrays as COCOeval.summarize reads its own;
    -1 where a bucket has no ground truth."""
    p, precision, recall = E.params, E.eval["precision"], E.eval["recall"]
    ious = np.asarray(p.iouThrs)
    out = {}
    for st in AITOD.stats:
        t = np.flatnonzero((ious > 0.5 - 1e-9) & (ious < 0.95 + 1e-9)) if st.iou is None else np.flatnonzero(np.abs(ious - st.iou) < 1e-9)
        a, m = p.areaRngLbl.index(st.range), p.maxDets.index(st.max_det)
        s = precision[t, :, :, a, m] if st.kind == "ap" else recall[t, :, a, m]
        if category_index is not None:
            s = s[..., category_index]
        s = s[s > -1]
        out[st.name] = float(s.mean()) if s.size else -1.0
    return out


AITOD = protocol_by_name("aitod")


def check_aitod_params() -> None:
    """The reference's parameters are AI-TOD's as sodet's protocol has them (same ranges, caps and thresholds)."""
    same = ([list(map(float, (lo, hi))) for _, lo, hi in AITOD.ranges] == AITOD_AREA_RNG
            and AITOD.range_names == AITOD_AREA_LBL and list(AITOD.max_dets) == AITOD_MAX_DETS
            and np.allclose(AITOD.iou_thresholds, AITOD_IOUS, rtol=0, atol=1e-12))  # fmt: skip
    if not same:
        raise SystemExit(f"sodet's AI-TOD protocol no longer has the reference's parameters: ranges {AITOD.ranges}, "
                         f"maxDets {AITOD.max_dets}, IoUs {AITOD.iou_thresholds}")  # fmt: skip


# comparing the numbers ---------------------------------------------------------------------------------------
def as_array(metrics: dict, keys) -> np.ndarray:
    return np.asarray([-1.0 if metrics[k] is None else metrics[k] for k in keys])


def reference_numbers(case: str, E) -> dict:
    """pycocotools' numbers: overall and per category id, as arrays (-1: no ground truth)."""
    if case == "coco":
        return {"overall": np.asarray(E.stats), "per_class": per_class_reference(E)}
    keys = [st.name for st in AITOD.stats]
    return {"overall": as_array(E.aitod_stats, keys),
            "per_class": {cid: as_array(aitod_reference(E, k), keys) for k, cid in enumerate(E.params.catIds)}}


def differences(case: str, metrics: dict, ref: dict, names: dict) -> tuple[float, float]:
    """Largest |sodet - pycocotools| over the overall numbers and over the per-class numbers."""
    keys = METRIC_KEYS if case == "coco" else [st.name for st in AITOD.stats]
    ours = metrics if case == "coco" else metrics["protocols"]["aitod"]
    overall = np.abs(as_array(ours, keys) - ref["overall"])
    per_class = [np.abs(as_array(ours["per_class"][names[cid]], keys) - r) for cid, r in ref["per_class"].items()]
    return float(np.max(overall)), float(max(np.max(d) for d in per_class))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def available_gb() -> float | None:
    """MemAvailable of /proc/meminfo (None elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def fitting_images(requested: int, per_image: int, headroom_gb: float) -> tuple[int, str]:
    """The largest image count, up to ``requested`` and in steps of 500, whose estimated peak memory leaves
    ``headroom_gb`` of the machine's available memory free; and a sentence saying how it was chosen."""
    free = available_gb()
    if free is None:
        return requested, ""
    per_image_gb = GB_PER_DETECTION * per_image
    fit = int((free - headroom_gb) / per_image_gb)
    need = requested * per_image_gb
    if fit >= requested:
        return requested, f"estimated peak {need:.1f} GB; {free:.1f} GB was available"
    n = max(500, fit // 500 * 500)
    return n, (f"{requested:,} images were asked for, but at an estimated {per_image_gb * 1000:.1f} GB per 1,000 images "
               f"(peak of one scorer, measured at 1,000 images) they need about {need:.0f} GB and only {free:.1f} GB "
               f"was available with {headroom_gb:g} GB kept free for the machine's other work, so the case has "
               f"{n:,} images, the largest count (in steps of 500) that fits")


def time_case(case: str, gt: dict, columns: dict, repeats: int, warmup_case=None) -> dict:
    """The two scorers alternated round by round on fresh inputs; every sodet run's numbers are checked against
    pycocotools' on the same case (in rounds where sodet goes first, against the previous round's: the same
    case gives the same numbers)."""
    aitod = case == "aitod"
    protocols = [AITOD] if aitod else []
    state: dict = {"gt": gt, "columns": columns}
    checks: list[tuple[float, float]] = []

    def scored(fn):
        """Time ``fn(gt_copy, detections)`` alone: the copies are made before it, and freed and collected after."""
        g, d = fresh_gt(state["gt"]), detections_list(state["columns"])
        gc.collect()
        start = time.perf_counter()
        result = fn(g, d)
        elapsed = time.perf_counter() - start
        del g, d
        return result, elapsed

    def pycocotools():
        E, elapsed = scored(lambda g, d: pycocotools_eval(g, d, aitod))
        state["ref"] = reference_numbers(case, E)
        del E
        gc.collect()
        return elapsed

    def sodet():
        metrics, elapsed = scored(lambda g, d: evaluate(g, d, backend="auto", protocols=protocols))
        if "ref" in state:
            names = {c["id"]: c["name"] for c in state["gt"]["categories"]}
            checks.append(differences(case, metrics, state["ref"], names))
            if max(checks[-1]) > TOLERANCE:
                raise SystemExit(f"{case}: sodet's numbers differ from pycocotools': max |diff| overall "
                                 f"{checks[-1][0]:.2e}, per class {checks[-1][1]:.2e} (tolerance {TOLERANCE:g})")  # fmt: skip
        state["metrics"] = metrics
        gc.collect()
        return elapsed

    contenders = {"pycocotools": pycocotools, "sodet": sodet}
    if warmup_case is not None:  # an untimed warm-up on a small case, then the rounds without alternate's warm-up
        state.update(gt=warmup_case[0], columns=warmup_case[1])
        pycocotools(), sodet()
        state.update(gt=gt, columns=columns)
        state.pop("ref")
        checks.clear()
        times = alternate(contenders, repeats=repeats, warmup=0)
    else:
        times = alternate(contenders, repeats=repeats, warmup=1)
    if not checks:
        raise SystemExit(f"{case}: no round compared the numbers")
    out = {"times": times, "ratios": paired_ratios(times["pycocotools"], times["sodet"]), "checks": len(checks),
           "overall_diff": max(c[0] for c in checks), "class_diff": max(c[1] for c in checks),
           "metrics": state["metrics"], "rss_gb": peak_rss_gb()}  # fmt: skip
    state.clear()
    gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="coco,aitod", help="comma-separated: coco, aitod [both]")
    parser.add_argument("--images", type=int, default=5000, help="images of the coco case [5000; quick 300]")
    parser.add_argument("--aitod-images", type=int, default=5000,
                        help="images of the aitod case, lowered to what fits in memory (see --headroom-gb) [5000; quick 60]")
    parser.add_argument("--headroom-gb", type=float, default=4.0,
                        help="memory to leave free for the machine's other work when sizing the aitod case [4]")
    parser.add_argument("--aitod-dets-per-image", type=int, default=1500)
    parser.add_argument("--gt-per-image", type=float, default=7.0)
    parser.add_argument("--dets-per-image", type=int, default=100, help="detections per image of the coco case")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, help="rounds per case [coco 5, aitod 3; quick 1]")
    parser.add_argument("--seed", type=int, default=0)
    run = Run("eval_speed", __doc__, parser)
    args = run.parse()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or set(cases) - {"coco", "aitod"}:
        parser.error("--cases takes coco and/or aitod")
    check_aitod_params()
    backend = resolve_backend("auto")
    images = {"coco": 300 if run.quick else args.images, "aitod": 60 if run.quick else args.aitod_images}
    per_image = {"coco": args.dets_per_image, "aitod": args.aitod_dets_per_image}
    sizing = ""
    repeats = {"coco": run.repeats(args.repeats or 5, 1), "aitod": run.repeats(args.repeats or 3, 1)}
    from importlib.metadata import version

    lines = [f"Scorers: pycocotools {version('pycocotools')} `COCOeval`; sodet `evaluate` (backend {backend}"
             + (f", faster-coco-eval {version('faster-coco-eval')}" if backend == "faster-coco-eval" else "") + "). "
             "They run in one process and alternate round by round (pycocotools, sodet | sodet, pycocotools | ...) "
             "after an untimed warm-up. Each call gets fresh input copies, made outside the timed region. Every "
             "round's numbers, overall and per class, are checked against pycocotools' within 1e-6.", ""]  # fmt: skip
    for case in cases:
        if case == "aitod":  # sized when it starts: after the coco case, with the memory available then
            images[case], sizing = fitting_images(images[case], per_image[case], args.headroom_gb)
        t = time.perf_counter()
        gt, columns = make_case(images[case], args.gt_per_image, per_image[case], args.classes, args.seed)
        s = case_summary(gt, columns)
        print(f"{case}: {s['images']} images, {s['gt']} gt ({s['crowd']} crowd), {s['detections']} detections, "
              f"generated in {time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip
        warm = None
        if case == "aitod":
            warm = make_case(min(AITOD_WARMUP_IMAGES, images[case]), args.gt_per_image, per_image[case], args.classes, args.seed + 1)
        r = time_case(case, gt, columns, repeats[case], warm)
        del gt, columns, warm
        gc.collect()
        pyc, ours, ratios = r["times"]["pycocotools"], r["times"]["sodet"], r["ratios"]
        ratio = med(ratios)
        diff = max(r["overall_diff"], r["class_diff"])
        rounds = f"median of {len(ratios)}" + (f"; {min(ratios):.1f}-{max(ratios):.1f}" if len(ratios) > 1 else "")
        print(f"{case}: pycocotools {spread(pyc)} s, sodet {spread(ours)} s, ratio {spread(ratios)}", flush=True)
        m = r["metrics"]
        if case == "coco":
            title = f"COCO protocol, {s['images']:,} images x {per_image[case]} detections"
            numbers = (f"all 12 overall and per class ({s['classes']} classes); AP {m['AP']:.3f}, APs {m['APs']:.3f}, "
                       f"APm {m['APm']:.3f}, APl {m['APl']:.3f}")  # fmt: skip
            pyc_what = "index, loadRes, evaluate, accumulate, summarize (overall only)"
            ours_what = "checks, top-100 cap, index, evaluate, accumulate, 12 numbers overall and per class"
            bench = (f"COCO-val-scale scoring ({s['images']:,} images, {s['detections']:,} detections) vs pycocotools")
            mix = ", ".join(f"{k} {v:.0%}" for k, v in s["coco_mix"].items())
        else:
            a = m["protocols"]["aitod"]
            title = f"AI-TOD protocol, {s['images']:,} images x {per_image[case]} detections"
            numbers = (f"all 15 AI-TOD numbers overall and per class ({s['classes']} classes); AP {a['AP']:.3f}, "
                       f"AP25 {a['AP25']:.3f}, APvt {a['APvt']:.3f}, APt {a['APt']:.3f}, APs {a['APs']:.3f}, "
                       f"APm {a['APm']:.3f}, AR1500 {a['AR1500']:.3f}")  # fmt: skip
            pyc_what = ("index, loadRes, evaluate, accumulate with AI-TOD's areaRng/areaRngLbl, maxDets "
                        f"{AITOD_MAX_DETS}, iouThrs 0.25 + 0.50:0.95; the 15 numbers read from its arrays")
            ours_what = ("checks, index, COCO's 12 numbers at the top-100 cap AND the AI-TOD protocol at the top-1500 "
                         "cap (evaluate, accumulate, 15 numbers), each overall and per class")
            bench = (f"AI-TOD-protocol scoring ({s['images']:,} images x {per_image[case]:,} = {s['detections']:,} detections) "
                     "vs pycocotools with the same parameters")
            mix = ", ".join(f"{k} {v:.0%}" for k, v in s["aitod_mix"].items())
        ok = ratio >= 4.0
        run.target(bench, ">= 4x faster, numbers equal to 1e-6",
                   f"{ratio:.1f}x ({rounds}), max diff {diff:.0e}", met=ok)  # fmt: skip
        lines += [
            f"### {title}",
            "",
            f"- case (seed {args.seed}): {s['images']} images, {s['classes']} classes, {s['gt']} ground-truth boxes "
            f"({mix} by sqrt of area; {s['crowd']} crowd), {s['detections']} detections ({per_image[case]} per image)",
            f"- numbers: {numbers}; max |diff| to pycocotools over {r['checks']} checked run(s): overall "
            f"{r['overall_diff']:.1e}, per class {r['class_diff']:.1e}",
            f"- peak memory of the process so far: {r['rss_gb']:.1f} GB",
            *([f"- image count: {sizing}"] if case == "aitod" and sizing else []),
            "",
            "| scorer | time (s): median (min - max, n) | what is timed |",
            "|---|---|---|",
            f"| pycocotools COCOeval | {spread(pyc, '{:.2f}')} | {pyc_what} |",
            f"| sodet evaluate ({backend}) | {spread(ours, '{:.2f}')} | {ours_what} |",
            "",
            f"Per-round ratio pycocotools / sodet: {', '.join(f'{x:.2f}' for x in ratios)}. **sodet is {ratio:.1f}x "
            f"faster** ({rounds}; target >= 4x: {'met' if ok else 'NOT met'}).",
            "",
        ]
    run.write(lines, title="Evaluation speed: sodet `evaluate` vs pycocotools `COCOeval` (COCO and AI-TOD protocols)")


if __name__ == "__main__":
    main()
