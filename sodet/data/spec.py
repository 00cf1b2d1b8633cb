"""Resolve what the user calls ``--data`` into a data YAML for the engine, plus sodet's view of it.

A COCO folder becomes a small generated YAML (cached next to the data) whose ``sodet_coco`` key points back to
the folder, so the engine's own dataset checks run unchanged and sodet's dataset reads the original json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sodet.data.coco import cache_dir_for, check_unique_ids, coco_split_paths, is_coco_dir, read_json, select_categories
from sodet.errors import SodetError


def resolve_data(data: str | Path | None, classes: list[str] | None = None, splits=("train", "val")) -> Path:
    """Path of an engine data YAML for ``data`` (a COCO folder, an Ultralytics YAML, or None: the embedded set)."""
    from sodet.assets import default_data_dir

    src = Path(data) if data else default_data_dir()
    if src.suffix.lower() in {".yaml", ".yml"}:
        return yolo_yaml(src, classes)
    if not src.exists():
        raise SodetError(f"data not found: {src} (pass a COCO folder with annotations/ and images/, or a data YAML)")
    if not is_coco_dir(src):
        raise SodetError(f"{src} is not a COCO folder (expected {src}/annotations/<split>.json and images/<split>/)")
    return coco_yaml(src.resolve(), classes, splits)


def coco_yaml(root: Path, classes: list[str] | None, splits) -> Path:
    """Every split found in ``annotations/`` is listed; the ``splits`` asked for must exist."""
    jsons = {}
    for s in splits:
        ann, _ = coco_split_paths(root, s)  # one-line error naming what is missing
        jsons[s] = read_json(ann)
        check_unique_ids(jsons[s], ann)  # before any work: duplicate ids would merge images' ground truth
    found = sorted(p.stem for p in (root / "annotations").glob("*.json") if (root / "images" / p.stem).is_dir())
    cats = select_categories(jsons[splits[0]]["categories"], classes, root)
    cfg = {"path": str(root), "names": {i: c["name"] for i, c in enumerate(cats)}, "channels": 3}
    cfg.update({s: f"images/{s}" for s in found})
    cfg.setdefault("train", f"images/{splits[0]}")
    cfg.setdefault("val", f"images/{splits[-1]}")
    cfg.update(sodet_coco=str(root), sodet_classes=[c["name"] for c in cats])
    return write_yaml(cache_dir_for(root), cfg)


def yolo_yaml(src: Path, classes: list[str] | None) -> Path:
    """An Ultralytics data YAML, checked offline (no ``download:``), with sodet's class selection recorded."""
    from ultralytics.utils import YAML

    if not src.is_file():
        raise SodetError(f"data YAML not found: {src}")
    try:
        cfg = YAML.load(src)
    except Exception as e:
        raise SodetError(f"cannot read data YAML {src}: {e}".splitlines()[0]) from None
    root = Path(cfg.get("path") or src.parent)
    root = root if root.is_absolute() else (src.parent / root).resolve()
    for k in ("train", "val"):
        if k not in cfg:
            raise SodetError(f"{src} has no '{k}' entry")
        p = Path(cfg[k]) if Path(cfg[k]).is_absolute() else root / cfg[k]
        if not p.exists():
            raise SodetError(f"{k} images not found: {p} (sodet never downloads datasets; put them there)")
    names = cfg["names"] if isinstance(cfg["names"], dict) else dict(enumerate(cfg["names"]))
    all_names = [names[i] for i in sorted(names)]
    chosen = classes or all_names
    missing = [c for c in chosen if c not in all_names]
    if missing:
        raise SodetError(f"classes {missing} not in {src} (it has: {', '.join(all_names)})")
    out = {k: v for k, v in cfg.items() if k != "download"}
    out.update(path=str(root), names=dict(enumerate(chosen)), sodet_yolo_names=all_names, sodet_classes=chosen)
    return write_yaml(cache_dir_for(src.resolve().parent), out)


def write_yaml(folder: Path, cfg: dict) -> Path:
    from ultralytics.utils import YAML

    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = folder / f"data-{tag}.yaml"
    if not path.is_file():
        YAML.save(path, cfg)
    return path
