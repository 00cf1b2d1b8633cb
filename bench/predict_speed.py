"""Inference (issues 11, 22.4): sodet's predictor vs the engine's DetectionPredictor, and full-image vs sliced
scoring, with a yolox-nano fine-tuned on HIT-UAV, on HIT-UAV's real val frames (640x512 thermal, 70% of boxes small).

1. Throughput (target at 640 px: sodet >= 0.95x the engine): the engine's DetectionPredictor and sodet's
   SodetPredictor run the SAME nn.Module on the same frames, batch 1, the same conf / iou / max_det, nothing saved,
   alternated A B B A after a warm-up, ``--repeats`` rounds, images/s per round, ratio per round. Both at the same
   geometry (the minimum rectangle: sodet's validator and predictor use the engine predictor's since issue 22);
   a model fine-tuned from YOLOX's COCO weights keeps YOLOX's own square top-left input, whose cost is a third row.
2. ``sodet val`` full image vs ``--slice`` tiles (+ the full image, SAHI's standard): AP, APs, APm, ms per image.

The fine-tuned model: ``--model CKPT``, else one trained here once (``sodet train --model yolox-nano`` on HIT-UAV,
``--train-epochs`` at 416 px, kept under ``--cache``).

    python bench/predict_speed.py                 # writes bench/results/predict_speed.{md,json}
    python bench/predict_speed.py --model runs/train/hit/weights/last.pt --images 100
    python bench/predict_speed.py --quick --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, Run, alternate, med, paired_ratios, spread  # noqa: E402

import sodet  # noqa: E402,F401  (offline switches first)


def fine_tuned(args, data: Path) -> Path:
    """The checkpoint to time: --model, else a yolox-nano fine-tuned on HIT-UAV here (reused when present)."""
    if args.model:
        return Path(args.model)
    epochs, fraction = (1, 0.03) if args.quick else (args.train_epochs, 0.3)
    run = Path(args.cache) / f"predict-nano-e{epochs}-f{fraction}"
    ckpt = run / "weights" / "last.pt"
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "sodet.cli", "train", "--model", "yolox-nano", "--data", str(data), "--epochs", str(epochs),
               "--imgsz", "416", "--batch", "16", "--device", "cpu", "--project", str(run.parent), "--name", run.name,
               "--exist-ok", "-o", f"fraction={fraction}", "-o", "val=False", "-o", "plots=False"]
        print("training the model to time:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return ckpt


def predictors(net, imgsz: int, conf: float, iou: float, max_det: int):
    """The two predictors on one model object, nothing saved, no progress bar."""
    from ultralytics.models.yolo.detect import DetectionPredictor

    from sodet.engine.predictor import SodetPredictor

    args = {"imgsz": imgsz, "conf": conf, "iou": iou, "max_det": max_det, "device": "cpu", "save": False,
            "verbose": False, "mode": "predict", "batch": 1}
    engine = DetectionPredictor(overrides=args)
    ours = SodetPredictor(overrides=args, save_json=False, progress=False)
    for p in (engine, ours):
        p.setup_model(net, verbose=False)
    return engine, ours


def throughput(net, files: list[str], imgsz: int, repeats: int, conf: float, iou: float, max_det: int) -> dict:
    """images/s per round: the engine's predictor, sodet's at the same geometry, sodet's at the model's own."""
    engine, ours = predictors(net, imgsz, conf, iou, max_det)
    own = ours.letterbox  # the model's evaluation letterbox ('top-left' for YOLOX's own square input)
    counts = {}

    def rate(p, letterbox=None, name=""):
        def go():
            if letterbox is not None:
                p.letterbox = letterbox
            t = time.perf_counter()
            n, boxes = 0, 0
            for r in p(source=files, model=net, stream=True):
                n, boxes = n + 1, boxes + len(r.boxes)
            counts[name] = boxes / max(n, 1)
            return n / (time.perf_counter() - t)
        return go

    contenders = {"engine": rate(engine, name="engine"), "sodet": rate(ours, "center", "sodet")}
    if own != "center":
        contenders["sodet_own"] = rate(ours, own, "sodet_own")
    samples = alternate(contenders, repeats=repeats, warmup=1)
    ours.letterbox = own
    return {"samples": samples, "boxes": counts, "own": own}


def val_run(model, data, imgsz, images, out, slice=None, overlap=0.2):
    from sodet.api import val

    t = time.perf_counter()
    _, m = val(model=str(model), data=str(data), imgsz=imgsz, device="cpu", fraction=[1.0, images], batch=1, out=str(out),
               plots=False, size_buckets=False, slice=slice, slice_overlap=overlap)
    return m, (time.perf_counter() - t) * 1e3 / images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "data" / "hit-uav"))
    ap.add_argument("--model", default=None, help="a checkpoint fine-tuned on the data [one trained here]")
    ap.add_argument("--train-epochs", type=int, default=3, help="epochs of the model trained here")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sodet-bench"))
    ap.add_argument("--images", type=int, default=None, help="first N val frames [all 290]")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640, 416])
    ap.add_argument("--slice", type=int, default=320)
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.7)
    ap.add_argument("--max-det", type=int, default=300)
    run = Run("predict_speed", __doc__, ap)
    a = run.parse()
    import torch

    data = Path(a.data)
    gt = json.loads((data / "annotations" / "val.json").read_text())
    n = min(a.images or (12 if a.quick else len(gt["images"])), len(gt["images"]))
    files = [str(data / "images" / "val" / im["file_name"].split("/")[-1]) for im in gt["images"][:n]]
    ckpt = fine_tuned(a, data)
    net = load(ckpt)
    repeats = run.repeats(a.repeats, 1)
    lines = [f"Model: `{ckpt}` (yolox-nano fine-tuned on HIT-UAV; its evaluation letterbox: {net_letterbox(net)}); "
             f"frames: the first {n} of {len(gt['images'])} HIT-UAV val images ({data}); conf {a.conf}, iou {a.iou}, "
             f"max_det {a.max_det}, batch 1, CPU, {torch.get_num_threads()} torch threads; {repeats} alternated rounds "
             "after one warm-up round.", "",
             "| imgsz | engine DetectionPredictor img/s | sodet SodetPredictor img/s (same geometry) | ratio per round | "
             "sodet at the model's own letterbox img/s | boxes per frame engine / sodet |",
             "|---|---|---|---|---|---|"]
    for imgsz in a.imgsz[:1] if a.quick else a.imgsz:
        tp = throughput(net, files, imgsz, repeats, a.conf, a.iou, a.max_det)
        s = tp["samples"]
        ratios = paired_ratios(s["sodet"], s["engine"])
        own = spread(s["sodet_own"], "{:.1f}") + f" ({tp['own']})" if "sodet_own" in s else "(same)"
        lines.append(f"| {imgsz} | {spread(s['engine'], '{:.1f}')} | {spread(s['sodet'], '{:.1f}')} | "
                     f"{spread(ratios, '{:.3f}')} | {own} | {tp['boxes']['engine']:.1f} / {tp['boxes']['sodet']:.1f} |")
        if imgsz == 640:
            r = med(ratios)
            run.target("predict at 640 px, sodet vs the engine's DetectionPredictor (fine-tuned yolox-nano, HIT-UAV frames)",
                       ">= 0.95x images/s", f"{r:.3f}x ({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)", r >= 0.95)
            if "sodet_own" in s:
                own_r = paired_ratios(s["sodet_own"], s["engine"])
                run.target("predict at 640 px at YOLOX's own square top-left input vs the engine's rectangle", "(a cost)",
                           f"{med(own_r):.3f}x ({min(own_r):.3f}-{max(own_r):.3f})", None)
    lines += ["", "Same geometry: both predictors see the frame at the minimum rectangle (the engine predictor's; sodet's "
              "validator scores the same, so `sodet predict` returns what `sodet val` scores: tests/test_predict.py). "
              "sodet keeps several classes per box (the validator's NMS), the engine one.", ""]

    imgsz = a.imgsz[0]
    tmp = Path(a.cache) / "predict-val"
    full, ms_full = val_run(ckpt, data, imgsz, n, tmp / "full")
    sliced, ms_sliced = val_run(ckpt, data, imgsz, n, tmp / "sliced", a.slice, a.overlap)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [f"`sodet val` on the same {n} frames at {imgsz} px (ms per image: the whole run, inference, NMS, merging "
              "and scoring, over the images; once each, a measurement):", "",
              "| run | AP | APs | APm | ms / image |", "|---|---|---|---|---|",
              f"| full image | {fmt(full.get('AP'))} | {fmt(full.get('APs'))} | {fmt(full.get('APm'))} | {ms_full:.0f} |",
              f"| sliced {a.slice} px, overlap {a.overlap} (+ full image) | {fmt(sliced.get('AP'))} | {fmt(sliced.get('APs'))} | "
              f"{fmt(sliced.get('APm'))} | {ms_sliced:.0f} |"]
    run.target(f"sliced val ({a.slice} px tiles + full image) vs full image, {imgsz} px", "(a cost)",
               f"{ms_sliced / ms_full:.1f}x time; APs {fmt(full.get('APs'))} -> {fmt(sliced.get('APs'))}", None)
    run.write(lines, title="Inference: sodet's predictor vs the engine's, full image vs sliced")


def load(ckpt: Path):
    from sodet.api import inference_model

    net, _ = inference_model(str(ckpt), None)
    return net


def net_letterbox(net) -> str:
    from sodet.engine.inference import model_letterbox

    return model_letterbox(net)


if __name__ == "__main__":
    main()
