"""Data-loading throughput of sodet's training dataset with copy-paste, copy-paste with paste jitter and online
random crops (``--crop-train``), each against the plain dataset (issues 4 and 19.6: ratio >= 0.9 each).

Every variant is the training dataset as the trainer builds it (``sodet.engine.build.build_dataset``: engine
default augmentation, mosaic on, no RAM cache), read in-process (workers=0: the rate of ONE loader worker), on
HIT-UAV train at 640 px. One process; in each round every view's passes are cut into ``--chunks`` pieces taken
in turn from all variants (order reversed every piece), each piece with the same Python/NumPy seed for every
variant, after a warm-up pass. Images/s per round, ratios per round (variant / plain of the same round), medians
and ranges over rounds. Views:

- epoch: a whole epoch of each (plain and crops: N samples; copy-paste: N + K, the K extra ones pasted);
- pasted samples: the K extra samples vs the same K source images without pasting (full pipeline);
- paste alone: ``get_image_and_label`` of a pasted sample minus that of its source (image already loaded).

A copy-paste variant meets its target when both views reach 0.9.

    python bench/dataload_throughput.py                      # HIT-UAV train, 640 px, 5 rounds
    python bench/dataload_throughput.py --quick --out /tmp/bench-quick
    python bench/dataload_throughput.py --data ../shared/data/coco-pc --rounds 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Run, med, spread  # noqa: E402

import sodet  # noqa: E402,F401  (before the engine: its offline switches)

import numpy as np  # noqa: E402

DEFAULT_DATA = SHARED / "data" / "hit-uav"
PLAIN, CP, CPJ, CROP = "plain", "copy-paste", "copy-paste + jitter", "random crops"


def data_label(data_dir: Path) -> str:
    return {"hit-uav": "HIT-UAV"}.get(Path(data_dir).name, Path(data_dir).name)


def build_variants(data_dir: Path, imgsz: int, images: int, copies: int, crop: str, crop_p: float,
                   names=(PLAIN, CP, CPJ, CROP)) -> dict:
    """The plain training dataset and the three variants (or those ``names``), each built as the trainer builds
    its dataset."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.utils import check_det_dataset

    from sodet.data.spec import resolve_data
    from sodet.engine.build import build_dataset
    from sodet.options import RunOptions, parse_crop

    data = check_det_dataset(str(resolve_data(data_dir)))
    cfg = get_cfg(overrides=dict(imgsz=imgsz, seed=0, fraction=images if images else 1.0))
    options = {
        PLAIN: RunOptions(),
        CP: RunOptions(copy_paste=True, paste_copies=copies),
        CPJ: RunOptions(copy_paste=True, paste_copies=copies, paste_jitter=True),
        CROP: RunOptions(crop_train=parse_crop(crop), crop_p=crop_p),
    }
    return {name: build_dataset(cfg, data["train"], 16, data, "train", 32, opts) for name, opts in options.items()
            if name in names}


def timed_pass(dataset, indices: list[int], seed: int) -> float:
    """Seconds to produce ``dataset[i]`` for every index (transforms included)."""
    random.seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    for i in indices:
        dataset[i]
    return time.perf_counter() - t0


def interleaved_pass(runs: dict[str, tuple], rnd: int, chunks: int) -> dict[str, float]:
    """Seconds per run for one pass over each run's indices, cut into ``chunks`` pieces taken in turn (order
    reversed every piece), so a burst of load from elsewhere on the machine hits every run alike."""
    names = list(runs)
    pieces = {n: np.array_split(np.asarray(runs[n][1], dtype=np.int64), chunks) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    for c in range(chunks):
        for n in names if (rnd + c) % 2 == 0 else reversed(names):
            seconds[n] += timed_pass(runs[n][0], pieces[n][c].tolist(), seed=1000 * rnd + c)
    return seconds


def fastest_ms(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def paste_overhead_ms(pasted, indices: list[int], sources: list[int]) -> list[float]:
    """Per pasted sample: ms of ``get_image_and_label`` (load + paste, no transforms) minus the same call for its
    unpasted source; fastest of 3 calls each, so both read the image from the loader's buffer and the difference
    is the paste alone."""
    out = []
    for index, src in zip(indices, sources):
        t_src = fastest_ms(lambda: pasted.get_image_and_label(src))
        t_idx = fastest_ms(lambda: pasted.get_image_and_label(index))
        out.append(t_idx - t_src)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO folder [../shared/data/hit-uav]")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--images", type=int, default=0, help="first N train images (0: all; --quick: 48)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (at least 3; --quick: 1)")
    parser.add_argument("--chunks", type=int, default=8, help="pieces per pass, taken in turn from the variants")
    parser.add_argument("--paste-copies", type=int, default=1)
    parser.add_argument("--crop-train", default="256,512", help="crop sides MIN,MAX (the study's 'sf' setting)")
    parser.add_argument("--crop-p", type=float, default=2 / 3)
    parser.add_argument("--crop-imgsz", default="416",
                        help="more input sizes (comma-separated) at which random crops are measured against plain, "
                             "where the engine resizes the frames (416: the study's CPU profile) ['416'; '' for none]")
    run = Run("dataload_throughput", __doc__, parser)
    args = run.parse()
    images = args.images or (48 if run.quick else 0)
    rounds = run.repeats(args.rounds, 1)
    chunks = 2 if run.quick else args.chunks

    ds = build_variants(args.data, args.imgsz, images, args.paste_copies, args.crop_train, args.crop_p)
    plain, n = ds[PLAIN], len(ds[PLAIN])
    assert list(ds[CP].sample_index) == list(ds[CPJ].sample_index)  # same seed: the same extra samples
    extra_idx = list(range(n, len(ds[CP])))
    extra_src = [int(i) for i in ds[CP].sample_index[n:]]
    views = {
        "epoch": {PLAIN: (plain, list(range(n))), CP: (ds[CP], list(range(len(ds[CP])))),
                  CPJ: (ds[CPJ], list(range(len(ds[CPJ])))), CROP: (ds[CROP], list(range(n)))},
        "pasted samples": {PLAIN: (plain, extra_src), CP: (ds[CP], extra_idx), CPJ: (ds[CPJ], extra_idx)},
    }
    for runs in views.values():  # warm-up: file cache, lazy imports, the loaders' image buffers
        interleaved_pass({k: (d, idx[: 8 if run.quick else 32]) for k, (d, idx) in runs.items()}, 0, 1)

    ips = {v: {k: [] for k in runs} for v, runs in views.items()}
    t_start = time.perf_counter()
    for rnd in range(rounds):
        for view, runs in views.items():
            for name, sec in interleaved_pass(runs, rnd, chunks).items():
                ips[view][name].append(len(runs[name][1]) / sec)
        print(f"round {rnd + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s): " + "; ".join(
            f"{v}: " + ", ".join(f"{k} {ips[v][k][-1] / ips[v][PLAIN][-1]:.3f}" for k in ips[v] if k != PLAIN)
            for v in views), flush=True)

    def ratios(view: str, name: str) -> list[float]:
        return [a / b for a, b in zip(ips[view][name], ips[view][PLAIN])]

    limit = 16 if run.quick else None
    overhead = {k: paste_overhead_ms(ds[k], extra_idx[:limit], extra_src[:limit]) for k in (CP, CPJ)}
    plain_ms = 1e3 / med(ips["epoch"][PLAIN])

    where = f"{data_label(args.data)}, {args.imgsz} px"
    rows = []
    for view, runs in views.items():
        for name, (_, idx) in runs.items():
            r = ratios(view, name) if name != PLAIN else None
            rows.append(f"| {view} | {name} | {len(idx)} | {spread(ips[view][name], '{:.1f}')} | "
                        + (f"**{med(r):.3f}** ({min(r):.3f} - {max(r):.3f}) |" if r else "1 |"))

    def fmt(r: list[float]) -> str:
        return f"{med(r):.3f} ({min(r):.3f}-{max(r):.3f}, {len(r)} round{'s' * (len(r) > 1)})"

    for name in (CP, CPJ):
        pasted, epoch = ratios("pasted samples", name), ratios("epoch", name)
        run.target(f"data loading, {name} vs plain ({where}, one loader worker)",
                   "ratio >= 0.9 (pasted samples and whole epoch)",
                   f"pasted samples {fmt(pasted)}; epoch {fmt(epoch)}", met=min(med(pasted), med(epoch)) >= 0.9)
    crop = ratios("epoch", CROP)
    run.target(f"data loading, --crop-train {args.crop_train} (p {args.crop_p:.2f}) vs plain ({where}, one loader worker)",
               "ratio >= 0.9 (epoch)", fmt(crop), met=med(crop) >= 0.9)

    crop_rows = []
    for size in [int(v) for v in args.crop_imgsz.split(",") if v.strip()]:
        at = build_variants(args.data, size, images, args.paste_copies, args.crop_train, args.crop_p, (PLAIN, CROP))
        runs = {k: (d, list(range(len(d)))) for k, d in at.items()}
        interleaved_pass({k: (d, idx[: 8 if run.quick else 32]) for k, (d, idx) in runs.items()}, 0, 1)
        rates = {k: [] for k in runs}
        for rnd in range(rounds):
            for name, sec in interleaved_pass(runs, rnd, chunks).items():
                rates[name].append(len(runs[name][1]) / sec)
        r = [a / b for a, b in zip(rates[CROP], rates[PLAIN])]
        print(f"{size} px: random crops {med(r):.3f}", flush=True)
        crop_rows += [f"| {size} | {PLAIN} | {spread(rates[PLAIN], '{:.1f}')} | 1 |",
                      f"| {size} | {CROP} | {spread(rates[CROP], '{:.1f}')} | **{med(r):.3f}** ({min(r):.3f} - {max(r):.3f}) |"]
        run.target(f"data loading, --crop-train {args.crop_train} (p {args.crop_p:.2f}) vs plain "
                   f"({data_label(args.data)}, {size} px: frames resized by the engine, one loader worker)",
                   "ratio >= 0.9 (epoch)", fmt(r), met=med(r) >= 0.9)
        del at, runs

    stats = {k: ds[k].paste_stats for k in (CP, CPJ)}
    lines = [
        f"- data: `{args.data.name}` train, {n} images" + (f" (the first {images})" if images else "")
        + f", {len(extra_idx)} extra samples (images holding small objects, area < 32x32 px), imgsz {args.imgsz}; "
        f"engine default augmentation (mosaic on), no RAM cache; paste copies {args.paste_copies}; "
        f"crops: sides {args.crop_train} source px, {args.crop_p:.2f} of the samples",
        "- dataset: `sodet.data.dataset.SodetDataset` from `sodet.engine.build.build_dataset` (as the trainer "
        "builds it), read in-process (workers=0: the rate of one loader worker)",
        f"- {rounds} round(s) after a warm-up pass; in each round each view's passes are cut into {chunks} pieces "
        "taken in turn from all variants (order reversed every piece, the same seed for every variant per piece); "
        "images/s: median (min - max) over rounds; ratio: variant / plain of the same round, median (min - max)",
        f"- pastes during the run: copy-paste {stats[CP]['pasted']} pasted, {stats[CP]['skipped']} skipped; with "
        f"jitter {stats[CPJ]['pasted']} pasted, {stats[CPJ]['skipped']} skipped (no free place)",
        "",
        "| view | variant | samples | images/s | ratio to plain |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "epoch: a full epoch of each set (copy-paste has N + K samples). pasted samples: the K extra samples vs the "
        "same K source images unpasted (full pipeline, mosaic included). A ratio above 1 is noise plus the engine's "
        "image buffer: the extra samples repeat images, which are then more often already loaded. Random crops "
        "decode a frame once and keep it in the engine's buffer where the engine keeps it unresized (one decode per "
        "sample, as plain), then resize each crop up to the network input: the magnification the method is for, "
        "and a resize the plain pipeline does not do where the frames' long side is the input size (HIT-UAV at 640).",
        "",
        *(["Random crops where the engine resizes the frames (an input below the frames' long side): one decode "
           "serves a frame's crops and its full-image draws (the full-resolution frame kept for crops, the engine's "
           "resized copy made from it); each crop is still resized to the input. Whole epochs, the same rounds and "
           "interleaving as above:", "",
           "| input px | variant | images/s | ratio to plain |", "|---|---|---|---|", *crop_rows, ""] if crop_rows else []),
        "Paste alone (image already loaded, no transforms), per pasted sample:",
        "",
        "| variant | samples | median ms | 90th percentile ms | of a plain sample's ms |",
        "|---|---|---|---|---|",
    ]
    for name, ov in overhead.items():
        p90 = statistics.quantiles(ov, n=10)[-1] if len(ov) >= 2 else ov[0]
        lines.append(f"| {name} | {len(ov)} | {med(ov):.2f} | {p90:.2f} | {100 * med(ov) / plain_ms:.1f} % of {plain_ms:.1f} |")
    lines += ["", "## Targets", "", "| benchmark | target | result | met |", "|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['target']} | {r['result']} | {r['met']} |" for r in run.rows]
    run.write(lines, title="Data-loading throughput: copy-paste, paste jitter and random crops vs plain (target ratio >= 0.9)")


if __name__ == "__main__":
    main()
