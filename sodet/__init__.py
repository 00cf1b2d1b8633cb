"""sodet: make lightweight object detectors better at small objects."""

from sodet import offline as _offline  # noqa: F401  (must run before ultralytics is imported)

__version__ = "0.3.0"
__all__ = ["Detector", "__version__"]


def __getattr__(name: str):
    """``sodet.Detector`` imported on first use, so ``import sodet`` stays fast (no torch, no engine)."""
    if name == "Detector":
        from sodet.detector import Detector

        return Detector
    raise AttributeError(f"module 'sodet' has no attribute {name!r}")
