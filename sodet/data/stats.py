"""How small the objects of a COCO split are, per class (like Table 3 of Kisantal et al. 2019).

Before paying for copy-paste or a small-object loss it helps to know how many objects are small, how many images
hold any, and how little of the labelled area they cover. Sizes come from the COCO ``area`` field (the mask area,
in original pixels), which is what COCOeval's size buckets use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sodet.data.coco import coco_split_paths, read_json, select_categories
from sodet.errors import SodetError
from sodet.options import MEDIUM_AREA, SMALL_AREA

BUCKETS = ("small", "medium", "large")


def load_coco_split(data_dir: str | Path, split: str) -> tuple[dict, Path, Path]:
    """(annotation dict, json path, image folder) of a COCO folder's split; a one-line error for anything else."""
    p = Path(data_dir)
    if p.suffix.lower() in {".yaml", ".yml"}:
        raise SodetError(f"{p} is an Ultralytics YAML dataset; this command needs a COCO folder "
                         "(annotations/<split>.json + images/<split>/)")
    ann, img_dir = coco_split_paths(p, split)
    return read_json(ann), ann, img_dir


def coco_area(a: dict) -> float:
    """The annotation's COCO ``area`` (box area when the field is missing)."""
    return float(a["area"]) if "area" in a else float(a["bbox"][2] * a["bbox"][3])


def bucket_of(area: np.ndarray, small_area: float, medium_area: float) -> np.ndarray:
    """0 small, 1 medium, 2 large, by COCO area."""
    return np.digitize(np.asarray(area, np.float64), [small_area, medium_area])


def _bucket_table(areas: np.ndarray, buckets: np.ndarray, image_index: np.ndarray, n_images: int) -> dict:
    total_area = float(areas.sum())
    out = {"count": {}, "image_share": {}, "area_share": {}}
    for b, name in enumerate(BUCKETS):
        sel = buckets == b
        out["count"][name] = int(sel.sum())
        out["image_share"][name] = len(np.unique(image_index[sel])) / n_images if n_images else 0.0
        out["area_share"][name] = float(areas[sel].sum()) / total_area if total_area > 0 else 0.0
    out["objects"] = int(len(areas))
    return out


def dataset_stats(data_dir, split, small_area=SMALL_AREA, medium_area=MEDIUM_AREA, classes=None, plot_path=None) -> dict:
    """Per-class small/medium/large counts, share of images holding each size, share of object area per size.

    Crowd regions are left out of every number (counted apart). ``plot_path``: also save a size histogram there.
    """
    d, ann_path, _ = load_coco_split(data_dir, split)
    cats = select_categories(d["categories"], classes, ann_path)
    image_row = {im["id"]: i for i, im in enumerate(d["images"])}
    n_images = len(image_row)
    per_class = {c["id"]: {"area": [], "image": []} for c in cats}
    crowd = {c["id"]: 0 for c in cats}
    for a in d["annotations"]:
        cid = a.get("category_id")
        if cid not in per_class or a.get("image_id") not in image_row:
            continue
        if a.get("iscrowd", 0):
            crowd[cid] += 1
            continue
        per_class[cid]["area"].append(coco_area(a))
        per_class[cid]["image"].append(image_row[a["image_id"]])

    result = {"data": str(data_dir), "split": split, "images": n_images, "small_area": small_area,
              "medium_area": medium_area, "classes": {}}
    all_area, all_image = [], []
    sizes = {}
    for c in cats:
        areas = np.asarray(per_class[c["id"]]["area"], np.float64)
        images = np.asarray(per_class[c["id"]]["image"], np.int64)
        table = _bucket_table(areas, bucket_of(areas, small_area, medium_area), images, n_images)
        table["crowd"] = crowd[c["id"]]
        result["classes"][c["name"]] = table
        sizes[c["name"]] = np.sqrt(areas)
        all_area.append(areas)
        all_image.append(images)
    areas, images = np.concatenate(all_area or [np.zeros(0)]), np.concatenate(all_image or [np.zeros(0, np.int64)])
    result["all"] = _bucket_table(areas, bucket_of(areas, small_area, medium_area), images, n_images)
    result["all"]["crowd"] = sum(crowd.values())
    result["plot"] = None
    if plot_path is not None:
        result["plot"] = str(size_histogram(sizes, plot_path, small_area, medium_area,
                                            title=f"{Path(data_dir).name} / {split}: object sizes"))
    return result


def protocol_counts(data_dir, split, protocol, classes=None) -> dict:
    """Objects per class in each range of a size protocol (``sodet.eval.protocols``), by COCO area, counted as
    COCOeval counts them (lowest <= area <= highest; crowd / ignore regions apart). Ranges may overlap (TinyPerson's
    tiny holds tiny1-3). -> {"ranges": [...], "classes": {name: {range: n}}, "all": {range: n}}."""
    d, ann_path, _ = load_coco_split(data_dir, split)
    cats = select_categories(d["categories"], classes, ann_path)
    ranges = [r for r in protocol.ranges if r[0] != "all"]
    counts = {c["name"]: {r[0]: 0 for r in ranges} for c in cats}
    name_of = {c["id"]: c["name"] for c in cats}
    images = {im["id"] for im in d["images"]}
    for a in d["annotations"]:
        if a.get("category_id") not in name_of or a.get("image_id") not in images or a.get("iscrowd", 0) or a.get("ignore", 0):
            continue
        area = coco_area(a)
        for label, lo, hi in ranges:
            if lo <= area <= hi:
                counts[name_of[a["category_id"]]][label] += 1
    total = {r[0]: sum(c[r[0]] for c in counts.values()) for r in ranges}
    return {"ranges": [r[0] for r in ranges], "classes": counts, "all": total}


def size_histogram(sizes: dict[str, np.ndarray], path, small_area=SMALL_AREA, medium_area=MEDIUM_AREA, title="") -> Path:
    """Histogram of sqrt(area) per class on a log x axis, bucket boundaries marked; written as PNG.

    Uses matplotlib's Agg canvas directly (no GUI backend, no global pyplot state, bundled DejaVu font only).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = [np.maximum(v, 1.0) for v in sizes.values() if len(v)]
    hi = max([float(v.max()) for v in values] + [medium_area ** 0.5 * 2])
    lo = min([float(v.min()) for v in values] + [small_area ** 0.5 / 2])
    bins = np.logspace(np.log10(lo / 1.05), np.log10(hi * 1.05), 40)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, v in sizes.items():
        if len(v):
            ax.hist(np.maximum(v, 1.0), bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({len(v)})")
    for edge, label in ((small_area ** 0.5, "small | medium"), (medium_area ** 0.5, "medium | large")):
        ax.axvline(edge, color="0.3", linestyle="--", linewidth=1)
        ax.text(edge, 1.0, f" {edge:g} px\n {label}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("object size sqrt(COCO area) [px, original image]")
    ax.set_ylabel("objects")
    if title:
        ax.set_title(title)
    if values:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
