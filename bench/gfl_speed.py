"""GFL speed (issue 10.7): gfl-r50 inference ms/image and training images/s beside yolox-tiny, and sodet's GFL-R50
forward time against MMDetection 3.3.0's own on the same input and weights (target ratio <= 1.0).

Inference: batch 1, eval mode, ``model(img)`` (the engine's path: decoded boxes and scores before NMS). Training:
forward + the model's own loss + backward + SGD step on a batch of random images with COCO-like boxes. Medians of
``--reps`` per round after warm-up, the order of the models alternating between ``--rounds``. The MMDetection comparison (``--mmdet-python``, the interpreter of the
venv ``../shared/tools/mmref/build_venv.sh`` makes) runs MMDetection's backbone + neck + head in a separate process
on sodet's weights (written in MMDetection's layout, loaded strict) and the same normalised input; the two
processes run one after the other, on the same threads, repetitions interleaved by process round; the script also
reports the largest difference between the two models' raw head outputs.

    python bench/gfl_speed.py                                    # CPU, 640 px
    python bench/gfl_speed.py --mmdet-python /path/to/mmref-venv/bin/python
    python bench/gfl_speed.py --device cuda:0
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MMREF = ROOT.parent / "shared" / "tools" / "mmref"

from loss_step_time import make_batch  # noqa: E402

WARMUP = 4  # untimed calls first: on CPU the first few calls at a new shape take up to 6x longer (measured)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(name: str, nc: int = 80):
    from sodet.models.registry import get_entry

    return get_entry(name).build(nc)


def inference_ms(model, imgsz: int, device: str) -> float:
    """One timed ``model(img)`` of batch 1 (eval mode, no autograd)."""
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    with torch.no_grad():
        sync(device)
        t = time.perf_counter()
        model(x)
        sync(device)
    return (time.perf_counter() - t) * 1000


def train_step_rate(model, batch: dict, opt, device: str) -> float:
    """Images/s of one forward + own loss + backward + SGD step."""
    sync(device)
    t = time.perf_counter()
    loss, _ = model(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sync(device)
    return batch["img"].shape[0] / (time.perf_counter() - t)


def interleaved(names: list[str], imgsz: int, batch: int, reps: int, device: str, rounds: int = 2) -> dict:
    """Median inference ms and training images/s per model. Each model's timings run back to back after untimed
    warm-ups (WARMUP inferences, 2 training steps), and the order of the models
    alternates between rounds, so that drift and other load on a shared machine hit both alike."""
    images, boxes = make_batch(batch, imgsz, 80, seed=0)
    b = {"img": images.to(device), "batch_idx": boxes[:, 0].to(device), "cls": boxes[:, 1:2].to(device),
         "bboxes": (boxes[:, 2:] / imgsz).to(device)}
    models = {n: build(n).to(device) for n in names}
    opts = {n: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-6, momentum=0.9) for n, m in models.items()}
    ms = {n: [] for n in names}
    ips = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            m = models[n].eval()
            ms[n] += [inference_ms(m, imgsz, device) for _ in range(reps + WARMUP)][WARMUP:]
            m.train()
            ips[n] += [train_step_rate(m, b, opts[n], device) for _ in range(reps + 2)][2:]
    return {n: (statistics.median(ms[n]), statistics.median(ips[n])) for n in names}


MMDET_SCRIPT = r"""
import sys, time, json, torch
sys.path.insert(0, {mmref!r})
from gfl_reference import build_gfl
torch.set_num_threads({threads})
m = build_gfl(50, 80)
m.load_state_dict(torch.load({weights!r}, map_location='cpu'), strict=True)
m.eval()
x = torch.load({inp!r})
times = []
with torch.no_grad():
    for i in range({reps} + {warmup}):
        t = time.perf_counter()
        cls, reg = m.bbox_head(m.neck(m.backbone(x)))
        if i >= {warmup}:
            times.append((time.perf_counter() - t) * 1000)
torch.save({{'cls': cls, 'reg': reg}}, {out!r})
print(json.dumps(times))
"""


def sodet_forward_ms(model, x: torch.Tensor, reps: int):
    times = []
    with torch.no_grad():
        for i in range(reps + WARMUP):
            t = time.perf_counter()
            feats = model.neck(model.backbone(x)[1:])
            cls, reg = model.bbox_head(feats)
            if i >= WARMUP:
                times.append((time.perf_counter() - t) * 1000)
    return times, cls, reg


def compare_mmdet(python: str, imgsz: int, reps: int, rounds: int) -> dict:
    """sodet vs MMDetection forward (backbone + neck + head) on the same normalised input and weights."""
    torch.manual_seed(0)
    model = build("gfl-r50").eval()
    with torch.no_grad():  # weights that make every part matter (BatchNorm statistics, Scales)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        for s in model.bbox_head.scales:
            s.scale.uniform_(0.5, 1.5)
    tmp = Path(tempfile.mkdtemp(prefix="sodet-gfl-bench-"))
    torch.save(model.state_dict(), tmp / "w.pth")
    x = torch.randn(1, 3, imgsz, imgsz)
    torch.save(x, tmp / "x.pt")
    script = MMDET_SCRIPT.format(mmref=str(MMREF), threads=torch.get_num_threads(), weights=str(tmp / "w.pth"),
                                 inp=str(tmp / "x.pt"), reps=reps, warmup=WARMUP, out=str(tmp / "ref.pt"))
    ours, theirs = [], []
    for _ in range(rounds):
        t, cls, reg = sodet_forward_ms(model, x, reps)
        ours += t
        r = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True)
        theirs += json.loads(r.stdout.strip().splitlines()[-1])
    ref = torch.load(tmp / "ref.pt")
    diff = max(float((a - b).abs().max()) for a, b in zip(cls + reg, ref["cls"] + ref["reg"]))
    scale = max(float(b.abs().max()) for b in ref["cls"] + ref["reg"])
    return {"sodet": statistics.median(ours), "mmdet": statistics.median(theirs), "n": len(ours), "diff": diff, "scale": scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=2, help="training batch")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="rounds (model order alternating; sodet/MMDetection processes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mmdet-python", help="python of the MMDetection reference venv (../shared/tools/mmref)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gfl_speed.md"))
    a = ap.parse_args()
    import sodet  # noqa: F401  (offline switches)

    torch.manual_seed(0)
    speed = interleaved(["gfl-r50", "yolox-tiny"], a.imgsz, a.batch, a.reps, a.device, a.rounds)
    rows = [f"| {n} | {ms:.0f} | {ips:.2f} |" for n, (ms, ips) in speed.items()]
    cmd = f"python bench/gfl_speed.py --imgsz {a.imgsz} --batch {a.batch} --reps {a.reps} --rounds {a.rounds} --device {a.device}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else f"{cpu_model()}, {os.cpu_count()} cores"
    lines = [
        "## GFL speed: gfl-r50 beside yolox-tiny, and sodet's GFL-R50 vs MMDetection's (issue 10.7)",
        "",
        f"- command: `{cmd}{' --mmdet-python VENV/bin/python' if a.mmdet_python else ''}` (VENV: "
        "`bash ../shared/tools/mmref/build_venv.sh VENV`)",
        f"- machine: {dev}; torch {torch.__version__} ({torch.get_num_threads()} threads), Python "
        f"{platform.python_version()}; load average at the end {load:.2f} (the machine is shared)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- inference: batch 1, {a.imgsz} px, eval mode, `model(img)` up to the engine's NMS, median of {a.reps} x {a.rounds}; "
        f"training: forward + own loss + backward + SGD step, batch {a.batch} random images with COCO-like boxes, "
        f"median of {a.reps} x {a.rounds} rounds; 80 classes; each model's timings back to back after warm-up, model order "
        "alternating between rounds",
        "",
        "| model | inference ms/image | training images/s |",
        "|---|---|---|",
        *rows,
    ]
    if a.mmdet_python:
        c = compare_mmdet(a.mmdet_python, a.imgsz, a.reps, a.rounds)
        lines += [
            "",
            f"sodet vs MMDetection 3.3.0 (`../shared/tools/mmref`, same weights loaded strict, same normalised "
            f"1x3x{a.imgsz}x{a.imgsz} input, backbone + neck + head, separate processes in turn, {c['n']} timings each):",
            "",
            "| implementation | forward ms (median) |",
            "|---|---|",
            f"| sodet GFL-R50 | {c['sodet']:.0f} |",
            f"| MMDetection GFL-R50 | {c['mmdet']:.0f} |",
            "",
            f"**ratio sodet / MMDetection = {c['sodet'] / c['mmdet']:.2f}** (target <= 1.0); largest difference of "
            f"the raw head outputs {c['diff']:.1e} (outputs up to {c['scale']:.1f}).",
        ]
    write_report(lines, a.out)


if __name__ == "__main__":
    main()
