"""One run per run folder: a lock file with the holder's pid, so that two runs into the same folder (``--name exp
--exist-ok`` twice at once, or a resume beside a running run) do not write into each other's checkpoints and
results. A lock left by a process that no longer runs is taken over with a notice."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from sodet.errors import SodetError


def lock_path(run_dir: Path) -> Path:
    """Beside the run folder (its parent), so that taking it never creates the folder the engine names runs by."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.sodet-lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


@contextmanager
def run_lock(run_dir: Path, log=print):
    """Hold ``run_dir``'s lock for the body; a live holder ends in one line, a dead one's lock is taken over."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and pid_alive(holder):
                raise SodetError(f"run folder {run_dir} is in use by process {holder} (two runs into one folder would "
                                 "corrupt each other): wait for it, or pick another --name") from None
            log(f"sodet: taking over the lock of {run_dir} left by process {holder or '?'}, which is not running")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield path
    finally:
        try:
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except OSError:
            pass
