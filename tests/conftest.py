"""What the test files share: the repository's paths, the embedded data, the shipped weights, a CLI runner, and a
test session that never touches the network (``SODET_OFFLINE``) or the user's weights cache (``SODET_HOME``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# before sodet is imported anywhere: no download from any test, and a cache of the test session's own
os.environ["SODET_OFFLINE"] = "1"
os.environ["SODET_HOME"] = tempfile.mkdtemp(prefix="sodet-home-")

import sodet  # noqa: E402,F401  (offline switches before the engine is imported)
from sodet.assets import COCO_MINI, embedded_data, shipped_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # beside the clone in CI (data, fixtures); tests that need it skip without it
MINI = embedded_data(COCO_MINI)  # 32 + 16 COCO person + car images with polygons
HIT_MINI = embedded_data("hit-uav-mini")  # 64 + 32 thermal UAV frames
VAL_IMAGES = MINI / "images" / "val"
NAMES = {0: "person", 1: "car"}
NANO = str(shipped_weights("yolox_nano_coco_fusedbn.pth"))


def sodet_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m sodet.cli ARGS`` as a user runs it: its own process, output captured."""
    return subprocess.run([sys.executable, "-m", "sodet.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def cli():
    """typer's in-process runner over the whole ``sodet`` app."""
    from typer.testing import CliRunner

    from sodet.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])
