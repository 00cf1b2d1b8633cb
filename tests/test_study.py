"""sodet study: statistics against scipy, statsmodels and closed forms, the image bootstrap against pycocotools, the
command matrix with its controls and test split, resume after a kill, isolation of failed cells, the report of a
fabricated study, and a real smoke study (baseline, cp and its two controls, 1 seed, 1 epoch)."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HIT_MINI, MINI, REPO

from sodet.errors import SodetError
from sodet.eval import stats
from sodet.eval.cocoeval import METRIC_KEYS
from sodet.eval.metrics_io import write_metrics
from sodet.eval.study import (
    DONE, FAILED, SAME, SKIPPED, check_same_options, plan, read_manifest, run_study, write_manifest,
)
from sodet.eval.study_report import cells_csv, collect, render_report

scipy_stats = pytest.importorskip("scipy.stats")


# statistics --------------------------------------------------------------------------------------------------
def test_mean_ci_and_paired_test_against_closed_forms():
    # Student's t with 2 degrees of freedom has closed forms: quantile (2p-1)/sqrt(2p(1-p)), tail 1 - t/sqrt(t²+2)
    t975_df2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.3027
    ci = stats.mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.half_width == pytest.approx(t975_df2 * 1.0 / math.sqrt(3), rel=1e-12)  # s = 1
    assert (ci.low, ci.high) == pytest.approx((2 - ci.half_width, 2 + ci.half_width))
    # one degree of freedom is the Cauchy distribution: quantile tan(pi (p - 1/2))
    ci = stats.mean_ci([0.0, 2.0])
    assert ci.half_width == pytest.approx(math.tan(math.pi * 0.475) * math.sqrt(2) / math.sqrt(2), rel=1e-12)
    # paired: differences 1, 2, 3 -> t = 2 / (1 / sqrt 3) = 2 sqrt 3, p = 1 - t / sqrt(t² + 2)
    t = 2 * math.sqrt(3)
    assert stats.paired_t_test([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10)
    d = stats.paired_difference([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert (d.mean, d.n) == (2.0, 3) and (d.low, d.high) == pytest.approx((2 - t975_df2 / math.sqrt(3), 2 + t975_df2 / math.sqrt(3)))


def test_statistics_match_scipy():
    rng = random.Random(0)
    for n in (2, 3, 5, 10):
        for _ in range(20):
            a = [rng.uniform(0.05, 0.4) for _ in range(n)]
            b = [x + rng.gauss(0.01, 0.02) for x in a]
            ci = stats.mean_ci(a)
            low, high = scipy_stats.t.interval(0.95, n - 1, loc=sum(a) / n, scale=scipy_stats.sem(a))
            assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-10)
            assert stats.paired_t_test(a, b) == pytest.approx(scipy_stats.ttest_rel(b, a).pvalue, rel=1e-9)


def test_degenerate_cases_and_verdicts():
    assert stats.mean_ci([]) is None
    one = stats.mean_ci([0.3])
    assert one.mean == 0.3 and one.half_width is None and one.low is None
    assert stats.paired_t_test([0.1], [0.2]) is None
    assert stats.paired_t_test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0  # the same runs: nothing to detect
    assert stats.paired_t_test([0.1, 0.2, 0.3], [0.15, 0.25, 0.35]) == 0.0  # every seed moved by the same amount
    with pytest.raises(ValueError):
        stats.paired_t_test([0.1, 0.2], [0.1])
    base = [0.10, 0.12, 0.11, 0.13]
    assert stats.verdict(base, [v + 0.02 + d for v, d in zip(base, [0.001, -0.001, 0.002, 0.0])])[0] == stats.BETTER
    assert stats.verdict(base, [v - 0.02 + d for v, d in zip(base, [0.001, -0.001, 0.002, 0.0])])[0] == stats.WORSE
    word, p = stats.verdict(base, [v + d for v, d in zip(base, [0.01, -0.012, 0.004, -0.003])])
    assert word == stats.NOISE and p > 0.05
    assert stats.verdict([0.1], [0.2]) == (stats.ONE_SEED, None)
    assert stats.verdict([], []) == (stats.NOT_AVAILABLE, None)
    assert stats.relative_change(0.170, 0.219) == pytest.approx(28.82, abs=0.01)
    assert stats.relative_change(0.0, 0.1) is None and stats.relative_change(None, 0.1) is None


def test_holm_by_hand_and_against_statsmodels():
    # by hand: sorted 0.01, 0.02, 0.04 of m=4 (one None) -> 4*0.01, max(0.04, 3*0.02), max(0.06, 2*0.04), max(0.08, 1*0.5)
    assert stats.holm([0.04, None, 0.01, 0.5, 0.02]) == pytest.approx([0.08, None, 0.04, 0.5, 0.06])
    assert stats.holm([]) == [] and stats.holm([None]) == [None]
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1, monotone
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 33)).tolist()
        assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist(), abs=1e-12)


# the image bootstrap -----------------------------------------------------------------------------------------
def bootstrap_case():
    """Real ground truth (the embedded coco-pc-mini val split, polygon areas) and generated detections: jittered
    ground-truth boxes, misses, false positives and tied scores."""
    gt = json.loads((MINI / "annotations" / "val.json").read_text())
    rng = np.random.default_rng(1)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.1, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])], "score": round(float(rng.random()), 2)})
    for im in gt["images"]:
        for _ in range(3):
            dets.append({"image_id": im["id"], "category_id": gt["categories"][int(rng.integers(2))]["id"],
                         "bbox": [float(rng.uniform(0, 300)), float(rng.uniform(0, 300)), 20.0, 20.0], "score": round(float(rng.random()), 2)})
    return gt, dets


def pycocotools_ap(gt: dict, dets: list[dict], area: tuple[float, float]) -> float:
    import contextlib

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = json.loads(json.dumps(gt))
        g.createIndex()
        d = g.loadRes(json.loads(json.dumps(dets))) if dets else COCO()
        E = COCOeval(g, d, "bbox")
        E.params.areaRng, E.params.areaRngLbl = [list(area)], ["range"]
        E.evaluate()
        E.accumulate()
    p = E.eval["precision"][:, :, :, 0, -1]
    return float(p[p > -1].mean())


def test_per_image_evaluation_recomputes_cocos_ap_on_any_resample():
    """AP with image weights equals pycocotools run on a data set holding the drawn images (each copy under its
    own id, copies next to each other), for all objects and for the small ones."""
    from sodet.eval.bootstrap import per_image_eval

    gt, dets = bootstrap_case()
    for area in ((0.0, 1e10), (0.0, 1024.0)):
        pe = per_image_eval(gt, dets, area)
        assert pe.ap() == pytest.approx(pycocotools_ap(gt, dets, area), abs=1e-12)
        ids = pe.image_ids
        rng = np.random.default_rng(2)
        for _ in range(3):
            weights = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
            g2 = {"images": [], "annotations": [], "categories": gt["categories"]}
            d2 = []
            for i, image_id in enumerate(ids):  # copies in image order, copy k of image i gets id i * 100 + k
                for k in range(weights[i]):
                    new = i * 100 + k + 1
                    g2["images"] += [dict(im, id=new) for im in gt["images"] if im["id"] == image_id]
                    g2["annotations"] += [dict(a, image_id=new, id=len(g2["annotations"]) + j + 1)
                                          for j, a in enumerate(x for x in gt["annotations"] if x["image_id"] == image_id)]
                    d2 += [dict(x, image_id=new) for x in dets if x["image_id"] == image_id]
            ref = pycocotools_ap(g2, d2, area)
            assert pe.ap(weights.astype(float)) == pytest.approx(ref, abs=1e-12)
            assert pe.ap_batch(np.stack([weights, np.ones_like(weights)]).astype(float)) == pytest.approx([ref, pe.ap()], abs=1e-12)


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    from sodet.eval.bootstrap import paired_bootstrap, per_image_eval, resample_weights

    gt, dets = bootstrap_case()
    worse = [dict(d, score=d["score"] * 0.5) if d["image_id"] % 2 else d for d in dets]  # scores scrambled across images
    shifted = [dict(d, bbox=[d["bbox"][0] + 3, *d["bbox"][1:]]) for d in dets]  # boxes off by 3 px: lower AP
    base = [per_image_eval(gt, dets), per_image_eval(gt, worse)]
    other = [per_image_eval(gt, shifted), per_image_eval(gt, shifted)]
    a = paired_bootstrap(base, other, resamples=1000, seed=3)
    b = paired_bootstrap(base, other, resamples=1000, seed=3)
    assert (a.low, a.high) == (b.low, b.high) and a.resamples == 1000
    assert a.difference == pytest.approx(np.mean([o.ap() - x.ap() for x, o in zip(base, other)]))
    assert a.low < a.difference < a.high and a.high < 0  # a clear loss stays a loss on other images
    # the batched resamples are the per-resample definition: COCO AP of each run with image i counted w_i times
    weights = resample_weights(len(base[0].image_ids), 1000, 3)
    diffs = [np.mean([o.ap(w) - x.ap(w) for x, o in zip(base, other)]) for w in weights]
    assert (a.low, a.high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    same = paired_bootstrap(base, base, resamples=200)
    assert same.difference == 0 and same.low == 0 and same.high == 0


# the matrix --------------------------------------------------------------------------------------------------
def dry_run(cli, tmp_path, *args) -> dict[str, list[list[str]]]:
    result = cli("study", "--dry-run", "--project", tmp_path / "runs", *args)
    assert result.exit_code == 0, result.output
    cells, key = {}, None
    for line in result.output.strip().splitlines():
        if line.startswith("# "):
            key = line
            cells[key] = []
        elif key and line.startswith("sodet "):
            cells[key].append(line.split())
    return cells


def test_dry_run_prints_the_matrix_with_controls_and_writes_nothing(cli, tmp_path):
    cells = dry_run(cli, tmp_path, "--seeds", "2", "--epochs", "3", "-o", "fraction=0.5", "-o", "plots=True")
    assert not (tmp_path / "runs").exists()
    names = [header.split()[1] for header in cells]
    settings = ["baseline", "cp", "cp-nopaste", "baseline-matched", "wl-study", "wl-scale", "teacher", "teacher-cp",
                "teacher-long", "cwd1", "cwd2", "cwd3", "cwd-long", "cwd-long-w25", "sf", "slice-val", "sf+slice-val", "nwd",
                "p2", "cp+sf", "cp+nwd", "all"]
    # seed by seed, teachers before CWD; the 3x teacher is trained once (seed 0) for every seed
    assert names == [f"{s}/seed{k}" for k in (0, 1) for s in settings if k == 0 or s != "teacher-long"]
    commands = {header.split()[1]: cmds[0] if cmds else None for header, cmds in cells.items()}
    headers = {header.split()[1]: header for header in cells}
    study = tmp_path / "runs" / "yolox-nano-hit-uav-mini-smoke"
    base = commands["baseline/seed1"]
    assert base[:2] == ["sodet", "train"] and "--copy-paste" not in base and "distill" not in base
    assert base[base.index("--seed") + 1] == "1" and base[base.index("--epochs") + 1] == "3"  # --epochs beats the profile
    assert base[base.index("--project") + 1] == str(study / "baseline") and base[base.index("--name") + 1] == "seed1"
    overrides = [base[i + 1] for i, a in enumerate(base) if a == "-o"]
    assert overrides == ["val=True", "plots=True", "warmup_epochs=0", "fraction=0.5"]  # the baseline validates per epoch
    assert "--copy-paste" in commands["cp/seed0"] and "--paste-copies" not in commands["cp/seed0"]
    nopaste = " ".join(commands["cp-nopaste/seed0"])
    assert "--copy-paste --paste-copies 0" in nopaste and "--oversample-pool" not in nopaste
    assert "--copy-paste --paste-copies 0 --oversample-pool all" in " ".join(commands["baseline-matched/seed0"])
    teacher_long = commands["teacher-long/seed0"]
    assert teacher_long[teacher_long.index("--epochs") + 1] == "9"  # epochs_scale 3
    w25 = commands["cwd-long-w25/seed1"]
    assert w25[1] == "distill" and w25[w25.index("--cwd-weight") + 1] == "25"
    assert w25[w25.index("--teacher") + 1] == str(study / "teacher-long" / "seed0" / "weights" / "last.pt")
    assert commands["p2/seed0"][commands["p2/seed0"].index("--model") + 1] == "yolox-nano-p2"
    assert "--crop-train 256,512" in " ".join(commands["sf/seed0"]) and "--box-loss iou+nwd" in " ".join(commands["nwd/seed0"])
    assert headers["slice-val/seed0"].endswith("(trained as baseline/seed0, scored its own way)")
    sliced = cells[headers["slice-val/seed0"]][1]  # scored on the baseline's weights, sliced, in a folder of its own
    assert sliced[sliced.index("--model") + 1] == str(study / "baseline" / "seed0" / "weights" / "last.pt")
    assert "--slice 320" in " ".join(sliced) and sliced[sliced.index("--out") + 1] == str(study / "baseline" / "seed0" / "test-slice-val")
    # a teacher identical to the student is the baseline run (validating every epoch does not change its weights)
    assert headers["teacher/seed1"].endswith("(same run as baseline/seed1)")
    assert headers["teacher-cp/seed0"].endswith("(same run as cp/seed0)")
    teacher_of = {k: c[c.index("--teacher") + 1] for k, c in commands.items() if c and c[1] == "distill"}
    assert teacher_of["cwd1/seed1"] == str(study / "baseline" / "seed1" / "weights" / "last.pt")
    assert teacher_of["cwd2/seed0"] == str(study / "cp" / "seed0" / "weights" / "last.pt")
    # the embedded set has no test split: no scoring step, but for the settings scored their own way (sliced)
    assert {h.split()[1].split("/")[0] for h, c in cells.items() if len(c) > 1} == {"slice-val", "sf+slice-val"}


def test_test_split_scores_each_cell_on_it(cli, tmp_path):
    data = tmp_path / "hit"
    import shutil

    shutil.copytree(HIT_MINI, data, ignore=shutil.ignore_patterns(".sodet"))
    shutil.copy(data / "annotations" / "val.json", data / "annotations" / "test.json")
    shutil.copytree(data / "images" / "val", data / "images" / "test")
    cells = dry_run(cli, tmp_path, "--data", data, "--only", "baseline")
    (train, score), = cells.values()
    assert score[:2] == ["sodet", "val"] and score[score.index("--split") + 1] == "test"
    run = Path(train[train.index("--project") + 1]) / train[train.index("--name") + 1]
    assert score[score.index("--model") + 1] == str(run / "weights" / "last.pt")
    assert score[score.index("--out") + 1] == str(run / "test")
    assert len(next(iter(dry_run(cli, tmp_path, "--data", data, "--only", "baseline", "--test-split", "none").values()))) == 1
    result = cli("study", "--dry-run", "--data", str(data), "--test-split", "holdout")
    assert result.exit_code != 0 and "has no such split" in str(result.exception)


def test_only_adds_the_teacher_and_bad_options_are_refused(cli, tmp_path):
    cells = dry_run(cli, tmp_path, "--only", "baseline,cwd3", "--teacher", "yolox-tiny", "--name", "t")
    commands = {header.split()[1]: c[0] for header, c in cells.items()}
    assert list(commands) == ["baseline/seed0", "teacher/seed0", "cwd3/seed0"]
    teacher = commands["teacher/seed0"]
    assert teacher[teacher.index("--model") + 1] == "yolox-tiny"
    output = cli("study", "--dry-run", "--only", "cwd3", "--project", tmp_path).output
    assert "note: added teacher: the distillation settings asked for need their teacher runs" in output
    result = cli("study", "--dry-run", "--only", "baseline,nope")
    assert result.exit_code != 0 and "unknown setting nope" in str(result.exception or result.output)
    with pytest.raises(SodetError, match="--seeds must be at least 1"):
        plan_cells(tmp_path, seeds=0)
    with pytest.raises(SodetError, match="--epochs must be a positive integer, got 0"):
        plan_cells(tmp_path, epochs=0)
    with pytest.raises(SodetError, match="unknown model 'nope'"):
        plan_cells(tmp_path, teacher="nope")
    for override, message in [("foo=1", "not an engine argument"), ("classes=1", "use --classes")]:
        result = cli("study", "--dry-run", "-o", override)
        assert result.exit_code != 0 and message in str(result.exception)


def test_profiles_are_data(tmp_path):
    with pytest.raises(SodetError, match="names no data"):
        plan_cells(tmp_path, profile="cpu")
    _, opts, _, seeds, _, _ = plan_cells(tmp_path, profile="cpu", data=str(HIT_MINI))
    assert (opts.epochs, opts.imgsz, opts.batch, len(seeds)) == (5, 416, 16, 5) and opts.overrides["fraction"] == 0.3
    _, opts, _, seeds, _, _ = plan_cells(tmp_path, profile="gpu", data=str(HIT_MINI))
    assert len(seeds) == 5
    with pytest.raises(SodetError, match="unknown study profile"):
        plan_cells(tmp_path, profile="huge")


# running: resume and failures --------------------------------------------------------------------------------
def plan_cells(tmp_path, **kw):
    args = dict(student="yolox-nano", teacher=None, student_weights=None, teacher_weights=None, data=None,
                classes=None, seeds=None, profile="smoke", only=None, project=str(tmp_path / "runs"), name="s")
    args.update(kw)
    return plan(**args)


def fake_metrics(run_dir: Path, gt: Path, value: float, predictions=()) -> None:
    numbers = {k: value for k in METRIC_KEYS}
    numbers["APl"] = None  # a bucket without ground truth
    write_metrics(run_dir, numbers, options={}, dataset={"gt": str(gt), "split": "val", "classes": ["car"], "num_images": 3},
                  speed=None, predictions=list(predictions))


class FakeCli:
    """Stands in for ``python -m sodet.cli``: a train command writes metrics.json and training.json where its run
    would (value by setting and seed; samples per epoch by setting), a val command writes metrics.json at --out;
    the settings in ``fail`` fail."""

    def __init__(self, gt: Path, values=None, fail=(), samples=None):
        self.gt, self.values, self.fail, self.calls, self.samples = gt, values or {}, set(fail), [], samples or {}

    def __call__(self, args: list[str], log: Path) -> int:
        if args[0] == "val":
            out = Path(args[args.index("--out") + 1])
            setting, seed = out.parent.parent.name, int(out.parent.name[4:])
        else:
            out = Path(args[args.index("--project") + 1]) / args[args.index("--name") + 1]
            setting, seed = out.parent.name, int(out.name[4:])
        self.calls.append(f"{setting}/seed{seed}" + ("" if args[0] != "val" else ":val"))
        log.parent.mkdir(parents=True, exist_ok=True)
        if setting in self.fail:
            log.write_text("starting\nerror: boom in " + setting + "\n")
            return 1
        log.write_text("ok\n")
        fake_metrics(out, self.gt, self.values.get(setting, [0.1, 0.2, 0.3])[seed])
        if args[0] != "val":
            (out / "weights").mkdir(exist_ok=True)
            (out / "weights" / "last.pt").write_bytes(b"")
            n = self.samples.get(setting, 64)
            (out / "training.json").write_text(json.dumps({
                "epochs_done": 1, "epochs": 1, "epoch_samples": n, "sample_stream": f"{n}:x", "images_seen": n,
                "optimizer_steps": n // 8, "batch": 8, "seed": seed}))
        return 0


@pytest.fixture
def gt(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    return path


def start(study_dir: Path, opts, cells, runner) -> dict:
    study_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(study_dir) or {}
    manifest.update(options=opts.to_dict(), settings=sorted({c.setting.name for c in cells}, key=[c.setting.name for c in cells].index),
                    seeds=sorted({c.seed for c in cells}))
    write_manifest(study_dir, manifest)
    run_study(study_dir, cells, manifest, runner=runner, echo=lambda s: None)
    return read_manifest(study_dir)


def test_finished_cells_are_not_rerun_and_killed_ones_restart(tmp_path, gt):
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,cp,wl-study", seeds=2)
    fake_metrics(study_dir / "baseline" / "seed0", gt, 0.5)  # finished before the kill
    partial = study_dir / "cp" / "seed0"
    partial.mkdir(parents=True)
    (partial / "results.csv").write_text("epoch,time\n1,3.0\n")  # killed mid-run: no metrics.json
    runner = FakeCli(gt)
    manifest = start(study_dir, opts, cells, runner)
    assert runner.calls == ["cp/seed0", "wl-study/seed0", "baseline/seed1", "cp/seed1", "wl-study/seed1"]
    assert not (partial / "results.csv").exists()  # the killed run started afresh
    assert all(manifest["cells"][c.key]["status"] == DONE for c in cells)
    assert json.loads((study_dir / "baseline" / "seed0" / "metrics.json").read_text())["AP"] == 0.5  # untouched
    record = manifest["cells"]["cp/seed1"]
    assert record["started"] <= record["ended"] and "git_commit" in record

    runner = FakeCli(gt)
    start(study_dir, opts, cells, runner)  # everything finished: nothing runs
    assert runner.calls == []

    changed = plan_cells(tmp_path, only="baseline", epochs=5)[1]
    with pytest.raises(SodetError, match=r"other options \(epochs 1 -> 5\)"):
        check_same_options(read_manifest(study_dir), changed, study_dir)


def test_a_trained_cell_killed_while_scoring_is_only_scored(tmp_path, gt):
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline")
    for c in cells:
        c.eval_command = ["val", "--model", str(c.dir / "weights" / "last.pt"), "--out", str(c.dir / "test")]
    fake_metrics(study_dir / "baseline" / "seed0", gt, 0.4)  # trained; its test scoring never finished
    runner = FakeCli(gt)
    manifest = start(study_dir, opts, cells, runner)
    assert runner.calls == ["baseline/seed0:val"] and manifest["cells"]["baseline/seed0"]["status"] == DONE


def test_a_cell_that_only_scores_another_cells_weights_has_its_start_and_commit(tmp_path, gt):
    """slice-val trains nothing (the baseline's weights, scored sliced): its row in the report and in cells.csv
    gives the start and the commit of its scoring."""
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,slice-val", seeds=1)
    study_dir.mkdir(parents=True)
    write_manifest(study_dir, {"provenance": {"git_commit": "0123456789abcdef"}})
    manifest = start(study_dir, opts, cells, FakeCli(gt))
    record = manifest["cells"]["slice-val/seed0"]
    assert record["trained_as"] == "baseline/seed0" and "started" not in record and record["eval_started"]
    assert record["eval_git_commit"] == "0123456789abcdef" and "git_commit" not in record
    results = collect(study_dir, resamples=0)
    row = next(r for r in cells_csv(results).splitlines() if r.startswith("slice-val,0,"))
    assert f",0123456789abcdef,{record['eval_started']},{record['eval_ended']}," in row
    report = render_report(study_dir, resamples=0)[0].read_text()
    line = next(x for x in report.splitlines() if x.startswith("| slice-val/seed0 |"))
    assert f"| {record['eval_started']} | {record['eval_ended']} | 0123456789 |" in line


def test_a_failed_cell_is_reported_and_the_rest_go_on(tmp_path, gt):
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,cp,wl-study,cwd1,cwd2")
    runner = FakeCli(gt, fail={"baseline"})
    manifest = start(study_dir, opts, cells, runner)
    status = {k: v["status"] for k, v in manifest["cells"].items()}
    # teacher = baseline run (failed), so CWD I is skipped; CWD II's teacher is the cp run, which finished
    assert status == {"baseline/seed0": FAILED, "cp/seed0": DONE, "wl-study/seed0": DONE, "teacher/seed0": FAILED,
                      "teacher-cp/seed0": SAME, "cwd1/seed0": SKIPPED, "cwd2/seed0": DONE}
    assert manifest["cells"]["baseline/seed0"]["error"] == "error: boom in baseline"
    assert manifest["cells"]["baseline/seed0"]["returncode"] == 1
    assert "teacher/seed0 did not finish" in manifest["cells"]["cwd1/seed0"]["error"]
    assert runner.calls == ["baseline/seed0", "cp/seed0", "wl-study/seed0", "cwd2/seed0"]
    assert (study_dir / "teacher-cp" / "seed0").is_symlink()  # the identical run, linked
    assert (study_dir / "teacher-cp" / "seed0" / "weights" / "last.pt").is_file()
    report = render_report(study_dir, resamples=0)[0].read_text()
    assert "| baseline/seed0 | failed |" in report and "error: boom in baseline" in report
    assert "same run as baseline/seed0" in report and "No finished baseline run" in report
    runner = FakeCli(gt)  # resumed: the failed cells run again, CWD I now has its teacher
    manifest = start(study_dir, opts, cells, runner)
    assert runner.calls == ["baseline/seed0", "cwd1/seed0"]
    assert all(v["status"] in {DONE, SAME} for v in manifest["cells"].values())


# the report of a fabricated study ----------------------------------------------------------------------------
def test_report_of_a_fabricated_study_renders_the_expected_verdicts(tmp_path, gt):
    """Known cell values: cp clearly better than the baseline but not than its paste-free control (same stream),
    wl-study clearly worse, wl-scale within noise; Holm across settings; paired where streams agree."""
    base = [0.10, 0.12, 0.11, 0.13, 0.12]
    jitter = [0.001, -0.001, 0.0005, 0.0, -0.0005]
    values = {
        "baseline": base,
        "cp": [v + 0.05 + d for v, d in zip(base, jitter)],
        "cp-nopaste": [v + 0.05 - d for v, d in zip(base, jitter)],
        "baseline-matched": [v + 0.01 + 2 * d for v, d in zip(base, jitter)],
        "wl-study": [v - 0.03 + d for v, d in zip(base, jitter)],
        "wl-scale": [v + d for v, d in zip(base, [0.01, -0.012, 0.004, -0.003, 0.001])],
    }
    samples = {"cp": 110, "cp-nopaste": 110, "baseline-matched": 110}  # the others: the baseline's 64
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only=",".join(values), seeds=5)
    start(study_dir, opts, cells, FakeCli(gt, values, samples=samples))
    results = collect(study_dir, resamples=0)
    assert results.primary == "APs"
    cp, wl, scale = results.setting("cp"), results.setting("wl-study"), results.setting("wl-scale")
    assert cp.paired is False and wl.paired is True  # cp's epoch holds 110 samples, the baseline's 64
    c = cp.vs_baseline["APs"]
    welch = scipy_stats.ttest_ind(values["cp"], base, equal_var=False)
    assert c.test.startswith("Welch") and c.p == pytest.approx(welch.pvalue)
    w = wl.vs_baseline["APs"]
    assert w.test.startswith("paired") and w.p == pytest.approx(scipy_stats.ttest_rel(values["wl-study"], base).pvalue)
    primary = [results.setting(n).vs_baseline["APs"] for n in ("cp", "cp-nopaste", "baseline-matched", "wl-study", "wl-scale")]
    assert [x.p_holm for x in primary] == pytest.approx(stats.holm([x.p for x in primary]))
    assert (c.verdict, w.verdict, scale.vs_baseline["APs"].verdict) == ("better", "worse", "within noise")
    controls = {(m, ctl): x for m, ctl, x in results.controls}
    assert set(controls) == {("cp", "cp-nopaste"), ("cp", "baseline-matched")}
    vs_nopaste = controls[("cp", "cp-nopaste")]
    assert vs_nopaste.test.startswith("paired") and vs_nopaste.verdict == "within noise"  # the paste adds nothing
    assert vs_nopaste.difference.mean == pytest.approx(0.0, abs=1e-12)

    files = render_report(study_dir, resamples=0)
    assert [f.name for f in files] == ["report.md", "report.csv", "cells.csv", "all.png", "small.png", "medium.png", "large.png"]
    md = files[0].read_text()
    assert "**Primary metric: APs**" in md and "Secondary metrics vs the baseline" in md
    assert "| cp vs cp-nopaste | +0.0000 |" in md and "**within noise** |" in md
    primary_section = md.split("## Primary: APs vs the baseline")[1].split("## ")[0]
    row = next(line for line in primary_section.splitlines() if line.startswith("| cp | "))
    assert f"| {c.difference.mean:+.4f} | [{c.difference.low:+.4f}, {c.difference.high:+.4f}] |" in row and "**better**" in row
    assert "| cp | copy-paste |  | no | 1 | 110 | 13 |" in md  # compute per setting
    # the reference study's rows only beside matching treatments: copy-paste yes, self-taught CWD never
    assert "| cp | reference study (single run, COCO person+car) | 0.322 (-1.5%) | 0.168 (+2.4%) |" in md
    assert "| cwd1 | reference" not in md and "| teacher | reference" not in md
    rows = list(csv.DictReader(io.StringIO(files[1].read_text())))
    r = next(r for r in rows if r["setting"] == "cp" and r["metric"] == "APs")
    assert r["role"] == "primary" and r["verdict"] == "better" and float(r["p_holm"]) == pytest.approx(c.p_holm, rel=1e-4)
    assert {x["role"] for x in rows if x["setting"] == "cp" and x["metric"] != "APs"} == {"secondary"}


# a real smoke study ------------------------------------------------------------------------------------------
def test_smoke_study_with_controls_runs_and_resumes(tmp_path):
    """The baseline, copy-paste and its two controls, one seed, one epoch at 160 px on the embedded HIT-UAV
    subset: real runs, a real report, resumed without re-running."""
    cmd = [sys.executable, "-m", "sodet.cli", "study", "--only", "baseline,cp,cp-nopaste,baseline-matched",
           "--project", str(tmp_path), "--name", "smoke"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study_dir = tmp_path / "smoke"
    manifest = read_manifest(study_dir)
    assert {v["status"] for v in manifest["cells"].values()} == {DONE}
    assert manifest["command"].startswith("sodet study --only baseline,cp,cp-nopaste,baseline-matched")
    assert len(manifest["provenance"]["git_commit"]) >= 7 and manifest["provenance"]["versions"]["ultralytics"] == "8.4.190"
    training = {s: json.loads((study_dir / s / "seed0" / "training.json").read_text())
                for s in ("baseline", "cp", "cp-nopaste", "baseline-matched")}
    assert training["cp"]["sample_stream"] == training["cp-nopaste"]["sample_stream"]  # the same extra samples
    assert training["cp"]["epoch_samples"] == training["baseline-matched"]["epoch_samples"] > training["baseline"]["epoch_samples"]
    assert training["cp"]["sample_stream"] != training["baseline-matched"]["sample_stream"]  # from all images
    metrics = json.loads((study_dir / "cp" / "seed0" / "metrics.json").read_text())
    md = (study_dir / "report.md").read_text()
    assert f"| cp | 1 | {metrics['AP']:.3f} | {metrics['APs']:.3f} |" in md
    assert "cp vs cp-nopaste" in md and "n/a (1 seed)" in md and (study_dir / "small.png").is_file()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished before, not re-run") == 4
