"""Inference benchmark (issue 11): full-image vs sliced (SAHI) on HIT-UAV val, and sodet's predict throughput
against the engine's own predict on the same Ultralytics model.

1. ``sodet val`` at --imgsz on HIT-UAV val (../shared/data/hit-uav; --images N takes the first N), full image and
   --slice tiles (+ the full image, SAHI's standard): AP, APs, APm and wall-clock ms per image (inference, NMS,
   merging and COCO scoring of the run, divided by the images).
2. Predict throughput (images/s) on the same images: the engine's DetectionPredictor and sodet's SodetPredictor
   running the same nn.Module (--yolo, seeded weights), no saving, conf 0.25, batch 1, alternated --rounds times,
   best round each. Target: sodet / engine >= 0.95. A third, diagnostic contender: sodet's predictor fed the
   engine predictor's minimum rectangle (``rect_pad = 0``) instead of the validator's half-stride-larger one, to
   show how much of the difference is input size.

    python bench/predict_speed.py                         # full HIT-UAV val (290 images), writes bench/results/predict_speed.md
    python bench/predict_speed.py --images 50             # a subset
    python bench/predict_speed.py --model runs/train/hit/weights/best.pt
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sodet  # noqa: E402,F401  (offline switches first)


def val_run(model, data, imgsz, images, out, slice=None, overlap=0.2, classes=None):
    from sodet.api import val

    t = time.perf_counter()
    _, m = val(model=model, data=data, imgsz=imgsz, device="cpu", fraction=[1.0, images], batch=1, out=str(out), plots=False,
               classes=classes, size_buckets=False, slice=slice, slice_overlap=overlap)
    return m, (time.perf_counter() - t) * 1e3 / images


def throughput(files, imgsz, arch, rounds):
    """Images/s of the engine's predictor and sodet's on the same model object."""
    import torch
    from ultralytics.models.yolo.detect import DetectionPredictor

    from sodet.engine.build import build_model
    from sodet.engine.predictor import SodetPredictor
    from sodet.options import RunOptions

    torch.manual_seed(0)
    net = build_model(RunOptions(model=arch, letterbox="center"), 4, {i: str(i) for i in range(4)}).eval()
    args = {"imgsz": imgsz, "conf": 0.25, "device": "cpu", "save": False, "verbose": False, "mode": "predict", "batch": 1}
    best = {"engine": 0.0, "sodet": 0.0, "sodet_pad0": 0.0}
    for _ in range(rounds):
        for name in best:
            if name == "engine":
                p = DetectionPredictor(overrides={**args, "rect": True})
            else:
                p = SodetPredictor(overrides=args, save_json=False)
                p.rect_pad = 0.0 if name == "sodet_pad0" else p.rect_pad
            p.setup_model(net, verbose=False)
            list(p(source=files[:2], model=net))  # warm up
            t = time.perf_counter()
            n = sum(1 for _ in p(source=files, model=net, stream=True))
            best[name] = max(best[name], n / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hit-uav"))
    ap.add_argument("--model", default="yolox-nano", help="checkpoint fine-tuned on HIT-UAV (default: COCO yolox-nano)")
    ap.add_argument("--images", type=int, default=None, help="first N val images [all]")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--slice", type=int, default=320)
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--yolo", default="yolo11n", help="Ultralytics model for the throughput comparison")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "predict_speed.md"))
    a = ap.parse_args()

    import json

    data = Path(a.data)
    gt = json.loads((data / "annotations" / "val.json").read_text())
    n = min(a.images or len(gt["images"]), len(gt["images"]))
    # a registry model with COCO weights scores the HIT-UAV classes COCO also has; a checkpoint its own classes
    classes = None if a.model.endswith(".pt") else ["person", "car", "bicycle"]
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "sodet_predict_bench"
    full, ms_full = val_run(a.model, str(data), a.imgsz, n, tmp / "full", classes=classes)
    sliced, ms_sliced = val_run(a.model, str(data), a.imgsz, n, tmp / "sliced", a.slice, a.overlap, classes)
    files = [str(data / "images" / "val" / im["file_name"].split("/")[-1]) for im in gt["images"][:n]]
    tp = throughput(files, a.imgsz, a.yolo, a.rounds)

    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"## Inference: full image vs sliced, predict throughput ({datetime.date.today()})",
        "",
        f"`python bench/predict_speed.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs (shared), {platform.python_version()}, CPU only.",
        f"Data: {data.name} val, first {n} of {len(gt['images'])} images{' (subset)' if n < len(gt['images']) else ''}, imgsz {a.imgsz}; "
        f"model {a.model}{' (classes person, car, bicycle)' if classes else ''}.",
        "",
        "| run | AP | APs | APm | ms / image |",
        "|---|---|---|---|---|",
        f"| full image | {fmt(full.get('AP'))} | {fmt(full.get('APs'))} | {fmt(full.get('APm'))} | {ms_full:.0f} |",
        f"| sliced {a.slice} px, overlap {a.overlap} (+ full image, NMS IOS 0.5, val's default) | {fmt(sliced.get('AP'))} | "
        f"{fmt(sliced.get('APs'))} | {fmt(sliced.get('APm'))} | {ms_sliced:.0f} |",
        "",
        f"Predict throughput on the same {n} images, {a.yolo} (seeded weights), batch 1, conf 0.25, best of {a.rounds}:",
        f"engine DetectionPredictor {tp['engine']:.1f} img/s, sodet SodetPredictor {tp['sodet']:.1f} img/s, "
        f"ratio {tp['sodet'] / tp['engine']:.2f} (target >= 0.95). Diagnostic: sodet's predictor on the engine's minimum "
        f"rectangle (no validator half-stride pad) {tp['sodet_pad0']:.1f} img/s, ratio {tp['sodet_pad0'] / tp['engine']:.2f}.",
        "",
    ]
    write_report(lines, a.out)


if __name__ == "__main__":
    main()
