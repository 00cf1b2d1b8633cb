"""Offline copy-paste writer, size statistics and the ``sodet data`` commands, on real and hand-made data."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sodet.cli.data import data_app
from sodet.data.oversample import oversample_coco
from sodet.data.stats import dataset_stats
from sodet.errors import SodetError

MINI = Path(__file__).resolve().parents[1] / "datasets" / "coco-pc-mini"


def shoelace(seg: list) -> float:
    total = 0.0
    for flat in seg:
        p = np.asarray(flat, float).reshape(-1, 2)
        total += 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))))
    return total


@pytest.fixture(scope="module")
def mini_oversampled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp") / "mini-cp"
    stats = oversample_coco(MINI, "train", out, seed=0)
    return out, stats


def test_writer_output_loads_and_has_n_plus_k_images(mini_oversampled):
    from pycocotools.coco import COCO

    out, stats = mini_oversampled
    src = json.loads((MINI / "annotations" / "train.json").read_text())
    n = len(src["images"])
    k = len({a["image_id"] for a in src["annotations"] if a["area"] < 1024 and not a["iscrowd"]})
    coco = COCO(str(out / "annotations" / "train.json"))
    assert len(coco.imgs) == n + k == stats["images_out"]
    assert stats["images_in"] == n and stats["extra_images"] == k == stats["images_with_small"]
    per_image = Counter(a["image_id"] for a in src["annotations"])
    extras = [im for im in coco.dataset["images"] if "copy_paste_of" in im]
    assert len(coco.anns) == len(src["annotations"]) + sum(per_image[im["copy_paste_of"]] for im in extras) + \
        stats["objects_pasted"]
    assert len({im["id"] for im in coco.dataset["images"]}) == n + k
    assert len({a["id"] for a in coco.dataset["annotations"]}) == len(coco.dataset["annotations"])
    for name in [im["file_name"] for im in coco.dataset["images"]]:
        assert (out / "images" / "train" / name).is_file()
    assert "train" in (out / "SOURCE.md").read_text() and "COCO" in (out / "SOURCE.md").read_text()


def test_writer_extra_images_hold_each_small_object_once_more(mini_oversampled):
    out, stats = mini_oversampled
    src = json.loads((MINI / "annotations" / "train.json").read_text())
    d = json.loads((out / "annotations" / "train.json").read_text())
    src_anns = Counter(a["image_id"] for a in src["annotations"])
    small_of = {}
    for a in src["annotations"]:
        if a["area"] < 1024 and not a["iscrowd"]:
            small_of.setdefault(a["image_id"], set()).add(a["id"])
    src_images = {im["id"]: im for im in src["images"]}
    extras = [im for im in d["images"] if "copy_paste_of" in im]
    pasted = 0
    fully = 0
    for im in extras:
        source = src_images[im["copy_paste_of"]]
        assert (im["width"], im["height"]) == (source["width"], source["height"])
        assert im["license"] == source["license"] and im["coco_url"] == source["coco_url"]
        anns = [a for a in d["annotations"] if a["image_id"] == im["id"]]
        new = [a for a in anns if "copy_paste_of" in a]
        assert len(anns) - len(new) == src_anns[source["id"]]  # all original annotations carried over
        per_source = Counter(a["copy_paste_of"] for a in new)
        assert set(per_source) <= small_of[source["id"]] and set(per_source.values()) <= {1}
        fully += set(per_source) == small_of[source["id"]]
        pasted += len(new)
        img = cv2.imread(str(out / "images" / "train" / im["file_name"]))
        assert img.shape[:2] == (im["height"], im["width"])
        for a in new:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= im["width"] + 1e-6 and y + h <= im["height"] + 1e-6
            assert a["iscrowd"] == 0
    assert pasted == stats["objects_pasted"]
    assert pasted + stats["pastes_skipped"] == sum(len(small_of[im["copy_paste_of"]]) for im in extras)
    assert fully >= 0.7 * len(extras)  # skips only where an image has no free place left


def test_writer_new_annotations_carry_class_polygon_and_area(mini_oversampled):
    out, _ = mini_oversampled
    src = {a["id"]: a for a in json.loads((MINI / "annotations" / "train.json").read_text())["annotations"]}
    d = json.loads((out / "annotations" / "train.json").read_text())
    new = [a for a in d["annotations"] if "copy_paste_of" in a]
    assert new
    for a in new:
        s = src[a["copy_paste_of"]]
        assert a["category_id"] == s["category_id"]
        assert np.allclose(a["bbox"][2:], s["bbox"][2:], atol=0.02)  # no jitter: same size
        assert len(a["segmentation"]) == len(s["segmentation"])
        assert a["area"] == pytest.approx(shoelace(a["segmentation"]), abs=0.05)
        assert a["area"] == pytest.approx(shoelace(s["segmentation"]), abs=0.5)


def test_writer_keeps_originals_byte_identical_and_is_deterministic(mini_oversampled, tmp_path):
    out, _ = mini_oversampled
    src = json.loads((MINI / "annotations" / "train.json").read_text())
    for im in src["images"]:
        assert (out / "images" / "train" / im["file_name"]).read_bytes() == \
               (MINI / "images" / "train" / im["file_name"]).read_bytes()
    d = json.loads((out / "annotations" / "train.json").read_text())
    assert d["annotations"][: len(src["annotations"])] == src["annotations"]
    again = tmp_path / "again"
    oversample_coco(MINI, "train", again, seed=0)
    assert (again / "annotations" / "train.json").read_bytes() == (out / "annotations" / "train.json").read_bytes()
    for im in d["images"]:
        assert (again / "images" / "train" / im["file_name"]).read_bytes() == \
               (out / "images" / "train" / im["file_name"]).read_bytes()
    assert not (out / "images" / "val").exists()


def test_writer_fractional_oversample_and_copies(tmp_path):
    stats = oversample_coco(MINI, "val", tmp_path / "o", oversample=1.5, copies=2, jitter=True, seed=3)
    src = json.loads((MINI / "annotations" / "val.json").read_text())
    k = len({a["image_id"] for a in src["annotations"] if a["area"] < 1024 and not a["iscrowd"]})
    assert stats["extra_images"] == k + int(np.floor(0.5 * k + 0.5))
    d = json.loads((tmp_path / "o" / "annotations" / "val.json").read_text())
    names = [im["file_name"] for im in d["images"] if "copy_paste_of" in im]
    assert len(names) == len(set(names)) == stats["extra_images"] and any("_cp2" in n for n in names)


def make_coco(root: Path, split: str = "train") -> dict:
    """A hand-made COCO folder: two 200x200 images, one with two small polygon objects and a crowd region."""
    (root / "annotations").mkdir(parents=True)
    (root / "images" / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(root / "images" / split / name), rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    sq = lambda x, y, s: [x, y, x + s, y, x + s, y + s, x, y + s]  # noqa: E731
    d = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200, "license": 4},
                   {"id": 2, "file_name": "b.jpg", "width": 200, "height": 200, "license": 4}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400.0, "iscrowd": 0,
             "segmentation": [sq(10, 10, 20)]},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [50, 10, 10, 10], "area": 100.0, "iscrowd": 0,
             "segmentation": [sq(50, 10, 10)]},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [100, 100, 60, 60], "area": 3600.0, "iscrowd": 0,
             "segmentation": [sq(100, 100, 60)]},
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [0, 150, 90, 50], "area": 2000, "iscrowd": 1,
             "segmentation": {"counts": [0, 1], "size": [200, 200]}},
            {"id": 14, "image_id": 2, "category_id": 3, "bbox": [0, 0, 120, 120], "area": 14400.0, "iscrowd": 0,
             "segmentation": [sq(0, 0, 120)]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    (root / "annotations" / f"{split}.json").write_text(json.dumps(d))
    return d


def test_writer_on_hand_made_data(tmp_path):
    make_coco(tmp_path / "src")
    stats = oversample_coco(tmp_path / "src", "train", tmp_path / "out", seed=1)
    assert stats == {"images_in": 2, "images_out": 3, "images_with_small": 1, "extra_images": 1,
                     "objects_pasted": 2, "pastes_skipped": 0}
    d = json.loads((tmp_path / "out" / "annotations" / "train.json").read_text())
    new = [a for a in d["annotations"] if "copy_paste_of" in a]
    assert sorted(a["copy_paste_of"] for a in new) == [10, 11]
    assert sorted(a["area"] for a in new) == [100.0, 400.0]
    crowd = [a for a in d["annotations"] if a["iscrowd"]]
    assert len(crowd) == 2  # carried into the copy, never pasted
    # only one class pasted
    stats = oversample_coco(tmp_path / "src", "train", tmp_path / "out2", seed=1, classes=["car"])
    assert stats["objects_pasted"] == 1
    with pytest.raises(SodetError, match="must differ"):
        oversample_coco(tmp_path / "src", "train", tmp_path / "src")


def test_stats_match_a_hand_count_on_mini(tmp_path):
    d = json.loads((MINI / "annotations" / "train.json").read_text())
    names = {c["id"]: c["name"] for c in d["categories"]}
    s = dataset_stats(MINI, "train", plot_path=tmp_path / "h.png")
    assert s["images"] == len(d["images"])
    for cid, name in names.items():
        anns = [a for a in d["annotations"] if a["category_id"] == cid and not a["iscrowd"]]
        small = [a for a in anns if a["area"] < 32 ** 2]
        medium = [a for a in anns if 32 ** 2 <= a["area"] < 96 ** 2]
        large = [a for a in anns if a["area"] >= 96 ** 2]
        t = s["classes"][name]
        assert t["count"] == {"small": len(small), "medium": len(medium), "large": len(large)}
        assert t["image_share"]["small"] == pytest.approx(len({a["image_id"] for a in small}) / len(d["images"]))
        total = sum(a["area"] for a in anns)
        assert t["area_share"]["large"] == pytest.approx(sum(a["area"] for a in large) / total)
        assert t["crowd"] == sum(1 for a in d["annotations"] if a["category_id"] == cid and a["iscrowd"])
    assert sum(s["all"]["count"].values()) == sum(1 for a in d["annotations"] if not a["iscrowd"])
    assert sum(s["all"]["area_share"].values()) == pytest.approx(1.0)
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_on_hand_made_data_and_class_filter(tmp_path):
    make_coco(tmp_path / "src")
    s = dataset_stats(tmp_path / "src", "train", classes=["car"])
    assert list(s["classes"]) == ["car"]
    assert s["classes"]["car"]["count"] == {"small": 1, "medium": 0, "large": 1}
    assert s["classes"]["car"]["image_share"] == {"small": 0.5, "medium": 0.0, "large": 0.5}
    assert s["classes"]["car"]["area_share"]["small"] == pytest.approx(100 / 14500)
    assert s["plot"] is None


@pytest.fixture
def cli():
    app = typer.Typer()
    app.add_typer(data_app, name="data")

    @app.command()
    def _noop():  # a second command keeps "data" a sub-command, as in the real app
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["data", *map(str, args)])


def test_cli_stats_and_oversample(cli, tmp_path):
    r = cli("stats", "--data", MINI, "--split", "val", "--out", tmp_path / "v.png")
    assert r.exit_code == 0, r.output
    assert "person" in r.output and "car" in r.output and (tmp_path / "v.png").is_file()
    r = cli("oversample", "--data", MINI, "--split", "val", "--out", tmp_path / "o", "--oversample", "0.5")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "annotations" / "val.json").is_file()


@pytest.mark.parametrize("case", ["missing_dir", "missing_json", "broken_json", "yaml"])
def test_cli_errors_are_one_line(cli, tmp_path, case):
    data = tmp_path / "d"
    if case != "missing_dir":
        shutil.copytree(MINI / "images" / "val", data / "images" / "train")
        (data / "annotations").mkdir()
    if case == "broken_json":
        (data / "annotations" / "train.json").write_text('{"images": [')
    if case == "yaml":
        data = tmp_path / "d.yaml"
        data.write_text("path: .\ntrain: images\n")
    for cmd in (["stats"], ["oversample", "--out", tmp_path / "out"]):
        r = cli(*cmd, "--data", data, "--split", "train")
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output
