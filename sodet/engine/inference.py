"""Running a model as sodet's validator runs it: the letterbox, the NMS and the model's own evaluation options.

``sodet val``, ``sodet predict`` and sliced inference (``slicing.py``) all prepare images here, so their detections
are equal at the same ``--imgsz --conf --iou --max-det``. The engine's predictor and validator prepare a frame
differently (the predictor upsizes in one step and pads to the minimum rectangle; the validator resizes the long
side first, never upsizes in the letterbox and pads half a stride more); sodet's two share one pipeline: the
validator's resize, the predictor's minimum rectangle (``RECT_PAD``) or YOLOX's own square padded bottom/right,
and the validator's NMS (several classes per box).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils import nms, ops

from sodet.options import RunOptions

# The strides a rect batch adds beyond its minimum rectangle. 0: the engine's DetectionPredictor (LetterBox auto)
# and MMDetection (pad to a multiple of the stride) see a frame so, and so do sodet's validator and predictor: val
# scores what predict returns at the deployed geometry, at predict's speed. (The engine's validator adds half a
# stride, a YOLOv5 habit: 6% more pixels on a 640x512 frame, which made predict 0.87x the engine's.)
RECT_PAD = 0.0


def eval_letterbox(
    images: list[np.ndarray], imgsz: int, stride: int, center: bool, rect: bool | None = None, pad: float = RECT_PAD
) -> tuple[list[np.ndarray], list]:
    """The validator's input for a batch of BGR images: long side resized to ``imgsz`` as the dataset loads it,
    then the engine's LetterBox to the batch shape a rect batch of these images gets (``center``; a centred square
    when ``rect`` is False: exported models of a fixed size) or to a square padded bottom/right (YOLOX's own
    pipeline). ``pad``: the rect batch's extra strides (RECT_PAD). Returns the images and each one's ratio_pad for ``scale_boxes``."""
    if center and (rect is None or rect):
        ar = np.array([im.shape[0] / im.shape[1] for im in images])
        mini, maxi = ar.min(), ar.max()
        shape = [maxi, 1] if maxi < 1 else [1, 1 / mini] if mini > 1 else [1, 1]
        new_shape = tuple(int(x) for x in np.ceil(np.array(shape) * imgsz / stride + pad).astype(int) * stride)
    else:
        new_shape = (imgsz, imgsz)
    letterbox = LetterBox(new_shape=new_shape, scaleup=False, center=center)
    out, ratio_pads = [], []
    for im in images:
        h0, w0 = im.shape[:2]
        r = imgsz / max(h0, w0)
        if r != 1:
            im = cv2.resize(im, (min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz)), interpolation=cv2.INTER_LINEAR)
        h, w = im.shape[:2]
        lb = letterbox(labels={"img": im, "ratio_pad": (h / h0, w / w0)})
        out.append(lb["img"])
        ratio_pads.append(lb["ratio_pad"])
    return out, ratio_pads


def model_letterbox(backend) -> str:
    """The letterbox a model was evaluated with: its RunOptions (sodet models), the ``sodet`` block of an exported
    model's metadata, else the engine's (centred)."""
    opts = find_options(backend) or find_options(getattr(backend, "model", None))  # AutoBackend delegates .model
    if opts is not None:
        return opts.letterbox
    meta = getattr(backend, "metadata", None) or {}
    sodet_meta = meta.get("sodet") or {}
    if isinstance(sodet_meta, str):
        import ast

        sodet_meta = ast.literal_eval(sodet_meta)
    return sodet_meta.get("letterbox", "center")


def eval_nms(preds, conf: float, iou: float, max_det: int, classes=None, agnostic: bool = False, end2end: bool = False):
    """The validator's NMS (several classes per box allowed), with the predictor's class filter."""
    return nms.non_max_suppression(
        preds, conf, iou, classes, agnostic, multi_label=True, max_det=max_det, nc=0, end2end=end2end
    )


def fixed_size(backend) -> bool:
    """An exported model of one input size (the validator then letterboxes squares, not rect batches)."""
    return getattr(backend, "format", "pt") not in {"pt"} and not getattr(backend, "dynamic", False)


def detect_images(model, images: list[np.ndarray], imgsz: int, center: bool, nms_fn, half: bool = False) -> list[torch.Tensor]:
    """Detections (N, 6) in each image's own pixels for a list of BGR images run as one batch, prepared as the
    validator prepares them: what sliced inference runs on its tiles."""
    ims, ratio_pads = eval_letterbox(images, imgsz, int(model.stride), center, rect=not fixed_size(model))
    x = torch.from_numpy(np.stack(ims)).to(model.device).permute(0, 3, 1, 2).flip(1)
    x = (x.half() if half else x.float()) / 255
    dets = nms_fn(model(x))
    for d, rp, im in zip(dets, ratio_pads, images):
        d[:, :4] = ops.scale_boxes(x.shape[2:], d[:, :4], im.shape, ratio_pad=rp)
    return dets


def find_options(model) -> RunOptions | None:
    """The RunOptions a model carries, looking through the engine's wrappers (AutoBackend, DDP, EMA)."""
    seen = 0
    while model is not None and seen < 4:
        opts = getattr(model, "sodet", None)
        if isinstance(opts, RunOptions):
            return opts
        modules = model.__dict__.get("_modules")  # a TorchScript module's is no dict
        model = model.__dict__.get("model") or model.__dict__.get("module") or (modules.get("model") if isinstance(modules, dict) else None)
        seen += 1
    return None
