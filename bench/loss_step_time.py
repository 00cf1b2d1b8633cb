"""Training-step time with the small-object weighted box loss vs the stock loss (issue 5: target within 2%).

One process and ONE model per family: the two variants differ only in the box-loss object the model uses
(YOLOX: ``head.iou_loss``; Ultralytics: ``model.criterion``), swapped in before each step, so weights, memory
layout and batch are the same. Repetitions are interleaved (the order alternates each repetition, so drift and
warm caches hit both equally); a step is forward + loss + backward. Reports median times and their ratio per
family, and, as the low-noise figure, the time of the box-loss call alone on inputs captured from a real step.
Prints a markdown block and writes it to --out.

    python bench/loss_step_time.py                     # CPU, batch 8, 416 px
    python bench/loss_step_time.py --device cuda:0
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sodet.losses import install_ultralytics, install_yolox  # noqa: E402


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


class YoloxFamily:
    """pixeltable-yolox nano; the variants are the head's ``iou_loss``."""

    name = "YOLOX-nano (pixeltable-yolox)"
    grad_index = (0,)  # the box-loss input that holds predictions

    def __init__(self, nc: int, weight: float, device: torch.device, images: torch.Tensor, boxes: torch.Tensor):
        from yolox.config import YoloxConfig

        config = YoloxConfig.get_named_config("yolox_nano")
        config.num_classes = nc
        self.model = config.get_model().to(device).train()
        stock = self.model.head.iou_loss
        self.variants = {"stock": stock, "weighted": install_yolox(self.model.head, weight).iou_loss}
        self.images = images
        batch = images.shape[0]
        counts = torch.bincount(boxes[:, 0].long(), minlength=batch)
        labels = torch.zeros(batch, int(counts.max()), 5)  # cls, cx, cy, w, h in pixels; zero rows pad
        for i in range(batch):
            labels[i, : counts[i]] = boxes[boxes[:, 0] == i, 1:]
        self.labels = labels.to(device)

    def use(self, variant: str) -> None:
        self.model.head.iou_loss = self.variants[variant]

    def box_loss_module(self):
        return self.model.head.iou_loss

    def step(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.model(self.images, self.labels)["total_loss"].backward()

    @staticmethod
    def assigned(inputs) -> int:
        return int(inputs[0].shape[0])


class UltralyticsFamily:
    """Ultralytics DetectionModel; the variants are the model's criterion, as ``init_criterion`` builds it."""

    grad_index = (0, 1)  # pred_dist, pred_bboxes

    def __init__(self, cfg: str, nc: int, weight: float, device: torch.device, images, boxes):
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel

        self.name = f"{Path(cfg).stem} (Ultralytics)"
        self.model = DetectionModel(cfg, nc=nc, verbose=False).to(device).train()
        self.model.args = get_cfg()
        self.variants = {
            "stock": self.model.init_criterion(),
            "weighted": install_ultralytics(self.model.init_criterion(), weight),
        }
        imgsz = images.shape[-1]
        self.batch = {
            "img": images,
            "batch_idx": boxes[:, 0].to(device),
            "cls": boxes[:, 1:2].to(device),
            "bboxes": (boxes[:, 2:] / imgsz).to(device),  # normalised xywh
        }

    def use(self, variant: str) -> None:
        self.model.criterion = self.variants[variant]

    def box_loss_module(self):
        return self.model.criterion.bbox_loss

    def step(self) -> None:
        self.model.zero_grad(set_to_none=True)
        loss, _ = self.model.loss(self.batch)
        loss.sum().backward()

    @staticmethod
    def assigned(inputs) -> int:
        return int(inputs[6].sum())  # fg_mask


def interleaved(run_variant, reps: int, warmup: int, device: torch.device):
    """Wall-clock and process CPU seconds of ``run_variant(name)`` for both variants, order alternating.

    On a shared CPU the CPU time is the steadier measure of the work done: waiting for a core does not count.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wall = {"stock": [], "weighted": []}
    cpu = {"stock": [], "weighted": []}
    for r in range(warmup + reps):
        for variant in ("stock", "weighted") if r % 2 == 0 else ("weighted", "stock"):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            run_variant(variant)
            sync()
            if r >= warmup:
                wall[variant].append(time.perf_counter() - t0)
                cpu[variant].append(time.process_time() - c0)
    return wall, cpu


def capture_box_loss_inputs(family) -> tuple:
    """The positional inputs the model passes to its box-loss module in one real step (via a pre-hook)."""
    captured = []
    handle = family.box_loss_module().register_forward_pre_hook(lambda _, inputs: captured.append(inputs))
    try:
        family.step()
    finally:
        handle.remove()
    return tuple(x.detach() if torch.is_tensor(x) else x for x in captured[0])


def box_loss_call(family, inputs):
    """``run_variant`` for the box-loss module alone: forward + backward on the captured inputs."""

    def run(variant: str) -> None:
        family.use(variant)
        leaves = [
            x.clone().requires_grad_(i in family.grad_index) if torch.is_tensor(x) else x for i, x in enumerate(inputs)
        ]
        out = family.box_loss_module()(*leaves)
        (sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()).backward()

    return run


def full_step(family):
    def run(variant: str) -> None:
        family.use(variant)
        family.step()

    return run


def medians(t: dict) -> tuple[float, float, float, float]:
    """(stock median, weighted median, ratio of medians, median of the per-repetition ratios)."""
    m_stock, m_weighted = statistics.median(t["stock"]), statistics.median(t["weighted"])
    paired = statistics.median(w / s for w, s in zip(t["weighted"], t["stock"]))
    return m_stock, m_weighted, m_weighted / m_stock, paired


def machine(device: torch.device) -> str:
    cpu = cpu_model()
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    return desc


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--reps", type=int, default=25, help="interleaved full-step repetitions")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loss-reps", type=int, default=200, help="interleaved box-loss-call repetitions")
    parser.add_argument("--weight", type=float, default=0.95)
    parser.add_argument("--nc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "loss_step_time.md"))
    parser.add_argument("--append", action="store_true", help="add the block to --out instead of replacing it")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    load_start = os.getloadavg()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, boxes = make_batch(args.batch, args.imgsz, args.nc, args.seed)
    images = images.to(device)
    n_small = int((boxes[:, 4] * boxes[:, 5] < 32 * 32).sum())

    families = [
        YoloxFamily(args.nc, args.weight, device, images, boxes),
        UltralyticsFamily("yolo11n.yaml", args.nc, args.weight, device, images, boxes),
    ]
    step_rows, loss_rows = [], []
    for family in families:
        wall, cpu = interleaved(full_step(family), args.reps, args.warmup, device)
        for clock, t in (("wall", wall), ("CPU", cpu)):
            m_stock, m_weighted, ratio, paired = medians(t)
            step_rows.append(
                f"| {family.name} | {clock} | {m_stock * 1e3:.1f} | {m_weighted * 1e3:.1f} | {ratio:.3f} | {paired:.3f} |"
            )
            print(step_rows[-1], flush=True)

        family.use("stock")
        inputs = capture_box_loss_inputs(family)
        loss_wall, _ = interleaved(box_loss_call(family, inputs), args.loss_reps, args.warmup, device)
        l_stock, l_weighted, _, _ = medians(loss_wall)
        added = l_weighted - l_stock
        share = added / statistics.median(wall["stock"])
        loss_rows.append(
            f"| {family.name} | {family.assigned(inputs)} | {l_stock * 1e3:.3f} | {l_weighted * 1e3:.3f} "
            f"| {added * 1e3:+.3f} | {100 * share:+.3f}% | {1 + share:.4f} |"
        )
        print(loss_rows[-1], flush=True)

    command = ("python bench/loss_step_time.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    loads = lambda la: ", ".join(f"{x:.2f}" for x in la)  # noqa: E731
    report = "\n".join(
        [
            "## Training-step time: small-object weighted box loss vs stock",
            "",
            f"- command: `{command}`",
            f"- machine: {machine(device)}, device `{device}`",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- versions: ultralytics {version('ultralytics')}, pixeltable-yolox {version('pixeltable-yolox')}",
            f"- load average (1, 5, 15 min): at start {loads(load_start)}, at end {loads(os.getloadavg())}",
            f"- step = forward + loss + backward, one model per family with its stock or weighted box loss swapped "
            f"in; batch {args.batch}, {args.imgsz} px, random images, {len(boxes)} targets ({n_small} small, "
            f"area < 32x32 px), W = {args.weight} (study form); {args.reps} interleaved repetitions after "
            f"{args.warmup} warm-up",
            "",
            "| family | clock | stock median (ms) | weighted median (ms) | ratio of medians | median paired ratio |",
            "|---|---|---|---|---|---|",
            *step_rows,
            "",
            f"Box-loss call alone (forward + backward on the inputs captured from one real step, {args.loss_reps} "
            "interleaved repetitions, wall clock). What the option adds to a step is this difference; as a share of "
            "the stock step's wall median it gives the step-time ratio without the noise of the full step.",
            "",
            "| family | assigned targets | stock loss call (ms) | weighted loss call (ms) | added (ms) | of a step "
            "| implied step ratio |",
            "|---|---|---|---|---|---|---|",
            *loss_rows,
            "",
        ]
    )
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    previous = out.read_text() + "\n" if args.append and out.is_file() else ""
    out.write_text(previous + report)
    return report


if __name__ == "__main__":
    main()
