"""Size protocols beyond COCO's buckets (AI-TOD, TinyPerson, custom edges): equal to pycocotools' COCOeval run with
the protocol's parameters on generated cases (crowd and ignore regions, empty images, images at the detection cap)
and on a real set; through ``sodet val`` up to 1500 detections per image; in compare, the study report and data
stats; and in the engine's TensorBoard logger."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import HIT_MINI, MINI, REPO

from sodet.errors import SodetError
from sodet.eval.cocoeval import evaluate
from sodet.eval.protocols import custom_protocol, get_protocols


def reference(gt: dict, dets: list[dict], protocol) -> dict:
    """pycocotools with the protocol's areaRng / maxDets / iouThrs, each number read from eval['precision'] /
    eval['recall'] as COCOeval.summarize reads its own."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = json.loads(json.dumps(gt))
    for i, a in enumerate(gt["annotations"], 1):
        a["id"] = i
        if protocol.ignore_field and a.get("ignore"):
            a["iscrowd"] = 1
    cap = max(protocol.max_dets)
    kept = []  # the cap per image (COCO's rule: the highest scores)
    for image_id in {d["image_id"] for d in dets}:
        mine = sorted((d for d in dets if d["image_id"] == image_id), key=lambda d: -d["score"])
        kept += mine[:cap]
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = gt
        g.createIndex()
        d = g.loadRes(kept) if kept else COCO()
        E = COCOeval(g, d, "bbox")
        E.params.areaRng = [[lo, hi] for _, lo, hi in protocol.ranges]
        E.params.areaRngLbl = [n for n, _, _ in protocol.ranges]
        E.params.iouThrs = np.asarray(protocol.iou_thresholds)
        E.params.maxDets = list(protocol.max_dets)
        E.evaluate()
        E.accumulate()
    p, r = E.eval["precision"], E.eval["recall"]
    ious = np.asarray(protocol.iou_thresholds)
    out = {}
    for st in protocol.stats:
        a = E.params.areaRngLbl.index(st.range)
        m = E.params.maxDets.index(st.max_det)
        t = [i for i, x in enumerate(ious) if (0.5 - 1e-9 <= x <= 0.95 + 1e-9) if st.iou is None] or \
            [i for i, x in enumerate(ious) if st.iou is not None and abs(x - st.iou) < 1e-9]
        v = p[t, :, :, a, m] if st.kind == "ap" else r[t, :, a, m]
        v = v[v > -1]
        out[st.name] = float(v.mean()) if v.size else None
    return out


def generated_case(seed: int, dense: int = 0):
    """Images of tiny to medium objects, crowd regions, TinyPerson ignore boxes, an empty image, and (``dense``)
    one image with that many detections, more than a cap."""
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i, "width": 640, "height": 512} for i in range(1, 9)],
          "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}], "annotations": []}
    dets = []
    for im in gt["images"][:-1]:  # the last image: no ground truth, detections only
        for _ in range(int(rng.integers(3, 25))):
            side = float(np.exp(rng.uniform(np.log(2), np.log(80))))
            x, y = rng.uniform(0, 640 - side), rng.uniform(0, 512 - side)
            a = {"image_id": im["id"], "category_id": int(rng.integers(1, 3)), "bbox": [x, y, side, side * rng.uniform(0.6, 1.4)],
                 "iscrowd": int(rng.random() < 0.05), "ignore": int(rng.random() < 0.05)}
            a["area"] = a["bbox"][2] * a["bbox"][3]
            gt["annotations"].append(a)
            if rng.random() < 0.8:
                j = rng.normal(0, 0.15, 4) * side
                dets.append({"image_id": im["id"], "category_id": a["category_id"], "score": float(rng.random()),
                             "bbox": [x + j[0], y + j[1], max(0.5, side + j[2]), max(0.5, side + j[3])]})
    for im in gt["images"]:
        for _ in range(int(rng.integers(0, 10))):
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 3)), "score": float(rng.random() * 0.5),
                         "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 480)), float(rng.uniform(2, 40)), float(rng.uniform(2, 40))]})
    for _ in range(dense):
        dets.append({"image_id": 1, "category_id": 1, "score": float(rng.random()),
                     "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 480)), 6.0, 6.0]})
    return gt, dets


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_protocols_equal_pycocotools_with_their_parameters(seed, backend):
    gt, dets = generated_case(seed, dense=1600 if seed == 0 else 250)
    protocols = get_protocols("aitod,tinyperson", [8, 16, 32, 96])
    m = evaluate(gt, dets, protocols=protocols, backend=backend)
    for p in protocols:
        ref = reference(gt, dets, p)
        ours = {k: v for k, v in m["protocols"][p.name].items() if k != "per_class"}
        assert list(ours) == [st.name for st in p.stats]
        for k, v in ref.items():
            assert (ours[k] is None) == (v is None), (p.name, k)
            if v is not None:
                assert ours[k] == pytest.approx(v, abs=1e-6), (p.name, k)
    assert m["protocols"]["aitod"]["AR1500"] is not None and set(m["protocols"]["aitod"]["per_class"]) == {"person", "car"}


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_many_detections_are_scored_by_category_in_several_processes_with_the_same_numbers(backend, monkeypatch):
    """Above PARALLEL_MIN_DETECTIONS the categories are split over processes; the joined arrays are those of one
    COCOeval (a category without ground truth in the middle of the order, one with neither, three workers)."""
    from sodet.eval import scoring

    gt, dets = generated_case(4, dense=300)
    gt["categories"] = [{"id": 1, "name": "person"}, {"id": 2, "name": "truck"}, {"id": 3, "name": "car"},
                        {"id": 4, "name": "bus"}]
    for a in gt["annotations"]:
        a["category_id"] = 3 if a["category_id"] == 2 else 1
    for d in dets:
        d["category_id"] = {1: 1, 2: 3}[d["category_id"]]
    dets += [dict(d, category_id=2) for d in dets[::7]]  # detections of a category without ground truth
    protocols = get_protocols("aitod,tinyperson")
    one = evaluate(gt, dets, protocols=protocols, backend=backend)
    monkeypatch.setattr(scoring, "PARALLEL_MIN_DETECTIONS", 0)  # the machine's cores (2 in CI)
    assert scoring._category_workers(len(dets), 4) == min(4, len(os.sched_getaffinity(0)))
    assert evaluate(gt, dets, protocols=protocols, backend=backend) == one
    monkeypatch.setattr(scoring, "_category_workers", lambda scored, categories: 3)
    chunks, split_by = [], scoring._category_chunks
    monkeypatch.setattr(scoring, "_category_chunks", lambda *a: chunks.append(split_by(*a)) or chunks[-1])
    split = evaluate(gt, dets, protocols=protocols, backend=backend)
    assert split == one
    assert len(chunks) == 1 + len(protocols) and all(2 <= len(c) <= 3 for c in chunks)  # by detections, not count
    assert all(sum(c, []) == [1, 2, 3, 4] for c in chunks)
    assert split["per_class"]["truck"]["AP"] is None and split["per_class"]["bus"]["AP"] is None
    chunks.clear()
    monkeypatch.setattr(scoring, "_category_workers", lambda scored, categories: 2)
    monkeypatch.setattr(scoring, "DETECTIONS_PER_CHUNK", 1)  # more runs than workers, as equal as categories allow
    assert evaluate(gt, dets, protocols=protocols, backend=backend) == one
    assert chunks and all(len(c) > 1 and c[0] == [1] and sum(c, []) == [1, 2, 3, 4] for c in chunks)
    for p in protocols:
        ref = reference(gt, dets, p)
        assert {k: split["protocols"][p.name][k] for k in ref} == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("dense", [0, 60, 130])
def test_scored_arrays_are_cocoevals_own_when_caps_exceed_every_pairs_count(backend, dense):
    """Caps at or above the most detections a pair has are evaluated once (dense 0: every AI-TOD cap but 1; 60: 100
    and 1500 at 60; 130: 1500 at 130): every precision and recall entry is pycocotools' own at the protocol's caps."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sodet.eval import scoring
    from sodet.eval.cocoeval import check_detections

    gt, dets = generated_case(5, dense=dense)
    protocol = get_protocols("aitod")[0]
    precision, recall, params = scoring.accumulate(gt, check_detections(gt, dets), 1500, backend, protocol)
    assert params["maxDets"] == [1, 100, 1500]
    ref_gt = json.loads(json.dumps(gt))
    for i, a in enumerate(ref_gt["annotations"], 1):
        a["id"] = i
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = ref_gt
        g.createIndex()
        E = COCOeval(g, g.loadRes(json.loads(json.dumps(dets))), "bbox")
        E.params.areaRng = [[lo, hi] for _, lo, hi in protocol.ranges]
        E.params.areaRngLbl = protocol.range_names
        E.params.iouThrs = np.asarray(protocol.iou_thresholds)
        E.params.maxDets = [1, 100, 1500]
        E.evaluate()
        E.accumulate()
    tolerance = 0 if backend == "pycocotools" else 1e-12  # faster-coco-eval's own divisions differ by an ulp
    np.testing.assert_allclose(precision, E.eval["precision"], rtol=0, atol=tolerance)
    np.testing.assert_allclose(recall, E.eval["recall"], rtol=0, atol=tolerance)


def test_protocols_on_a_real_set():
    gt = json.loads((MINI / "annotations" / "val.json").read_text())
    rng = np.random.default_rng(3)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
             "bbox": [v + float(rng.normal(0, 2)) for v in a["bbox"]]} for a in gt["annotations"]]
    for p in get_protocols("aitod,tinyperson"):
        ours = evaluate(gt, dets, protocols=[p])["protocols"][p.name]
        assert {k: ours[k] for k in reference(gt, dets, p)} == pytest.approx(reference(gt, dets, p), abs=1e-6)


def test_custom_edges_and_bad_values():
    p = custom_protocol([8, 16, 32], names=["vt", "t", "s", "m+"])
    assert [r[0] for r in p.ranges] == ["all", "vt", "t", "s", "m+"] and p.ranges[2][1:] == (64.0, 256.0)
    assert custom_protocol([8, 16]).range_names == ["all", "0-8", "8-16", "16+"]
    for bad in ([16, 8], [0, 8], []):
        with pytest.raises(SodetError, match="--size-edges"):
            custom_protocol(bad)
    with pytest.raises(SodetError, match="--size-names needs 3 names"):
        custom_protocol([8, 16], names=["a"])
    with pytest.raises(SodetError, match="--protocol must be one of"):
        get_protocols("visdrone")


def test_val_scores_a_protocol_end_to_end_up_to_1500_detections(cli, tmp_path):
    """An untrained head at conf 0.001 gives hundreds of boxes per image: the AI-TOD protocol keeps up to 1500 per
    image through the NMS, predictions.json and the scoring, and predictions.json re-scores to the same numbers."""
    import torch

    from sodet.engine.build import build_model
    from sodet.options import RunOptions

    names = {0: "person", 1: "car", 2: "bicycle", 3: "other-vehicle"}
    net = build_model(RunOptions(model="yolox-nano", classes=list(names.values())), 4, names)
    with torch.no_grad():  # every anchor scores about 0.25: far more boxes than 300 survive the NMS
        for conv in (*net.head.cls_preds, *net.head.obj_preds):
            conv.bias.zero_()
    torch.save({"model": net, "train_args": {"imgsz": 320}}, tmp_path / "dense.pt")
    result = cli("val", "--model", tmp_path / "dense.pt", "--data", HIT_MINI, "--imgsz", "320", "--device", "cpu",
                 "--protocol", "aitod", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output + repr(result.exception)
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    preds = json.loads((tmp_path / "v" / "predictions.json").read_text())
    per_image = Counter(p["image_id"] for p in preds)
    assert 300 < max(per_image.values()) <= 1500 and m["options"]["engine"]["max_det"] == 1500
    p = get_protocols("aitod")[0]
    gt = json.loads(Path(m["dataset"]["gt"]).read_text())
    again = reference(gt, preds, p)
    assert {k: m["protocols"]["aitod"][k] for k in again} == pytest.approx(again, abs=1e-6)
    coco = evaluate(gt, preds)  # COCO's 12 numbers stay the top 100 of each image
    assert coco["AP"] == pytest.approx(m["AP"], abs=1e-9) and coco["AR100"] == pytest.approx(m["AR100"], abs=1e-9)


def test_compare_and_data_stats_show_a_protocols_buckets(cli, tmp_path):
    from sodet.data.stats import protocol_counts
    from sodet.eval.compare import compare

    for name, weights in (("a", "none"), ("b", None)):
        args = ["val", "--model", "yolox-nano", "--data", MINI, "--imgsz", "160", "--device", "cpu", "--protocol", "tinyperson",
                "--out", tmp_path / name]
        result = cli(*args, *(["--weights", weights] if weights else []))
        assert result.exit_code == 0, result.output
    c = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "c", protocol="tinyperson")
    assert c.keys[0] == "AP50_tiny" and "AP50_tiny" in (tmp_path / "c" / "compare.md").read_text()
    with pytest.raises(SodetError, match="were not scored with protocol aitod"):
        compare([tmp_path / "a", tmp_path / "b"], protocol="aitod")
    counts = protocol_counts(MINI, "val", get_protocols("aitod")[0])
    gt = json.loads((MINI / "annotations" / "val.json").read_text())
    areas = [a["area"] for a in gt["annotations"] if not a.get("iscrowd")]
    assert counts["all"]["verytiny"] == sum(a <= 64 for a in areas)
    assert counts["all"]["medium"] == sum(a >= 1024 for a in areas)
    result = cli("data", "stats", "--data", MINI, "--split", "val", "--protocol", "aitod", "--out", tmp_path / "h.png")
    assert result.exit_code == 0 and "verytiny" in result.output


def test_a_study_can_take_a_protocol_metric_as_its_primary(tmp_path):
    """The fabricated-study machinery with metrics.json files holding an AI-TOD block: APvt as the primary."""
    from test_study import FakeCli, plan_cells, start

    from sodet.eval.study_report import collect

    gt = tmp_path / "val.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))

    class WithProtocol(FakeCli):
        def __call__(self, args, log):
            code = super().__call__(args, log)
            out = Path(args[args.index("--project") + 1]) / args[args.index("--name") + 1]
            m = json.loads((out / "metrics.json").read_text())
            m["protocols"] = {"aitod": {"APvt": m["AP"] / 2, "per_class": {}}}
            (out / "metrics.json").write_text(json.dumps(m))
            return code

    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,wl-study", seeds=3, protocol="aitod")
    assert "--protocol" in cells[0].command and opts.protocol == "aitod"
    start(study_dir, opts, cells, WithProtocol(gt, {"baseline": [0.1, 0.12, 0.11], "wl-study": [0.2, 0.21, 0.23]}))
    results = collect(study_dir, primary="APvt", resamples=0)
    w = results.setting("wl-study").vs_baseline["APvt"]
    assert w.difference.mean == pytest.approx((0.64 - 0.33) / 3 / 2) and results.primary == "APvt"
    with pytest.raises(SodetError, match="--primary APz"):
        collect(study_dir, primary="APz")


def test_size_metrics_reach_the_engines_tensorboard_logger(tmp_path):
    """One tiny validated epoch with the engine's TensorBoard integration switched on (its own settings, in a
    config folder of this test): APs and the AI-TOD numbers are in the event file, as in results.csv."""
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # the engine mutes loggers under pytest
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "config")
    subprocess.run([sys.executable, "-c", "from ultralytics.utils import SETTINGS; SETTINGS.update(tensorboard=True)"],
                   env=env, check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "sodet.cli", "train", "--data", str(MINI), "--epochs", "1", "--imgsz", "160",
                          "--batch", "16", "--workers", "0", "--device", "cpu", "--protocol", "aitod", "-o", "plots=False",
                          "--project", str(tmp_path), "--name", "tb"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    acc = tb.EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "metrics/mAP_small(B)" in tags and "metrics/aitod_APvt(B)" in tags
    with open(tmp_path / "tb" / "results.csv") as f:
        row = {k.strip(): float(v) for k, v in next(iter(__import__("csv").DictReader(f))).items()}
    logged = acc.Scalars("metrics/mAP_small(B)")[0].value
    assert logged == pytest.approx(row["metrics/mAP_small(B)"], abs=1e-5)
