"""Training throughput of sodet's yolox-nano fine-tuning vs a plain PyTorch loop on the same data (issue 8.9,
target ratio >= 0.9).

Both fine-tune the shipped COCO YOLOX-Nano on ``../shared/data/coco-pc`` train (173 images) at 416 px, batch 8, in
one process, one after the other and then again (plain, sodet, plain, sodet), on the same threads:

- plain: ``../shared/tools/calib/finetune_yolox.py``'s own loop (images decoded and letterboxed once into memory,
  horizontal flip, YOLOX's loss, SGD step per batch), BatchNorm frozen like sodet's default for these weights;
- sodet: ``SodetTrainer`` as ``sodet train`` builds it, mosaic off, images cached in RAM (``cache=ram``), the
  engine's other augmentation (HSV, affine, flip), EMA and gradient accumulation as in a real run; no validation.

Both compute on the engine's number of torch threads (cores - 1; 1 on a 2-core machine).
Images/s = images trained / wall time of the epoch's training loop (sodet: from the engine's epoch-start to
epoch-end callbacks, so data loading is included; plain: its loop, data already in memory). The first epoch of
each sodet run is a warm-up (workers start, RAM cache fills) and is not counted.

    python bench/finetune_throughput.py [--epochs 3] [--out bench/results/finetune_throughput.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, write_report  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


def load_calib():
    path = SHARED / "tools" / "calib" / "finetune_yolox.py"
    if not path.is_file():
        sys.exit(f"{path} not found: this benchmark needs ../shared beside the clone")
    spec = importlib.util.spec_from_file_location("calib_finetune", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plain_epoch_rate(calib, train_split, batch: int, seed: int) -> float:
    """One epoch of the calib loop's training step (flip, YOLOX loss, SGD) on the in-memory split: images/s."""
    from torch import nn

    torch.manual_seed(seed)
    m = calib.build_model()
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    for b in bns:
        b.weight.requires_grad_(False)
        b.bias.requires_grad_(False)
    m.train()
    for b in bns:
        b.eval()
    params = [p for p in m.parameters() if p.requires_grad]
    # the rate does not change the cost of a step; the folded checkpoint diverges within a few steps at 1e-4
    opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9, nesterov=True, weight_decay=5e-4)
    X, labels, nws = train_split["X"], train_split["labels"], train_split["nw"]
    n = len(X)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    t0 = time.perf_counter()
    for b0 in range(0, n, batch):
        idx = perm[b0:b0 + batch]
        flip = (torch.rand(len(idx), generator=g) < 0.5).tolist()
        x = X[idx].float()
        labs = [labels[i].clone() for i in idx]
        for j, i in enumerate(idx):
            if flip[j]:
                x[j, :, :, : nws[i]] = x[j, :, :, : nws[i]].flip(-1)
                labs[j][:, 1] = nws[i] - labs[j][:, 1]
        T = torch.zeros(len(idx), max(1, max(len(lb) for lb in labs)), 5)
        for j, lb in enumerate(labs):
            T[j, : len(lb)] = lb
        loss = m(x, T)["total_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t0)


def sodet_epoch_rates(batch: int, epochs: int, seed: int, workers: int) -> list[float]:
    """sodet's trainer as ``sodet train`` builds it; images/s of each epoch after the first."""
    from sodet.api import train as sodet_train  # noqa: F401  (offline switches)
    from sodet.assets import shipped_weights
    from sodet.data.spec import resolve_data
    from sodet.engine.trainer import SodetTrainer
    from sodet.models.registry import family_defaults
    from sodet.offline import quiet_engine
    from sodet.options import RunOptions
    from ultralytics.utils import YAML

    quiet_engine()
    data = str(SHARED / "data" / "coco-pc")
    data_yaml = resolve_data(data, None)
    options = RunOptions(model="yolox-nano", weights=str(shipped_weights("yolox_nano_coco_fusedbn.pth")),
                         classes=YAML.load(data_yaml)["sodet_classes"], data=data, letterbox="top-left")
    project = tempfile.mkdtemp(prefix="sodet-bench-")
    overrides = dict(model="yolox-nano", data=str(data_yaml), imgsz=416, batch=batch, epochs=epochs, device="cpu",
                     workers=workers, seed=seed, mosaic=0.0, close_mosaic=0, cache="ram", val=False, plots=False,
                     project=project, name="bench", pretrained=False, **family_defaults("yolox"))
    trainer = SodetTrainer(overrides=overrides, options=options)
    marks: dict[int, list[float]] = {}
    trainer.add_callback("on_train_epoch_start", lambda t: marks.setdefault(t.epoch, [time.perf_counter()]))
    trainer.add_callback("on_train_epoch_end", lambda t: marks[t.epoch].append(time.perf_counter()))
    trainer.train()
    n = len(trainer.train_loader.dataset)
    return [n / (t1 - t0) for e, (t0, t1) in sorted(marks.items()) if e > 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="sodet epochs per round (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune_throughput.md"))
    a = ap.parse_args()
    from ultralytics.utils import NUM_THREADS

    # the engine computes on NUM_THREADS torch threads (cores - 1, leaving one to data loading) and sets that at
    # trainer start; the plain loop gets the same, so the two differ only in what they run
    torch.set_num_threads(NUM_THREADS)
    calib = load_calib()
    train_split = calib.load_split("train")
    plain, ours = [], []
    for r in range(a.rounds):
        plain.append(plain_epoch_rate(calib, train_split, a.batch, seed=r))
        plain.append(plain_epoch_rate(calib, train_split, a.batch, seed=r + 100))
        ours += sodet_epoch_rates(a.batch, a.epochs, seed=r, workers=a.workers)
        assert torch.get_num_threads() == NUM_THREADS
    p, s = statistics.median(plain), statistics.median(ours)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Fine-tuning throughput: sodet vs a plain PyTorch loop (issue 8.9, target ratio >= 0.9)",
        "",
        f"- command: `python bench/finetune_throughput.py --batch {a.batch} --epochs {a.epochs} --rounds {a.rounds} --workers {a.workers}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}; load average at the end {load:.2f}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "- data: `../shared/data/coco-pc` train (173 images), 416 px, batch "
        f"{a.batch}; yolox-nano from the shipped COCO weights, BatchNorm frozen in both",
        f"- plain: `../shared/tools/calib/finetune_yolox.py`'s loop (data pre-decoded in memory); {len(plain)} epochs",
        f"- sodet: `SodetTrainer` (engine data loading with RAM cache, mosaic off, engine augmentation, EMA); "
        f"{len(ours)} timed epochs (the first of each run not counted)",
        "",
        "| loop | images/s (median) | epochs timed | range |",
        "|---|---|---|---|",
        f"| plain PyTorch | {p:.1f} | {len(plain)} | {min(plain):.1f} - {max(plain):.1f} |",
        f"| sodet | {s:.1f} | {len(ours)} | {min(ours):.1f} - {max(ours):.1f} |",
        "",
        f"**ratio sodet / plain = {s / p:.2f}** (target >= 0.9).",
    ]
    write_report(lines, a.out)


if __name__ == "__main__":
    main()
