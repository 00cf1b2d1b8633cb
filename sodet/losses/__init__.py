"""sodet's losses, maths only: the box-loss rule every family's box term goes through (``BoxRule``: small-object
weighting), each family's box term as a subclass of its library's loss, GFL's ATSS/QFL/DFL/GIoU loss, and the
channel-wise distillation loss. Where each is installed is the family modules' business (``sodet.models``)."""

from sodet.losses.atss import atss_assign
from sodet.losses.box_rule import BoxRule
from sodet.losses.cwd import ChannelWiseDivergence
from sodet.losses.gfl import GflLoss
from sodet.losses.giou import RuleGIoULoss
from sodet.losses.small_weighted import is_small, small_target_loss
from sodet.losses.ultralytics_bbox import RuleBboxLoss, install_rule
from sodet.losses.yolox_iou import RuleIouLoss

__all__ = [
    "BoxRule", "ChannelWiseDivergence", "GflLoss", "RuleBboxLoss", "RuleGIoULoss", "RuleIouLoss", "atss_assign",
    "install_rule", "is_small", "small_target_loss",
]
