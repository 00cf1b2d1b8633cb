"""sodet's training/validation dataset: the engine's YOLODataset reading COCO json directly, with copy-paste
oversampling of images that hold small objects.

Oversampling is an index (``range(n)`` followed by the extra appearances); ``get_image_and_label`` maps an
index back to its image, so label caches, the RAM cache and mosaic's buffer all stay those of the plain set.
Pasting happens there too, before the engine's transforms, so it survives ``close_mosaic`` and works with
mosaic on or off.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils import LOGGER, colorstr

from sodet.data.coco import SplitLabels, load_split
from sodet.options import RunOptions

MAX_WORKERS = 64
FULL_RES_BYTES = 256 * 2**20  # per loader worker: decoded full-resolution frames kept for sliced training


class SodetDataset(YOLODataset):
    """YOLODataset whose labels come from a COCO split (or YOLO txt files) and whose training epochs hold the
    copy-paste extra samples."""

    def __init__(
        self, *args, data: dict, options: RunOptions | None = None, seed: int = 0, center_pad: bool = True, **kwargs
    ):
        self.options = options or RunOptions()
        self.full_res: OrderedDict[int, np.ndarray] = OrderedDict()  # i -> decoded frame, most recent last
        self.full_res_bytes = 0
        self.center_pad = center_pad  # False: evaluation pads bottom/right, as YOLOX's own pipeline does
        self.seed = seed
        self.split_labels: SplitLabels | None = None
        img_path = kwargs.get("img_path", args[0] if args else None)
        if data.get("sodet_coco"):
            split = Path(img_path).name
            self.split_labels = load_split(data["sodet_coco"], split, data.get("sodet_classes"))
            for w in self.split_labels.warnings:
                LOGGER.warning(f"{colorstr('sodet:')} {w}")
        if data.get("sodet_yolo_names"):  # the engine checks label ids against all classes; sodet picks after
            data = {**data, "names": dict(enumerate(data["sodet_yolo_names"]))}
        super().__init__(*args, data=data, task="detect", **kwargs)
        # rect batching reorders labels by aspect ratio: align the per-image metadata with the final order
        by_file = dict(zip(self.meta_files, self.meta))
        self.meta = [by_file[lb["im_file"]] for lb in self.labels]
        self.sample_index = np.arange(len(self.labels))
        # pasted / skipped per data-loader worker (row 0: main process), in shared memory so workers' counts
        # reach the trainer
        self.paste_counts = torch.zeros((MAX_WORKERS + 1, 2), dtype=torch.int64).share_memory_()
        if self.augment and self.options.copy_paste:
            self.build_oversampling()

    def build_transforms(self, hyp):
        transforms = super().build_transforms(hyp)
        if not self.augment and not self.center_pad:
            from ultralytics.data.augment import LetterBox

            transforms.transforms[0] = LetterBox(new_shape=(self.imgsz, self.imgsz), scaleup=False, center=False)
        return transforms

    # labels ------------------------------------------------------------------------------------------------
    def get_img_files(self, img_path):
        if self.split_labels is None:
            return super().get_img_files(img_path)
        return [im.file for im in self.split_images()]

    def split_images(self):
        """The COCO split's images, the first ``fraction`` of them (the engine's ``fraction`` option)."""
        images = self.split_labels.images
        count = self.fraction if isinstance(self.fraction, int) else max(1, round(len(images) * self.fraction))
        return images[:count]

    def get_labels(self) -> list[dict]:
        if self.split_labels is None:
            labels = self.remap_yolo_classes(super().get_labels())
            self.meta, self.meta_files = self.meta_from_labels(labels), [lb["im_file"] for lb in labels]
            return labels
        labels, meta = [], []
        for im in self.split_images():
            labels.append(
                {
                    "im_file": im.file,
                    "shape": im.shape,
                    "cls": im.cls.copy(),
                    "bboxes": im.bboxes.copy(),
                    "segments": [],
                    "normalized": True,
                    "bbox_format": "xywh",
                }
            )
            meta.append(
                {"area": im.area, "polygons": im.polygons, "crowd": im.crowd, "image_id": im.image_id, "shape": im.shape}
            )
        self.meta, self.meta_files = meta, [lb["im_file"] for lb in labels]
        return labels

    def remap_yolo_classes(self, labels: list[dict]) -> list[dict]:
        """Keep the chosen classes of a YOLO-txt set, renumbered in the chosen order."""
        all_names, chosen = self.data.get("sodet_yolo_names"), self.data.get("sodet_classes")
        if not all_names or list(chosen) == list(all_names):
            return labels
        new_index = {all_names.index(n): i for i, n in enumerate(chosen)}
        for lb in labels:
            keep = np.array([int(c) in new_index for c in lb["cls"].ravel()], dtype=bool)
            lb["cls"] = np.array([[new_index[int(c)]] for c in lb["cls"].ravel()[keep]], dtype=np.float32).reshape(-1, 1)
            lb["bboxes"] = lb["bboxes"][keep]
            lb["segments"] = [s for s, k in zip(lb["segments"], keep) if k]
        return labels

    @staticmethod
    def meta_from_labels(labels: list[dict]) -> list[dict]:
        """YOLO-txt labels: area = box area in original pixels, polygons from segments, no crowd regions."""
        meta = []
        for i, lb in enumerate(labels):
            h, w = lb["shape"]
            area = lb["bboxes"][:, 2] * lb["bboxes"][:, 3] * w * h if len(lb["bboxes"]) else np.zeros(0)
            segs = lb.get("segments") or []
            polys = [[np.asarray(s, dtype=np.float32)] for s in segs] if len(segs) == len(lb["bboxes"]) else None
            meta.append(
                {
                    "area": area.astype(np.float32),
                    "polygons": polys or [None] * len(lb["bboxes"]),
                    "crowd": np.zeros((0, 4), np.float32),
                    "image_id": i,
                    "shape": (h, w),  # rect batching later pops the label's own "shape"
                }
            )
        return meta

    # oversampling ------------------------------------------------------------------------------------------
    def small_mask(self, i: int) -> np.ndarray:
        return self.meta[i]["area"] < self.options.small_area

    def build_oversampling(self) -> None:
        from sodet.data.copy_paste import oversample_indices

        from sodet.data.copy_paste import uniform_extra_indices

        has_small = np.array([bool(self.small_mask(i).any()) for i in range(len(self.labels))])
        rng = np.random.default_rng(self.seed)
        extra = np.asarray(oversample_indices(has_small, self.options.oversample, rng), dtype=np.int64)
        pool = "images holding small objects"
        if self.options.oversample_pool == "all":  # the same number of extra samples, from every image
            extra = uniform_extra_indices(len(self.labels), len(extra), np.random.default_rng([self.seed, 1]))
            pool = "all images (compute-matched control)"
        self.sample_index = np.concatenate([np.arange(len(self.labels)), extra])
        paste = f"{self.options.paste_copies} paste(s) per small object" if self.options.paste_copies else "no paste"
        LOGGER.info(
            f"{colorstr('sodet copy-paste:')} {int(has_small.sum())}/{len(has_small)} images hold small objects "
            f"(area < {self.options.small_area:g}); epoch = {len(self.labels)} + {len(extra)} samples drawn from "
            f"{pool}, {paste}"
        )

    @property
    def paste_stats(self) -> dict:
        """What copy-paste did so far in this run: oversampled images, extra samples, objects pasted / skipped."""
        extra = self.sample_index[len(self.labels):]
        pasted, skipped = (int(v) for v in self.paste_counts.sum(0))
        return {
            "oversampled_images": int(len(np.unique(extra))),
            "extra_samples": int(len(extra)),
            "pasted": pasted,
            "skipped": skipped,
        }

    def __len__(self) -> int:
        return len(self.sample_index)

    @property
    def sample_stream(self) -> str:
        """What a training epoch draws from: its length and which images it repeats (a hash). Two runs of the
        same seed whose streams are equal see the same batches (the engine's sampler is seeded by length)."""
        import hashlib

        return f"{len(self.sample_index)}:{hashlib.sha1(self.sample_index.astype(np.int64).tobytes()).hexdigest()[:12]}"

    def get_image_and_label(self, index: int) -> dict:
        i = int(self.sample_index[index]) if index < len(self.sample_index) else index
        paste = index >= len(self.labels) and self.options.paste_copies > 0
        if self.augment and self.options.crop_train and random.random() < self.options.crop_p:
            return self.cropped_label(i, index, paste)  # the engine's own generator: varies by epoch, fixed by seed
        label = super().get_image_and_label(i)
        if paste:
            self.paste_into(label, i, index)
        return label

    def cropped_label(self, i: int, index: int, paste: bool) -> dict:
        """Sliced training (``sodet.data.crop``): a random crop of image ``i`` at full resolution, its objects
        clipped (those keeping less than --crop-min-visible of their area dropped), copy-paste inside the crop for
        an extra appearance, then resized to the network input as the engine loads images."""
        from sodet.data.crop import clip_polygons, crop_boxes, crop_window

        opts = self.options
        im = self.full_res_image(i)
        h0, w0 = im.shape[:2]
        window = crop_window(h0, w0, list(opts.crop_train))
        x0, y0, x1, y1 = window
        base = self.labels[i]
        xywh = np.asarray(base["bboxes"], np.float64).reshape(-1, 4) * [w0, h0, w0, h0]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        boxes, keep, visible = crop_boxes(xyxy, window, opts.crop_min_visible)
        cls = np.asarray(base["cls"]).reshape(-1, 1)[keep]
        crop = im[y0:y1, x0:x1]  # a view of the decoded frame: resizing and pasting read it, never write into it
        if paste and len(boxes):
            from sodet.data.copy_paste import paste_small_objects

            meta = self.meta[i]
            scale = np.array([w0, h0], np.float32)
            polys = [clip_polygons(None if p is None else [part * scale for part in p], window)
                     for p, k in zip(meta["polygons"], keep) if k]
            small = np.asarray(meta["area"])[keep] * visible[keep] < opts.small_area  # COCO area of what is visible
            crowd, _, _ = crop_boxes(meta["crowd"] * np.array([w0, h0, w0, h0], np.float32), window, 1e-9)
            res = paste_small_objects(crop, boxes, polys, small, crowd, np.random.default_rng([self.seed, index, x0, y0]),
                                      copies=opts.paste_copies, jitter=opts.paste_jitter)
            self.count_pastes(res)
            if res.pasted:
                crop = res.img
                boxes = np.concatenate([boxes, res.boxes.astype(np.float64)], 0)
                cls = np.concatenate([cls, cls[res.source]], 0)
        hc, wc = crop.shape[:2]
        img = self.to_input_side(crop)
        cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / [wc, hc, wc, hc]
        label = {
            "im_file": base["im_file"], "cls": cls.astype(np.float32), "bboxes": cxcywh.astype(np.float32).reshape(-1, 4),
            "segments": [], "normalized": True, "bbox_format": "xywh", "img": img, "ori_shape": (hc, wc),
            "resized_shape": img.shape[:2], "ratio_pad": (img.shape[0] / hc, img.shape[1] / wc),
        }
        if self.rect:
            label["rect_shape"] = self.batch_shapes[self.batch[i]]
        return self.update_labels_info(label)

    def to_input_side(self, im: np.ndarray) -> np.ndarray:
        """``im`` with its long side at the network input, by the rule of the engine's ``load_image`` (bilinear;
        the other side rounded up, at most the input); the array itself where it is there already."""
        import math

        import cv2

        h, w = im.shape[:2]
        size = self.input_side
        r = size / max(h, w)
        if r == 1:
            return np.ascontiguousarray(im)
        out = cv2.resize(im, (min(math.ceil(w * r), size), min(math.ceil(h * r), size)), interpolation=cv2.INTER_LINEAR)
        return out[..., None] if out.ndim == 2 else out

    def load_image(self, i: int, rect_mode: bool = True, resize_short: bool = False):
        """With sliced training, one decode of a frame serves both of its uses: a full-image draw resizes the
        full-resolution frame that sodet keeps for crops (decoding it there if needed, and keeping it), where the
        engine's own ``load_image`` would decode the file again and drop the full resolution a later crop of the
        frame needs. The resized frame goes where the engine keeps it, queued as the engine queues its loads."""
        if (not (self.augment and self.options.crop_train) or self.cache or self.ims[i] is not None or not rect_mode
                or resize_short):
            return super().load_image(i, rect_mode, resize_short)
        im = self.full_res_image(i)
        if self.ims[i] is None:  # kept at full resolution by sodet: the engine's copy is the resized one
            self.ims[i], self.im_hw0[i] = self.to_input_side(im), im.shape[:2]
            self.im_hw[i] = self.ims[i].shape[:2]
            self.remember(i)
        return self.ims[i], self.im_hw0[i], self.im_hw[i]

    @property
    def input_side(self) -> int:
        """The network input's long side: what the engine's ``load_image`` resizes a frame's long side to."""
        return max(self.imgsz) if isinstance(self.imgsz, (list, tuple)) else self.imgsz

    def remember(self, i: int) -> None:
        """Enter a frame decoded for a crop into the engine's buffer of recently loaded images, by the rule of the
        engine's ``load_image``, which a crop does not go through: mosaic draws its other images from that buffer (an
        empty one would fail, one never refreshed would repeat the same partners). A frame already queued is not
        queued again: it would be evicted from the engine's store while still queued, and decoded again."""
        if self.augment and self.cache != "ram" and i not in self.buffer:
            self.buffer.append(i)
            if 1 < len(self.buffer) >= self.max_buffer_length:
                j = self.buffer.pop(0)
                self.ims[j], self.im_hw0[j], self.im_hw[j] = None, None, None

    def full_res_image(self, i: int) -> np.ndarray:
        """Image ``i`` decoded at full resolution (crops are cut from it, not from the engine's resized copy); the
        most recent frames stay decoded (FULL_RES_BYTES per worker), as the engine buffers its mosaic's images."""
        from ultralytics.utils.patches import imread

        if self.ims[i] is not None and self.im_hw0[i] == self.im_hw[i]:
            return self.ims[i]  # the engine's buffer holds it unresized (its long side is the network input)
        im = self.full_res.get(i)
        if im is not None:
            self.full_res.move_to_end(i)
            return im
        im = imread(self.im_files[i], flags=self.cv2_flag)
        if im is None:
            raise FileNotFoundError(f"Image Not Found {self.im_files[i]}")
        if im.ndim == 2:
            im = im[..., None]
        self.remember(i)  # a decode enters the engine's queue of recent loads, as its load_image does (hits do not)
        if self.augment and self.cache != "ram" and max(im.shape[:2]) == self.input_side:
            # the engine would keep this frame as it is: kept where the engine keeps its frames, so that a later
            # full-image draw of it (a mosaic partner, a sample not cropped) is not decoded again
            self.ims[i], self.im_hw0[i], self.im_hw[i] = im, im.shape[:2], im.shape[:2]
            return im
        self.full_res[i] = im
        self.full_res_bytes += im.nbytes
        while self.full_res_bytes > FULL_RES_BYTES and len(self.full_res) > 1:
            self.full_res_bytes -= self.full_res.popitem(last=False)[1].nbytes
        return im

    def count_pastes(self, res) -> None:
        worker = torch.utils.data.get_worker_info()
        row = self.paste_counts[0 if worker is None else 1 + worker.id % MAX_WORKERS]
        row += torch.tensor([int(res.pasted), int(res.skipped)])

    def paste_into(self, label: dict, i: int, index: int) -> None:
        """Paste each small object of image ``i`` again (deterministic per seed and sample index)."""
        from sodet.data.copy_paste import paste_small_objects

        inst = label["instances"]
        img = label["img"]
        h, w = img.shape[:2]
        inst.convert_bbox("xyxy")
        inst.denormalize(w, h)
        meta = self.meta[i]
        scale = np.array([w, h], dtype=np.float32)
        polys = [None if p is None else [part * scale for part in p] for p in meta["polygons"]]
        res = paste_small_objects(
            img,
            inst.bboxes.copy(),
            polys,
            self.small_mask(i),
            meta["crowd"] * np.array([w, h, w, h], dtype=np.float32),
            np.random.default_rng([self.seed, index]),
            copies=self.options.paste_copies,
            jitter=self.options.paste_jitter,
        )
        self.count_pastes(res)
        if res.pasted:
            from ultralytics.utils.instance import Instances

            boxes = np.concatenate([inst.bboxes, res.boxes.astype(np.float32)], 0)
            label["img"] = res.img
            label["cls"] = np.concatenate([label["cls"], label["cls"][res.source]], 0)
            label["instances"] = Instances(boxes, np.zeros((0, 1000, 2), np.float32), None, "xyxy", normalized=False)
        inst = label["instances"]
        inst.normalize(w, h)
        inst.convert_bbox("xywh")
