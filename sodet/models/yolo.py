"""Ultralytics YOLO from the engine's own model files, unchanged; sodet only owns the criterion it builds."""

from __future__ import annotations

from ultralytics.nn.tasks import DetectionModel

from sodet.models.batchnorm import FrozenBatchNormTraining
from sodet.models.registry import register_family


class SodetDetectionModel(FrozenBatchNormTraining, DetectionModel):
    """The engine's DetectionModel whose criterion gets sodet's box-loss weighting when a run asks for it."""

    task = "detect"  # the engine sets it on models it loads itself; its exporter reads it

    @staticmethod
    def mean_loss_scale(batch_size: int) -> float:
        """What ``loss`` multiplies a batch-mean loss by: the engine's criterion returns loss x batch size."""
        return batch_size

    def init_criterion(self):
        criterion = super().init_criterion()
        opts = getattr(self, "sodet", None)
        if opts is not None and opts.weighted_loss is not None:
            from sodet.losses.ultralytics_bbox import install_ultralytics

            criterion = install_ultralytics(criterion, opts.weighted_loss, opts.small_area, opts.weight_form)
        return criterion


@register_family("yolo")
def build_yolo(entry, nc: int, names: dict | None = None) -> SodetDetectionModel:
    model = SodetDetectionModel(entry.arch, nc=nc, ch=3, verbose=False)
    if names:
        model.names = names
    return model
