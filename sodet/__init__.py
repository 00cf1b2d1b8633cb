"""sodet: make lightweight object detectors better at small objects."""

__version__ = "0.1.0"
