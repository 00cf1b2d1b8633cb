"""``sodet zoo``: each registered model's size and cost, computed from the real network (nothing downloaded)."""

from __future__ import annotations

from copy import deepcopy

import torch

from sodet.models.registry import get_entry, list_models


def gflops(model: torch.nn.Module, imgsz: int) -> float:
    """Forward GFLOPs (2 x multiply-accumulates) at a square input, counted with thop."""
    import thop

    m = deepcopy(model).eval()
    im = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        macs, _ = thop.profile(m, inputs=(im,), verbose=False)
    return 2 * macs / 1e9


def zoo_rows(imgsz: int | None = None) -> list[dict]:
    rows = []
    for name in list_models():
        e = get_entry(name)
        model = e.build(80, None)
        size = imgsz or e.imgsz
        rows.append(
            {
                "model": name,
                "family": {"yolox": "YOLOX", "yolo": "Ultralytics YOLO", "gfl": "GFL"}[e.family],
                "params": sum(p.numel() for p in model.parameters()),
                "gflops": gflops(model, size),
                "imgsz": size,
                "weights": e.weights or "-",
            }
        )
    return rows
