"""Where a study's cells run (issue 21): the scheduler over a backend with a stand-in CLI (cells side by side, a
distillation after its teacher, a failure isolated), then the real smoke study (baseline, copy-paste and CWD I: a
distillation waiting for its teacher) through ``local --jobs 2``, a local Ray instance (``num_cpus=2``) and
submitit's local executor, each giving the same cells and report as the sequential run; a study killed under one
backend resumes under another."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_study import FakeCli, gt, plan_cells  # noqa: F401  (gt: a fixture)

from sodet.errors import SodetError
from sodet.eval import backends
from sodet.eval.study import DONE, FAILED, SAME, read_manifest, run_study, write_manifest


class SlowCli(FakeCli):
    """FakeCli that takes a moment per call and records when each call ran (to see what overlapped)."""

    def __init__(self, gt, **kw):
        super().__init__(gt, **kw)
        self.spans, self.lock = {}, threading.Lock()

    def __call__(self, args, log):
        start = time.perf_counter()
        time.sleep(0.3)
        with self.lock:
            code = super().__call__(args, log)
            self.spans[self.calls[-1]] = (start, time.perf_counter())
        return code


def run_with(study_dir, opts, cells, backend):
    study_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"options": opts.to_dict()}
    write_manifest(study_dir, manifest)
    run_study(study_dir, cells, manifest, backend=backend, echo=lambda s: None)
    return read_manifest(study_dir)


def test_local_jobs_run_side_by_side_teachers_first_and_failures_stay_alone(tmp_path, gt):  # noqa: F811
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,cp,wl-study,cwd1,cwd2")
    runner = SlowCli(gt, fail={"wl-study"})
    manifest = run_with(study_dir, opts, cells, backends.LocalBackend(jobs=2, runner=runner))
    status = {k: v["status"] for k, v in manifest["cells"].items()}
    assert status == {"baseline/seed0": DONE, "cp/seed0": DONE, "wl-study/seed0": FAILED, "teacher/seed0": SAME,
                      "teacher-cp/seed0": SAME, "cwd1/seed0": DONE, "cwd2/seed0": DONE}
    spans = runner.spans
    assert spans["baseline/seed0"][0] < spans["cp/seed0"][1] and spans["cp/seed0"][0] < spans["baseline/seed0"][1]  # overlapped
    assert spans["cwd1/seed0"][0] >= spans["baseline/seed0"][1]  # after its teacher (the baseline run)
    assert spans["cwd2/seed0"][0] >= spans["cp/seed0"][1]
    assert manifest["cells"]["wl-study/seed0"]["error"] == "error: boom in wl-study"
    assert manifest["cells"]["cp/seed0"]["host"]


def test_gpus_are_handed_one_per_cell(tmp_path, gt, monkeypatch):  # noqa: F811
    study_dir, opts, _, _, cells, _ = plan_cells(tmp_path, only="baseline,cp,wl-study", seeds=2)
    runner = SlowCli(gt)
    manifest = run_with(study_dir, opts, cells, backends.LocalBackend(gpus=["0", "3"], runner=runner))
    gpu = {c.key: manifest["cells"][c.key]["gpu"] for c in cells}
    assert set(gpu.values()) == {"0", "3"}
    for a in gpu:  # two cells that ran at the same time held different GPUs
        for b in gpu:
            (s1, e1), (s2, e2) = runner.spans[a], runner.spans[b]
            if a < b and s1 < e2 and s2 < e1:
                assert gpu[a] != gpu[b], (a, b)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert backends.visible_gpus() == ["2", "5"]
    assert backends.make_backend("local", study_dir=tmp_path).slots == 2
    with pytest.raises(SodetError, match="give one"):
        backends.make_backend("local", study_dir=tmp_path, jobs=2, gpus=["0"])
    with pytest.raises(SodetError, match="at least 1"):
        backends.make_backend("local", study_dir=tmp_path, jobs=0)
    with pytest.raises(SodetError, match="--backend must be one of"):
        backends.make_backend("k8s", study_dir=tmp_path)


def test_missing_extras_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SodetError, match=r"pip install 'sodet\[ray\]'"):
        backends.make_backend("ray", study_dir=tmp_path)
    with pytest.raises(SodetError, match=r"pip install 'sodet\[slurm\]'"):
        backends.make_backend("slurm", study_dir=tmp_path)


def test_a_job_whose_teacher_did_not_finish_is_skipped_where_it_runs(tmp_path):
    job = backends.CellJob(key="cwd1/seed0", tag="cwd1", study_dir=str(tmp_path), dir=str(tmp_path / "c"),
                           run_dir=str(tmp_path / "c"), final_dir=str(tmp_path / "c"), log_name="c",
                           command=["train"], eval_command=None,
                           requires={str(tmp_path / "t" / "metrics.json"): "its teacher teacher/seed0"})
    record = backends.run_cell_job(job, runner=lambda args, log: pytest.fail("must not run"))
    assert record["ok"] is False and record["skipped"] and record["error"] == "its teacher teacher/seed0 did not finish"


# the real smoke study through every backend ------------------------------------------------------------------
ONLY = "baseline,cp,cwd1"


def study(project: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sodet.cli", "study", "--only", ONLY, "--project", str(project), "--name", name, *extra]


def cell_numbers(study_dir: Path) -> dict:
    m = read_manifest(study_dir)
    out = {}
    for key, record in m["cells"].items():
        setting, seed = key.split("/")
        final = study_dir / setting / seed / "metrics.json"
        out[key] = (record["status"], json.loads(final.read_text()) if final.is_file() else None)
    return out


def report_rows(study_dir: Path) -> list[dict]:
    """report.csv without the columns that are wall time (they differ from run to run)."""
    rows = list(csv.DictReader(io.StringIO((study_dir / "report.csv").read_text())))
    return [{k: v for k, v in r.items() if k != "seconds_per_run"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    project = tmp_path_factory.mktemp("backends")
    done = subprocess.run(study(project, "seq", "--backend", "sequential"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return project / "seq"


def numbers(study_dir: Path) -> dict:
    return {k: (s, {m: v for m, v in (x or {}).items() if m.startswith(("AP", "AR"))}) for k, (s, x) in cell_numbers(study_dir).items()}


@pytest.mark.parametrize("backend", ["local", "ray", "slurm"])
def test_every_backend_runs_the_same_cells_as_the_sequential_run(reference, tmp_path, backend):
    pytest.importorskip({"local": "sodet", "ray": "ray", "slurm": "submitit"}[backend])
    env = {**os.environ, "SODET_SUBMITIT_CLUSTER": "local"}
    done = subprocess.run(study(tmp_path, backend, "--backend", backend, "--jobs", "2"), cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert numbers(tmp_path / backend) == numbers(reference)
    assert report_rows(tmp_path / backend) == report_rows(reference)
    manifest = read_manifest(tmp_path / backend)
    assert manifest["cells"]["cwd1/seed0"]["started"] >= manifest["cells"]["baseline/seed0"]["ended"]  # after its teacher
    md = (tmp_path / backend / "report.md").read_text()
    assert f"| cp/seed0 | done | {manifest['cells']['cp/seed0']['host']} |" in md  # which cell ran where
    assert "cwd1/seed0: done on" in done.stdout
    assert "## Distillation: the CWD term's share of the loss" in md and "| cwd1 | 1 | " in md


def test_a_study_killed_under_local_jobs_resumes_under_ray(reference, tmp_path):
    pytest.importorskip("ray")
    p = subprocess.Popen(study(tmp_path, "killed", "--backend", "local", "--jobs", "2"), cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    cp_done = tmp_path / "killed" / "cp" / "seed0" / "metrics.json"
    base_done = tmp_path / "killed" / "baseline" / "seed0" / "metrics.json"
    while time.time() < deadline and not (cp_done.is_file() or base_done.is_file()) and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the study and every cell it runs
    p.wait()
    done = subprocess.run(study(tmp_path, "killed", "--backend", "ray", "--jobs", "2"), cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished before, not re-run" in done.stdout
    assert numbers(tmp_path / "killed") == numbers(reference)


def test_slurm_dry_run_prints_the_job_array_plan(tmp_path):
    done = subprocess.run(study(tmp_path, "dry", "--backend", "slurm", "--slurm-partition", "gpu", "--dry-run"), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# slurm: one job array of 2 cells (partition gpu, 1 GPU per job, timeout 240 min), then 1 distillation" in done.stdout
    assert not (tmp_path / "dry").exists()
