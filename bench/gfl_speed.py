"""GFL speed (issue 10.7). sodet's GFL-R50 forward is timed against MMDetection 3.3.0's on the same weights and
input (target: sodet / MMDetection <= 1.0, outputs bit-identical). gfl-r50's inference ms/image and training
images/s are measured beside yolox-tiny.

- sodet vs MMDetection: backbone + neck + head, batch 1, ``--imgsz`` px, CPU, no autograd. The weights are sodet's
  (random, with BatchNorm statistics and Scales perturbed so that every part matters). They are written in
  MMDetection's layout and loaded strict by MMDetection's own GFL (``../shared/tools/mmref``). Both get the same
  normalised input. MMDetection runs in a persistent child process of its venv (``--mmdet-python``; default
  ``$MMREF_VENV/bin/python`` or ``../mmref-venv/bin/python``), which times on request with the same thread count.
  The processes take turns, round by round (sodet, MMDet | MMDet, sodet | ...). A round is ``--reps`` forwards; its
  value is their median. The ratio is computed for each round. Without the interpreter the row says "not run".
  If the head outputs are not bit-identical, the script writes its report and exits with status 1.
- gfl-r50 beside yolox-tiny, on ``--device``. Inference: batch 1, eval mode, ``model(img)`` (the engine's path,
  boxes and scores before NMS). Training: forward + the model's own loss + backward + SGD step, ``--batch`` random
  images with COCO-like boxes. The models are alternated in the same way (``common.alternate``).

All contenders get untimed warm-ups first (4 forwards, 2 training steps; quick 2 and 1). Rounds: ``--rounds``
(5, at least 3; quick 1).

    python bench/gfl_speed.py                                   # writes bench/results/gfl_speed.{md,json}
    python bench/gfl_speed.py --mmdet-python /work/mmref-venv/bin/python --device cpu
    python bench/gfl_speed.py --quick --out /tmp/bench-quick    # smoke check: 128 px, 1 round, 1 call
    (the venv: bash ../shared/tools/mmref/build_venv.sh VENV)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, Run, alternate, med, paired_ratios, spread  # noqa: E402

MMREF = SHARED / "tools" / "mmref"
WARMUP = 4  # untimed calls first: on CPU the first few calls at a new shape take up to 6x longer (measured)
TRAIN_WARMUP = 2
REPLY = "@@sodet-bench "  # the child's replies on stdout start with this (mmdet may print other lines)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(name: str, nc: int = 80):
    from sodet.models.registry import get_entry

    return get_entry(name).build(nc)


def make_batch(batch: int, imgsz: int, nc: int, seed: int):
    """Random images and COCO-like targets: 2-14 boxes per image, sides log-uniform in 6-300 px (about 1/3 small).

    Returns images (B, 3, imgsz, imgsz) in 0-1 and boxes (N, 6): image index, class, cx, cy, w, h in pixels.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    boxes = []
    for i in range(batch):
        for _ in range(int(torch.randint(2, 15, (1,), generator=g))):
            side = math.exp(torch.empty(1).uniform_(math.log(6.0), math.log(300.0), generator=g).item())
            aspect = math.exp(torch.empty(1).uniform_(-0.7, 0.7, generator=g).item())
            w = min(max(side * math.sqrt(aspect), 4.0), imgsz - 2.0)
            h = min(max(side / math.sqrt(aspect), 4.0), imgsz - 2.0)
            cx = torch.empty(1).uniform_(w / 2, imgsz - w / 2, generator=g).item()
            cy = torch.empty(1).uniform_(h / 2, imgsz - h / 2, generator=g).item()
            cls = float(torch.randint(0, nc, (1,), generator=g))
            boxes.append(torch.tensor([float(i), cls, cx, cy, w, h]))
    return images, torch.stack(boxes)


# gfl-r50 beside yolox-tiny -----------------------------------------------------------------------------------
def models_side_by_side(names: list[str], imgsz: int, batch: int, reps: int, rounds: int, device: str,
                        warmup: int = WARMUP, train_warmup: int = TRAIN_WARMUP) -> dict:
    """Per model: the median inference ms of each round, and the median training images/s of each round."""
    images, boxes = make_batch(batch, imgsz, 80, seed=0)
    b = {"img": images.to(device), "batch_idx": boxes[:, 0].to(device), "cls": boxes[:, 1:2].to(device),
         "bboxes": (boxes[:, 2:] / imgsz).to(device)}  # fmt: skip
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    models = {n: build(n).to(device) for n in names}
    opts = {n: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
            for n, m in models.items()}  # fmt: skip

    def infer_ms(n: str) -> float:
        m = models[n].eval()
        with torch.no_grad():
            sync(device)
            t = time.perf_counter()
            m(x)
            sync(device)
        return (time.perf_counter() - t) * 1000

    def train_ips(n: str) -> float:
        m = models[n].train()
        sync(device)
        t = time.perf_counter()
        loss, _ = m(b)
        opts[n].zero_grad()
        loss.backward()
        opts[n].step()
        sync(device)
        return batch / (time.perf_counter() - t)

    for n in names:  # warm-ups, untimed
        [infer_ms(n) for _ in range(warmup)]
        [train_ips(n) for _ in range(train_warmup)]
    inference = alternate({n: (lambda n=n: statistics.median(infer_ms(n) for _ in range(reps))) for n in names},
                          repeats=rounds, warmup=0)  # fmt: skip
    training = alternate({n: (lambda n=n: statistics.median(train_ips(n) for _ in range(reps))) for n in names},
                         repeats=rounds, warmup=0)  # fmt: skip
    return {"inference_ms": inference, "train_ips": training}


# sodet vs MMDetection ----------------------------------------------------------------------------------------
CHILD = r"""
import json, sys, time
import torch
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["mmref"])
from gfl_reference import build_gfl  # registers the mmcv._ext stub before mmcv.ops is imported
import mmdet
torch.set_num_threads(cfg["threads"])
m = build_gfl(50, 80)
m.load_state_dict(torch.load(cfg["weights"], map_location="cpu"), strict=True)
m.eval()
x = torch.load(cfg["input"])
def reply(obj):
    print(cfg["reply"] + json.dumps(obj), flush=True)
def forward():
    return m.bbox_head(m.neck(m.backbone(x)))
reply({"ready": True, "mmdet": mmdet.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()})
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "time":
        times = []
        with torch.no_grad():
            for _ in range(req["reps"]):
                t = time.perf_counter()
                forward()
                times.append((time.perf_counter() - t) * 1000)
        reply({"ms": times})
    elif req["op"] == "save":
        with torch.no_grad():
            cls, reg = forward()
        torch.save({"cls": list(cls), "reg": list(reg)}, req["path"])
        reply({"saved": req["path"]})
    else:
        break
"""


class MMDetChild:
    """MMDetection's GFL-R50 in a persistent process of its venv, timing forwards on request."""

    def __init__(self, python: str, weights: Path, inp: Path, threads: int, log: Path):
        cfg = {"mmref": str(MMREF), "weights": str(weights), "input": str(inp), "threads": threads, "reply": REPLY}
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115  (stderr to a file: a full pipe would block the child)
        self.proc = subprocess.Popen([python, "-u", "-c", CHILD, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)  # fmt: skip
        try:
            self.info = self._reply()
        except RuntimeError:
            self.log.close()
            raise

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        self.proc.wait()
        self.log.flush()
        tail = (Path(self.log_path).read_text().strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the MMDetection process ended (status {self.proc.returncode}: {tail}; log {self.log_path})")

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def perturbed_gfl():
    """sodet's GFL-R50 in eval mode, with BatchNorm statistics and Scales away from their init (so a mistake in
    BN eval or Scale would show)."""
    torch.manual_seed(0)
    model = build("gfl-r50").eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        for s in model.bbox_head.scales:
            s.scale.uniform_(0.5, 1.5)
    return model


def compare_mmdet(python: str, imgsz: int, reps: int, rounds: int, warmup: int = WARMUP) -> dict:
    """sodet vs MMDetection forward (backbone + neck + head) on the same weights and normalised input, CPU."""
    model = perturbed_gfl()
    tmp = Path(tempfile.mkdtemp(prefix="sodet-gfl-bench-"))
    torch.save(model.state_dict(), tmp / "w.pth")
    x = torch.randn(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp / "x.pt")

    def forward():
        return model.bbox_head(model.neck(model.backbone(x)[1:]))

    def sodet_ms(n: int) -> list[float]:
        times = []
        with torch.no_grad():
            for _ in range(n):
                t = time.perf_counter()
                forward()
                times.append((time.perf_counter() - t) * 1000)
        return times

    try:
        child = MMDetChild(python, tmp / "w.pth", tmp / "x.pt", torch.get_num_threads(), tmp / "mmdet.log")
    except RuntimeError:  # only its log stays
        (tmp / "w.pth").unlink()
        (tmp / "x.pt").unlink()
        raise
    try:
        sodet_ms(warmup), child.request(op="time", reps=warmup)  # warm-ups, untimed
        times = alternate({"sodet": lambda: statistics.median(sodet_ms(reps)),
                           "mmdet": lambda: statistics.median(child.request(op="time", reps=reps)["ms"])},
                          repeats=rounds, warmup=0)  # fmt: skip
        child.request(op="save", path=str(tmp / "ref.pt"))
    finally:
        child.close()
    with torch.no_grad():
        cls, reg = forward()
    ref = torch.load(tmp / "ref.pt")
    shutil.rmtree(tmp, ignore_errors=True)
    ours, theirs = list(cls) + list(reg), ref["cls"] + ref["reg"]
    identical = len(ours) == len(theirs) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, theirs))
    same_shapes = len(ours) == len(theirs) and all(a.shape == b.shape for a, b in zip(ours, theirs))
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs)) if same_shapes else math.inf
    return {"times": times, "ratios": paired_ratios(times["sodet"], times["mmdet"]), "identical": identical,
            "diff": diff, "scale": max(float(b.abs().max()) for b in theirs), "info": child.info}  # fmt: skip


def default_mmdet_python() -> str | None:
    for venv in (os.environ.get("MMREF_VENV"), str(ROOT.parent / "mmref-venv")):
        if venv and (Path(venv) / "bin" / "python").exists():
            return str(Path(venv) / "bin" / "python")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640, help="input size [640; quick 128]")
    ap.add_argument("--batch", type=int, default=2, help="training batch [2; quick 1]")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per round (a round's value is their median) [3; quick 1]")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, contenders alternating [5, at least 3; quick 1]")
    ap.add_argument("--device", default="cpu",
                    help="device of the gfl-r50 / yolox-tiny rows (the MMDetection comparison runs on the CPU) [cpu]")
    ap.add_argument("--mmdet-python", default=default_mmdet_python(),
                    help="python of the MMDetection reference venv (../shared/tools/mmref/build_venv.sh) "
                         "[$MMREF_VENV/bin/python or ../mmref-venv/bin/python if present]")  # fmt: skip
    ap.add_argument("--skip-models", action="store_true", help="only the MMDetection comparison")
    run = Run("gfl_speed", __doc__, ap)
    a = run.parse()
    import sodet  # noqa: F401  (offline switches)

    imgsz, batch = (128, 1) if run.quick else (a.imgsz, a.batch)
    reps = 1 if run.quick else a.reps
    warmup, train_warmup = (2, 1) if run.quick else (WARMUP, TRAIN_WARMUP)
    rounds = run.repeats(a.rounds, 1)
    threads = torch.get_num_threads()
    lines = [f"Rounds: {rounds}, each of {reps} timed calls per contender (the round's value is their median), "
             f"after untimed warm-ups ({warmup} forwards, {train_warmup} training steps). Contenders alternate round "
             f"by round (A B, B A, ...). torch {torch.__version__}, "
             f"{threads} threads.", ""]  # fmt: skip

    # sodet vs MMDetection
    bench = f"GFL-R50 forward (backbone + neck + head, {imgsz} px, CPU) vs MMDetection 3.3.0, same weights and input"
    target = "sodet / MMDetection <= 1.0, outputs bit-identical"
    failed = False
    python = a.mmdet_python if a.mmdet_python and Path(a.mmdet_python).exists() else None
    c, why = None, "not run: no MMDetection interpreter (--mmdet-python)"
    if python:
        try:
            c = compare_mmdet(python, imgsz, reps, rounds, warmup)
        except RuntimeError as e:
            why = f"not run: {e}"
            print(why, file=sys.stderr)
    if c is None:
        run.target(bench, target, why, met=None)
        lines += ["### sodet vs MMDetection 3.3.0", "", why + ("" if python else
                  f" (given: {a.mmdet_python!r}; build one with `bash ../shared/tools/mmref/build_venv.sh VENV`)"), ""]  # fmt: skip
    else:
        t, ratios = c["times"], c["ratios"]
        ratio, lo, hi = med(ratios), min(ratios), max(ratios)
        tie = lo <= 1.0 <= hi and len(ratios) > 1
        met = ratio <= 1.0 and c["identical"]
        failed = not c["identical"]
        rng = f"; {lo:.2f}-{hi:.2f}" if len(ratios) > 1 else ""
        plural = "s" if len(ratios) > 1 else ""
        verdict = (f"{ratio:.2f} (median of {len(ratios)} round{plural}{rng}{': a tie within the range' if tie else ''}), "
                   f"{med(t['sodet']):.0f} vs {med(t['mmdet']):.0f} ms, "
                   + ("outputs bit-identical" if c["identical"] else f"outputs NOT bit-identical (max diff {c['diff']:.1e})"))  # fmt: skip
        run.target(bench, target, verdict, met=met)
        info = c["info"]
        lines += [
            "### sodet vs MMDetection 3.3.0",
            "",
            f"MMDetection {info['mmdet']} (torch {info['torch']}, {info['threads']} threads) in a persistent child "
            f"process of `{python}`, with MMDetection's own GFL built from `gfl_r50_fpn_1x_coco.py`. It uses sodet's "
            f"weights, loaded strict, and the same normalised 1x3x{imgsz}x{imgsz} input. Backbone + neck + head run "
            "under no_grad. The two processes take turns round by round (sodet, MMDet | MMDet, sodet | ...), and each "
            "is idle while the other runs.",
            "",
            "| implementation | forward ms: median of the rounds (min - max, n) |",
            "|---|---|",
            f"| sodet GFL-R50 | {spread(t['sodet'], '{:.0f}')} |",
            f"| MMDetection GFL-R50 | {spread(t['mmdet'], '{:.0f}')} |",
            "",
            f"Per-round ratio sodet / MMDetection: {', '.join(f'{r:.3f}' for r in ratios)}. **Median {ratio:.2f}** "
            f"(target <= 1.0: {'met' if met else 'NOT met'}"
            + ("; the rounds' range spans 1.0, so the two are tied within the spread" if tie else "") + "). "
            + (f"The raw head outputs (10 maps) are bit-identical (largest value {c['scale']:.1f})." if c["identical"] else
               f"**The raw head outputs differ**: max |diff| {c['diff']:.1e} (values up to {c['scale']:.1f})."),
            "",
        ]  # fmt: skip

    # gfl-r50 beside yolox-tiny
    if not a.skip_models:
        names = ["gfl-r50", "yolox-tiny"]
        torch.manual_seed(0)
        s = models_side_by_side(names, imgsz, batch, reps, rounds, a.device, warmup, train_warmup)
        inf, ips = s["inference_ms"], s["train_ips"]
        dev = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "CPU"
        n_rounds = f"median of {rounds} round{'s' if rounds > 1 else ''}"
        run.target(f"gfl-r50 inference, batch 1, {imgsz} px, {dev} (beside yolox-tiny)", "measurement only",
                   f"{med(inf['gfl-r50']):.0f} ms/image ({n_rounds}); yolox-tiny {med(inf['yolox-tiny']):.0f} ms",
                   met=None)  # fmt: skip
        run.target(f"gfl-r50 training, batch {batch}, {imgsz} px, {dev} (beside yolox-tiny)", "measurement only",
                   f"{med(ips['gfl-r50']):.2f} images/s ({n_rounds}); yolox-tiny {med(ips['yolox-tiny']):.2f} images/s",
                   met=None)  # fmt: skip
        lines += [
            f"### gfl-r50 beside yolox-tiny ({a.device})",
            "",
            f"Inference: batch 1, {imgsz} px, eval mode, `model(img)` up to the engine's NMS. Training: forward + own "
            f"loss + backward + SGD step, a batch of {batch} random images with COCO-like boxes. 80 classes; random "
            "initialisation.",
            "",
            "| model | inference ms/image: median (min - max, n rounds) | training images/s: median (min - max, n rounds) |",
            "|---|---|---|",
            *[f"| {n} | {spread(inf[n], '{:.0f}')} | {spread(ips[n], '{:.2f}')} |" for n in names],
            "",
            f"Per-round ratio gfl-r50 / yolox-tiny, inference ms: "
            f"{', '.join(f'{r:.2f}' for r in paired_ratios(inf['gfl-r50'], inf['yolox-tiny']))}.",
            "",
        ]
    run.write(lines, title="GFL speed: sodet's GFL-R50 vs MMDetection's, and gfl-r50 beside yolox-tiny (issue 10.7)")
    if failed:
        raise SystemExit("sodet's and MMDetection's GFL-R50 head outputs are not bit-identical")


if __name__ == "__main__":
    main()
