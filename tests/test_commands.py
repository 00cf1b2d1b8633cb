"""Every command on every family from the command line (tiny sizes): train, val, predict, export (then val of the
export), distill; a GFL checkpoint in MMDetection's layout through ``sodet val``; an exported 80-class model scored
on a class subset by name, as its PyTorch model is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import MINI, VAL_IMAGES

FAMILIES = {"yolox": "yolox-nano", "yolo": "yolo11n", "gfl": "gfl-r18"}
TINY = ["--data", str(MINI), "--imgsz", "128", "--device", "cpu"]


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run per family (yolox-nano from its shipped weights, the others from random init)."""
    from typer.testing import CliRunner

    from sodet.cli import app

    root = tmp_path_factory.mktemp("commands")
    runs = {}
    for family, model in FAMILIES.items():
        weights = [] if family == "yolox" else ["--weights", "none"]
        ok(CliRunner().invoke(app, ["train", "--model", model, *weights, *TINY, "--epochs", "1", "--batch", "8", "--workers", "0",
                                    "-o", "fraction=0.25", "-o", "plots=False", "--project", str(root), "--name", family]))
        runs[family] = root / family
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_train_val_predict_export_distill(family, trained, cli, tmp_path):
    run = trained[family]
    best = run / "weights" / "best.pt"
    assert best.is_file() and (run / "metrics.json").is_file()
    ok(cli("val", "--model", best, *TINY, "--out", tmp_path / "val"))
    m = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert m["dataset"]["classes"] == ["person", "car"] and 0 <= m["AP"] <= 1
    first = sorted(VAL_IMAGES.iterdir())[0]
    ok(cli("predict", "--model", best, "--source", first, "--imgsz", "128", "--device", "cpu", "--no-save",
           "--project", tmp_path, "--name", "p"))
    assert (tmp_path / "p" / "predictions.json").is_file()
    ok(cli("export", "--model", best, "--format", "onnx", "--imgsz", "128", "--device", "cpu", "--out", tmp_path / "m.pt"))
    ok(cli("val", "--model", tmp_path / "m.onnx", *TINY, "--out", tmp_path / "val-onnx"))
    m_onnx = json.loads((tmp_path / "val-onnx" / "metrics.json").read_text())
    assert m_onnx["AP"] == pytest.approx(m["AP"], abs=2e-3)
    ok(cli("distill", "--teacher", best, "--model", FAMILIES[family], "--weights", "none", *TINY, "--epochs", "1", "--batch", "8",
           "--workers", "0", "-o", "fraction=0.25", "-o", "plots=False", "--project", tmp_path, "--name", "d"))
    ck = torch.load(tmp_path / "d" / "weights" / "last.pt", weights_only=False)
    assert type(ck["model"]).__name__ != "CwdDistiller"  # the final checkpoint holds the student alone


def test_val_of_a_registry_gfl_model_and_an_mmdetection_checkpoint(cli, tmp_path):
    """The engine's AutoBackend fuses whatever it gets (a GFL model in training mode used to crash it); an
    80-class checkpoint in MMDetection's layout scores person and car by name."""
    from sodet.models.registry import get_entry
    from sodet.models.weights import coco80_names

    ok(cli("val", "--model", "gfl-r18", "--weights", "none", *TINY, "--out", tmp_path / "plain"))
    net = get_entry("gfl-r18").build(80, dict(enumerate(coco80_names())))
    torch.save({"meta": {"CLASSES": coco80_names()}, "state_dict": net.state_dict()}, tmp_path / "gfl_r18_coco.pth")
    ok(cli("val", "--model", "gfl-r18", "--weights", tmp_path / "gfl_r18_coco.pth", *TINY, "--classes", "person,car",
           "--out", tmp_path / "mmdet"))
    assert json.loads((tmp_path / "mmdet" / "metrics.json").read_text())["dataset"]["classes"] == ["person", "car"]


def test_an_exported_coco_model_is_scored_on_a_class_subset_by_name(cli, tmp_path):
    """``sodet export --model yolox-nano`` (80 classes), then ``sodet val`` of the .onnx with --classes person,car:
    the classes are picked from its outputs by name, and the numbers are the PyTorch model's."""
    ok(cli("export", "--model", "yolox-nano", "--format", "onnx", "--imgsz", "160", "--device", "cpu", "--out", tmp_path / "nano.pt"))
    args = ["--data", MINI, "--imgsz", "160", "--device", "cpu", "--classes", "person,car"]
    ok(cli("val", "--model", tmp_path / "nano.onnx", *args, "--out", tmp_path / "onnx"))
    ok(cli("val", "--model", "yolox-nano", *args, "--out", tmp_path / "pt"))
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("onnx", "pt"))
    assert a["dataset"]["classes"] == ["person", "car"] and a["AP"] > 0.05
    assert a["AP"] == pytest.approx(b["AP"], abs=2e-3) and a["APs"] == pytest.approx(b["APs"], abs=2e-3)
    result = cli("val", "--model", tmp_path / "nano.onnx", "--data", MINI, "--classes", "person,zebra-crossing")
    assert result.exit_code != 0


def test_a_checkpoint_of_more_classes_scores_the_datas_classes(cli, tmp_path):
    """A sodet checkpoint of 3 classes scored on 2 of them by name; a data class it lacks is one line."""
    from sodet.engine.build import build_model
    from sodet.options import RunOptions
    from conftest import NANO

    net = build_model(RunOptions(model="yolox-nano", weights=NANO, letterbox="top-left"), 3, {0: "car", 1: "dog", 2: "person"})
    torch.save({"model": net, "train_args": {"imgsz": 160}}, tmp_path / "three.pt")
    ok(cli("val", "--model", tmp_path / "three.pt", "--data", MINI, "--imgsz", "160", "--device", "cpu", "--out", tmp_path / "v"))
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["dataset"]["classes"] == ["person", "car"]
    result = cli("val", "--model", tmp_path / "three.pt", "--data", str(Path(__file__).parents[1] / "datasets" / "hit-uav-mini"))
    assert result.exit_code != 0 and "do not hold the data classes" in str(result.exception)
