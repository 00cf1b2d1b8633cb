"""sodet's losses: box losses with small-object weighting (one shared rule for every detector family) and the
channel-wise distillation loss (the distillation run that uses it is not in sodet yet)."""

from sodet.losses.cwd import ChannelWiseDivergence
from sodet.losses.giou import SmallWeightedGIoULoss
from sodet.losses.small_weighted import FORMS, check_small_weighting, is_small, small_target_loss
from sodet.losses.ultralytics_bbox import SmallWeightedBboxLoss, install_ultralytics
from sodet.losses.yolox_iou import SmallWeightedIouLoss, install_yolox

__all__ = [
    "ChannelWiseDivergence",
    "FORMS",
    "SmallWeightedBboxLoss",
    "SmallWeightedGIoULoss",
    "SmallWeightedIouLoss",
    "check_small_weighting",
    "install_ultralytics",
    "install_yolox",
    "is_small",
    "small_target_loss",
]
