"""Ultralytics YOLO from the engine's own model files, unchanged; sodet only owns the criterion it builds."""

from __future__ import annotations

from ultralytics.nn.tasks import DetectionModel

from sodet.models.registry import register_model


class SodetDetectionModel(DetectionModel):
    """The engine's DetectionModel whose criterion gets sodet's box-loss weighting when a run asks for it."""

    def init_criterion(self):
        criterion = super().init_criterion()
        opts = getattr(self, "sodet", None)
        if opts is not None and opts.weighted_loss is not None:
            from sodet.losses.ultralytics_bbox import install_ultralytics

            criterion = install_ultralytics(criterion, opts.weighted_loss, opts.small_area, opts.weight_form)
        return criterion


def _yolo(cfg: str):
    def build(nc: int, names: dict | None = None) -> SodetDetectionModel:
        from ultralytics.utils import RANK

        model = SodetDetectionModel(cfg, nc=nc, ch=3, verbose=RANK == -1 and False)
        if names:
            model.names = names
        return model

    return build


for _v, _sizes in (("yolov8", "ns"), ("yolo11", "ns"), ("yolo26", "ns")):
    for _s in _sizes:
        register_model(f"{_v}{_s}", "yolo", 640)(_yolo(f"{_v}{_s}.yaml"))
