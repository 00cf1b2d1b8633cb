"""The benchmarks' own plumbing (issue 22): the prepared GPU check runs its whole path on CPU (``--device cpu
--quick``) and writes one results file; BENCHMARKS.md is generated from results files with a row for every
target, met or missed, and says which benchmarks have no results."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

from bench.common import Run, alternate, paired_ratios
from bench.summary import BENCHMARKS, write_summary


def test_cuda_check_runs_its_whole_path_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, "bench/cuda_check.py", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "cuda_check.json").read_text())
    assert record["quick"] and len(record["git"]["commit"]) == 40 and record["versions"]["ultralytics"] == "8.4.190"
    rows = record["targets"]
    assert [r["benchmark"].split(", ")[1].split(":")[0] for r in rows] == ["yolox-nano", "yolo11n", "gfl-r18"]
    assert all(r["met"] for r in rows)
    md = (tmp_path / "cuda_check.md").read_text()
    assert md.count("| yes |") == 12 and "losses finite: True" in md and "ONNX" in md and "QUICK" in md


def test_alternate_orders_rounds_a_b_then_b_a():
    calls = []
    samples = alternate({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, repeats=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert samples == {"a": [1.0] * 4, "b": [2.0] * 4}
    assert paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]


def test_benchmarks_md_is_built_from_the_results_files(tmp_path):
    run = Run("eval_speed", "doc", argv=["--out", str(tmp_path)])
    run.parse()
    run.target("scoring vs pycocotools", ">= 4x", "5.5x (5.3-5.6)", True)
    run.target("AI-TOD scoring vs pycocotools", ">= 4x", "3.1x (3.0-3.2)", False)
    run.write(["| a | b |"], title="Evaluation speed")
    rec = json.loads((tmp_path / "eval_speed.json").read_text())
    assert rec["command"].startswith("`python bench/eval_speed.py --out") and rec["load_before"] is not None
    text = (tmp_path / "eval_speed.md").read_text()
    assert text.startswith("## Evaluation speed") and "- commit: " in text and "load average" in text
    out = write_summary(tmp_path, tmp_path / "BENCHMARKS.md").read_text()
    assert "| scoring vs pycocotools | >= 4x | 5.5x (5.3-5.6) | yes |" in out
    assert "| AI-TOD scoring vs pycocotools | >= 4x | 3.1x (3.0-3.2) | **missed** |" in out
    assert out.count("not run yet") == len(BENCHMARKS) - 2  # all but eval_speed and the GPU check
    assert "no CUDA device" in out and "## Evaluation speed" in out


def test_dirty_flag_counts_code_changes_not_results_files(tmp_path, monkeypatch):
    """A run of every benchmark rewrites bench/results one file at a time: those files do not make the later
    benchmarks' commit 'dirty'; a change to the code does."""
    import bench.common as common

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    files = {"code.py": "x = 1\n", "bench/results/a.md": "old\n", "BENCHMARKS.md": "old\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    (tmp_path / "bench/results/a.md").write_text("new\n")
    (tmp_path / "BENCHMARKS.md").write_text("new\n")
    assert common.git_state()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_state()["dirty"] is True
