"""The Ultralytics YOLO family: the engine's own model files and classes, unchanged; sodet owns the criterion's box
term (through its ``BoxRule``) and where distillation reads the maps (the inputs and class branch of ``Detect``)."""

from __future__ import annotations

from ultralytics.nn.tasks import DetectionModel

from sodet.errors import SodetError
from sodet.losses.ultralytics_bbox import install_rule
from sodet.models.batchnorm import FrozenBatchNormTraining
from sodet.models.family import Family
from sodet.models.registry import register_family


class SodetDetectionModel(FrozenBatchNormTraining, DetectionModel):
    """The engine's DetectionModel whose criterion applies the run's box rule (``box_rule``) when it has one."""

    task = "detect"  # the engine sets it on models it loads itself; its exporter reads it
    box_rule = None  # sodet.losses.box_rule.BoxRule, set by YoloFamily.install_box_rule

    @staticmethod
    def mean_loss_scale(batch_size: int) -> float:
        """What ``loss`` multiplies a batch-mean loss by: the engine's criterion returns loss x batch size."""
        return batch_size

    def init_criterion(self):
        criterion = super().init_criterion()
        rule = getattr(self, "box_rule", None)
        if rule is None and getattr(getattr(self, "sodet", None), "weighted_loss", None) is not None:
            from sodet.losses.box_rule import BoxRule  # a checkpoint of sodet 0.3: its options hold the weighting

            rule = BoxRule.from_options(self.sodet)
        return install_rule(criterion, rule) if rule is not None else criterion


def detect_head(model):
    """The Ultralytics ``Detect`` module of an engine model."""
    from ultralytics.nn.modules.head import Detect

    for m in getattr(model, "model", []):
        if isinstance(m, Detect):
            return m
    raise SodetError(f"{type(model).__name__} has no Detect head: cannot read its features")


class YoloFamily(Family):
    name, display = "yolo", "Ultralytics YOLO"

    def build(self, entry, nc, names=None):
        model = SodetDetectionModel(entry.arch, nc=nc, ch=3, verbose=False)
        if names:
            model.names = names
        return model

    def owns(self, model) -> bool:
        return isinstance(model, DetectionModel)

    def engine_model_arg(self, entry) -> str:
        # a bare Ultralytics name (yolo11n) would make the engine fetch yolo11n.pt: give it the model file's name
        return entry.arch

    def load_module(self, model, source, origin):
        model.load(source.float())  # the engine's transfer by name and shape (an 80-class head: not transferred)

    def install_box_rule(self, model, rule):
        model.box_rule = rule
        model.criterion = None  # rebuilt with the rule on the next loss call

    def feature_modules(self, model, on):
        head = detect_head(model)
        return list(head.cv3) if on == "head" else [model.model[i] for i in head.f]


register_family(YoloFamily())
