"""sodet's predictor: the engine's DetectionPredictor (sources, plotting, videos, ``--save-txt``) fed exactly as
sodet's validator feeds a model (``inference.py``), plus one COCO-results json per run and sliced (SAHI)
inference: ``sodet predict`` and ``sodet val`` give the same detections.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.engine.results import Results
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.utils import LOGGER, ops

from sodet.engine.inference import RECT_PAD, detect_images, eval_letterbox, eval_nms, fixed_size, model_letterbox


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
