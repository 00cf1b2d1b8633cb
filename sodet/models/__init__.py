"""sodet's detector families, registered at import (timm's way: the registry itself imports none of them)."""

from sodet.models import gfl, yolo, yolox  # noqa: F401
