"""Building sodet's models and datasets for the engine: the one place trainer and validator share."""

from __future__ import annotations

import torch
from ultralytics.utils import colorstr

from sodet.data.dataset import SodetDataset
from sodet.engine.inference import RECT_PAD
from sodet.losses.box_rule import BoxRule
from sodet.models.registry import get_entry, get_family
from sodet.options import RunOptions


def build_model(options: RunOptions, nc: int, names: dict, weights: torch.nn.Module | None = None):
    """The registered architecture with ``options`` attached and the box rule they ask for installed.

    ``weights`` is a model object from an engine checkpoint (resume, or fine-tuning a sodet run); otherwise the
    file named by ``options.weights`` (already resolved: ``sodet.models.resolve``) is loaded, if any.
    """
    from sodet.models.weights import load_weights

    entry = get_entry(options.model)
    family = get_family(entry.family)
    model = family.build(entry, nc, names)
    if weights is not None:
        family.load_module(model, weights, "the checkpoint")
    elif options.weights:
        load_weights(model, options.weights)
    model.sodet = options  # travels with EMA, checkpoints and DDP
    rule = BoxRule.from_options(options)
    if rule is not None:
        family.install_box_rule(model, rule)
    return model


def build_dataset(
    cfg, img_path: str, batch: int, data: dict, mode: str, stride: int, options: RunOptions, rect: bool | None = None
):
    """SodetDataset with the engine's own arguments (as ``build_yolo_dataset`` passes them); ``rect`` False for
    exported models of one input size."""
    from ultralytics.data.utils import get_split_fraction

    own_pipeline = options.letterbox == "top-left"  # YOLOX's own evaluation: square, padded bottom/right
    return SodetDataset(
        img_path=img_path,
        imgsz=cfg.imgsz,
        batch_size=batch,
        augment=mode == "train",
        hyp=cfg,
        rect=(cfg.rect or (mode == "val" and not own_pipeline)) if rect is None else rect,
        cache=cfg.cache or None,
        single_cls=cfg.single_cls or False,
        stride=stride,
        pad=RECT_PAD if mode != "train" or cfg.rect else 0.0,  # the predictor's minimum rectangle (inference.py)
        prefix=colorstr(f"{mode}: "),
        classes=cfg.classes,
        data=data,
        options=options,
        seed=int(cfg.seed),
        center_pad=not own_pipeline,
        fraction=get_split_fraction(cfg.fraction, "train" if mode == "train" else cfg.split),
    )
