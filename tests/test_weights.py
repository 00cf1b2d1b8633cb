"""Weights by name (sodet.hub, cfg/weights.yaml): downloads from a local HTTP server on the loopback address,
verified before they enter the cache, checked on every later use, offline and mirror modes, one-line errors that
leave no partial file; the table itself; a model's default weights reached through resolve_model."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from conftest import NANO

from sodet import hub
from sodet.errors import SodetError
from sodet.models.resolve import resolve_model


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``mode``: "ok", "corrupt" (every byte flipped) or "cut"
    (half the body, then the connection closes, Content-Length promising all of it). Counts requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                if server.mode == "corrupt":
                    body = bytes(b ^ 0xFF for b in body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.mode == "cut" else body)
                if server.mode == "cut":
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A mirror on the loopback address and an empty cache of this test's own, downloads on."""
    s = Server()
    monkeypatch.setenv(hub.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(hub.ENV_MIRROR, s.url)
    monkeypatch.delenv(hub.ENV_OFFLINE, raising=False)
    yield s
    s.close()


def cache_is_clean(name: str) -> bool:
    """No file of that name and no partial download anywhere in the cache."""
    folder = hub.weights_dir()
    return not (folder / name).exists() and not any(p.name.startswith(".partial") for p in folder.glob("*")) if folder.exists() else True


def test_first_use_downloads_verifies_and_caches_then_no_request(server, capfd):
    """Megvii's files publish no checksum: the download must load strictly into its model before it enters the
    cache; its sha256 is recorded then and checked on every later use."""
    server.files["yolox_nano.pth"] = Path(NANO).read_bytes()  # the same network as Megvii's yolox_nano.pth
    r = resolve_model("yolox-nano", "yolox_nano.pth")
    assert r.weights == hub.weights_dir() / "yolox_nano.pth" and r.weights.read_bytes() == server.files["yolox_nano.pth"]
    assert server.requests == ["/yolox_nano.pth"]
    assert "100%" in capfd.readouterr().err  # the downloader's progress bar
    record = hub.read_checksums()["yolox_nano.pth"]
    assert record["sha256"] == hashlib.sha256(server.files["yolox_nano.pth"]).hexdigest()
    assert record["verified_by"].startswith("strict load into yolox-nano") and record["url"] == f"{server.url}/yolox_nano.pth"
    assert resolve_model("yolox-nano", "yolox_nano.pth").weights == r.weights and server.requests == ["/yolox_nano.pth"]
    with open(r.weights, "r+b") as f:  # the cached file changes behind sodet's back
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(SodetError, match="changed since they were verified"):
        resolve_model("yolox-nano", "yolox_nano.pth")


def test_a_corrupt_body_and_a_cut_transfer_leave_the_cache_clean(server):
    server.files["yolox_nano.pth"] = Path(NANO).read_bytes()
    for mode in ("corrupt", "cut"):
        server.mode = mode
        with pytest.raises(SodetError) as e:
            resolve_model("yolox-nano", "yolox_nano.pth")
        message = str(e.value)
        assert message.startswith(f"cannot fetch {server.url}/yolox_nano.pth into {hub.weights_dir() / 'yolox_nano.pth'}")
        assert "\n" not in message and cache_is_clean("yolox_nano.pth")


def test_a_published_hash_is_checked(server, tmp_path):
    """torchvision and MMDetection names carry the first hex digits of the sha256 (torch.hub's rule)."""
    body = b"a small file standing for weights" * 100
    digest = hashlib.sha256(body).hexdigest()
    good = hub.WeightsFile(file=f"tiny-{digest[:8]}.pth", model="gfl-r18", source="url", url="http://unused.invalid/x")
    server.files[good.file] = body
    assert good.hash_prefix == digest[:8] and hub.fetch(good).read_bytes() == body  # no model check: the hash suffices
    assert hub.read_checksums()[good.file]["verified_by"] == "sha256 prefix in the file name"
    bad = hub.WeightsFile(file="resnet18-f37072fd.pth", model="gfl-r18", source="torchvision", enum="ResNet18_Weights.IMAGENET1K_V1")
    server.files[bad.file] = body  # not torchvision's ResNet-18
    with pytest.raises(SodetError, match=r"sha256 .* does not match the published f37072fd"):
        hub.fetch(bad)
    assert cache_is_clean(bad.file)


def test_the_engines_downloader_for_ultralytics_assets(server):
    """yolo*.pt through the engine's own downloader (its safe_download from the mirror), then a strict check."""
    from ultralytics.cfg import get_cfg

    from sodet.models.registry import get_entry

    model = get_entry("yolo11n").build(80)
    model.args = get_cfg()
    buf = Path(hub.weights_dir().parent / "y.pt")
    buf.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model}, buf)
    server.files["yolo11n.pt"] = buf.read_bytes()
    r = resolve_model("yolo11n")  # its default weights
    assert r.weights.name == "yolo11n.pt" and server.requests == ["/yolo11n.pt"]
    assert hub.read_checksums()["yolo11n.pt"]["verified_by"].startswith("strict load into yolo11n")


def test_offline_and_refused_connections_say_what_to_fetch_where(server, monkeypatch):
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    with pytest.raises(SodetError) as e:
        resolve_model("yolox-tiny")
    assert str(e.value) == (f"weights yolox_tiny.pth are not cached and downloads are off (SODET_OFFLINE=1): download "
                            f"{server.url}/yolox_tiny.pth and put it at {hub.weights_dir() / 'yolox_tiny.pth'}")
    assert server.requests == []
    monkeypatch.delenv(hub.ENV_OFFLINE)
    monkeypatch.setattr("sodet.offline.USER_YOLO_OFFLINE", "1")  # the user's own YOLO_OFFLINE counts too
    with pytest.raises(SodetError, match=r"downloads are off \(YOLO_OFFLINE=1\)"):
        resolve_model("yolox-tiny")
    monkeypatch.setattr("sodet.offline.USER_YOLO_OFFLINE", None)
    monkeypatch.setenv(hub.ENV_MIRROR, "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(SodetError, match=r"cannot fetch http://127.0.0.1:9/yolox_tiny.pth into .*yolox_tiny.pth: .*(refused|Errno)"):
        resolve_model("yolox-tiny")
    assert cache_is_clean("yolox_tiny.pth")
    monkeypatch.delenv(hub.ENV_MIRROR)
    assert hub.table()["yolox_tiny.pth"].download_url.startswith("https://github.com/Megvii-BaseDetection/YOLOX/releases/")


def test_a_file_put_in_the_cache_by_hand_is_verified_once(server):
    """Offline sites copy the file to where the message said; it is checked, recorded, and used."""
    target = hub.weights_dir() / "yolox_nano.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(NANO).read_bytes())
    assert resolve_model("yolox-nano", "yolox_nano.pth").weights == target and server.requests == []
    assert hub.read_checksums()["yolox_nano.pth"]["verified_by"].endswith("placed by hand")
    wrong = hub.weights_dir() / "yolox_tiny.pth"
    wrong.write_bytes(Path(NANO).read_bytes())  # nano weights under tiny's name
    with pytest.raises(SodetError, match="is not a good copy of yolox_tiny.pth"):
        resolve_model("yolox-tiny")


# the table ----------------------------------------------------------------------------------------------------
def test_every_zoo_model_has_official_weights_with_their_facts():
    from sodet.assets import load_cfg
    from sodet.models.registry import get_entry

    rows = hub.table()
    for name in load_cfg("models.yaml"):  # the zoo (a plugin's model registered at run time may have no weights)
        row = rows[get_entry(name).weights]
        assert row.licence and row.trained_on and row.size_mb, name
        assert row.source == "shipped" or row.download_url.startswith("https://"), name
        base = get_entry(name).arch.removesuffix("+p2").replace("-p2.yaml", ".yaml")  # a P2 model: its base's file
        assert get_entry(row.model).arch == base, name
    gfl = rows["gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth"]
    assert gfl.hash_prefix == "dd12f847" and gfl.url.startswith("https://download.openmmlab.com/mmdetection/v2.0/gfl/")
    tv = rows["resnet50-0676ba61.pth"]
    assert tv.download_url == "https://download.pytorch.org/models/resnet50-0676ba61.pth" and tv.part == "backbone"
    assert rows["yolox_s.pth"].hash_prefix is None  # Megvii publishes none: verified by a strict load
    assert rows["yolox_nano_coco_fusedbn.pth"].source == "shipped"  # the main job needs no network
    assert hub.is_cached(rows["yolox_nano_coco_fusedbn.pth"])


def test_weights_of_another_model_are_refused_and_paths_win(tmp_path):
    with pytest.raises(SodetError, match="weights yolox_s.pth are for yolox-s, not yolox-tiny"):
        resolve_model("yolox-tiny", "yolox_s.pth")
    local = tmp_path / "yolox_s.pth"
    local.write_bytes(Path(NANO).read_bytes())
    assert resolve_model("yolox-nano", str(local)).weights == local  # an existing file wins over the table
    assert resolve_model("yolox-tiny", "none").weights is None  # random init
    with pytest.raises(SodetError, match="weights file not found"):
        resolve_model("yolox-tiny", "nothere.pth")


def test_zoo_shows_source_and_cache_state():
    from sodet.models.zoo import weights_source

    assert weights_source("yolox_nano_coco_fusedbn.pth")["source"] == "shipped with sodet"
    row = weights_source("yolox_tiny.pth")
    assert row["source"] == "url: github.com" and row["cached"] == "no"
    assert weights_source(None)["source"] == "random init"
