"""Small-object evaluation protocols beyond COCO's three size buckets, computed by COCO's own algorithm.

pycocotools' ``evaluate`` / ``accumulate`` take any ``params.areaRng`` / ``maxDets`` / ``iouThrs`` (only its
``summarize`` is fixed), so each protocol is COCOeval run with the protocol's parameters and its numbers read from
``eval['precision']`` / ``eval['recall']`` as COCO's summarize reads them (``sodet.eval.cocoeval.summarize_stats``).

- ``aitod`` (AI-TOD's evaluator): ranges all [0, 1e5^2], very tiny [0, 8^2], tiny [8^2, 16^2], small [16^2, 32^2],
  medium [32^2, 1e5^2] (open-ended in the evaluator, 32-64 in the paper); maxDets 1, 100, 1500; IoU 0.25 added to
  COCO's 0.50:0.95 for AP25 (AP and AR stay the mean over 0.50:0.95). Dense scenes: up to 1500 detections per
  image.
- ``tinyperson`` (TinyPerson's): IoU 0.25, 0.5, 0.75; maxDets 200; ranges tiny [1^2, 20^2], tiny1 [1^2, 8^2],
  tiny2 [8^2, 12^2], tiny3 [12^2, 20^2], small [20^2, 32^2], reasonable [32^2, 1e5^2]; headline AP50 on tiny; its
  ignore regions (``ignore: 1``, or crowd) are matched as COCO matches crowd regions.
- ``--size-edges 8,16,32,96``: one range between each pair of edges (pixels of sqrt(area)) and the open ends,
  named ``0-8``, ``8-16`` ... or as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sodet.errors import SodetError

COCO_IOUS = tuple(float(x) for x in np.linspace(0.5, 0.95, 10))
OPEN = 1e5**2  # COCO's "no upper bound"


@dataclass(frozen=True)
class Stat:
    """One summary number: AP or AR at an IoU threshold (None: the mean over 0.50:0.95), a range, a maxDets."""

    name: str
    kind: str  # "ap" | "ar"
    iou: float | None
    range: str
    max_det: int


@dataclass(frozen=True)
class Protocol:
    name: str
    ranges: tuple[tuple[str, float, float], ...]  # (label, lowest area, highest area)
    iou_thresholds: tuple[float, ...]
    max_dets: tuple[int, ...]
    stats: tuple[Stat, ...]
    ignore_field: bool = False  # annotations' own ``ignore: 1`` marks ignore regions (TinyPerson)
    description: str = ""
    source: str = ""

    @property
    def headline(self) -> str:
        return self.stats[0].name

    @property
    def range_names(self) -> list[str]:
        return [r[0] for r in self.ranges]


def _aitod() -> Protocol:
    ranges = (("all", 0.0, OPEN), ("verytiny", 0.0, 8.0**2), ("tiny", 8.0**2, 16.0**2), ("small", 16.0**2, 32.0**2),
              ("medium", 32.0**2, OPEN))
    stats = [Stat("AP", "ap", None, "all", 1500), Stat("AP25", "ap", 0.25, "all", 1500), Stat("AP50", "ap", 0.5, "all", 1500),
             Stat("AP75", "ap", 0.75, "all", 1500), Stat("APvt", "ap", None, "verytiny", 1500),
             Stat("APt", "ap", None, "tiny", 1500), Stat("APs", "ap", None, "small", 1500),
             Stat("APm", "ap", None, "medium", 1500), Stat("AR1", "ar", None, "all", 1), Stat("AR100", "ar", None, "all", 100),
             Stat("AR1500", "ar", None, "all", 1500), Stat("ARvt", "ar", None, "verytiny", 1500),
             Stat("ARt", "ar", None, "tiny", 1500), Stat("ARs", "ar", None, "small", 1500), Stat("ARm", "ar", None, "medium", 1500)]
    return Protocol("aitod", ranges, (0.25, *COCO_IOUS), (1, 100, 1500), tuple(stats),
                    description="AI-TOD: very tiny < 8 px, tiny 8-16, small 16-32, medium >= 32 (sqrt of area); 1500 detections per image",
                    source="Wang et al., Tiny Object Detection in Aerial Images (ICPR 2020), the AI-TOD evaluator (aitodpycocotools)")


def _tinyperson() -> Protocol:
    ranges = (("tiny", 1.0, 20.0**2), ("tiny1", 1.0, 8.0**2), ("tiny2", 8.0**2, 12.0**2), ("tiny3", 12.0**2, 20.0**2),
              ("small", 20.0**2, 32.0**2), ("reasonable", 32.0**2, OPEN))
    stats = [Stat("AP50_tiny", "ap", 0.5, "tiny", 200)]
    stats += [Stat(f"AP50_{r}", "ap", 0.5, r, 200) for r, _, _ in ranges[1:]]
    stats += [Stat("AP25_tiny", "ap", 0.25, "tiny", 200), Stat("AP75_tiny", "ap", 0.75, "tiny", 200),
              Stat("AR50_tiny", "ar", 0.5, "tiny", 200)]
    return Protocol("tinyperson", ranges, (0.25, 0.5, 0.75), (200,), tuple(stats), ignore_field=True,
                    description="TinyPerson: tiny 1-20 px (tiny1 1-8, tiny2 8-12, tiny3 12-20), small 20-32, reasonable >= 32; "
                                "IoU 0.25/0.5/0.75, 200 detections per image, headline AP50 on tiny",
                    source="Yu et al., Scale Match for Tiny Person Detection (WACV 2020), the TinyBenchmark evaluator")


PROTOCOLS = {"aitod": _aitod, "tinyperson": _tinyperson}
PROTOCOL_NAMES = ("coco", *PROTOCOLS)


def custom_protocol(edges: list[float], names: list[str] | None = None, max_det: int = 100) -> Protocol:
    """Ranges between consecutive ``edges`` (pixels of sqrt(area)) and the open ends; AP and AR of each."""
    edges = [float(e) for e in edges]
    if not edges or any(e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise SodetError(f"--size-edges must be increasing pixel sizes above 0, e.g. 8,16,32,96, got {edges}")
    bounds = [0.0, *edges, None]
    default = [f"{_px(a)}-{_px(b)}" if b is not None else f"{_px(a)}+" for a, b in zip(bounds[:-1], bounds[1:])]
    names = list(names) if names else default
    if len(names) != len(default):
        raise SodetError(f"--size-names needs {len(default)} names for {len(edges)} edges, got {len(names)}")
    ranges = [("all", 0.0, OPEN)] + [(n, a * a, OPEN if b is None else b * b) for n, a, b in zip(names, bounds[:-1], bounds[1:])]
    stats = [Stat("AP", "ap", None, "all", max_det)]
    stats += [Stat(f"AP_{n}", "ap", None, n, max_det) for n in names]
    stats += [Stat(f"AR_{n}", "ar", None, n, max_det) for n in names]
    return Protocol("edges", tuple(ranges), COCO_IOUS, (max_det,), tuple(stats),
                    description="custom size buckets: " + ", ".join(f"{n} px" for n in names) + " (sqrt of area)")


def _px(v: float) -> str:
    return f"{v:g}"


def get_protocols(protocol: str | None = "coco", size_edges: list[float] | None = None, size_names: list[str] | None = None,
                  max_det: int = 100) -> list[Protocol]:
    """The protocols asked for beside COCO's 12 numbers (COCO itself is always scored)."""
    out = []
    for name in [p.strip() for p in str(protocol or "coco").split(",") if p.strip()]:
        if name not in PROTOCOL_NAMES:
            raise SodetError(f"--protocol must be one of {', '.join(PROTOCOL_NAMES)}, not '{name}'")
        if name != "coco":
            out.append(PROTOCOLS[name]())
    if size_edges:
        out.append(custom_protocol(size_edges, size_names, max_det))
    return out


def protocol_by_name(name: str, edges: list[float] | None = None) -> Protocol:
    if name == "edges":
        return custom_protocol(edges or [])
    if name not in PROTOCOLS:
        raise SodetError(f"unknown protocol '{name}' (known: {', '.join(PROTOCOL_NAMES)})")
    return PROTOCOLS[name]()
