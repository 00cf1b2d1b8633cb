"""sodet: make lightweight object detectors better at small objects."""

from sodet import offline as _offline  # noqa: F401  (must run before ultralytics is imported)

__version__ = "0.2.0"
