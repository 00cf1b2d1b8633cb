"""The commands that train and run detectors: train, distill, val, predict, export, zoo.

Options keep the engine's names and meaning (``--epochs --imgsz --batch --device ...``); sodet's own options switch
its small-object methods on; any other engine argument goes through ``-o KEY=VALUE``.
"""

from __future__ import annotations

import inspect
import typing
from typing import Optional

import typer
from rich.console import Console

from sodet.options import SMALL_AREA, check_engine_keys, parse_overrides, refuse_sodet_own

console = Console()


def split_classes(classes: str | None) -> list[str] | None:
    return [c.strip() for c in classes.split(",") if c.strip()] if classes else None


def split_numbers(text: str | None) -> list[float] | None:
    from sodet.errors import SodetError

    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SodetError(f"expected numbers separated by commas, got {text!r}") from None


PROTOCOL_OPTION = typer.Option(None, "--protocol", help="size protocols beside COCO's buckets: coco | aitod | tinyperson (comma list)")
SIZE_EDGES_OPTION = typer.Option(None, "--size-edges", help="custom size buckets: edges in px of sqrt(area), e.g. 8,16,32,96")
SIZE_NAMES_OPTION = typer.Option(None, "--size-names", help="names of the custom buckets [0-8, 8-16, ...]")


# sliced inference (SAHI) options, shared by predict and val
SLICE_OPTION = typer.Option(None, "--slice", help="sliced inference: tiles of N or H,W pixels (>= 32) plus the full image")
SLICE_OVERLAP_OPTION = typer.Option(0.2, "--slice-overlap", help="tile overlap, fraction of the tile in [0, 0.9]")
SLICE_MERGE_OPTION = typer.Option("greedynmm", "--slice-merge", help="SAHI's merging of tiles: greedynmm | nms")
# val scores every detection down to conf 0.001: greedy NMM would grow boxes into the union of low-score neighbours
# (HIT-UAV val, 29 images: AP 0.080 full, 0.092 sliced with nms, 0.008 with greedynmm), so val merges with NMS
VAL_SLICE_MERGE_OPTION = typer.Option("nms", "--slice-merge", help="merging of tiles: nms | greedynmm (greedynmm joins low-score boxes at val's conf 0.001)")
SLICE_MATCH_OPTION = typer.Option("IOS", "--slice-match", help="overlap measure of the merging: IOS | IOU")
SLICE_THRESHOLD_OPTION = typer.Option(0.5, "--slice-threshold", help="overlap above which the merging joins boxes")




def train(
    model: str = typer.Option("yolox-nano", "--model", "-m", help="registry name (sodet zoo) or a sodet .pt checkpoint"),
    data: Optional[str] = typer.Option(None, "--data", help="COCO folder or Ultralytics data YAML [embedded coco-pc-mini]"),
    weights: Optional[str] = typer.Option(None, "--weights", help="initial weights: a file, a weights-table name (sodet zoo; fetched once), or 'none' (random init) [the model's default]"),
    classes: Optional[str] = typer.Option(None, "--classes", help="class names to use, e.g. person,car"),
    epochs: int = typer.Option(None, "--epochs", help="training epochs [10 on the embedded data, else 100]"),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="input size [the model's default]"),
    batch: int = typer.Option(16, "--batch"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, 0, 0,1 ... [CUDA if present]"),
    workers: int = typer.Option(8, "--workers"),
    seed: int = typer.Option(0, "--seed"),
    project: Optional[str] = typer.Option(None, "--project", help="output root [runs/train]"),
    name: Optional[str] = typer.Option(None, "--name", help="run name [exp, exp2, ...]"),
    resume: Optional[str] = typer.Option(None, "--resume", help="resume an interrupted run: last.pt or run folder"),
    patience: int = typer.Option(100, "--patience"),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="reuse the run folder"),
    small_area: float = typer.Option(SMALL_AREA, "--small-area", help="small = area below this (px², COCO: 32*32)"),
    weighted_loss: Optional[float] = typer.Option(None, "--weighted-loss", help="W of the small-object box loss (study: 0.95)"),
    weight_form: str = typer.Option("study", "--weight-form", help="study: 1 - W*IoU^2 ; scale: W*(1 - IoU^2)"),
    copy_paste: bool = typer.Option(False, "--copy-paste", help="copy-paste oversampling of images with small objects"),
    oversample: float = typer.Option(1.0, "--oversample", help="extra appearances per epoch of images with small objects"),
    paste_copies: int = typer.Option(1, "--paste-copies", help="pastes of each small object per extra appearance (0: oversampling alone, the control)"),
    oversample_pool: str = typer.Option(
        "small", "--oversample-pool", help="small: repeat images holding small objects; all: as many extra samples from every image (compute-matched control)"
    ),
    paste_jitter: bool = typer.Option(False, "--paste-jitter", help="scale +-20%, rotate +-15 deg pasted objects"),
    box_loss: str = typer.Option("iou", "--box-loss", help="box term: iou (the family's own) | nwd | iou+nwd (NWD, Wang et al. 2021)"),
    nwd_ratio: float = typer.Option(0.5, "--nwd-ratio", help="the family's own loss's share of the iou+nwd blend"),
    nwd_c: Optional[float] = typer.Option(None, "--nwd-c", help="NWD's C in input pixels [the training set's mean object size]"),
    nwd_assign: bool = typer.Option(False, "--nwd-assign", help="NWD instead of IoU in the label assignment (Ultralytics TAL, GFL ATSS)"),
    crop_train: Optional[str] = typer.Option(None, "--crop-train", help="sliced training: random crops MIN,MAX in source pixels (or fractions), resized to the input"),
    crop_p: float = typer.Option(2 / 3, "--crop-p", help="share of the samples cropped (the rest full images)"),
    crop_min_visible: float = typer.Option(0.1, "--crop-min-visible", help="objects keeping less of their area in the crop are dropped"),
    protocol: Optional[str] = PROTOCOL_OPTION,
    size_edges: Optional[str] = SIZE_EDGES_OPTION,
    size_names: Optional[str] = SIZE_NAMES_OPTION,
    freeze_bn: Optional[bool] = typer.Option(
        None, "--freeze-bn/--no-freeze-bn", help="BatchNorm in eval mode, affine frozen [auto: frozen for folded weights]"
    ),
    override: Optional[list[str]] = typer.Option(None, "--override", "-o", help="any other engine argument KEY=VALUE"),
):
    """Train or fine-tune a detector (default: yolox-nano from COCO weights on the embedded HIT-UAV subset)."""
    run_train_command(**locals())


def run_train_command(distill: dict | None = None, **options) -> None:
    """``train`` and ``distill``: engine options gathered, sodet's options passed on, the run folder printed."""
    from sodet.api import distill as run_distill
    from sodet.api import train as run_train

    overrides = parse_overrides(options.pop("override"))
    check_engine_keys(overrides)
    epochs, data = options.pop("epochs"), options["data"]
    engine = {k: options.pop(k) for k in ENGINE_OPTIONS}
    engine.update(epochs=epochs if epochs is not None else (10 if data is None else 100), **overrides)
    options["classes"] = split_classes(options["classes"])
    options["size_edges"], options["size_names"] = split_numbers(options["size_edges"]), split_classes(options["size_names"])
    if distill is not None:
        save_dir = run_distill(**distill, **options, **engine)
    else:
        save_dir = run_train(**options, **engine)
    console.print(f"run saved to [bold]{save_dir}[/bold]")


ENGINE_OPTIONS = ("imgsz", "batch", "device", "workers", "seed", "project", "name", "patience", "exist_ok")


def distill(
    teacher: Optional[str] = typer.Option(None, "--teacher", "-t", help="registry name, a sodet run's best.pt, or an Ultralytics .pt [required unless --resume]"),
    teacher_weights: Optional[str] = typer.Option(None, "--teacher-weights", help="weights for a registry-name teacher [its default from the weights table]"),
    distill_on: str = typer.Option("neck", "--distill-on", help="neck: neck/FPN outputs; head: class logits"),
    tau: Optional[float] = typer.Option(None, "--tau", help="CWD temperature [family default, 1]"),
    cwd_weight: Optional[float] = typer.Option(None, "--cwd-weight", help="CWD weight per level [YOLOX/YOLO 1, GFL 10 (neck) / 5 (head)]"),
    stop_distill: Optional[float] = typer.Option(None, "--stop-distill", help="fraction of the epochs with distillation on [YOLOX/YOLO 0.9333, GFL 1]"),
    cwd_max_ratio: float = typer.Option(100.0, "--cwd-max-ratio", help="stop the run if CWD / detection loss stays above this (0: off)"),
    **options,
):
    """Train a student with channel-wise distillation (CWD) from a frozen teacher; every train option applies."""
    keys = ("teacher", "teacher_weights", "distill_on", "tau", "cwd_weight", "stop_distill", "cwd_max_ratio")
    given = locals()
    run_train_command(distill={k: given[k] for k in keys}, **given["options"])


# distill's options: its own, then every option of train (typer reads the signature; annotations resolved here
# because the module's annotations are strings)
distill.__signature__ = inspect.Signature(
    [
        p.replace(annotation=typing.get_type_hints(f)[p.name])
        for f in (distill, train)
        for p in inspect.signature(f).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    ]
)


def val(
    model: str = typer.Option("yolox-nano", "--model", "-m", help="a sodet .pt checkpoint or a registry name"),
    data: Optional[str] = typer.Option(None, "--data", help="COCO folder or data YAML [the checkpoint's, else embedded]"),
    weights: Optional[str] = typer.Option(None, "--weights", help="weights for a registry name (YOLOX .pth / Ultralytics .pt)"),
    classes: Optional[str] = typer.Option(None, "--classes", help="class names, e.g. person,car"),
    split: str = typer.Option("val", "--split"),
    imgsz: Optional[int] = typer.Option(None, "--imgsz"),
    batch: int = typer.Option(16, "--batch"),
    device: Optional[str] = typer.Option(None, "--device"),
    size_buckets: bool = typer.Option(
        True, "--size-buckets/--no-size-buckets", help="print AP/AR per object size and class (metrics.json has them always)"
    ),
    out: Optional[str] = typer.Option(None, "--out", help="output folder [runs/val/exp*]"),
    protocol: Optional[str] = PROTOCOL_OPTION,
    size_edges: Optional[str] = SIZE_EDGES_OPTION,
    size_names: Optional[str] = SIZE_NAMES_OPTION,
    max_det: Optional[int] = typer.Option(None, "--max-det", help="detections kept per image [300, or the protocol's cap: AI-TOD 1500]"),
    slice: Optional[str] = SLICE_OPTION,
    slice_overlap: float = SLICE_OVERLAP_OPTION,
    slice_merge: str = VAL_SLICE_MERGE_OPTION,
    slice_match: str = SLICE_MATCH_OPTION,
    slice_threshold: float = SLICE_THRESHOLD_OPTION,
    override: Optional[list[str]] = typer.Option(None, "--override", "-o", help="any other engine argument KEY=VALUE"),
):
    """Validate: COCO AP/AR overall, per size bucket and per class (identical to pycocotools)."""
    from sodet.api import val as run_val

    overrides = parse_overrides(override)
    refuse_sodet_own(overrides)
    if "max_det" in overrides:  # the engine's spelling of --max-det
        engine_max_det = overrides.pop("max_det")
        max_det = engine_max_det if max_det is None else max_det

    save_dir, metrics = run_val(
        model=model, data=data, weights=weights, classes=split_classes(classes), split=split, out=out,
        imgsz=imgsz, batch=batch, device=device, size_buckets=size_buckets, slice=slice, slice_overlap=slice_overlap,
        slice_merge=slice_merge, slice_match=slice_match, slice_threshold=slice_threshold, protocol=protocol,
        size_edges=split_numbers(size_edges), size_names=split_classes(size_names), max_det=max_det, **overrides,
    )
    console.print(f"metrics written to [bold]{save_dir / 'metrics.json'}[/bold]")


def zoo(imgsz: Optional[int] = typer.Option(None, "--imgsz", help="size for GFLOPs [each model's default]")):
    """The model families: name, parameters, GFLOPs at the default size, default weights, where they come from and
    whether they are cached ($SODET_HOME, default ~/.cache/sodet)."""
    from rich.table import Table

    from sodet.hub import weights_dir
    from sodet.models.zoo import zoo_rows

    table = Table(title=f"sodet model zoo (weights cache: {weights_dir()})")
    for col in ("model", "family", "params (M)", "GFLOPs", "imgsz", "default weights", "source", "cached"):
        table.add_column(col, justify="right" if col in {"params (M)", "GFLOPs", "imgsz"} else "left", overflow="fold")
    for row in zoo_rows(imgsz):
        table.add_row(row["model"], row["family"], f"{row['params'] / 1e6:.2f}", f"{row['gflops']:.2f}", str(row["imgsz"]),
                      row["weights"], row["source"], row["cached"])
    console.print(table)


# inference: predict, export, version ---------------------------------------------------------------------------
def predict(
    model: str = typer.Option("yolox-nano", "--model", "-m", help="sodet .pt checkpoint, exported model (.onnx ...) or registry name"),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="image, folder, glob, video or webcam index"),
    weights: Optional[str] = typer.Option(None, "--weights", help="weights for a registry name (YOLOX .pth / Ultralytics .pt)"),
    conf: float = typer.Option(0.25, "--conf", help="score threshold"),
    iou: Optional[float] = typer.Option(None, "--iou", help="NMS IoU threshold [the family's evaluation value]"),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="input size [the model's]"),
    device: Optional[str] = typer.Option(None, "--device"),
    classes: Optional[str] = typer.Option(None, "--classes", help="class names (or indices) to keep, e.g. person,car"),
    max_det: int = typer.Option(300, "--max-det"),
    batch: int = typer.Option(1, "--batch", help="images per forward pass"),
    save_txt: bool = typer.Option(False, "--save-txt", help="YOLO txt labels in labels/"),
    save: bool = typer.Option(True, "--save/--no-save", help="annotated images / videos"),
    project: Optional[str] = typer.Option(None, "--project", help="output root [runs/predict]"),
    name: Optional[str] = typer.Option(None, "--name", help="run name [exp, exp2, ...]"),
    slice: Optional[str] = SLICE_OPTION,
    slice_overlap: float = SLICE_OVERLAP_OPTION,
    slice_merge: str = SLICE_MERGE_OPTION,
    slice_match: str = SLICE_MATCH_OPTION,
    slice_threshold: float = SLICE_THRESHOLD_OPTION,
    override: Optional[list[str]] = typer.Option(None, "--override", "-o", help="any other engine argument KEY=VALUE"),
):
    """Detect objects in images, folders, globs, videos or a webcam: annotated copies, predictions.json (COCO
    results of the whole run) and optional YOLO txt labels in runs/predict/NAME."""
    from sodet.api import predict as run_predict

    overrides = parse_overrides(override)
    refuse_sodet_own(overrides)
    save_dir, results = run_predict(
        model=model, source=source, weights=weights, classes=split_classes(classes), slice=slice,
        slice_overlap=slice_overlap, slice_merge=slice_merge, slice_match=slice_match, slice_threshold=slice_threshold,
        stream=True, conf=conf, iou=iou, imgsz=imgsz, device=device, max_det=max_det, batch=batch, save_txt=save_txt,
        save=save, project=project, name=name, **overrides,
    )
    for _ in results:  # a generator: results are not kept in memory on long videos
        pass
    console.print(f"predictions written to [bold]{save_dir}[/bold]")


def export(
    model: str = typer.Option("yolox-nano", "--model", "-m", help="sodet .pt checkpoint or registry name"),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, torchscript, openvino (if installed) ..."),
    weights: Optional[str] = typer.Option(None, "--weights", help="weights for a registry name"),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="input size [the model's]"),
    device: Optional[str] = typer.Option(None, "--device"),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="any input size and batch (ONNX); static: one size, square"),
    out: Optional[str] = typer.Option(None, "--out", help="output file [beside the checkpoint, or runs/export/NAME]"),
    override: Optional[list[str]] = typer.Option(None, "--override", "-o", help="any other engine export argument KEY=VALUE"),
):
    """Export a detector through the engine's exporter; class names, imgsz and sodet's letterbox travel in its
    metadata, so `sodet predict/val --model FILE` run it as the checkpoint."""
    from sodet.api import export as run_export

    path = run_export(
        model=model, format=format, weights=weights, imgsz=imgsz, device=device, dynamic=dynamic, out=out, **parse_overrides(override)
    )
    console.print(f"exported to [bold]{path}[/bold]")
