"""``sodet data ...``: look at object sizes of a COCO split and write copy-paste oversampled copies offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sodet.errors import SodetError
from sodet.options import MEDIUM_AREA, SMALL_AREA

data_app = typer.Typer(
    help="Dataset tools: object-size statistics of a COCO split, offline copy-paste oversampling of small objects.",
    no_args_is_help=True,
)
console = Console()


def _fail(e: SodetError) -> typer.Exit:
    """Print a user-facing error as one line and leave with exit code 1 (no traceback)."""
    Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


@data_app.command()
def stats(
    data: Path = typer.Option(..., "--data", help="COCO folder: annotations/<split>.json + images/<split>/"),
    split: str = typer.Option("train", "--split", help="split name"),
    small_area: float = typer.Option(SMALL_AREA, "--small-area", help="objects with COCO area below this are small"),
    medium_area: float = typer.Option(MEDIUM_AREA, "--medium-area", help="below this (and not small) medium, else large"),
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="class names to keep (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="size histogram PNG [runs/data/<dataset>_<split>_sizes.png]"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="also count the objects of each bucket of a size protocol: aitod, tinyperson"),
    size_edges: Optional[str] = typer.Option(None, "--size-edges", help="... or of custom buckets: edges in px of sqrt(area), e.g. 8,16,32"),
):
    """Per-class counts of small/medium/large objects, share of images holding them, share of object area; with
    --protocol / --size-edges, the objects in each of the protocol's buckets."""
    from sodet.data.stats import BUCKETS, dataset_stats

    out = out or Path("runs") / "data" / f"{data.resolve().name}_{split}_sizes.png"
    try:
        s = dataset_stats(data, split, small_area=small_area, medium_area=medium_area, classes=classes, plot_path=out)
    except SodetError as e:
        raise _fail(e)
    table = Table(title=f"{data.name} / {split}: {s['images']} images, small < {small_area:g} px², "
                        f"medium < {medium_area:g} px² (COCO area)")
    table.add_column("class")
    for head in ("objects S/M/L", "images with S/M/L %", "object area S/M/L %"):
        table.add_column(head, justify="right")
    table.add_column("crowd", justify="right")
    rows = list(s["classes"].items()) + [("all", s["all"])]
    for name, t in rows:
        table.add_row(
            name,
            " / ".join(str(t["count"][b]) for b in BUCKETS),
            " / ".join(_pct(t["image_share"][b]) for b in BUCKETS),
            " / ".join(_pct(t["area_share"][b]) for b in BUCKETS),
            str(t["crowd"]),
            end_section=name == rows[-2][0],
        )
    console.print(table)
    if protocol or size_edges:
        from sodet.data.stats import protocol_counts
        from sodet.eval.protocols import get_protocols

        try:
            edges = [float(x) for x in size_edges.split(",")] if size_edges else None
            for p in get_protocols(protocol, edges):
                counts = protocol_counts(data, split, p, classes)
                t = Table(title=f"{p.name}: objects per bucket ({p.description})")
                t.add_column("class")
                for r in counts["ranges"]:
                    t.add_column(r, justify="right")
                for name, c in [*counts["classes"].items(), ("all", counts["all"])]:
                    t.add_row(name, *(str(c[r]) for r in counts["ranges"]), end_section=name == list(counts["classes"])[-1])
                console.print(t)
        except (SodetError, ValueError) as e:
            raise _fail(SodetError(str(e)))
    console.print(f"size histogram: {s['plot']}", highlight=False)


@data_app.command()
def oversample(
    data: Path = typer.Option(..., "--data", help="COCO folder: annotations/<split>.json + images/<split>/"),
    split: str = typer.Option("train", "--split", help="split to oversample (only this split is written)"),
    out: Path = typer.Option(..., "--out", help="output COCO folder (must differ from --data)"),
    oversample: float = typer.Option(1.0, "--oversample", min=0.0,
                                     help="extra copies of each image holding small objects (fractions allowed)"),
    paste_copies: int = typer.Option(1, "--paste-copies", min=0, help="pastes of each small object per copy"),
    paste_jitter: bool = typer.Option(False, "--paste-jitter", help="scale +-20 %, rotate +-15 deg pasted objects"),
    small_area: float = typer.Option(SMALL_AREA, "--small-area", help="objects with COCO area below this are pasted"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same output)"),
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="only paste these classes (repeatable)"),
):
    """Write a COCO folder with the original images plus copy-paste copies of those holding small objects."""
    from sodet.data.oversample import oversample_coco

    try:
        oversample_coco(data, split, out, small_area=small_area, oversample=oversample, copies=paste_copies,
                        jitter=paste_jitter, seed=seed, classes=classes)
    except SodetError as e:
        raise _fail(e)
    console.print(f"written: {out}", highlight=False)


@data_app.command("slice")
def slice_(
    data: Path = typer.Option(..., "--data", help="COCO folder: annotations/<split>.json + images/<split>/"),
    split: str = typer.Option("train", "--split", help="split to cut into tiles"),
    out: Path = typer.Option(..., "--out", help="output COCO folder (must differ from --data)"),
    size: int = typer.Option(512, "--size", help="tile side in pixels (sahi's default 512)"),
    overlap: float = typer.Option(0.2, "--overlap", help="tile overlap, fraction of the tile"),
    min_area_ratio: float = typer.Option(0.1, "--min-area-ratio", help="objects keeping less of their area in a tile are dropped"),
    keep_empty: bool = typer.Option(True, "--keep-empty/--drop-empty", help="keep tiles without objects"),
):
    """Cut a split into overlapping tiles through sahi's slice_coco: a COCO folder to train on (sliced training offline)."""
    from sodet.data.tiles import slice_coco_folder

    try:
        path = slice_coco_folder(data, split, out, size, overlap, min_area_ratio, keep_empty)
    except SodetError as e:
        raise _fail(e)
    n = len(json.loads(path.read_text())["images"])
    console.print(f"written: {out} ({n} tiles, {path})", highlight=False)
