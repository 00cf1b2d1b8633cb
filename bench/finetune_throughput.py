"""Fine-tuning throughput of sodet (yolox-nano from the shipped COCO weights) vs a plain PyTorch loop on the same
data (issue 8.9: ratio >= 0.9), the plain loop at its best torch thread count.

Both fine-tune the same weights file on the first ``--images`` HIT-UAV train images (classes person and car: the
COCO head's rows for them), 416 px, batch 8, BatchNorm frozen, in ONE process:

- plain: ``../shared/tools/calib/finetune_yolox.py``'s own functions and loop (images decoded and letterboxed once
  into memory, horizontal flip, YOLOX's loss, an SGD step per batch), run at 1 and at 2 torch threads; the faster
  one (median) is the anchor;
- sodet: ``SodetTrainer`` built as ``sodet train`` builds it (``resolve_model``, the family's fine-tuning engine
  defaults), mosaic off, images cached in RAM, the engine's other augmentation, EMA and gradient accumulation as in
  a real run, no validation; it computes on the engine's torch threads (cores - 1: 1 on a 2-core machine), and on
  CPU the engine loads data in the training process (it sets ``workers=0`` there).

Images/s = images trained / wall time of an epoch's training loop (sodet: the engine's epoch-start to epoch-end
callbacks, data loading included; the first epoch of each sodet run is a warm-up and is not counted; plain: its
loop, after a warm-up of a few batches per thread count). Rounds alternate the order (plain 1
thread, plain 2 threads, sodet; then reversed); ratio sodet / plain per round.

    python bench/finetune_throughput.py                    # 256 HIT-UAV images, 3 rounds
    python bench/finetune_throughput.py --quick --out /tmp/bench-quick
    python bench/finetune_throughput.py --data ../shared/data/coco-pc --images 173 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Run, alternate, med, paired_ratios, spread  # noqa: E402

import sodet  # noqa: E402,F401  (before the engine: its offline switches)

import torch  # noqa: E402

DEFAULT_DATA = SHARED / "data" / "hit-uav"
CALIB = SHARED / "tools" / "calib" / "finetune_yolox.py"
MODEL = "yolox-nano"


def data_label(data_dir: Path) -> str:
    return {"hit-uav": "HIT-UAV"}.get(Path(data_dir).name, Path(data_dir).name)


def subset(src: Path, dst: Path, counts: dict[str, int]) -> Path:
    """A COCO folder of the first ``counts[split]`` images (by id) of each split of ``src``, the image folders
    linked: both loops then read the same images and labels."""
    for split, n in counts.items():
        d = json.loads((src / "annotations" / f"{split}.json").read_text())
        images = sorted(d["images"], key=lambda im: im["id"])[:n] if n else d["images"]
        keep = {im["id"] for im in images}
        d.update(images=images, annotations=[a for a in d["annotations"] if a["image_id"] in keep])
        (dst / "annotations").mkdir(parents=True, exist_ok=True)
        (dst / "annotations" / f"{split}.json").write_text(json.dumps(d))
        (dst / "images").mkdir(exist_ok=True)
        (dst / "images" / split).symlink_to((src / "images" / split).resolve(), target_is_directory=True)
    return dst


def load_calib(data_dir: Path, classes: list[str], weights: Path, imgsz: int):
    """The plain loop's module, pointed at ``data_dir``, ``classes`` (their COCO head rows) and ``weights``."""
    from sodet.models.weights import coco80_names

    if not CALIB.is_file():
        sys.exit(f"{CALIB} not found: this benchmark needs ../shared beside the clone")
    spec = importlib.util.spec_from_file_location("calib_finetune", CALIB)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cats = json.loads((data_dir / "annotations" / "train.json").read_text())["categories"]
    by_name = {c["name"]: c["id"] for c in cats}
    mod.DATA, mod.CKPT, mod.SIZE = str(data_dir), str(weights), imgsz
    mod.KEEP = [coco80_names().index(c) for c in classes]  # COCO-80 head rows of the classes
    mod.CAT2IDX = {by_name[c]: i for i, c in enumerate(classes)}
    mod.CAT_IDS = [by_name[c] for c in classes]
    return mod


def plain_epoch_rate(calib, split, batch: int, seed: int, threads: int, max_batches: int | None = None) -> float:
    """One epoch of the calib loop's training step (flip, YOLOX loss, SGD) on the in-memory split at ``threads``
    torch threads: images/s."""
    from torch import nn

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        m = calib.build_model()
        bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
        for b in bns:  # the calib tool's --bn frozen
            b.weight.requires_grad_(False)
            b.bias.requires_grad_(False)
        m.train()
        for b in bns:
            b.eval()
        params = [p for p in m.parameters() if p.requires_grad]
        # the rate does not change the cost of a step; the folded checkpoint diverges within a few steps at 1e-4
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9, nesterov=True, weight_decay=5e-4)
        X, labels, nws = split["X"], split["labels"], split["nw"]
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(X), generator=g).tolist()
        if max_batches:
            perm = perm[: max_batches * batch]
        t0 = time.perf_counter()
        for b0 in range(0, len(perm), batch):
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
        return len(perm) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def sodet_run(data_dir: Path, classes: list[str], imgsz: int, batch: int, epochs: int, seed: int, project: Path,
              name: str) -> dict:
    """sodet's trainer as ``sodet train`` builds it (``sodet.api.train``'s options and overrides, plus the
    benchmark's: mosaic off, RAM cache, no validation); images/s of each epoch after the first."""
    from ultralytics.utils import YAML

    from sodet.data.spec import resolve_data
    from sodet.engine.trainer import SodetTrainer
    from sodet.models.resolve import resolve_model
    from sodet.offline import quiet_engine
    from sodet.options import RunOptions

    quiet_engine()
    resolved = resolve_model(MODEL)  # the registry's default weights: the shipped COCO YOLOX-Nano
    entry, family = resolved.entry, resolved.family
    data_yaml = resolve_data(str(data_dir), classes)
    options = RunOptions(model=entry.name, weights=str(resolved.weights), classes=YAML.load(data_yaml)["sodet_classes"],
                         data=str(data_dir), letterbox=family.pretrained_letterbox)
    overrides = {
        "model": family.engine_model_arg(entry), "data": str(data_yaml), "pretrained": False,
        **family.engine_defaults(finetune=True),
        "imgsz": imgsz, "batch": batch, "epochs": epochs, "device": "cpu", "seed": seed,
        "mosaic": 0.0, "close_mosaic": 0, "cache": "ram", "val": False, "plots": False, "project": str(project),
        "name": name, "exist_ok": True,
    }
    trainer = SodetTrainer(overrides=overrides, options=options)
    marks: dict[int, list[float]] = {}
    trainer.add_callback("on_train_epoch_start", lambda t: marks.setdefault(t.epoch, [time.perf_counter()]))
    trainer.add_callback("on_train_epoch_end", lambda t: marks[t.epoch].append(time.perf_counter()))
    trainer.train()
    n = len(trainer.train_loader.dataset)
    return {"rates": [n / (t1 - t0) for e, (t0, t1) in sorted(marks.items()) if e > 0], "images": n,
            "threads": torch.get_num_threads(), "workers": trainer.train_loader.num_workers,
            "freeze_bn": trainer.options.freeze_bn, "lr0": trainer.args.lr0, "accumulate": trainer.accumulate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO folder [../shared/data/hit-uav]")
    parser.add_argument("--classes", default="person,car", help="class names (COCO classes: the head's rows)")
    parser.add_argument("--images", type=int, default=256, help="first N train images by id (0: all; --quick: 16)")
    parser.add_argument("--val-images", type=int, default=8, help="val images (the engine validates the last epoch)")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="sodet epochs per round (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (at least 3; --quick: 1)")
    parser.add_argument("--plain-threads", default="1,2", help="torch thread counts of the plain loop")
    run = Run("finetune_throughput", __doc__, parser)
    args = run.parse()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    images = 16 if run.quick else args.images
    rounds = run.repeats(args.rounds, 1)
    thread_counts = [int(t) for t in args.plain_threads.split(",")]

    from sodet.models.resolve import resolve_model

    weights = resolve_model(MODEL).weights
    work = Path(tempfile.mkdtemp(prefix="sodet-bench-ft-"))
    try:
        data_dir = subset(args.data, work / "data", {"train": images, "val": args.val_images})
        calib = load_calib(data_dir, classes, weights, args.imgsz)
        split = calib.load_split("train")
        for t in thread_counts:  # warm-up: lazy initialisation, each thread pool
            plain_epoch_rate(calib, split, args.batch, seed=0, threads=t, max_batches=2)
        runs: list[dict] = []

        def plain(threads: int):
            return lambda: plain_epoch_rate(calib, split, args.batch, seed=len(runs), threads=threads)

        def ours() -> float:
            runs.append(sodet_run(data_dir, classes, args.imgsz, args.batch, args.epochs, len(runs), work / "runs",
                                  f"r{len(runs)}"))
            return med(runs[-1]["rates"])

        contenders = {f"plain, {t} thread{'s' * (t > 1)}": plain(t) for t in thread_counts}
        contenders["sodet"] = ours
        ips = alternate(contenders, repeats=rounds, warmup=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    plains = [k for k in ips if k != "sodet"]
    best = max(plains, key=lambda k: med(ips[k]))
    r = paired_ratios(ips["sodet"], ips[best])  # per round: sodet / the anchor of the same round
    n = runs[0]["images"]
    loader = (f"{runs[0]['workers']} loader workers" if runs[0]["workers"] else "data loaded in the training process")
    where = f"{data_label(args.data)} {n} images, {args.imgsz} px, batch {args.batch}, CPU"
    run.target(f"fine-tuning yolox-nano, sodet vs a plain PyTorch loop at its best thread count ({where})",
               "ratio >= 0.9",
               f"{med(r):.2f} ({min(r):.2f}-{max(r):.2f}, {len(r)} round{'s' * (len(r) > 1)}); sodet "
               f"{med(ips['sodet']):.1f} img/s vs plain {med(ips[best]):.1f} img/s ({best.split(', ')[1]})",
               met=med(r) >= 0.9)
    run.target(f"plain PyTorch fine-tuning loop by torch threads ({where})", "measurement",
               "; ".join(f"{k.split(', ')[1]} {med(ips[k]):.1f} img/s" for k in plains)
               + f"; sodet {med(ips['sodet']):.1f} img/s ({runs[0]['threads']} torch thread(s), {loader})", met=None)

    rows = [f"| {k} | {spread(v, '{:.1f}')} | " + ("anchor" if k == best else "") + " |" for k, v in ips.items() if k != "sodet"]
    rows.append(f"| sodet ({runs[0]['threads']} torch thread(s), {loader}) | "
                f"{spread(ips['sodet'], '{:.1f}')} | ratio to the anchor {med(r):.2f} ({min(r):.2f} - {max(r):.2f}) |")
    lines = [
        f"- data: the first {n} `{args.data.name}` train images by id, classes {', '.join(classes)} (the COCO head's "
        f"rows {calib.KEEP}), {args.imgsz} px, batch {args.batch}; {MODEL} from `{Path(weights).name}` in both",
        "- plain: `../shared/tools/calib/finetune_yolox.py`'s `load_split`, `build_model` and loop (BatchNorm frozen, "
        f"SGD per batch, data pre-decoded in memory) at {' and '.join(map(str, thread_counts))} torch threads; a "
        "2-batch warm-up per thread count",
        f"- sodet: `SodetTrainer` (RAM cache, mosaic off, engine augmentation, EMA, accumulate "
        f"{runs[0]['accumulate']}, lr0 {runs[0]['lr0']:g}, BatchNorm frozen: {runs[0]['freeze_bn']}), {args.epochs} "
        f"epochs per round, the first a warm-up; {runs[0]['threads']} torch thread(s) (the engine's: cores - 1), "
        f"{loader} (the engine sets workers 0 on CPU)",
        f"- {rounds} round(s), order alternating ({' / '.join(ips)}, then reversed); images/s: median (min - max, n) "
        "over rounds; ratio: sodet / the anchor (the faster plain thread count) per round",
        "",
        "| loop | images/s | |",
        "|---|---|---|",
        *rows,
        "",
        "## Targets",
        "",
        "| benchmark | target | result | met |",
        "|---|---|---|---|",
        *[f"| {x['benchmark']} | {x['target']} | {x['result']} | {x['met']} |" for x in run.rows],
    ]
    run.write(lines, title="Fine-tuning throughput: sodet vs a plain PyTorch loop (target ratio >= 0.9)")


if __name__ == "__main__":
    main()
