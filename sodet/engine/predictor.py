"""sodet's predictor: the engine's DetectionPredictor (sources, plotting, videos, ``--save-txt``) fed exactly as
sodet's validator feeds a model, plus one COCO-results json per run and sliced (SAHI) inference.

The engine's predictor letterboxes differently from its validator (it upsizes in one step and pads to the
minimum rectangle; the validator resizes the long side first, never upsizes in the letterbox, pads half a stride
more, or pads a square bottom/right for YOLOX's own pipeline) and keeps one class per box where the validator keeps
several: here both follow the validator, so ``sodet predict`` and ``sodet val`` give the same detections.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.engine.results import Results
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.utils import LOGGER, nms, ops

from sodet.options import RunOptions

RECT_PAD = 0.5  # the validator's rect batches pad half a stride (sodet.engine.build.build_dataset)


def eval_letterbox(
    images: list[np.ndarray], imgsz: int, stride: int, center: bool, rect: bool | None = None, pad: float = RECT_PAD
) -> tuple[list[np.ndarray], list]:
    """The validator's input for a batch of BGR images: long side resized to ``imgsz`` as the dataset loads it,
    then the engine's LetterBox to the batch shape a rect batch of these images gets (``center``; a centred square
    when ``rect`` is False: exported models of a fixed size) or to a square padded bottom/right (YOLOX's own
    pipeline). ``pad``: the rect batch's extra strides (the validator's half; 0 is the engine predictor's minimum
    rectangle). Returns the images and each one's ratio_pad for ``scale_boxes``."""
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
    from sodet.engine.validator import find_options

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


class SodetPredictor(DetectionPredictor):
    """DetectionPredictor with the validator's preprocessing and NMS, optional slicing, and a COCO-results json."""

    def __init__(self, cfg=None, overrides=None, _callbacks=None, slicer=None, save_json: bool = True, progress: bool = False):
        from ultralytics.utils import DEFAULT_CFG

        super().__init__(cfg or DEFAULT_CFG, overrides, _callbacks)
        self.slicer = slicer  # sodet.engine.slicing.Slicer or None
        self.save_json = save_json
        self.progress = progress
        self.letterbox = "center"
        self.rect_pad = RECT_PAD  # the validator's, so that predict and val give the same detections
        self.ratio_pads: list = []
        self.jdict: list[dict] = []
        self.image_ids: dict[str, int] = {}
        self.bar = None
        self.add_callback("on_predict_start", SodetPredictor.start_run)
        self.add_callback("on_predict_batch_end", SodetPredictor.advance_bar)
        self.add_callback("on_predict_end", SodetPredictor.end_run)

    # model and source --------------------------------------------------------------------------------------
    def setup_model(self, model, verbose: bool = True):
        super().setup_model(model, verbose=verbose)
        self.letterbox = model_letterbox(self.model)

    def setup_source(self, source, stride: int | None = None):
        from sodet.errors import SodetError

        source = readable_source(source, self.args.batch, self.args.vid_stride, getattr(self.model, "channels", 3))
        try:
            super().setup_source(source, stride)
        except FileNotFoundError as e:  # an empty folder or glob, a missing file
            raise SodetError(str(e).splitlines()[0]) from None

    # preprocessing: the validator's --------------------------------------------------------------------------
    def pre_transform(self, im: list[np.ndarray]) -> list[np.ndarray]:
        out, self.ratio_pads = eval_letterbox(
            im, max(self.imgsz), int(self.model.stride), self.letterbox == "center", rect=not fixed_size(self.model),
            pad=self.rect_pad,
        )
        return out

    def inference(self, im: torch.Tensor, *args, **kwargs):
        preds = super().inference(im, *args, **kwargs)
        if self.slicer is None:
            return preds
        return preds, [self.slicer.tile_detections(self.detect_crops, im0) for im0 in self.batch[1]]

    def detect_crops(self, crops: list[np.ndarray]) -> list[torch.Tensor]:
        return detect_images(self.model, crops, max(self.imgsz), self.letterbox == "center", self.nms, self.model.fp16)

    def nms(self, preds):
        a = self.args
        return eval_nms(preds, a.conf, a.iou, a.max_det, a.classes, a.agnostic_nms, getattr(self.model, "end2end", False))

    def postprocess(self, preds, img, orig_imgs, **kwargs):
        tiles = None
        if self.slicer is not None:
            preds, tiles = preds
        dets = self.nms(preds)
        if not isinstance(orig_imgs, list):
            orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
        results = []
        for i, (d, orig, path) in enumerate(zip(dets, orig_imgs, self.batch[0])):
            d[:, :4] = ops.scale_boxes(img.shape[2:], d[:, :4], orig.shape, ratio_pad=self.ratio_pads[i])
            if tiles is not None:
                d = self.slicer.merge(d, tiles[i], self.args.max_det, self.model.names)
            results.append(Results(orig, path=path, names=self.model.names, boxes=d[:, :6]))
        if self.save_json:
            self.add_json(results)
        return results

    # outputs -----------------------------------------------------------------------------------------------
    def add_json(self, results: list[Results]) -> None:
        """COCO-results entries: the validator's rounding; image_id = the file's numeric stem, else the order of
        first appearance; ``file_name`` (and ``frame`` for videos) say which image."""
        video = getattr(self.dataset, "mode", "image") in {"video", "stream"}
        for r in results:
            if r.path not in self.image_ids:
                stem = Path(r.path).stem
                self.image_ids[r.path] = int(stem) if stem.isnumeric() and not video else len(self.image_ids)
            b = r.boxes
            box = ops.xyxy2ltwh(b.xyxy).tolist()
            extra = {"file_name": Path(r.path).name}
            if video:
                extra["frame"] = int(getattr(self.dataset, "frame", 0))
            for bb, s, c in zip(box, b.conf.tolist(), b.cls.tolist()):
                self.jdict.append(
                    {"image_id": self.image_ids[r.path], "category_id": int(c) + 1, "category_name": r.names[int(c)],
                     "bbox": [round(x, 3) for x in bb], "score": round(s, 5), **extra}
                )

    def start_run(self) -> None:
        self.jdict, self.image_ids = [], {}
        if self.progress:
            from ultralytics.utils import TQDM

            self.bar = TQDM(total=count_frames(self.dataset), desc="predict", unit="img")

    def advance_bar(self) -> None:
        if self.bar is not None:
            self.bar.update(len(self.results))

    def end_run(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.save_json and self.seen:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / "predictions.json").write_text(json.dumps(self.jdict))
        if not self.seen:
            LOGGER.warning("sodet: no image of the source could be read")


def count_frames(dataset) -> int | None:
    """Images plus video frames of a file source (for the progress bar); None for streams."""
    files, flags = getattr(dataset, "files", None), getattr(dataset, "video_flag", None)
    if files is None or flags is None:
        return None
    total = 0
    stride = getattr(dataset, "vid_stride", 1) or 1
    for f, is_video in zip(files, flags):
        if is_video:
            cap = cv2.VideoCapture(f)
            total += int(cap.get(cv2.CAP_PROP_FRAME_COUNT) / stride)
            cap.release()
        else:
            total += 1
    return total


def readable_source(source, batch: int = 1, vid_stride: int = 1, channels: int = 3):
    """The engine's loader stops the whole run at a video it cannot open (unreadable images it skips with a
    warning): for a file, folder or glob source holding such videos, a loader of the other files, naming the
    skipped ones. Other sources are returned unchanged."""
    import glob
    import os

    from ultralytics.data.loaders import LoadImagesAndVideos, SourceTypes
    from ultralytics.data.utils import VID_FORMATS

    from sodet.errors import SodetError

    if not isinstance(source, (str, Path)) or str(source).isnumeric() or "://" in str(source):
        return source
    if Path(source).suffix.lower() in {".txt", ".csv", ".streams"} or str(source).lower().startswith("screen"):
        return source
    a = str(Path(source).absolute())
    if "*" in a:
        files = sorted(glob.glob(a, recursive=True))
    elif os.path.isdir(a):
        files = sorted(glob.glob(os.path.join(glob.escape(a), "*.*")))
    elif os.path.isfile(a):
        files = [a]
    else:
        raise SodetError(f"source not found: {source}")
    bad = []
    for f in files:
        if f.rpartition(".")[-1].lower() in VID_FORMATS:
            cap = cv2.VideoCapture(f)
            if not (cap.isOpened() and cap.grab()):
                LOGGER.warning(f"sodet: skipping unreadable video {f}")
                bad.append(f)
            cap.release()
    if not bad:
        return source
    files = [f for f in files if f not in bad]
    if not files:
        raise SodetError(f"no readable image or video in {source}")
    loader = LoadImagesAndVideos(files, batch=batch, vid_stride=vid_stride, channels=channels)
    loader.source_type = SourceTypes(stream=False, screenshot=False, from_img=False, tensor=False)
    return loader
