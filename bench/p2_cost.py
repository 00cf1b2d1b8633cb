"""P2 cost (issue 19.6): training step time and inference ms/image of each P2 (stride-4) model vs its base
model, with parameters and GFLOPs; reported, no target.

Pairs (those registered): yolox-nano, yolov8n, yolo26n and their -p2, random init, 4 classes, each at its default
size (YOLOX 416, Ultralytics 640 px). Step: forward + loss + backward + SGD, batch ``--batch`` of real HIT-UAV
training images with their boxes (random images with HIT-UAV-like boxes if the data is absent). Inference: batch 1,
eval mode, no grad, BatchNorm folded (as the predictor runs it), no NMS; a sample is the mean of ``--calls`` calls.
Base and P2 alternate (A B, B A, ...) after warm-ups; medians, ranges, per-round ratios P2 / base. CPU: process CPU
time on one thread (robust to jobs sharing the cores; ``--clock wall`` for wall time); CUDA: wall time, AMP.
GFLOPs: thop, one image (2 x MACs).

    python bench/p2_cost.py                  # batch 8
    python bench/p2_cost.py --device cuda:0 --batch 16
    python bench/p2_cost.py --quick --out /tmp/bench-quick           # smoke check: 192 px, batch 2, 2 rounds
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Run, alternate, med, paired_ratios, spread  # noqa: E402

import torch  # noqa: E402

from sodet.engine.build import build_model  # noqa: E402
from sodet.models.registry import get_entry, list_models  # noqa: E402
from sodet.options import RunOptions  # noqa: E402

PAIRS = [("yolox-nano", "yolox-nano-p2"), ("yolov8n", "yolov8n-p2"), ("yolo26n", "yolo26n-p2")]
HIT_UAV = SHARED / "data" / "hit-uav"
QUICK_IMGSZ = 192  # --quick: batch 2 at this size, 2 rounds


# data ---------------------------------------------------------------------------------------------------------
def hit_uav_batch(n: int, imgsz: int, device, root: Path = HIT_UAV) -> tuple[dict, dict, str]:
    """An engine training batch (RGB 0-1 images, normalised xywh boxes, flat with batch_idx) of ``n`` HIT-UAV
    training images spread over the split, letterboxed to ``imgsz`` (centred, grey 114) with their own boxes;
    random images with boxes of HIT-UAV's sizes (6-40 px) when the data is absent. Returns (batch, names, what)."""
    ann = root / "annotations" / "train.json"
    if not ann.is_file():
        return random_batch(n, imgsz, device)
    import cv2
    import numpy as np

    d = json.loads(ann.read_text())
    cats = sorted(c["id"] for c in d["categories"])
    names = {i: next(c["name"] for c in d["categories"] if c["id"] == k) for i, k in enumerate(cats)}
    boxes_of = defaultdict(list)
    for a in d["annotations"]:
        boxes_of[a["image_id"]].append(a)
    images = sorted((im for im in d["images"] if boxes_of[im["id"]]), key=lambda im: im["file_name"])
    picks = [images[round(i * (len(images) - 1) / max(n - 1, 1))] for i in range(n)]
    imgs, idx, cls, xywh, small = [], [], [], [], 0
    for i, im in enumerate(picks):
        pix = cv2.imread(str(root / "images" / "train" / im["file_name"]), cv2.IMREAD_COLOR)[..., ::-1]
        h, w = pix.shape[:2]
        r = imgsz / max(h, w)
        nw, nh = round(w * r), round(h * r)
        top, left = (imgsz - nh) // 2, (imgsz - nw) // 2
        canvas = np.full((imgsz, imgsz, 3), 114, np.uint8)
        canvas[top:top + nh, left:left + nw] = cv2.resize(np.ascontiguousarray(pix), (nw, nh), interpolation=cv2.INTER_LINEAR)
        imgs.append(torch.from_numpy(canvas).permute(2, 0, 1))
        for a in boxes_of[im["id"]]:
            x, y, bw, bh = a["bbox"]
            small += bw * bh < 32 * 32
            idx.append(i)
            cls.append(cats.index(a["category_id"]))
            xywh.append([((x + bw / 2) * r + left) / imgsz, ((y + bh / 2) * r + top) / imgsz, bw * r / imgsz, bh * r / imgsz])
    batch = {
        "img": (torch.stack(imgs).float() / 255).to(device),
        "batch_idx": torch.tensor(idx, dtype=torch.float32, device=device),
        "cls": torch.tensor(cls, dtype=torch.float32, device=device).view(-1, 1),
        "bboxes": torch.tensor(xywh, dtype=torch.float32, device=device),
    }
    what = (f"{n} real HIT-UAV train images (spread over the split), letterboxed to {imgsz} px, their {len(idx)} boxes "
            f"({small / max(len(idx), 1):.0%} under 32x32 px in the 640x512 frames)")
    return batch, names, what


def random_batch(n: int, imgsz: int, device) -> tuple[dict, dict, str]:
    """Random images, 10 boxes each of HIT-UAV-like sides (log-uniform 6-40 px at 640 px), 4 classes."""
    g = torch.Generator().manual_seed(0)
    k = 10 * n
    side = torch.exp(torch.empty(k, 2).uniform_(math.log(6), math.log(40), generator=g)) / 640
    centre = torch.rand(k, 2, generator=g) * (1 - side) + side / 2
    batch = {
        "img": torch.rand(n, 3, imgsz, imgsz, generator=g).to(device),
        "batch_idx": torch.arange(n).repeat_interleave(10).float().to(device),
        "cls": torch.randint(0, 4, (k, 1), generator=g).float().to(device),
        "bboxes": torch.cat([centre, side], 1).to(device),
    }
    names = {0: "person", 1: "car", 2: "bicycle", 3: "other-vehicle"}
    return batch, names, f"{n} RANDOM images at {imgsz} px (HIT-UAV not found), 10 boxes each of 6-40 px sides"


# models and timing --------------------------------------------------------------------------------------------
def build(name: str, names: dict, device):
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    model = build_model(RunOptions(model=name, freeze_bn=False), len(names), names).to(device).train()
    model.args = get_cfg()  # the engine gives every model its hyperparameters (Ultralytics' criterion reads them)
    return model


def gflops(model, imgsz: int) -> float | None:
    """thop's MACs x 2 of one image at ``imgsz`` (on a copy: thop leaves counters on the modules it profiles)."""
    try:
        import thop

        m = copy.deepcopy(model).eval().float().cpu()
        macs, _ = thop.profile(m, inputs=[torch.zeros(1, 3, imgsz, imgsz)], verbose=False)
        return macs * 2 / 1e9
    except Exception:  # noqa: BLE001  (no thop, or a layer it cannot trace)
        return None


def inference_copy(model):
    """What the predictor runs: an eval-mode copy with BatchNorm folded into the convolutions."""
    m = copy.deepcopy(model).eval()
    try:
        return m.fuse(verbose=False)
    except Exception:  # noqa: BLE001
        return m


def cpu_clock(args, device) -> bool:
    """Whether to time with process CPU time on one thread (``--clock``); sets the thread count then."""
    cpu = args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu")
    if cpu:
        torch.set_num_threads(1)
    return cpu


class Clock:
    def __init__(self, device, cpu_time: bool):
        self.device = device
        self.now = time.process_time if cpu_time else time.perf_counter

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn, calls: int = 1):
        """A contender for ``alternate``: the seconds per call of ``calls`` calls of ``fn``."""
        def run() -> float:
            self.sync()
            t = self.now()
            for _ in range(calls):
                fn()
            self.sync()
            return (self.now() - t) / calls

        return run


def train_step(model, batch, device, amp: bool):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)

    def step():
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            loss, _ = model.loss(batch)
        loss.sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer(model, img):
    def call():
        with torch.no_grad():
            model(img)

    return call


def fmt_ratio(ratios: list[float]) -> str:
    return f"{med(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS), help="BASE:P2 pairs, comma separated")
    ap.add_argument("--batch", type=int, default=8, help="training batch [8]")
    ap.add_argument("--imgsz", type=int, default=None, help="input size of every model [each model's default]")
    ap.add_argument("--calls", type=int, default=8, help="inference calls per sample [8]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                    help="cpu: one thread, process CPU time (robust on a CPU shared with other jobs); wall: wall time on "
                         "torch's threads; auto: cpu on a CPU device, wall on CUDA [auto]")
    run = Run("p2_cost", __doc__, ap)
    args = run.parse()
    device = torch.device(args.device)
    cpu_time = cpu_clock(args, device)
    clock = Clock(device, cpu_time)
    batch_n = 2 if run.quick else args.batch
    calls = 2 if run.quick else args.calls
    rounds = run.repeats(5, 2)
    known = set(list_models())
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    skipped = [f"{a}/{b}" for a, b in pairs if a not in known or b not in known]
    pairs = [(a, b) for a, b in pairs if a in known and b in known]

    clock_name = "process CPU time, 1 thread" if cpu_time else f"wall time, {torch.get_num_threads()} threads"
    lines = [
        f"Device {device}; {clock_name}; {rounds} alternated rounds after warm-ups (1 step per model; 2 samples "
        f"for inference); training batch {batch_n}, inference batch 1 ({calls} calls per sample); random init "
        "(the time of a step does not depend on the weights' values)."
        + (f" QUICK: at most {QUICK_IMGSZ} px, 2 rounds; not a result." if run.quick else ""),
        "",
    ]
    if skipped:
        lines += [f"Not registered, skipped: {', '.join(skipped)}.", ""]
    lines += [
        "| base -> P2 | px | params | GFLOPs (1 image) | train step s (median, range) | step P2/base per round | "
        "inference ms/image | inference P2/base per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    data_notes = []
    for base, p2 in pairs:
        size = args.imgsz or get_entry(base).imgsz
        if run.quick:
            size = min(size, QUICK_IMGSZ)
        batch, names, what = hit_uav_batch(batch_n, size, device)
        if what not in data_notes:
            data_notes.append(what)
        models = {n: build(n, names, device) for n in (base, p2)}
        params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
        flops = {n: gflops(m, size) for n, m in models.items()}
        steps = {n: clock.timed(train_step(m, batch, device, amp=True)) for n, m in models.items()}
        train = alternate(steps, repeats=rounds, warmup=1)
        models_eval = {n: inference_copy(m) for n, m in models.items()}
        img = batch["img"][:1].contiguous()
        calls_fn = {n: clock.timed(infer(m, img), calls) for n, m in models_eval.items()}
        for fn in calls_fn.values():  # the first calls at a new shape are the slowest on CPU
            fn()
        inference = alternate(calls_fn, repeats=rounds, warmup=1)
        inference = {n: [v * 1000 for v in vs] for n, vs in inference.items()}
        step_r = paired_ratios(train[p2], train[base])
        inf_r = paired_ratios(inference[p2], inference[base])
        fl = " vs ".join(f"{flops[n]:.2f}" if flops[n] else "n/a" for n in (p2, base))
        lines.append(
            f"| {base} -> {p2} | {size} | {params[base] / 1e6:.2f}M -> {params[p2] / 1e6:.2f}M | "
            f"{' -> '.join(f'{flops[n]:.2f}' if flops[n] else 'n/a' for n in (base, p2))} | "
            f"{spread(train[base], '{:.3f}')} -> {spread(train[p2], '{:.3f}')} | {fmt_ratio(step_r)} | "
            f"{spread(inference[base], '{:.1f}')} -> {spread(inference[p2], '{:.1f}')} | {fmt_ratio(inf_r)} |"
        )
        run.target(
            f"P2 cost: {p2} vs {base} ({size} px, train batch {batch_n}, {device.type})",
            "reported (a cost, not a target)",
            f"step {fmt_ratio(step_r)}, inference {fmt_ratio(inf_r)}; {params[p2] / 1e6:.2f}M vs {params[base] / 1e6:.2f}M params"
            + (f", {fl} GFLOPs" if all(flops.values()) else ""),
            None,
        )
        del models, models_eval, steps, calls_fn
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines += [
        "",
        "Data: " + "; ".join(data_notes) + ".",
        "Ratios are per round (the rounds pair up: a slow round slows both sides), median and range; "
        "times are median (min - max, n = rounds).",
    ]
    run.write(lines, title="P2 models: training step and inference cost vs the base model (issue 19.6)")


if __name__ == "__main__":
    main()
