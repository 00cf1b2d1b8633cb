"""sodet's benchmarks: ``python -m bench`` re-runs them all and rebuilds BENCHMARKS.md (see ``__main__.py``)."""
