"""Files written whole or not at all: the one atomic writer every sodet output goes through.

A file is written to a temporary name beside its target (unique per process and call, so that processes writing
the same file at once, a study's cells side by side, never rename each other's half-written file), flushed to
disk and renamed over the target: a kill at any moment leaves the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from sodet.errors import SodetError


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. A failed write (a full disk) ends in one line naming the path and
    the free space; the old file stays intact and no temporary file is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise SodetError(f"cannot write {path}: {e.strerror or e}{free_space_note(path.parent)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def free_space_note(folder: Path) -> str:
    """' (N MiB free in FOLDER)' for an error line, or '' where the folder cannot be asked."""
    try:
        return f" ({shutil.disk_usage(folder).free / 2**20:.0f} MiB free in {folder})"
    except OSError:
        return ""
