"""Data-loading throughput of the training dataset with copy-paste vs without (issue 4: ratio target >= 0.9).

Both variants are the engine's training dataset as sodet builds it (``SodetDataset`` with the engine's default
augmentation, mosaic included), read in-process (workers=0, i.e. images/s of ONE loader worker) from disk, no RAM
cache. Within a repetition the two variants take turns every 1/8 of a pass (``--chunks``, order alternating)
and see the same Python ``random`` seed per piece, so load from elsewhere on the machine, warm file caches and
mosaic choices hit both alike. Two views, plus the paste's own time:

- epoch: a whole epoch of each (plain: N samples; copy-paste: N + K, the K extra ones pasted); what training sees.
- pasted samples: the K extra samples vs the same K source images without pasting (full pipeline).
- paste alone: ``get_image_and_label`` of a pasted sample minus that of its source, image already loaded.

    python bench/dataload_throughput.py                                   # coco-pc train, 640 px
    python bench/dataload_throughput.py --data datasets/coco-pc-mini --imgsz 416 --reps 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "coco-pc"


def build_pair(data_dir: Path, imgsz: int, jitter: bool, copies: int):
    """The plain training dataset and the copy-paste one, built exactly as the trainer builds them."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.utils import check_det_dataset

    from sodet.data.spec import resolve_data
    from sodet.engine.build import build_dataset
    from sodet.options import RunOptions

    data = check_det_dataset(str(resolve_data(data_dir)))
    cfg = get_cfg(overrides=dict(imgsz=imgsz, seed=0))
    plain = build_dataset(cfg, data["train"], 16, data, "train", 32, RunOptions(copy_paste=False))
    pasted = build_dataset(cfg, data["train"], 16, data, "train", 32,
                           RunOptions(copy_paste=True, paste_copies=copies, paste_jitter=jitter))
    return plain, pasted


def timed_pass(dataset, indices: list[int], seed: int) -> float:
    """Seconds to produce ``dataset[i]`` for every index (transforms included)."""
    random.seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    for i in indices:
        dataset[i]
    return time.perf_counter() - t0


def _fastest_ms(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def paste_overhead_ms(pasted, indices: list[int], sources: list[int]) -> list[float]:
    """Per pasted sample: ms of ``get_image_and_label`` (load + paste, no transforms) minus the same call for its
    unpasted source. Fastest of 3 calls each, so both read the image from the loader's buffer (the engine's buffer
    can evict an image right after loading it) and the difference is the paste alone."""
    out = []
    for index, src in zip(indices, sources):
        t_src = _fastest_ms(lambda: pasted.get_image_and_label(src))
        t_idx = _fastest_ms(lambda: pasted.get_image_and_label(index))
        out.append(t_idx - t_src)
    return out


def interleaved_pass(runs: list[tuple], rep: int, chunks: int) -> list[float]:
    """Seconds per run for one pass over each run's indices, cut into ``chunks`` pieces taken in turn (order
    alternating by piece), so a burst of load from elsewhere on the machine hits every run alike."""
    pieces = [np.array_split(np.asarray(idx), chunks) for _, idx in runs]
    seconds = [0.0] * len(runs)
    for c in range(chunks):
        order = range(len(runs)) if (rep + c) % 2 == 0 else reversed(range(len(runs)))
        for r in order:
            seconds[r] += timed_pass(runs[r][0], pieces[r][c].tolist(), seed=1000 * rep + c)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO folder (default: ../shared/data/coco-pc)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=8, help="pieces per pass, taken in turn from the two variants")
    ap.add_argument("--paste-copies", type=int, default=1)
    ap.add_argument("--paste-jitter", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dataload_throughput.md")
    args = ap.parse_args()
    if not args.data.is_dir():
        args.data = ROOT / "datasets" / "coco-pc-mini"

    plain, pasted = build_pair(args.data, args.imgsz, args.paste_jitter, args.paste_copies)
    n = len(plain)
    extra_idx = list(range(n, len(pasted)))
    extra_src = [int(i) for i in pasted.sample_index[n:]]
    views = {
        "epoch": ((plain, list(range(n))), (pasted, list(range(len(pasted))))),
        "pasted samples": ((plain, extra_src), (pasted, extra_idx)),
    }
    for ds, idx in (v for pair in views.values() for v in pair):  # warm-up: file cache, lazy imports
        timed_pass(ds, idx[:8], 0)

    ips = {view: {"plain": [], "copy-paste": []} for view in views}
    for rep in range(args.reps):
        for view, runs in views.items():
            for name, (_, idx), sec in zip(("plain", "copy-paste"), runs, interleaved_pass(runs, rep, args.chunks)):
                ips[view][name].append(len(idx) / sec)
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
            f"{v}: {ips[v]['copy-paste'][-1] / ips[v]['plain'][-1]:.3f}" for v in views), flush=True)

    overhead = paste_overhead_ms(pasted, extra_idx, extra_src)
    over_med = statistics.median(overhead)

    import cv2
    import ultralytics

    stats = pasted.paste_stats
    cmd = "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    rows = []
    for view in views:
        med_p, med_c = statistics.median(ips[view]["plain"]), statistics.median(ips[view]["copy-paste"])
        ratios = [c / p for c, p in zip(ips[view]["copy-paste"], ips[view]["plain"])]
        rows.append(f"| {view} | {len(views[view][0][1])} / {len(views[view][1][1])} | {med_p:.1f} | {med_c:.1f} | "
                    f"**{med_c / med_p:.3f}** | {min(ratios):.3f} - {max(ratios):.3f} |")
    md = "\n".join([
        "## Data-loading throughput: copy-paste vs plain (issue 4, target ratio >= 0.9)",
        "",
        f"- command: `{cmd}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"ultralytics {ultralytics.__version__}, numpy {np.__version__}, opencv {cv2.__version__}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- data: `{args.data.name}` train ({n} images, {len(extra_idx)} hold small objects), imgsz {args.imgsz}, "
        f"engine default augmentation (mosaic on), no RAM cache; paste copies {args.paste_copies}, "
        f"jitter {args.paste_jitter}",
        "- dataset: `sodet.data.dataset.SodetDataset` built by `sodet.engine.build.build_dataset` "
        "(as the trainer does), read in-process (workers=0: the rate of one loader worker)",
        f"- {args.reps} repetitions, each pass cut into {args.chunks} pieces taken in turn from the two variants (order "
        "alternating); images/s are medians over repetitions; ratio = copy-paste / plain",
        f"- pastes during the run: {stats['pasted']} objects pasted, {stats['skipped']} skipped (no free place)",
        "",
        "| view | samples plain / copy-paste | plain img/s | copy-paste img/s | ratio | ratio range |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "epoch: a full epoch of each set (copy-paste has N + K samples). pasted samples: the K extra samples "
        "vs the same K source images unpasted (full pipeline, mosaic included). A ratio above 1 is noise plus the "
        "engine's image buffer: the extra samples repeat images, which are then more often already loaded.",
        "",
        f"Paste alone (image already loaded, no transforms): median {over_med:.2f} ms per pasted sample "
        f"(90th percentile {statistics.quantiles(overhead, n=10)[-1]:.2f} ms), i.e. "
        f"{100 * over_med * statistics.median(ips['epoch']['plain']) / 1e3:.1f} % of a plain sample's "
        f"{1e3 / statistics.median(ips['epoch']['plain']):.1f} ms.",
    ])
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
