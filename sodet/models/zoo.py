"""``sodet zoo``: each registered model's size and cost, computed from the real network, and where its default
weights come from and whether they are cached (nothing downloaded)."""

from __future__ import annotations

from copy import deepcopy

import torch

from sodet.models.registry import get_entry, get_family, list_models


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
                "family": get_family(e.family).display,
                "params": sum(p.numel() for p in model.parameters()),
                "gflops": gflops(model, size),
                "imgsz": size,
                **weights_source(e.weights),
            }
        )
    return rows


def weights_source(file: str | None) -> dict:
    """The default weights of a model: file, where they come from, and whether they are here already."""
    from urllib.parse import urlparse

    from sodet import hub

    row = hub.row(file) if file else None
    if row is None:
        return {"weights": "-", "source": "random init", "cached": "-"}
    if row.source == "shipped":
        where = "shipped with sodet"
    else:
        where = f"{row.source}: {urlparse(row.download_url or '').netloc}"
    return {"weights": row.file, "source": where, "cached": "yes" if hub.is_cached(row) else "no",
            "trained_on": row.trained_on}
