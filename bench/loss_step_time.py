"""Training-step time with sodet's box-loss options vs the stock box loss: the small-object weighted loss
(``--weighted-loss``, issue 5: within 2 %) and the NWD box loss (``--box-loss nwd``, issue 19.6: <= 1.02 of the
step), for YOLOX (yolox-nano), Ultralytics YOLO (yolo11n) and GFL (gfl-r18).

One process, ONE model per family (``sodet.engine.build.build_model``, random init, training mode) and ONE real
batch: HIT-UAV train images through the training dataset and data loader as the trainer builds them
(``build_dataset``, the family's engine defaults, mosaic where the family has it), collated and scaled to 0-1 as
the trainer does. The variants differ only in the box-loss object the family installs for the option
(``Family.install_box_rule``; YOLOX ``head.iou_loss``, Ultralytics ``model.criterion``, GFL
``gfl_loss.box_loss``), swapped in before each step. A step is forward + loss + backward. The variants take turns
(``common.alternate``: order reversed every round) after warm-ups; per round the ratio variant / stock.

The low-noise figure is the box-loss call alone: its inputs captured from a real step (a forward pre-hook), then
forward + backward of each variant's box-loss module on them, alternated the same way. Its added time divided by
the stock step's median gives the step ratio the option implies; the target rows are met on it, and show the
full-step ratio beside it. NWD's C is measured on the training set as the trainer measures it.

    python bench/loss_step_time.py                         # CPU, HIT-UAV, 640 px, batch 8 (gfl-r18: 2)
    python bench/loss_step_time.py --quick --out /tmp/bench-quick
    python bench/loss_step_time.py --models yolox-nano,yolo11n --rounds 20 --device cuda:0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Run, alternate, med, paired_ratios, spread  # noqa: E402

import sodet  # noqa: E402,F401  (before the engine: its offline switches)

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_DATA = SHARED / "data" / "hit-uav"
DEFAULT_MODELS = "yolox-nano,yolo11n,gfl-r18:2"  # NAME[:BATCH]: gfl-r18 at batch 2 (a 640 px step of 8 takes ~30 s of CPU)
METHODS = ("weighted", "nwd")


def data_label(data_dir: Path) -> str:
    return {"hit-uav": "HIT-UAV"}.get(Path(data_dir).name, Path(data_dir).name)


def parse_models(spec: str, batch: int) -> list[tuple[str, int]]:
    """``NAME[:BATCH],...`` -> [(name, batch)], ``batch`` where a name gives none."""
    out = []
    for item in (m.strip() for m in spec.split(",")):
        if item:
            name, _, b = item.partition(":")
            out.append((name, int(b) if b else batch))
    return out


def load_data(data_dir: Path) -> dict:
    from ultralytics.data.utils import check_det_dataset

    from sodet.data.spec import resolve_data

    return check_det_dataset(str(resolve_data(data_dir)))


def nwd_c(dataset, imgsz: int) -> float:
    """NWD's C as ``SodetTrainer.measure_nwd_c`` measures it: the mean object size (sqrt of box area) of the
    training set at the network input."""
    sizes = []
    for lb in dataset.labels:
        h, w = lb["shape"]
        b = np.asarray(lb["bboxes"]).reshape(-1, 4)
        sizes.append(np.sqrt(b[:, 2] * w * b[:, 3] * h) * imgsz / max(h, w))
    return float(np.concatenate(sizes).mean())


class FamilyBench:
    """One registry model, its stock box loss and the variants, and one real training batch."""

    def __init__(self, name: str, batch_size: int, data: dict, args, device: torch.device):
        from ultralytics.cfg import get_cfg
        from ultralytics.data.build import build_dataloader
        from ultralytics.utils.checks import check_imgsz

        from sodet.engine.build import build_dataset, build_model
        from sodet.losses.box_rule import BoxRule
        from sodet.models.registry import get_entry, get_family
        from sodet.options import RunOptions

        self.name, self.device = name, device
        entry = get_entry(name)
        self.family = get_family(entry.family)
        self.kind = entry.family
        torch.manual_seed(args.seed)
        self.model = build_model(RunOptions(model=name), data["nc"], data["names"]).to(device).train()
        gs = max(int(self.model.stride.max()), 32)
        self.imgsz = check_imgsz(args.imgsz, stride=gs, floor=gs, max_dim=1)
        cfg = get_cfg(overrides=dict(imgsz=self.imgsz, seed=args.seed, batch=batch_size, **self.family.engine_defaults()))
        self.model.args = cfg  # as the trainer sets it (Ultralytics' criterion reads its gains there)
        dataset = build_dataset(cfg, data["train"], batch_size, data, "train", gs, RunOptions(model=name))
        torch.manual_seed(args.seed)
        loader = build_dataloader(dataset, batch_size, workers=0, shuffle=True, device=device)
        batch = next(iter(loader))
        loader.close()
        for k, v in batch.items():  # the trainer's preprocess_batch: to the device, images in 0-1
            if isinstance(v, torch.Tensor):
                batch[k] = v.to(device)
        batch["img"] = batch["img"].float() / 255
        self.batch = batch
        self.targets = int(batch["cls"].shape[0])
        wh = batch["bboxes"][:, 2:] * torch.tensor(batch["img"].shape[-1:-3:-1], device=device, dtype=torch.float32)
        self.small = int((wh[:, 0] * wh[:, 1] < 32 * 32).sum())
        self.nwd_c = nwd_c(dataset, self.imgsz)
        rules = {
            "stock": None,
            "weighted": BoxRule.from_options(RunOptions(weighted_loss=args.weight, weight_form="study")),
            "nwd": BoxRule.from_options(RunOptions(box_loss=args.nwd_box_loss, nwd_c=self.nwd_c)),
        }
        self.variants = {}
        for variant, rule in rules.items():  # each built where and as the family installs it
            if rule is not None:
                self.family.install_box_rule(self.model, rule)
            self.variants[variant] = self.current()
        self.use("stock")

    # where the family keeps its box loss ------------------------------------------------------------------------
    def current(self):
        if self.kind == "yolox":
            return self.model.head.iou_loss
        if self.kind == "yolo":  # install_box_rule sets model.box_rule; the criterion is built from it
            return self.model.init_criterion()
        return self.model.gfl_loss.box_loss

    def use(self, variant: str) -> None:
        obj = self.variants[variant]
        if self.kind == "yolox":
            self.model.head.iou_loss = obj
        elif self.kind == "yolo":
            self.model.criterion = obj
        else:
            self.model.gfl_loss.box_loss = obj

    def box_loss_module(self):
        """The module that computes the per-target box term in the variant in use."""
        if self.kind == "yolox":
            return self.model.head.iou_loss
        if self.kind == "yolo":
            return self.model.criterion.bbox_loss
        return self.model.gfl_loss.box_loss

    @property
    def grad_index(self) -> tuple[int, ...]:
        """Which inputs of the box-loss call carry predictions (and so get gradients)."""
        return (0, 1) if self.kind == "yolo" else (0,)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> None:
        self.model.zero_grad(set_to_none=True)
        loss, _ = self.model.loss(self.batch)
        loss.sum().backward()
        self.sync()

    def capture_box_loss_inputs(self) -> tuple[tuple, dict]:
        """The inputs the model passes to its (stock) box-loss module in one real step."""
        self.use("stock")
        captured = []
        handle = self.box_loss_module().register_forward_pre_hook(
            lambda _, a, kw: captured.append((a, kw)), with_kwargs=True)
        try:
            self.step()
        finally:
            handle.remove()
        a, kw = captured[0]
        det = lambda x: x.detach() if torch.is_tensor(x) else x  # noqa: E731
        return tuple(det(x) for x in a), {k: det(v) for k, v in kw.items()}

    def box_loss_call(self, variant: str, inputs: tuple[tuple, dict]):
        """A contender: forward + backward of ``variant``'s box-loss module on the captured inputs."""
        args, kwargs = inputs
        self.use(variant)
        module = self.box_loss_module()

        def call():
            leaves = [x.clone().requires_grad_(i in self.grad_index) if torch.is_tensor(x) else x
                      for i, x in enumerate(args)]
            out = module(*leaves, **kwargs)
            (sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()).backward()
            self.sync()

        return call

    def assigned(self, inputs) -> int:
        args, _ = inputs
        return int(args[6].sum()) if self.kind == "yolo" else int(args[0].shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO folder [../shared/data/hit-uav]")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"registry names NAME[:BATCH], comma-separated [{DEFAULT_MODELS}]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="batch of the models that name none")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=10, help="alternated full-step rounds (at least 3; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps of each variant")
    parser.add_argument("--loss-rounds", type=int, default=200, help="alternated box-loss-call rounds (--quick: 20)")
    parser.add_argument("--weight", type=float, default=0.95, help="W of --weighted-loss (study form)")
    parser.add_argument("--nwd-box-loss", default="nwd", choices=["nwd", "iou+nwd"], help="the --box-loss NWD setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the engine's, cores - 1)")
    parser.add_argument("--seed", type=int, default=0)
    run = Run("loss_step_time", __doc__, parser)
    args = run.parse()
    models = parse_models(args.models, args.batch)
    if run.quick:  # small steps: 256 px (a multiple of GFL's stride 128), batch 2
        args.imgsz, models = min(args.imgsz, 256), [(n, min(b, 2)) for n, b in models]
    rounds, loss_rounds = run.repeats(args.rounds, 1), 20 if run.quick else args.loss_rounds
    warmup = 1 if run.quick else args.warmup

    from ultralytics.utils import NUM_THREADS

    device = torch.device(args.device)
    torch.set_num_threads(args.threads or NUM_THREADS)  # the engine sets NUM_THREADS for CPU training
    data = load_data(args.data)
    step_rows, loss_rows, notes = [], [], []
    for name, batch_size in models:
        t0 = time.perf_counter()
        fb = FamilyBench(name, batch_size, data, args, device)
        cpu = {v: [] for v in fb.variants}

        def full_step(variant: str):
            def step():
                fb.use(variant)
                c0 = time.process_time()
                fb.step()
                cpu[variant].append(time.process_time() - c0)
            return step

        wall = alternate({v: full_step(v) for v in fb.variants}, repeats=rounds, warmup=warmup)
        cpu = {v: c[warmup:] for v, c in cpu.items()}
        inputs = fb.capture_box_loss_inputs()
        calls = alternate({v: fb.box_loss_call(v, inputs) for v in fb.variants}, repeats=loss_rounds, warmup=3)
        fb.use("stock")
        stock_ms = 1e3 * med(wall["stock"])
        where = f"{data_label(args.data)}, {fb.imgsz} px, batch {batch_size}, {device.type.upper()}"
        for clock, t in (("wall", wall), ("CPU", cpu)):
            row = f"| {name} | {clock} | {spread([1e3 * x for x in t['stock']], '{:.0f}')} |"
            for m in METHODS:
                r = paired_ratios(t[m], t["stock"])
                row += f" {spread([1e3 * x for x in t[m]], '{:.0f}')} | {med(r):.3f} ({min(r):.3f} - {max(r):.3f}) |"
            step_rows.append(row)
        row = f"| {name} | {fb.assigned(inputs)} | {1e3 * med(calls['stock']):.3f} |"
        for m in METHODS:
            diffs = [1e3 * (a - b) for a, b in zip(calls[m], calls["stock"])]
            added = med(diffs)
            implied = 1 + added / stock_ms
            full = paired_ratios(wall[m], wall["stock"])
            row += f" {1e3 * med(calls[m]):.3f} | {added:+.3f} | {implied:.4f} |"
            what = (f"--weighted-loss {args.weight:g} (study form)" if m == "weighted"
                    else f"--box-loss {args.nwd_box_loss} (C {fb.nwd_c:.1f} px)")
            target = ("within 2 %: added loss time / step <= 2 %" if m == "weighted"
                      else "<= 1.02 of the step: added loss time / step <= 2 %")
            run.target(f"training step, {what} vs stock box loss, {fb.family.display} {name} ({where})", target,
                       f"{implied:.4f} (+{added:.2f} ms of a {stock_ms:.0f} ms step); full step {med(full):.3f} "
                       f"({min(full):.3f}-{max(full):.3f}, {len(full)} round{'s' * (len(full) > 1)})",
                       met=implied <= 1.02)
        loss_rows.append(row)
        notes.append(f"{name}: {fb.imgsz} px, batch {batch_size}, {fb.targets} targets in the batch ({fb.small} below 32x32 input px), NWD's C "
                     f"{fb.nwd_c:.1f} px, {time.perf_counter() - t0:.0f} s")
        print(step_rows[-2], step_rows[-1], loss_rows[-1], sep="\n", flush=True)
        del fb

    lines = [
        f"- data: `{args.data.name}` train through `build_dataset` + the engine's data loader (workers 0, seed "
        f"{args.seed}), one batch per model kept for every step; models random init, training mode",
        f"- device `{device}`, torch threads {torch.get_num_threads()} (the engine's for CPU training: cores - 1)",
        f"- step = forward + loss + backward; {rounds} alternated round(s) of stock / weighted / nwd (order reversed "
        f"every round) after {warmup} warm-up step(s) each; box-loss call alone: {loss_rounds} alternated rounds "
        f"after 3 warm-ups, wall clock",
        f"- weighted: `--weighted-loss {args.weight:g} --weight-form study`; nwd: `--box-loss {args.nwd_box_loss}`",
        *[f"- {n}" for n in notes],
        "",
        "Full step, ms: median (min - max, n) per variant; ratio: variant / stock per round, median (min - max). On "
        "a shared CPU the CPU-time row is the steadier: waiting for a core does not count.",
        "",
        "| model | clock | stock | weighted | weighted / stock | nwd | nwd / stock |",
        "|---|---|---|---|---|---|---|",
        *step_rows,
        "",
        "Box-loss call alone (forward + backward on the inputs captured from one real step). Added: median of the "
        "per-round differences to the stock call; implied step ratio: 1 + added / the stock step's wall median.",
        "",
        "| model | assigned targets | stock call (ms) | weighted call (ms) | added (ms) | implied ratio | nwd call "
        "(ms) | added (ms) | implied ratio |",
        "|---|---|---|---|---|---|---|---|---|",
        *loss_rows,
        "",
        "## Targets",
        "",
        "| benchmark | target | result | met |",
        "|---|---|---|---|",
        *[f"| {r['benchmark']} | {r['target']} | {r['result']} | {r['met']} |" for r in run.rows],
    ]
    run.write(lines, title="Training-step time: weighted and NWD box losses vs the stock box loss")


if __name__ == "__main__":
    main()
