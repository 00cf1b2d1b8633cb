"""sodet's losses: box losses with small-object weighting (one shared rule for every detector family), GFL's
ATSS/QFL/DFL/GIoU loss, and the channel-wise distillation loss (the distillation run that uses it is not in sodet yet)."""

from sodet.losses.atss import atss_assign
from sodet.losses.cwd import ChannelWiseDivergence
from sodet.losses.gfl import GflLoss, install_gfl
from sodet.losses.giou import SmallWeightedGIoULoss
from sodet.losses.small_weighted import FORMS, check_small_weighting, is_small, small_target_loss
from sodet.losses.ultralytics_bbox import SmallWeightedBboxLoss, install_ultralytics
from sodet.losses.yolox_iou import SmallWeightedIouLoss, install_yolox

__all__ = [
    "ChannelWiseDivergence",
    "FORMS",
    "GflLoss",
    "SmallWeightedBboxLoss",
    "SmallWeightedGIoULoss",
    "SmallWeightedIouLoss",
    "atss_assign",
    "check_small_weighting",
    "install_gfl",
    "install_ultralytics",
    "install_yolox",
    "is_small",
    "small_target_loss",
]
