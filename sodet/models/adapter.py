"""What sodet's own model classes (YOLOX, GFL) share in the engine's model contract."""

from __future__ import annotations


class EngineAdapter:
    """Loss scaling and the engine's head hook for a model whose ``loss`` returns a batch-mean loss x
    ``batch_size / nominal_batch`` (the batch its recipe quotes the learning rate for)."""

    nominal_batch: int = 64

    @classmethod
    def mean_loss_scale(cls, batch_size: int) -> float:
        """What ``loss`` multiplies a batch-mean loss by (a term added to the loss is scaled the same way)."""
        return batch_size / cls.nominal_batch

    def set_head_attr(self, **kwargs):
        """The engine sets NMS-related head attributes; NMS happens in sodet's validator, so only record them."""
        for k, v in kwargs.items():
            setattr(self, k, v)
