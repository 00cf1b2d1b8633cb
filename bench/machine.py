"""What every benchmark records about where it ran, and how it hands its markdown over."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(lines: list[str], out: str | Path | None = None) -> str:
    """A benchmark's markdown: printed, and written to ``out`` (its folder made) when given."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text
