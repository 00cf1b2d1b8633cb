"""sodet study: statistics against scipy and closed forms, the command matrix, resume after a kill, isolation of
failed cells, the report rendered from faked runs, and a real smoke study (2 settings, 1 seed, 1 epoch)."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sodet.cli import app
from sodet.errors import SodetError
from sodet.eval import stats
from sodet.eval.cocoeval import METRIC_KEYS
from sodet.eval.compare import COMPARE_KEYS
from sodet.eval.metrics_io import write_metrics
from sodet.eval.study import (
    DONE, FAILED, SAME, SKIPPED, check_same_options, plan, read_manifest, run_study, write_manifest,
)
from sodet.eval.study_report import collect, render_report

REPO = Path(__file__).resolve().parents[1]
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
    assert stats.paired_t_test([5.0, 1.0, 7.0], [6.0, 3.0, 10.0]) == pytest.approx(0.0741799, abs=1e-7)  # same differences


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


# the matrix --------------------------------------------------------------------------------------------------
def dry_run(tmp_path, *args) -> list[tuple[str, str]]:
    result = CliRunner().invoke(app, ["study", "--dry-run", "--project", str(tmp_path / "runs"), *args])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    return [(lines[i], lines[i + 1]) for i in range(len(lines) - 1) if lines[i].startswith("# ")]


def test_dry_run_prints_the_matrix_and_writes_nothing(tmp_path):
    cells = dry_run(tmp_path, "--seeds", "2", "--epochs", "3", "-o", "fraction=0.5", "-o", "plots=True")
    assert not (tmp_path / "runs").exists()
    names = [header.split()[1] for header, _ in cells]
    settings = ["baseline", "cp", "wl-study", "wl-scale", "teacher", "teacher-cp", "cwd1", "cwd2", "cwd3", "all"]
    assert names == [f"{s}/seed{k}" for k in (0, 1) for s in settings]  # seed by seed, teachers before CWD
    commands = {header.split()[1]: cmd.split() for header, cmd in cells}
    study = tmp_path / "runs" / "yolox-nano-hit-uav-mini-smoke"
    base = commands["baseline/seed1"]
    assert base[:2] == ["sodet", "train"] and "--copy-paste" not in base and "distill" not in base
    assert base[base.index("--seed") + 1] == "1" and base[base.index("--epochs") + 1] == "3"  # --epochs beats the profile
    assert base[base.index("--project") + 1] == str(study / "baseline") and base[base.index("--name") + 1] == "seed1"
    assert "--exist-ok" in base and base[base.index("--imgsz") + 1] == "160"  # the smoke profile's size
    overrides = [base[i + 1] for i, a in enumerate(base) if a == "-o"]
    assert overrides == ["val=False", "plots=True", "warmup_epochs=0", "fraction=0.5"]  # -o replaces and adds
    assert "--copy-paste" in commands["cp/seed0"]
    wl = commands["wl-study/seed0"]
    assert wl[wl.index("--weighted-loss") + 1] == "0.95" and wl[wl.index("--weight-form") + 1] == "study"
    wl = commands["wl-scale/seed0"]
    assert wl[wl.index("--weighted-loss") + 1] == "2" and wl[wl.index("--weight-form") + 1] == "scale"
    # a teacher identical to the student is the baseline run: not trained twice, CWD uses the baseline's weights
    headers = dict((header.split()[1], header) for header, _ in cells)
    assert headers["teacher/seed1"].endswith("(same run as baseline/seed1)")
    assert headers["teacher-cp/seed0"].endswith("(same run as cp/seed0)")
    teacher_of = {k: c[c.index("--teacher") + 1] for k, c in commands.items() if c[1] == "distill"}
    assert teacher_of == {
        f"{s}/seed{k}": str(study / t / f"seed{k}" / "weights" / "best.pt")
        for k in (0, 1) for s, t in [("cwd1", "baseline"), ("cwd2", "cp"), ("cwd3", "baseline"), ("all", "baseline")]
    }
    assert "--copy-paste" not in commands["cwd1/seed0"] and "--copy-paste" in commands["cwd2/seed0"]
    assert "--copy-paste" in commands["cwd3/seed0"]
    everything = commands["all/seed0"]
    assert "--copy-paste" in everything and everything[everything.index("--weighted-loss") + 1] == "0.95"


def test_only_adds_the_teacher_and_a_real_teacher_gets_its_own_runs(tmp_path):
    cells = dry_run(tmp_path, "--only", "baseline,cwd3", "--teacher", "yolox-tiny", "--name", "t")
    commands = {header.split()[1]: cmd.split() for header, cmd in cells}
    assert list(commands) == ["baseline/seed0", "teacher/seed0", "cwd3/seed0"]
    teacher = commands["teacher/seed0"]
    assert teacher[teacher.index("--model") + 1] == "yolox-tiny"
    cwd = commands["cwd3/seed0"]
    assert cwd[cwd.index("--teacher") + 1] == str(tmp_path / "runs" / "t" / "teacher" / "seed0" / "weights" / "best.pt")
    assert cwd[cwd.index("--model") + 1] == "yolox-nano"
    output = CliRunner().invoke(app, ["study", "--dry-run", "--only", "cwd3", "--project", str(tmp_path)]).output
    assert "note: added teacher: the distillation settings asked for need their teacher runs" in output

    result = CliRunner().invoke(app, ["study", "--dry-run", "--only", "baseline,nope"])
    assert result.exit_code != 0 and "unknown setting nope" in str(result.exception or result.output)


def test_profiles_are_data_and_need_data_where_they_name_none(tmp_path):
    with pytest.raises(SodetError, match="pass --data"):
        plan_cells(tmp_path, profile="cpu")
    study_dir, opts, _, seeds, cells, _ = plan_cells(tmp_path, profile="cpu", data=str(REPO / "datasets" / "hit-uav-mini"))
    assert (opts.epochs, opts.imgsz, opts.batch, seeds) == (2, 416, 16, [0, 1, 2])
    assert opts.overrides["fraction"] == 0.7 and opts.overrides["val"] is False
    with pytest.raises(SodetError, match="unknown study profile"):
        plan_cells(tmp_path, profile="huge")
    with pytest.raises(SodetError, match="--seeds must be at least 1"):
        plan_cells(tmp_path, seeds=0)
    with pytest.raises(SodetError, match="--epochs must be a positive integer, got 0"):
        plan_cells(tmp_path, epochs=0)
    with pytest.raises(SodetError, match="unknown model 'nope'"):
        plan_cells(tmp_path, teacher="nope")
    for override, message in [("foo=1", "not an engine argument"), ("classes=1", "use --classes")]:
        result = CliRunner().invoke(app, ["study", "--dry-run", "-o", override])
        assert result.exit_code != 0 and message in str(result.exception)


# running: resume and failures --------------------------------------------------------------------------------
def plan_cells(tmp_path, **kw):
    args = dict(student="yolox-nano", teacher=None, student_weights=None, teacher_weights=None, data=None,
                classes=None, seeds=None, profile="smoke", only=None, project=str(tmp_path / "runs"), name="s")
    args.update(kw)
    return plan(**args)


def fake_metrics(run_dir: Path, gt: Path, value: float) -> None:
    numbers = {k: value for k in METRIC_KEYS}
    numbers["APl"] = None  # a bucket without ground truth
    write_metrics(run_dir, numbers, options={}, dataset={"gt": str(gt), "split": "val", "classes": ["car"], "num_images": 3},
                  speed=None, predictions=[])


class FakeCli:
    """Stands in for ``python -m sodet.cli``: writes metrics.json where the command's run would (value by
    setting and seed), or fails for the settings named in ``fail``."""

    def __init__(self, gt: Path, values=None, fail=()):
        self.gt, self.values, self.fail, self.calls = gt, values or {}, set(fail), []

    def __call__(self, args: list[str], log: Path) -> int:
        run_dir = Path(args[args.index("--project") + 1]) / args[args.index("--name") + 1]
        setting, seed = run_dir.parent.name, int(run_dir.name[4:])
        self.calls.append(f"{setting}/seed{seed}")
        log.parent.mkdir(parents=True, exist_ok=True)
        if setting in self.fail:
            log.write_text("starting\nerror: boom in " + setting + "\n")
            return 1
        log.write_text("ok\n")
        fake_metrics(run_dir, self.gt, self.values.get(setting, [0.1, 0.2, 0.3])[seed])
        (run_dir / "weights").mkdir(exist_ok=True)
        (run_dir / "weights" / "best.pt").write_bytes(b"")
        return 0


@pytest.fixture
def gt(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    return path


def start(study_dir: Path, opts, cells, runner, can_distill=True) -> dict:
    study_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(study_dir) or {}
    manifest.update(options=opts.to_dict(), settings=sorted({c.setting.name for c in cells}, key=[c.setting.name for c in cells].index),
                    seeds=sorted({c.seed for c in cells}))
    write_manifest(study_dir, manifest)
    run_study(study_dir, cells, manifest, can_distill=can_distill, runner=runner, echo=lambda s: None)
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

    runner = FakeCli(gt)
    start(study_dir, opts, cells, runner)  # everything finished: nothing runs
    assert runner.calls == []

    changed = plan_cells(tmp_path, only="baseline", epochs=5)[1]
    with pytest.raises(SodetError, match=r"other options \(epochs 1 -> 5\)"):
        check_same_options(read_manifest(study_dir), changed, study_dir)


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
    assert (study_dir / "teacher-cp" / "seed0" / "weights" / "best.pt").is_file()

    report = render_report(study_dir)[0].read_text()
    assert "| baseline/seed0 | failed | 0 s | error: boom in baseline |" in report  # time to the failure
    assert "| teacher/seed0 | failed | n/a | same run as baseline/seed0 |" in report
    assert "No finished baseline run" in report

    runner = FakeCli(gt)  # resumed: the failed cells run again, CWD I now has its teacher
    manifest = start(study_dir, opts, cells, runner)
    assert runner.calls == ["baseline/seed0", "cwd1/seed0"]
    assert all(v["status"] in {DONE, SAME} for v in manifest["cells"].values())

    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="cwd1", name="nodistill")
    manifest = start(study_dir, opts, cells, FakeCli(gt), can_distill=False)
    assert manifest["cells"]["cwd1/seed0"] == {**manifest["cells"]["cwd1/seed0"], "status": SKIPPED,
                                              "error": "this sodet has no distill command"}


# report ------------------------------------------------------------------------------------------------------
def test_report_from_faked_runs(tmp_path, gt):
    base = [0.10, 0.12, 0.11]
    values = {
        "baseline": base,
        "cp": [v + 0.02 + d for v, d in zip(base, [0.001, -0.001, 0.0005])],  # better
        "wl-study": [v - 0.03 + d for v, d in zip(base, [0.001, -0.001, 0.0005])],  # worse
        "wl-scale": [v + d for v, d in zip(base, [0.01, -0.012, 0.004])],  # within noise
    }
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,cp,wl-study,wl-scale,cwd1", seeds=3)
    start(study_dir, opts, cells, FakeCli(gt, values))
    manifest = read_manifest(study_dir)
    manifest["cells"]["cp/seed2"]["seconds"] = 200.0
    manifest["cells"]["cp/seed0"]["seconds"] = manifest["cells"]["cp/seed1"]["seconds"] = 50.0
    write_manifest(study_dir, manifest)

    files = render_report(study_dir)
    assert [f.name for f in files] == ["report.md", "report.csv", "cells.csv", "all.png", "small.png", "medium.png", "large.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files[3:])

    results = collect(study_dir)
    cp = results.setting("cp")
    ci = stats.mean_ci(values["cp"])
    assert cp.stats["APs"].mean == pytest.approx(ci.mean) and cp.stats["APs"].half_width == pytest.approx(ci.half_width)
    assert cp.seconds == pytest.approx(100.0)
    p = scipy_stats.ttest_rel(values["cp"], base).pvalue
    assert cp.verdict["APs"] == ("better", pytest.approx(p))

    md = files[0].read_text()
    mean, half = sum(values["cp"]) / 3, ci.half_width
    assert f"| cp | 3 | {mean:.3f} ± {half:.3f} |" in md
    assert "| 100 s |" in md.split("| cp | 3 |")[1].splitlines()[0] + "|"
    assert f"| cp | +{(mean / (sum(base) / 3) - 1) * 100:.1f}% better (p {p:.2g}) |" in md
    changes = md.split("## Change vs baseline")[1].split("##")[0]
    row = {line.split(" | ")[0][2:]: line for line in changes.splitlines() if line.startswith("| ")}
    assert row["wl-study"].count(" worse (p ") == 7 and row["wl-scale"].count(" within noise (p ") == 7
    assert row["cp"].count(" better (p ") == 7 and "| n/a |" in row["cp"]  # 7 numbers and the empty bucket
    assert "paired t-test over seeds (two-sided)" in md
    assert f"{mean:.3f} ± {half:.3f} | n/a | {mean:.3f} ± {half:.3f}" in md  # APl: no ground truth, n/a not 0
    # the reference study's own numbers (YOLOX rows) beside ours, labelled as theirs
    assert "| baseline | reference study (single run, COCO person+car) | 0.327 | 0.164 |" in md
    assert "| cp | reference study (single run, COCO person+car) | 0.322 (-1.5%) | 0.168 (+2.4%) |" in md
    assert "| cwd1 | reference study" not in md  # their YOLOX CWD's data setting is not stated: not matched
    assert "| teacher | 3 |" in md and "(the baseline runs)" in md  # self-distillation teacher = baseline run
    assert "same runs as baseline" in md

    rows = list(csv.DictReader(io.StringIO(files[1].read_text())))
    row = next(r for r in rows if r["setting"] == "cp" and r["metric"] == "APs")
    assert float(row["ci95_low"]) == pytest.approx(ci.low, abs=1e-6) and row["verdict"] == "better"
    assert float(row["p_value"]) == pytest.approx(p, rel=1e-4) and float(row["reference_value"]) == 0.168
    assert {r["metric"] for r in rows} == set(COMPARE_KEYS)
    cells_rows = list(csv.DictReader(io.StringIO(files[2].read_text())))
    assert len(cells_rows) == 18 and {r["status"] for r in cells_rows} == {DONE, SAME}


# a real smoke study ------------------------------------------------------------------------------------------
def test_smoke_study_runs_and_resumes(tmp_path):
    """Two settings, one seed, one epoch at 160 px on the embedded HIT-UAV subset: real runs, a real report."""
    cmd = [sys.executable, "-m", "sodet.cli", "study", "--only", "baseline,cp", "--project", str(tmp_path), "--name", "smoke"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study_dir = tmp_path / "smoke"
    manifest = read_manifest(study_dir)
    assert {k: v["status"] for k, v in manifest["cells"].items()} == {"baseline/seed0": DONE, "cp/seed0": DONE}
    assert manifest["command"] == "sodet study --only baseline,cp --project " + f"{tmp_path} --name smoke"
    metrics = json.loads((study_dir / "cp" / "seed0" / "metrics.json").read_text())
    assert (study_dir / "cp" / "seed0" / "copy_paste.yaml").is_file()  # copy-paste really ran
    md = (study_dir / "report.md").read_text()
    assert f"| cp | 1 | {metrics['AP']:.3f} | {metrics['APs']:.3f} |" in md
    assert "n/a (1 seed)" in md and (study_dir / "small.png").is_file()

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished before, not re-run") == 2
