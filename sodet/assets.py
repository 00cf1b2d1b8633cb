"""Where the shipped defaults live: resolved from the installed package, so they work from any directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sodet.errors import SodetError

DEFAULT_DATA = "hit-uav-mini"  # thermal UAV frames, 70% small objects: where fine-tuning a COCO model pays off
DEFAULT_DATA_IMGSZ = 640  # its frames are 640x512 and its objects about 20 px: no downscaling by default
COCO_MINI = "coco-pc-mini"  # COCO person + car with polygons: the tests' data
YOLOX_NANO_COCO = "yolox_nano_coco_fusedbn.pth"


def resource_dir(name: str) -> Path:
    """``cfg/`` or ``datasets/``: in a source checkout (the package imported from a repository, e.g. by
    ``python -m pytest`` at its root) the checkout's own top-level folder; installed, ``sodet.<name>``."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    try:
        return Path(str(resources.files(f"sodet.{name}")))
    except ModuleNotFoundError:
        return checkout / name


def load_cfg(name: str) -> dict:
    """One of sodet's data files in ``cfg/`` (models, weights, defaults, the study matrix), parsed."""
    import yaml

    path = resource_dir("cfg") / name
    if not path.is_file():
        raise SodetError(f"configuration file missing: {path} (reinstall sodet)")
    return yaml.safe_load(path.read_text()) or {}


def embedded_data(name: str) -> Path:
    """An embedded dataset (``datasets/<name>`` in the repository)."""
    p = resource_dir("datasets") / name
    if not (p / "annotations").is_dir():
        raise SodetError(f"embedded dataset missing at {p}: reinstall sodet or pass --data DIR")
    return p


def default_data_dir() -> Path:
    """The data of a run without ``--data``: the embedded HIT-UAV subset (``datasets/hit-uav-mini``)."""
    return embedded_data(DEFAULT_DATA)


def shipped_weights(name: str) -> Path:
    """A weights file shipped in ``sodet/weights``."""
    p = Path(str(resources.files("sodet.weights") / name))
    if not p.is_file():
        raise SodetError(f"shipped weights missing: {p} (reinstall sodet, or pass --weights FILE)")
    return p
