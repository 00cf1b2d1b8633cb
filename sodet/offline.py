"""Switch off the engine's network touch points, so a run never probes, downloads or hangs offline.

Imported by ``sodet/__init__`` before anything imports ultralytics: its environment switches are read at import.
sodet's own downloads (weights by name, ``sodet.hub``) are the only network access, and the user's
``SODET_OFFLINE=1`` or ``YOLO_OFFLINE=1`` stops them too.
"""

from __future__ import annotations

import os
import shutil

USER_YOLO_OFFLINE = os.environ.get("YOLO_OFFLINE")  # the user's own setting: it also stops sodet's weights downloads
os.environ.setdefault("YOLO_OFFLINE", "1")  # is_online() -> False: no probes, no hub calls
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # check_requirements never pip-installs


def provide_fonts() -> None:
    """The engine's plots ask for Arial.ttf and download it when missing; give it a local TTF instead."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    src = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dst = USER_CONFIG_DIR / name
        if not dst.exists():
            try:
                USER_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            except OSError:
                pass  # read-only config dir: plots fall back to PIL's default font


def quiet_engine() -> None:
    """No fonts fetched. Analytics need no switch: the engine sends events only when online, and YOLO_OFFLINE
    (set above) makes it offline, so the user's settings file is never written."""
    provide_fonts()
