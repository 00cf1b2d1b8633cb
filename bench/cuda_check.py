"""The prepared GPU check (issue 22.5): what a user's first CUDA run does, for yolox-nano, yolo11n and gfl-r18, in
under 8 minutes on one GPU, written to one results file.

Per model, on the embedded HIT-UAV subset (datasets/hit-uav-mini: 64 train / 32 val thermal frames, travels with
the clone):
1. a short AMP training run: training images/s, peak CUDA memory, every logged loss finite, and its checkpoint
   reloaded and validated (AP);
2. the same run with the weighted box loss and the NWD box loss (``--weighted-loss 0.95 --box-loss nwd``) under
   AMP: finite losses, images/s;
3. a CWD distillation run with the step-1 model as the (AMP, frozen) teacher: step-time ratio and peak memory vs
   the plain run of step 1;
4. ``sodet predict`` on the val frames, and an ONNX export predicted through onnxruntime (CUDA provider when
   onnxruntime-gpu is installed, else the CPU one; the file says which).
Weights: each model's pretrained ones when they are on this machine (``$SODET_HOME``), else random ones (said).

    python bench/cuda_check.py                           # CUDA device 0, writes bench/results/cuda_check.{md,json}
    python bench/cuda_check.py --device cpu --quick      # the same path on CPU in about two minutes (CI's test)
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Run  # noqa: E402

MODELS = ("yolox-nano", "yolo11n", "gfl-r18")


def losses_finite(run_dir: Path) -> tuple[bool, str]:
    """Whether every training loss the engine logged (results.csv) is finite, and the last row's losses."""
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    cols = [c for c in (rows[0] if rows else {}) if "loss" in c and c.strip().startswith("train")]
    values = [float(r[c]) for r in rows for c in cols]
    last = ", ".join(f"{c.strip().split('/')[-1]} {float(rows[-1][c]):.3g}" for c in cols) if rows else "no rows"
    return bool(values) and all(math.isfinite(v) for v in values), last


class Check:
    def __init__(self, device: str):
        import torch

        self.torch, self.device, self.cuda = torch, device, device != "cpu"

    def reset(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        return f"{self.torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if self.cuda else "n/a (CPU)"

    def timed_train(self, fn, **kw) -> tuple[Path, float, str]:
        """Run api.train / api.distill; returns the run folder, training images/s and the peak CUDA memory. The rate
        is the engine's own clock (results.csv ``time`` at each epoch's end) over the epochs after the first (its
        warm-up) and before the last (which validates); with fewer than 3 epochs, the whole run's."""
        import json

        self.reset()
        run_dir = Path(fn(**kw))
        training = json.loads((run_dir / "training.json").read_text())
        clock = [float(r["time"]) for r in csv.DictReader((run_dir / "results.csv").open())]
        if len(clock) >= 3:
            rate = training["epoch_samples"] * (len(clock) - 2) / (clock[-2] - clock[0])
        else:
            rate = training["images_seen"] / clock[-1]
        return run_dir, rate, self.peak()


def check_model(model: str, a, check: Check, work: Path, data: str) -> list[dict]:
    """The four steps for one model; each a row (name, ok, numbers)."""
    from sodet import api
    from sodet.errors import SodetError

    common = dict(data=data, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, device=a.device, workers=a.workers, amp=True,
                  val=False, plots=False, project=str(work), exist_ok=True, fraction=a.fraction)
    rows = []
    try:
        run_dir, ips, mem = check.timed_train(api.train, model=model, name=f"{model}-plain", **common)
        weights = "pretrained"
    except SodetError as e:  # its pretrained weights are not on this machine: random ones
        if "weights" not in str(e).lower():
            raise
        common["weights"] = "none"
        run_dir, ips, mem = check.timed_train(api.train, model=model, name=f"{model}-plain", **common)
        weights = "random (pretrained not on this machine)"
    finite, last = losses_finite(run_dir)
    _, metrics = api.val(model=str(run_dir / "weights" / "last.pt"), data=data, imgsz=a.imgsz, device=a.device,
                         batch=a.batch, out=str(run_dir / "reval"), plots=False)
    rows.append({"step": "AMP training + reload + val", "ok": finite and "AP" in metrics,
                 "numbers": f"{ips:.1f} img/s, peak {mem}, losses finite: {finite} ({last}); reloaded: AP {metrics['AP']:.3f}; weights {weights}"})

    w_dir, w_ips, w_mem = check.timed_train(api.train, model=model, name=f"{model}-wl-nwd", weighted_loss=0.95, box_loss="nwd", **common)
    w_finite, w_last = losses_finite(w_dir)
    rows.append({"step": "weighted + NWD box loss under AMP", "ok": w_finite,
                 "numbers": f"{w_ips:.1f} img/s ({w_ips / ips:.2f}x plain), peak {w_mem}, losses finite: {w_finite} ({w_last})"})

    d_dir, d_ips, d_mem = check.timed_train(api.distill, teacher=str(run_dir / "weights" / "last.pt"), model=model,
                                            name=f"{model}-cwd", **common)
    d_finite, d_last = losses_finite(d_dir)
    rows.append({"step": "CWD distillation, AMP teacher", "ok": d_finite,
                 "numbers": f"{d_ips:.1f} img/s, step time {ips / d_ips:.2f}x plain, peak {d_mem} vs {mem} plain, "
                            f"losses finite: {d_finite} ({d_last})"})

    val_images = str(Path(data) / "images" / "val")
    t = time.perf_counter()
    _, results = api.predict(model=str(run_dir / "weights" / "last.pt"), source=val_images, imgsz=a.imgsz, device=a.device,
                             save=False, project=str(work), name=f"{model}-predict", exist_ok=True, progress=False)
    n = len(results)
    pt_rate = n / (time.perf_counter() - t)
    onnx = api.export(model=str(run_dir / "weights" / "last.pt"), format="onnx", imgsz=a.imgsz, device=a.device,
                      out=str(work / f"{model}-export" / "model.pt"))
    t = time.perf_counter()
    _, o_results = api.predict(model=str(onnx), source=val_images, imgsz=a.imgsz, device=a.device, save=False,
                               project=str(work), name=f"{model}-predict-onnx", exist_ok=True, progress=False)
    o_rate = len(o_results) / (time.perf_counter() - t)
    rows.append({"step": "predict (.pt) and ONNX export + predict", "ok": n > 0 and len(o_results) == n,
                 "numbers": f".pt {pt_rate:.1f} img/s ({sum(len(r.boxes) for r in results)} boxes on {n} frames); "
                            f"ONNX {o_rate:.1f} img/s through onnxruntime {providers()}"})
    return rows


def providers() -> str:
    try:
        import onnxruntime as ort

        return f"{ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    except ImportError:
        return "(not installed)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="0", help="CUDA index, or cpu")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--data", default=str(ROOT / "datasets" / "hit-uav-mini"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=1.0, help="share of the training frames")
    run = Run("cuda_check", __doc__, ap)
    a = run.parse()
    import torch

    if a.quick:  # the path, not numbers: a quarter of the 64 training frames, one epoch, 128 px
        a.epochs, a.imgsz, a.batch, a.workers, a.fraction = 1, 128, 8, 0, 0.25
    if a.device != "cpu" and not torch.cuda.is_available():
        sys.exit("cuda_check: no CUDA device here (torch.cuda.is_available() is False); --device cpu --quick runs the same path on CPU")
    check = Check(a.device)
    device_name = torch.cuda.get_device_name(int(a.device.split(":")[-1])) if check.cuda else "CPU"
    work = Path(tempfile.mkdtemp(prefix="sodet-cuda-check-"))
    lines = [f"Device: **{device_name}**" + (f", CUDA {torch.version.cuda}" if check.cuda else "") +
             f"; data {a.data}; {a.epochs} epochs at {a.imgsz} px, batch {a.batch}, AMP on (the engine turns it off on CPU).", "",
             "| model | step | ok | numbers |", "|---|---|---|---|"]
    start = time.perf_counter()
    failures = 0
    for model in a.models.split(","):
        try:
            rows = check_model(model, a, check, work, a.data)
        except Exception as e:  # noqa: BLE001  (the check reports every model, then fails)
            traceback.print_exc()
            rows = [{"step": "(run)", "ok": False, "numbers": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}]
        for r in rows:
            failures += not r["ok"]
            lines.append(f"| {model} | {r['step']} | {'yes' if r['ok'] else '**NO**'} | {r['numbers']} |")
        bad = [r["step"] for r in rows if not r["ok"]]
        run.target(f"GPU check ({device_name}), {model}: AMP training, weighted + NWD loss, CWD, predict, ONNX",
                   "every step runs, losses finite", "all passed (numbers in its table)" if not bad else f"failed: {'; '.join(bad)}",
                   not bad and len(rows) == 4)
    minutes = (time.perf_counter() - start) / 60
    lines += ["", f"Whole check: {minutes:.1f} min (target < 8 min on one GPU)."]
    if check.cuda and not a.quick:
        run.target(f"GPU check ({device_name}) wall time", "< 8 min", f"{minutes:.1f} min", minutes < 8)
    run.write(lines, title=f"GPU check: {device_name}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
