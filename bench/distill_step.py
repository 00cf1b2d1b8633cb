"""Distillation step cost (issue 9.9): a CWD step vs a plain student step + a teacher forward (target <= 1.05),
and peak memory of distillation vs plain training.

One process, one student, one teacher: the three timed pieces are (a) a plain student step (forward + loss +
backward + SGD step), (b) a teacher forward on the same batch under no_grad, (c) a distillation step (the wrapper's
loss: teacher forward to its neck, student loss with maps captured, CWD, backward, step). Repetitions interleave
(a), (b), (c) so drift hits all three. Ratio = median(c) / (median(a) + median(b)).

Peak memory: CUDA max_memory_allocated of one plain step and one distillation step; on CPU the peak resident set
of a fresh subprocess running a few steps of each (the process baseline is included, so compare the two).

    python bench/distill_step.py                          # CPU: nano student, tiny teacher, batch 8, 416 px
    python bench/distill_step.py --device cuda:0 --batch 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sodet.engine.build import build_model  # noqa: E402
from sodet.engine.distill import build_distiller  # noqa: E402
from sodet.options import DistillOptions, RunOptions  # noqa: E402

NAMES = {0: "person", 1: "car"}


def make_batch(n: int, imgsz: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    k = 6 * n
    return {
        "img": torch.rand(n, 3, imgsz, imgsz, generator=g).to(device),
        "batch_idx": torch.arange(n).repeat_interleave(6).float().to(device),
        "cls": torch.randint(0, 2, (k, 1), generator=g).float().to(device),
        "bboxes": torch.cat([torch.rand(k, 2, generator=g) * 0.8 + 0.1, torch.rand(k, 2, generator=g) * 0.15 + 0.02], 1).to(device),
    }


def build(student: str, teacher: str, imgsz: int, device):
    """The distiller (teacher from a checkpoint file of random weights, as a trained one would be loaded)."""
    from sodet.models.yolox import YoloxDetector

    path = Path(tempfile.mkdtemp()) / "teacher.pt"
    torch.save({"model": YoloxDetector(teacher, 2, NAMES)}, path)
    opts = RunOptions(model=student, freeze_bn=False, distill=DistillOptions(teacher=str(path)))
    model = build_distiller(build_model(opts, 2, NAMES).to(device), imgsz).to(device).train()
    model.teacher.to(device)
    return model


CLOCK = time.perf_counter  # --cpu-time: process CPU time (one thread), robust to other jobs on a shared machine


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return CLOCK() - t


def steps(model, batch, device, amp: bool):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    student = model.student_model

    def autocast():
        return torch.autocast(device.type, enabled=amp and device.type == "cuda")

    def plain():
        with autocast():
            loss, _ = student.loss(batch)
        loss.sum().backward()
        opt.step()
        opt.zero_grad()

    def teacher():
        with torch.no_grad(), autocast():
            model.teacher(batch["img"])

    def distill():
        with autocast():
            loss, _ = model.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return {"plain": plain, "teacher": teacher, "distill": distill}


def peak_memory(args) -> dict:
    """Peak memory of a few plain vs distillation steps (each in a fresh process on CPU)."""
    out = {}
    for mode in ("plain", "distill"):
        cmd = [sys.executable, __file__, "--memory-child", mode, "--student", args.student, "--teacher", args.teacher,
               "--batch", str(args.batch), "--imgsz", str(args.imgsz), "--device", args.device]
        out[mode] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    return out


def memory_child(args) -> None:
    device = torch.device(args.device)
    batch = make_batch(args.batch, args.imgsz, device)
    if args.memory_child == "plain":  # no teacher in the process at all
        from types import SimpleNamespace

        student = build_model(RunOptions(model=args.student, freeze_bn=False), 2, NAMES).to(device).train()
        fns = steps(SimpleNamespace(student_model=student, parameters=student.parameters), batch, device, amp=True)
    else:
        fns = steps(build(args.student, args.teacher, args.imgsz, device), batch, device, amp=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: reset the process's peak resident set (VmHWM) so imports and model building do not count
        before = vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    for _ in range(3):
        fns[args.memory_child]()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = vm("VmHWM")
        print(json.dumps({"peak_MiB": round(peak, 1), "growth_MiB": round(peak - before, 1)}))
        return
    print(json.dumps({"peak_MiB": round(peak, 1)}))


def vm(key: str) -> float:
    """A /proc/self/status memory figure in MiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="yolox-nano")
    ap.add_argument("--teacher", default="yolox-tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time on one thread (shared CPU)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)
    global CLOCK
    if args.cpu_time:
        torch.set_num_threads(1)
        CLOCK = time.process_time
    device = torch.device(args.device)
    model = build(args.student, args.teacher, args.imgsz, device)
    batch = make_batch(args.batch, args.imgsz, device)
    fns = steps(model, batch, device, amp=True)
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for r in range(args.reps):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            times[k].append(timed(fns[k], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["distill"] / (med["plain"] + med["teacher"])
    mem = peak_memory(args)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    if args.cpu_time:
        where += " (process CPU time, not wall time)"
    lines = [
        f"## Distillation step vs student step + teacher forward (issue 9.9, target <= 1.05)",
        "",
        f"`python bench/distill_step.py --student {args.student} --teacher {args.teacher} --batch {args.batch} --imgsz {args.imgsz} --device {args.device}{' --cpu-time' if args.cpu_time else ''}`",
        f"on {where}, torch {torch.__version__}, Python {platform.python_version()}, {datetime.date.today().isoformat()};"
        f" student {args.student}, teacher {args.teacher} (CWD on the neck, connectors 1x1 conv + BN), median of {args.reps} interleaved repetitions.",
        "",
        "| piece | median s |",
        "|---|---|",
        f"| student step (forward + loss + backward + SGD) | {med['plain']:.4f} |",
        f"| teacher forward (no_grad) | {med['teacher']:.4f} |",
        f"| distillation step | {med['distill']:.4f} |",
        f"| **ratio distill / (student + teacher)** | **{ratio:.3f}** |",
        "",
        f"Peak memory during 3 steps ({'CUDA max allocated' if device.type == 'cuda' else 'peak resident set, reset after model building, fresh process each'}): "
        f"plain {mem['plain']['peak_MiB']} MiB, distillation {mem['distill']['peak_MiB']} MiB "
        f"({mem['distill']['peak_MiB'] / mem['plain']['peak_MiB']:.2f}x)"
        + (f"; growth over the built models: plain {mem['plain']['growth_MiB']} MiB, distillation {mem['distill']['growth_MiB']} MiB." if "growth_MiB" in mem["plain"] else "."),
        "",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
