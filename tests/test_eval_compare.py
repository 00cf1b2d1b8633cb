"""sodet compare: relative change vs the first run, best per column, n/a handling, refusal of runs scored on
different data, and the markdown / CSV / PNG files. Reference values: the study's GFL-R50 rows."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from sodet.errors import SodetError
from sodet.eval.cocoeval import METRIC_KEYS
from sodet.cli.compare import compare_command
from sodet.eval.compare import COMPARE_KEYS, compare, default_out_dir
from sodet.eval.metrics_io import write_metrics

# reference-study.md, GFL-R50 baseline and + CWD (III): AP, APs, APm, APl, AR, ARs, ARm, ARl
BASELINE = dict(zip(COMPARE_KEYS, [0.288, 0.170, 0.393, 0.398, 0.455, 0.322, 0.565, 0.619]))
CWD_III = dict(zip(COMPARE_KEYS, [0.355, 0.219, 0.453, 0.531, 0.498, 0.366, 0.597, 0.688]))
COPY_PASTE = dict(zip(COMPARE_KEYS, [0.271, 0.165, 0.370, 0.360, 0.453, 0.324, 0.561, 0.608]))


@pytest.fixture
def gt_file(tmp_path):
    path = tmp_path / "data" / "val.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    return path


def make_run(run_dir: Path, numbers: dict, gt: Path, **dataset_changes) -> Path:
    metrics = {k: numbers.get(k, 0.5) for k in METRIC_KEYS}
    metrics["per_class"] = {"person": dict(metrics), "car": dict(metrics)}
    dataset = {"gt": str(gt), "split": "val", "classes": ["person", "car"], "num_images": 5000, **dataset_changes}
    return write_metrics(run_dir, metrics, options={}, dataset=dataset, speed=None, predictions=[])


def test_relative_change_best_and_files(tmp_path, gt_file):
    runs = [make_run(tmp_path / n, v, gt_file) for n, v in
            [("baseline", BASELINE), ("cwd3", CWD_III), ("copy_paste", COPY_PASTE)]]  # fmt: skip
    out = tmp_path / "cmp"
    comparison = compare([runs[0].parent, runs[1], runs[2].parent], out)  # run dirs and a metrics.json

    assert [r.name for r in comparison.runs] == ["baseline", "cwd3", "copy_paste"]
    assert comparison.change(1, "APs") == pytest.approx((0.219 - 0.170) / 0.170 * 100)  # the study's +29 %
    assert comparison.cell(1, "APs") == "0.219 (+28.8%)"
    assert comparison.cell(2, "APl") == "0.360 (-9.5%)"
    assert comparison.cell(0, "APs") == "0.170"  # the baseline shows no change
    assert all(comparison.best(k) == {1} for k in COMPARE_KEYS)

    markdown = (out / "compare.md").read_text()
    assert "| run | AP | APs | APm | APl | AR100 | ARs | ARm | ARl |" in markdown
    assert "| cwd3 | **0.355 (+23.3%)** | **0.219 (+28.8%)** |" in markdown
    assert "| baseline | 0.288 | 0.170 |" in markdown

    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [r["run"] for r in rows] == ["baseline", "cwd3", "copy_paste"]
    assert float(rows[1]["APs"]) == 0.219 and float(rows[1]["APs_change_pct"]) == pytest.approx(28.82, abs=0.01)
    assert rows[0]["APs_change_pct"] == ""

    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_na_stays_na_and_is_left_out_of_best_and_change(tmp_path, gt_file):
    base = make_run(tmp_path / "a", {**BASELINE, "APl": None, "ARl": None}, gt_file)
    other = make_run(tmp_path / "b", {**CWD_III, "APm": None}, gt_file)
    comparison = compare([base, other], tmp_path / "cmp")
    assert comparison.cell(0, "APl") == "n/a" and comparison.cell(1, "APl") == "0.531"  # no change vs n/a
    assert comparison.cell(1, "APm") == "n/a"
    assert comparison.best("APl") == set() and comparison.best("APm") == set()  # one value is no contest
    assert comparison.best("APs") == {1}

    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "compare.csv").read_text())))
    assert rows[0]["APl"] == "n/a" and rows[1]["APl_change_pct"] == "n/a" and rows[1]["APm"] == "n/a"
    assert "| a | 0.288 | 0.170 | 0.393 | n/a |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


@pytest.mark.parametrize(
    "change, what",
    [({"split": "test"}, "split"), ({"classes": ["person"]}, "classes"), ({"num_images": 4999}, "images")],
)
def test_runs_on_different_data_are_refused(tmp_path, gt_file, change, what):
    base = make_run(tmp_path / "a", BASELINE, gt_file)
    other = make_run(tmp_path / "b", CWD_III, gt_file, **change)
    with pytest.raises(SodetError, match=f"cannot compare b with baseline a: scored on different data.*{what}") as e:
        compare([base, other], None)
    assert "\n" not in str(e.value)


def test_ground_truth_is_matched_by_content(tmp_path, gt_file):
    same_content = tmp_path / "copy" / "val.json"
    same_content.parent.mkdir()
    same_content.write_bytes(gt_file.read_bytes())
    other_content = tmp_path / "other" / "val.json"
    other_content.parent.mkdir()
    other_content.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))

    base = make_run(tmp_path / "a", BASELINE, gt_file)
    assert len(compare([base, make_run(tmp_path / "b", CWD_III, same_content)]).runs) == 2
    with pytest.raises(SodetError, match="different data .*gt sha256"):
        compare([base, make_run(tmp_path / "c", CWD_III, other_content)])


def test_run_directories_are_searched_and_names_disambiguated(tmp_path, gt_file):
    make_run(tmp_path / "exp1" / "val", BASELINE, gt_file)
    make_run(tmp_path / "exp2" / "val", CWD_III, gt_file)
    comparison = compare([tmp_path / "exp1", tmp_path / "exp2"])
    assert [r.name for r in comparison.runs] == ["exp1/val", "exp2/val"]
    assert comparison.files == {}  # nothing written without an output directory

    with pytest.raises(SodetError, match="no metrics.json in"):
        compare([tmp_path / "data"])
    with pytest.raises(SodetError, match="no such run directory"):
        compare([tmp_path / "missing"])
    with pytest.raises(SodetError, match="2 metrics.json files below"):
        compare([tmp_path])
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(SodetError, match="not a sodet metrics.json: missing AP"):
        compare([tmp_path / "broken.json"])


def test_default_output_directory():
    assert default_out_dir(["baseline", "exp2/val"]) == Path("runs/compare/baseline-vs-exp2_val")
    assert default_out_dir(["b"] + [f"run{i:03d}" for i in range(40)]) == Path("runs/compare/b-vs-40-runs")


def test_command_prints_and_writes(tmp_path, gt_file, monkeypatch):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("compare")(compare_command)
    app.command("other")(lambda: None)  # two commands: 'compare' is addressed by name, as in sodet's CLI
    base = make_run(tmp_path / "base", BASELINE, gt_file)
    other = make_run(tmp_path / "cwd3", CWD_III, gt_file)

    result = CliRunner().invoke(app, ["compare", str(base.parent), str(other), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "0.219" in result.output and "+28.8%" in result.output and "compare.md" in result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["compare.csv", "compare.md", "compare.png"]

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", str(base), str(other)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "compare" / "base-vs-cwd3" / "compare.md").is_file()
