"""sodet's validator: the engine's detection validation plus COCO AP/AR per object size.

The engine's own mAP has no size buckets and differs from COCOeval; here predictions are written in original
image coordinates with the dataset's real image and category ids, and scored against the original COCO json
(whose ``area`` decides the buckets), or against a json built from YOLO labels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER, ops

from sodet.engine.build import build_dataset
from sodet.engine.inference import detect_images, eval_nms, find_options
from sodet.options import RunOptions

MAX_DETS = 100  # COCO's detections per image
SIZE_KEYS = {"APs": "metrics/mAP_small(B)", "APm": "metrics/mAP_medium(B)", "APl": "metrics/mAP_large(B)"}
AP_COCO_KEY = "metrics/AP_coco(B)"
COCO_COLUMNS = (*SIZE_KEYS.values(), AP_COCO_KEY)  # what a validated training epoch adds to the engine's metrics


class SodetValidator(DetectionValidator):
    """DetectionValidator that builds sodet's dataset and reports the 12 COCO numbers per size bucket."""

    def __init__(
        self, dataloader=None, save_dir=None, args=None, _callbacks=None, options: RunOptions | None = None,
        size_buckets: bool = True, slicer=None, class_rows: list[int] | None = None,
    ):
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.options = options
        # a model predicting more classes than the data holds (an 80-class checkpoint or export scored on person,
        # car): its output row of each data class, by name; the other classes are never scored
        self.class_rows = class_rows
        self.slicer = slicer  # sodet.engine.slicing.Slicer: every image also run as SAHI tiles, merged
        self.backend = None  # the model, kept for the tiles
        self.fixed_size = False  # an exported model of one input size: square letterbox, no rect batches
        self.batch = None
        self.size_buckets = size_buckets  # print the per-size table (metrics.json always holds every number)
        self.coco_metrics: dict | None = None

    def build_dataset(self, img_path: str, mode: str = "val", batch: int | None = None):
        fixed = False if self.training else self.fixed_size  # set by api.val for exported models of one size
        return build_dataset(
            self.args, img_path, batch, self.data, "val", int(self.stride), self.options or RunOptions(),
            rect=False if fixed else None,
        )

    def init_metrics(self, model) -> None:
        self.backend = model
        self.options = self.options or find_options(model)
        self.args.save_json = True  # sodet always scores with COCOeval
        cap = self.detection_cap()
        if self.args.max_det < cap:  # a protocol that scores more detections than the NMS would let through
            LOGGER.info(f"sodet: max_det {self.args.max_det} -> {cap} (the protocols' detection cap)")
            self.args.max_det = cap
        super().init_metrics(model)
        if self.class_rows is not None:  # score the data's classes, not the model's
            from ultralytics.utils.metrics import ConfusionMatrix

            self.names = self.metrics.names = dict(self.data["names"])
            self.nc = len(self.names)
            self.confusion_matrix = ConfusionMatrix(names=self.names, save_matches=False)
        self.is_custom_json, self.gdict, self.build_gdict, self.eval_ids = False, None, False, None
        ds = self.dataloader.dataset
        split = ds.split_labels
        self.class_map = split.category_ids if split else list(range(1, len(model.names) + 1))
        self.image_ids = {lb["im_file"]: m["image_id"] for lb, m in zip(ds.labels, ds.meta)}

    # sliced inference --------------------------------------------------------------------------------------
    def preprocess(self, batch: dict) -> dict:
        self.batch = batch = super().preprocess(batch)
        return batch

    def select_classes(self, preds):
        """The data's classes out of a model's outputs (``class_rows``): (B, 4 + nc, N) rows picked before NMS, or
        end-to-end (B, N, 6) detections of the other classes dropped and the rest renumbered."""
        if self.class_rows is None:
            return preds
        p = preds[0] if isinstance(preds, (tuple, list)) else preds
        rows = torch.as_tensor(self.class_rows, device=p.device)
        if self.end2end or p.shape[-1] == 6:
            new_id = torch.full((int(p[..., 5].max().item()) + 2 if p.numel() else 1,), -1, device=p.device, dtype=torch.long)
            new_id[rows[rows < len(new_id)]] = torch.arange(len(rows), device=p.device)[rows < len(new_id)]
            ids = new_id[p[..., 5].long().clamp(min=0, max=len(new_id) - 1)]
            p = torch.cat([p[..., :5], ids.unsqueeze(-1).to(p.dtype)], -1)
            p[..., 4] = torch.where(ids >= 0, p[..., 4], torch.zeros_like(p[..., 4]))  # other classes: score 0
            return p
        return torch.cat([p[:, :4], p[:, 4 + rows]], 1)

    def postprocess(self, preds):
        """The engine's NMS (on the data's classes, ``select_classes``); with a slicer, each image's detections
        merged with those of its tiles (read from the original file, prepared as the image is), put back into the
        batch's letterboxed pixels that ``update_metrics`` maps to original pixels."""
        outs = super().postprocess(self.select_classes(preds))
        if self.slicer is None or self.training:
            return outs
        import cv2

        a, img = self.args, self.batch["img"]
        imgsz = a.imgsz if isinstance(a.imgsz, int) else max(a.imgsz)
        center = (self.options or RunOptions()).letterbox == "center"
        nms_fn = lambda p: eval_nms(self.select_classes(p), a.conf, a.iou, a.max_det, None, a.single_cls or a.agnostic_nms, self.end2end)  # noqa: E731
        detect = lambda crops: detect_images(self.backend, crops, imgsz, center, nms_fn, img.dtype == torch.float16)  # noqa: E731
        for si, out in enumerate(outs):
            im0 = cv2.imread(self.batch["im_file"][si])
            (gain_h, gain_w), (pad_w, pad_h) = self.batch["ratio_pad"][si]
            full = torch.cat([out["bboxes"], out["conf"][:, None], out["cls"][:, None]], 1)
            full[:, :4] = ops.scale_boxes(img.shape[2:], full[:, :4], im0.shape[:2], ratio_pad=self.batch["ratio_pad"][si])
            merged = self.slicer.merge(full, self.slicer.tile_detections(detect, im0), a.max_det, self.names)
            boxes = merged[:, :4] * merged.new_tensor([gain_w, gain_h, gain_w, gain_h]) + merged.new_tensor([pad_w, pad_h, pad_w, pad_h])
            outs[si] = {"bboxes": boxes, "conf": merged[:, 4], "cls": merged[:, 5], "extra": merged[:, 6:]}
        return outs

    def pred_to_json(self, predn, pbatch) -> None:
        """Detections in original pixels, with the dataset's own image and category ids."""
        image_id = self.image_ids[pbatch["im_file"]]
        box = ops.xyxy2ltwh(predn["bboxes"])
        for b, s, c in zip(box.tolist(), predn["conf"].tolist(), predn["cls"].tolist()):
            self.jdict.append(
                {"image_id": image_id, "category_id": self.class_map[int(c)], "bbox": [round(x, 3) for x in b], "score": round(s, 5)}
            )

    # COCO evaluation ---------------------------------------------------------------------------------------
    def ground_truth(self):
        """The COCO ground truth of the evaluated images: the original json (restricted), or one from labels."""
        ds = self.dataloader.dataset
        if ds.split_labels is not None:
            return ds.split_labels.gt_json
        from sodet.data.yolo_gt import gt_from_labels

        return gt_from_labels(ds.labels, ds.meta, [self.names[i] for i in range(len(self.names))])

    def dataset_identity(self) -> dict:
        ds = self.dataloader.dataset
        root = self.data.get("sodet_coco")
        split = Path(ds.img_path if isinstance(ds.img_path, str) else ds.img_path[0]).name
        gt = str(Path(root) / "annotations" / f"{split}.json") if root else str(self.data.get("yaml_file", ""))
        return {"gt": gt, "split": split, "classes": [self.names[i] for i in range(len(self.names))], "num_images": len(ds.labels)}

    @property
    def protocols(self) -> list:
        """The size protocols scored beside COCO's (the run's options: --protocol, --size-edges)."""
        from sodet.eval.protocols import get_protocols

        o = self.options or RunOptions()
        return get_protocols(o.protocol, o.size_edges, o.size_names, max(MAX_DETS, int(self.args.max_det)))

    def detection_cap(self) -> int:
        """Detections kept per image: COCO's 100, or as many as a protocol scores (AI-TOD's 1500), at most what
        the NMS let through (``--max-det``)."""
        return max([MAX_DETS, *(max(p.max_dets) for p in self.protocols)])

    def evaluate_coco(self) -> dict:
        from sodet.eval.cocoeval import cap_per_image, evaluate

        self.jdict = cap_per_image(self.jdict, self.detection_cap())  # what is scored is what predictions.json holds
        return evaluate(self.ground_truth(), self.jdict, max_dets=MAX_DETS, protocols=self.protocols)

    def eval_json(self, stats: dict) -> dict:
        if self.training:
            self.coco_metrics = self.evaluate_coco()
        if self.coco_metrics:
            for k, key in SIZE_KEYS.items():
                v = self.coco_metrics.get(k)
                stats[key] = -1.0 if v is None else float(v)
            ap = self.coco_metrics.get("AP")
            stats[AP_COCO_KEY] = -1.0 if ap is None else float(ap)  # per epoch in results.csv, every epoch
            for name, block in (self.coco_metrics.get("protocols") or {}).items():  # reach the engine's loggers
                for k, v in block.items():
                    if k != "per_class":
                        stats[f"metrics/{name}_{k}(B)"] = -1.0 if v is None else float(v)
            if ap is not None:
                stats["fitness"] = float(ap)  # best.pt is the checkpoint with the best COCO AP
        return stats

    def finalize_metrics(self) -> None:
        super().finalize_metrics()
        if self.training:
            return
        from sodet.eval.metrics_io import write_metrics
        from sodet.eval.tables import format_table, format_value

        self.coco_metrics = self.evaluate_coco()
        write_metrics(
            self.save_dir,
            self.coco_metrics,
            options=self.run_record(),
            dataset=self.dataset_identity(),
            speed={k: self.speed[k] for k in ("preprocess", "inference", "postprocess")},
            predictions=self.jdict,
        )
        # metrics.json and predictions.json are written (whole); the engine would write predictions.json again,
        # in place, after this: it is switched off for the rest of this validation
        self.args.save_json = False
        from rich.console import Console

        console = Console()
        console.width = max(console.width, 150)  # the 12 columns stay readable in narrow or captured terminals
        if self.size_buckets:
            console.print(format_table(self.coco_metrics))
            from sodet.eval.tables import format_protocol_table

            for name, block in (self.coco_metrics.get("protocols") or {}).items():
                console.print(format_protocol_table(name, block))
        else:
            m = self.coco_metrics
            console.print(" ".join(f"{k} {format_value(m.get(k))}" for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")))
        LOGGER.info(
            "Speed per image: {preprocess:.1f} ms preprocess, {inference:.1f} ms inference, "
            "{postprocess:.1f} ms postprocess".format(**self.speed)
        )

    def run_record(self) -> dict:
        """Options of the run: the engine's arguments that shape evaluation, and sodet's own."""
        engine = {k: getattr(self.args, k, None) for k in ("model", "data", "imgsz", "batch", "conf", "iou", "max_det", "split", "device")}
        record = {"engine": {k: str(v) if isinstance(v, Path) else v for k, v in engine.items()}, "sodet": (self.options or RunOptions()).to_dict()}
        if self.slicer is not None:
            record["slice"] = self.slicer.to_dict()
        return record

