"""``Detector``: the CLI's commands as one Python object (``sodet.api`` does the work).

    from sodet import Detector
    det = Detector("runs/train/exp/weights/best.pt")      # or "yolox-nano", or "model.onnx"
    for r in det.predict("frames/", slice=320):
        r.boxes, r.scores, r.class_ids, r.names           # xyxy pixels, scores, class ids, class names
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@dataclass
class Detections:
    """One image's detections in its own pixels (``boxes`` xyxy), with the engine's Results for plotting."""

    path: str
    boxes: np.ndarray  # (N, 4) xyxy pixels
    scores: np.ndarray  # (N,)
    class_ids: np.ndarray  # (N,) int
    names: list[str]  # (N,) class name of each detection
    result: Any = field(repr=False, default=None)  # ultralytics.engine.results.Results

    @classmethod
    def from_result(cls, r) -> "Detections":
        b = r.boxes
        ids = b.cls.cpu().numpy().astype(int)
        return cls(
            path=r.path, boxes=b.xyxy.cpu().numpy(), scores=b.conf.cpu().numpy(), class_ids=ids,
            names=[r.names[i] for i in ids], result=r,
        )

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A detector by checkpoint, exported file or registry name; ``predict``/``val``/``train``/``export`` take the
    CLI's options as keyword arguments (engine options too, e.g. ``conf=0.3``)."""

    def __init__(self, model: str | Path = "yolox-nano", weights: str | None = None, device: str | None = None):
        self.model = str(model)
        self.weights = weights
        self.device = device

    def __repr__(self) -> str:
        return f"Detector({self.model!r})"

    def predict(self, source, slice=None, stream: bool = False, save: bool = False, progress: bool = False, **kwargs):
        """Detections of each image or video frame of ``source`` (path, folder, glob, video, webcam index, numpy
        image or a list of them); ``slice`` N or (H, W) for SAHI tiles. A list, or a generator with ``stream``.
        Nothing is written unless ``save`` (then annotated images and predictions.json in runs/predict/NAME)."""
        from sodet.api import predict

        kwargs.setdefault("device", self.device)
        _, results = predict(model=self.model, source=source, weights=self.weights, slice=slice, stream=True,
                             save=save, save_json=save, progress=progress, **kwargs)
        gen = (Detections.from_result(r) for r in results)
        return gen if stream else list(gen)

    def __call__(self, source, **kwargs) -> list[Detections] | Iterator[Detections]:
        return self.predict(source, **kwargs)

    def val(self, data: str | None = None, **kwargs) -> dict:
        """COCO metrics (the 12 numbers, per size and per class) as ``sodet val`` writes them."""
        from sodet.api import val

        kwargs.setdefault("device", self.device)
        _, metrics = val(model=self.model, data=data, weights=self.weights, **kwargs)
        return metrics

    def train(self, data: str | None = None, **kwargs) -> "Detector":
        """Train or fine-tune from this detector; returns a Detector of the run's best.pt."""
        from sodet.api import train

        kwargs.setdefault("device", self.device)
        if self.weights is not None:
            kwargs.setdefault("weights", self.weights)
        save_dir = train(model=self.model, data=data, **kwargs)
        return Detector(save_dir / "weights" / "best.pt", device=self.device)

    def export(self, format: str = "onnx", **kwargs) -> Path:
        from sodet.api import export

        kwargs.setdefault("device", self.device)
        return export(model=self.model, format=format, weights=self.weights, **kwargs)
