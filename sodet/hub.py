"""Official weights by name: the table (``cfg/weights.yaml``), one cache, verified downloads and an offline mode.

A file is downloaded once into ``$SODET_HOME/weights`` (default ``~/.cache/sodet``) through the field's own
downloaders (torch.hub's ``download_url_to_file``, the engine's ``attempt_download_asset`` / ``safe_download`` for
Ultralytics assets), into a temporary folder beside the cache; only a file that passed its check (the published
sha256 or hash prefix, else a strict load into its model) is renamed into the cache, with its sha256 recorded in
``checksums.json`` and compared on every later use. ``SODET_OFFLINE=1`` (or the user's own ``YOLO_OFFLINE=1``)
never touches the network; ``SODET_WEIGHTS_MIRROR=BASE`` fetches every file as ``BASE/<file name>``.

Nothing here knows a detector family: the caller passes how to check a file that has no published hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from sodet.errors import SodetError
from sodet.files import write_text_atomic

ENV_HOME, ENV_OFFLINE, ENV_MIRROR = "SODET_HOME", "SODET_OFFLINE", "SODET_WEIGHTS_MIRROR"
CHECKSUMS = "checksums.json"
HASH_PREFIX = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub's rule: the hex digits after the last '-'
SOURCES = ("shipped", "url", "torchvision", "ultralytics")


@dataclass(frozen=True)
class WeightsFile:
    """One row of the weights table."""

    file: str
    model: str  # the registry model it loads into
    source: str
    url: str | None = None
    enum: str | None = None  # torchvision: e.g. ResNet50_Weights.IMAGENET1K_V1
    sha256: str | None = None
    size_mb: float | None = None
    licence: str = ""
    trained_on: str = ""
    part: str = "all"  # "backbone": an ImageNet classifier for GFL's ResNet

    @property
    def hash_prefix(self) -> str | None:
        """The published part of the sha256: all of it, or the prefix a torchvision / MMDetection name carries."""
        if self.sha256:
            return self.sha256
        if self.source in {"torchvision", "url"}:
            m = HASH_PREFIX.findall(self.file)
            return m[-1] if m else None
        return None

    @property
    def download_url(self) -> str | None:
        """Where the file comes from: the mirror's ``BASE/<file>`` when one is set, else its publisher's URL."""
        mirror = os.environ.get(ENV_MIRROR, "").strip()
        if self.source == "shipped":
            return None
        if mirror:
            return f"{mirror.rstrip('/')}/{self.file}"
        if self.source == "torchvision":
            return torchvision_url(self.enum)
        if self.source == "ultralytics":
            from ultralytics.utils.downloads import GITHUB_ASSETS_REPO

            return f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/v8.4.0/{self.file}"
        return self.url


def torchvision_url(enum: str | None) -> str:
    """The URL torchvision's own weights enum gives (``ResNet50_Weights.IMAGENET1K_V1.url``)."""
    import torchvision.models as tvm

    cls, _, member = str(enum).partition(".")
    try:
        return getattr(getattr(tvm, cls), member).url
    except AttributeError:
        raise SodetError(f"torchvision has no weights {enum}") from None


@lru_cache(maxsize=1)
def table() -> dict[str, WeightsFile]:
    """Every row of ``cfg/weights.yaml`` by file name."""
    from sodet.assets import load_cfg

    rows = {}
    for name, spec in (load_cfg("weights.yaml").get("files") or {}).items():
        if spec.get("source") not in SOURCES:
            raise SodetError(f"cfg/weights.yaml: {name} has source {spec.get('source')!r}, not one of {SOURCES}")
        rows[name] = WeightsFile(file=name, **spec)
    return rows


def row(file: str) -> WeightsFile | None:
    return table().get(Path(str(file)).name) if str(file) == Path(str(file)).name else None


def home() -> Path:
    """``$SODET_HOME``, default ``$XDG_CACHE_HOME/sodet`` (``~/.cache/sodet``)."""
    env = os.environ.get(ENV_HOME, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sodet"


def weights_dir() -> Path:
    return home() / "weights"


def offline_reason() -> str | None:
    """Why downloads are off, or None: ``SODET_OFFLINE`` or the user's own ``YOLO_OFFLINE`` (sodet switches the
    engine's off for its probes; that alone does not stop sodet's weights)."""
    from sodet.offline import USER_YOLO_OFFLINE

    def truthy(v: str | None) -> bool:
        return str(v).strip().lower() in {"1", "true", "yes", "on"}

    if truthy(os.environ.get(ENV_OFFLINE)):
        return f"{ENV_OFFLINE}=1"
    if truthy(USER_YOLO_OFFLINE):
        return "YOLO_OFFLINE=1"
    return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checksums() -> dict:
    p = weights_dir() / CHECKSUMS
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def record_checksum(entry: WeightsFile, path: Path, digest: str, how: str, url: str | None) -> None:
    """Add the file's sha256 to ``checksums.json`` (written to a temporary file and renamed)."""
    records = read_checksums()
    records[entry.file] = {
        "sha256": digest, "bytes": path.stat().st_size, "verified_by": how, "url": url,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    target = weights_dir() / CHECKSUMS
    write_text_atomic(target, json.dumps(records, indent=2, sort_keys=True) + "\n")


def cached_path(entry: WeightsFile) -> Path:
    """Where the file is (shipped) or will be (the cache)."""
    if entry.source == "shipped":
        from sodet.assets import shipped_weights

        return shipped_weights(entry.file)
    return weights_dir() / entry.file


def is_cached(entry: WeightsFile) -> bool:
    return entry.source == "shipped" or cached_path(entry).is_file()


Verifier = Callable[[Path], None]  # raises SodetError when the file does not load strictly into its model


def fetch(entry: WeightsFile, verify: Verifier | None = None, progress: bool = True) -> Path:
    """The local path of a table file: shipped, cached (its sha256 checked against the record), or downloaded now
    and verified before it enters the cache. One-line SodetError for every failure; no partial file stays."""
    path = cached_path(entry)
    if entry.source == "shipped":
        return path
    if path.is_file():
        check_cached(entry, path, verify)
        return path
    url = entry.download_url
    why = offline_reason()
    if why:
        raise SodetError(f"weights {entry.file} are not cached and downloads are off ({why}): download {url} "
                         f"and put it at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = path.parent / f".partial-{uuid.uuid4().hex}"
    tmp_dir.mkdir()
    try:
        tmp = download(entry, url, tmp_dir / entry.file, progress)
        how, digest = verify_download(entry, tmp, verify)
        os.replace(tmp, path)
        record_checksum(entry, path, digest, how, url)
    except SodetError as e:
        raise SodetError(f"cannot fetch {url} into {path}: {e}") from None
    except Exception as e:  # noqa: BLE001  (network, disk, HTTP: one line naming both ends)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SodetError(f"cannot fetch {url} into {path}: {type(e).__name__}: {msg}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def download(entry: WeightsFile, url: str, dst: Path, progress: bool) -> Path:
    """One transfer into ``dst`` with the field's downloader for the row's source; returns the file."""
    if entry.source == "ultralytics":
        from ultralytics.utils.downloads import attempt_download_asset, safe_download

        if os.environ.get(ENV_MIRROR, "").strip():
            safe_download(url=url, file=dst, retry=0, progress=progress, min_bytes=1)
        else:
            attempt_download_asset(dst, retry=0, progress=progress)
        if not dst.is_file():
            raise SodetError("the engine's downloader produced no file")
        return dst
    from torch.hub import download_url_to_file

    try:
        download_url_to_file(url, str(dst), hash_prefix=None, progress=progress)  # the hash is checked below
    except RuntimeError as e:
        raise SodetError(str(e).splitlines()[0]) from None
    return dst


def verify_download(entry: WeightsFile, path: Path, verify: Verifier | None) -> tuple[str, str]:
    """(how it was verified, its sha256): the published hash or prefix, else a strict load into its model."""
    digest = sha256_of(path)
    prefix = entry.hash_prefix
    if prefix:
        if not digest.startswith(prefix):
            raise SodetError(f"sha256 {digest[:12]}... does not match the published {prefix[:12]} (corrupt or truncated)")
        how = "sha256" if entry.sha256 else "sha256 prefix in the file name"
        if verify is not None:
            verify(path)
        return how, digest
    if verify is None:
        raise SodetError(f"{entry.file} has no published hash and no way to check it was given")
    verify(path)
    return f"strict load into {entry.model} (no published hash)", digest


def check_cached(entry: WeightsFile, path: Path, verify: Verifier | None) -> None:
    """A cached file still is what was verified; a file put there by hand (offline) is verified and recorded."""
    record = read_checksums().get(entry.file)
    digest = sha256_of(path)
    if record:
        if record.get("sha256") != digest:
            raise SodetError(f"cached weights {path} changed since they were verified (sha256 {digest[:12]}..., "
                             f"recorded {str(record.get('sha256'))[:12]}...): delete the file to fetch it again")
        return
    try:
        how, digest = verify_download(entry, path, verify)
    except SodetError as e:
        raise SodetError(f"{path} is not a good copy of {entry.file}: {e}; delete it, or fetch "
                         f"{entry.download_url} there") from None
    record_checksum(entry, path, digest, how + ", placed by hand", None)
