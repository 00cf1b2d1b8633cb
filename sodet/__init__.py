"""sodet: make lightweight object detectors better at small objects."""

from sodet import offline as _offline  # noqa: F401  (must run before ultralytics is imported)
from sodet.detector import Detector  # light: torch and the engine load on its first use

__version__ = "0.4.0"
__all__ = ["Detector", "__version__"]
