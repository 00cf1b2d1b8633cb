"""Distillation step cost (issue 9.9): a CWD training step vs its fair anchor (target ratio <= 1.05), and peak memory.

The distiller runs its teacher only up to the distilled maps (a ``FeatureTap`` that stops the forward pass after
the neck; the head never runs). Timed on one distiller per pair: (a) a plain student step (forward + loss + backward
+ SGD), (b) the teacher, no grad, stopped at those same maps, (c) the distillation step; ratio c / (a + b) per round.
(d), the full teacher forward, is shown beside it: the earlier anchor a + d gave < 1 partly by construction.
a b c d alternate (A B C D, D C B A, ...) after a warm-up round; medians, ranges, per-round ratios. CPU: process CPU
time on one thread (robust to jobs sharing the cores; ``--clock wall`` for wall time); CUDA: wall time, AMP.
Teachers: checkpoint files of random weights, loaded as a trained one is. Batches: real HIT-UAV training images
with their boxes (random images with HIT-UAV-like boxes if the data is absent). Peak memory: a fresh process per
mode, CUDA max allocated or (CPU) peak resident set after model building.

    python bench/distill_step.py             # yolox-nano <- yolox-tiny 416 px x 8, gfl-r18 <- gfl-r50 384 px x 4
    python bench/distill_step.py --device cuda:0 --pairs yolox-nano:yolox-s@640x32,gfl-r18:gfl-r50@640x16
    python bench/distill_step.py --quick --out /tmp/bench-quick      # smoke check: 128 px, batch 2, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Run, alternate, med, paired_ratios, spread  # noqa: E402

import torch  # noqa: E402

from sodet.engine.build import build_model  # noqa: E402
from sodet.engine.distill import build_distiller  # noqa: E402
from sodet.models.features import FeatureTap, feature_modules, level_strides  # noqa: E402
from sodet.models.registry import get_entry  # noqa: E402
from sodet.options import DistillOptions, RunOptions  # noqa: E402

PAIRS = "yolox-nano:yolox-tiny@416x8,gfl-r18:gfl-r50@384x4"  # STUDENT:TEACHER@IMGSZxBATCH
QUICK = (128, 2)  # imgsz, batch of --quick (128: a multiple of every family's largest stride, GFL's 128)
HIT_UAV = SHARED / "data" / "hit-uav"


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


# models -------------------------------------------------------------------------------------------------------
def parse_pairs(spec: str, quick: bool) -> list[tuple[str, str, int, int]]:
    """``STUDENT:TEACHER[@IMGSZ[xBATCH]]`` comma separated -> (student, teacher, imgsz, batch)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        models, _, size = item.partition("@")
        student, teacher = models.split(":")
        imgsz, _, batch = size.partition("x")
        imgsz, batch = int(imgsz or get_entry(student).imgsz), int(batch or 8)
        out.append((student, teacher, *(QUICK if quick else (imgsz, batch))))
    return out


def teacher_file(teacher: str, names: dict) -> str:
    """A checkpoint holding a model object of random weights, as a trained sodet teacher is stored."""
    torch.manual_seed(1)
    path = Path(tempfile.mkdtemp(prefix="distill-bench-")) / f"{teacher}.pt"
    torch.save({"model": get_entry(teacher).build(len(names), names)}, path)
    return str(path)


def build_student(student: str, names: dict, device, teacher_path: str | None = None):
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    # max_ratio 0: the guard still runs each step, but a random teacher cannot stop the benchmark
    distill = DistillOptions(teacher=teacher_path, max_ratio=0) if teacher_path else None
    model = build_model(RunOptions(model=student, freeze_bn=False, distill=distill), len(names), names).to(device)
    model.args = get_cfg()  # the engine gives the student its hyperparameters (Ultralytics' criterion reads them)
    return model


def build(student: str, teacher_path: str, names: dict, imgsz: int, device):
    """The distiller as the trainer builds it (``build_distiller``: the teacher loaded from its file, frozen)."""
    model = build_distiller(build_student(student, names, device, teacher_path), imgsz).to(device).train()
    model.teacher.to(device)
    return model


def autocast(device, amp: bool = True):
    return torch.autocast(device.type, enabled=amp and device.type == "cuda")  # AMP on CUDA as training; fp32 on CPU


def pieces(model, batch, device) -> dict:
    """The four timed pieces on one distiller (one student, one optimizer over its parameters and connectors)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    student, teacher, img = model.student_model, model.teacher, batch["img"]
    on = model.distill_options.on
    n_maps = len(level_strides(teacher))

    def plain():
        with autocast(device):
            loss, _ = student.loss(batch)
        loss.sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_to_maps():  # as the distiller runs it: stopped after the last distilled map
        with torch.no_grad(), autocast(device), FeatureTap(feature_modules(teacher, on), n_maps, stop=True) as tap:
            teacher(img)
        assert len(tap.maps) == n_maps, f"the teacher gave {len(tap.maps)} maps, not {n_maps}"

    def teacher_full():
        with torch.no_grad(), autocast(device):
            teacher(img)

    def distill():
        with autocast(device):
            loss, _ = model.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"student step": plain, "teacher to its maps": teacher_to_maps, "distillation step": distill,
            "teacher full forward": teacher_full}


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

    def timed(self, fn):
        """A contender for ``alternate``: its own seconds (CUDA synchronised before and after)."""
        def run() -> float:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t = self.now()
            fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return self.now() - t

        return run


# peak memory --------------------------------------------------------------------------------------------------
def peak_memory(student: str, teacher_path: str, imgsz: int, batch: int, args, steps: int) -> dict:
    """Peak memory of ``steps`` plain vs distillation steps, each in a fresh process (no teacher at all in the
    plain one)."""
    out = {}
    for mode in ("plain", "distill"):
        cmd = [sys.executable, __file__, "--memory-child", mode, "--child-spec", json.dumps([student, teacher_path, imgsz, batch, steps]),
               "--device", args.device, "--clock", args.clock]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory child ({mode}) failed:\n{done.stderr[-3000:]}")
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def memory_child(args) -> None:
    student, teacher_path, imgsz, n, steps = json.loads(args.child_spec)
    device = torch.device(args.device)
    cpu_clock(args, device)  # the same threads as the timed process
    batch, names, _ = hit_uav_batch(n, imgsz, device)
    if args.memory_child == "plain":
        model = build_student(student, names, device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)

        def step():
            with autocast(device):
                loss, _ = model.loss(batch)
            loss.sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        step = pieces(build(student, teacher_path, names, imgsz, device), batch, device)["distillation step"]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: reset the process's peak resident set (VmHWM) so imports and model building do not count
        before = vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        print(json.dumps({"peak_MiB": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}))
    else:
        peak = vm("VmHWM")
        print(json.dumps({"peak_MiB": round(peak, 1), "growth_MiB": round(peak - before, 1)}))


def vm(key: str) -> float:
    """A /proc/self/status memory figure in MiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024


# main ---------------------------------------------------------------------------------------------------------
def ratio_text(r: list[float]) -> str:
    return f"{med(r):.3f} ({min(r):.3f}-{max(r):.3f}, n={len(r)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=PAIRS, help=f"STUDENT:TEACHER@IMGSZxBATCH, comma separated [{PAIRS}]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                    help="cpu: one thread, process CPU time (robust on a CPU shared with other jobs); wall: wall time on "
                         "torch's threads; auto: cpu on a CPU device, wall on CUDA [auto]")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-spec", default=None, help=argparse.SUPPRESS)
    run = Run("distill_step", __doc__, ap)
    args = run.parse()
    if args.memory_child:
        return memory_child(args)
    device = torch.device(args.device)
    cpu_time = cpu_clock(args, device)
    clock = Clock(device, cpu_time)
    rounds = run.repeats(5, 2)
    mem_steps = 1 if run.quick else 3
    clock_name = "process CPU time, 1 thread" if cpu_time else f"wall time, {torch.get_num_threads()} threads"
    lines = [
        f"Device {device}; {clock_name}; {rounds} rounds after 1 warm-up round, the four pieces alternating "
        "(A B C D, D C B A, ...); CWD on the neck (connectors 1x1 conv + BatchNorm where widths differ), "
        f"{'AMP' if device.type == 'cuda' else 'fp32'}; random-weight teachers loaded from checkpoint files."
        + (f" QUICK: {QUICK[0]} px, batch {QUICK[1]}, {rounds} rounds; not a result." if run.quick else ""),
        "",
        "| student <- teacher | px x batch | student step s | teacher to its maps s | distillation step s | "
        "**ratio c / (a + b)** per round | teacher full forward s | ratio c / (a + full teacher) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    memory_lines, data_notes = [], []
    for student, teacher, imgsz, n in parse_pairs(args.pairs, run.quick):
        batch, names, what = hit_uav_batch(n, imgsz, device)
        if what not in data_notes:
            data_notes.append(what)
        t_path = teacher_file(teacher, names)
        model = build(student, t_path, names, imgsz, device)
        fns = {k: clock.timed(f) for k, f in pieces(model, batch, device).items()}
        t = alternate(fns, repeats=rounds, warmup=1)
        a, b, c, d = t["student step"], t["teacher to its maps"], t["distillation step"], t["teacher full forward"]
        anchor = [x + y for x, y in zip(a, b)]
        ratio = paired_ratios(c, anchor)
        old = paired_ratios(c, [x + y for x, y in zip(a, d)])
        widths = ", ".join("same" if isinstance(conn.student, torch.nn.Identity) else f"{conn.student[0].in_channels}->{conn.student[0].out_channels}"
                           for conn in model.projector)
        pair = f"{student} <- {teacher}"
        lines.append(
            f"| {pair} (strides {model.strides}, widths {widths}) | {imgsz} x {n} | {spread(a, '{:.3f}')} | {spread(b, '{:.3f}')} | "
            f"{spread(c, '{:.3f}')} | **{ratio_text(ratio)}** | {spread(d, '{:.3f}')} | {ratio_text(old)} |"
        )
        run.target(f"CWD step vs student step + teacher to its neck ({pair}, {imgsz} px, batch {n}, {device.type})",
                   "<= 1.05", f"{med(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})", med(ratio) <= 1.05,
                   anchor="student step + teacher forward stopped at the distilled maps")
        del model, fns
        if not args.no_memory:
            mem = peak_memory(student, t_path, imgsz, n, args, mem_steps)
            p, q = mem["plain"]["peak_MiB"], mem["distill"]["peak_MiB"]
            kind = "CUDA max allocated" if device.type == "cuda" else "peak resident set"
            growth = (f"; growth over the built models: plain {mem['plain']['growth_MiB']} MiB, distillation "
                      f"{mem['distill']['growth_MiB']} MiB" if "growth_MiB" in mem["plain"] else "")
            memory_lines.append(f"- {pair}, {imgsz} px x {n}, {mem_steps} step{'s' if mem_steps > 1 else ''}, {kind}: plain {p} MiB, distillation {q} MiB ({q / p:.2f}x){growth}.")
            run.target(f"peak memory, CWD vs plain step ({pair}, {imgsz} px, batch {n}, {device.type})", "reported (no target)",
                       f"{q / p:.2f}x ({kind}: {q:.0f} vs {p:.0f} MiB)", None)
        shutil.rmtree(Path(t_path).parent, ignore_errors=True)
    lines += [
        "",
        "a: student step (forward + loss + backward + SGD); b: teacher, no grad, stopped at the distilled maps as the "
        "distiller stops it; c: distillation step; d: the full teacher forward (head included), the earlier anchor. "
        "Ratios are per round (the rounds pair up), median (range, n); times median (min - max, n).",
        "",
        "Data: " + "; ".join(data_notes) + ".",
    ]
    if memory_lines:
        lines += ["", "Peak memory (a fresh process per mode" + (", reset after model building; on CPU the allocator's "
                  "caching dominates the resident set, so compare the two only as of the same order)" if device.type != "cuda" else ")") + ":", ""]
        lines += memory_lines
    run.write(lines, title="Distillation (CWD) step vs student step + teacher to its distilled maps (issue 9.9, target <= 1.05)")


if __name__ == "__main__":
    main()
