"""BENCHMARKS.md, built from the results files (``NAME.json`` and ``NAME.md``) of a results folder: nothing in it is
typed by hand, so a number there is always the one its file recorded, with that file's commit and date."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# every benchmark, in the order `python -m bench` runs them (each is bench/NAME.py)
BENCHMARKS = ["eval_speed", "dataload_throughput", "loss_step_time", "finetune_throughput", "distill_step",
              "predict_speed", "p2_cost", "gfl_speed", "study_backends", "cuda_check"]

INTRO = """# Benchmarks

Speed and memory targets of sodet, measured by the scripts in `bench/` (never in timed tests) and re-run in one
command: `python -m bench` (`--quick` for a smoke check, `--out DIR` for the results folder). This file is
generated from the results files in `bench/results/` (`python -m bench --summary`): each section below is its
script's own report, with the command, the commit (and whether the tree was dirty), the versions, the machine and
the load before and after. Comparisons run in one process where they can, contenders alternated (A B, B A, ...)
after warm-ups, at least 3 rounds, medians with their ranges, ratios taken round by round.
"""


def load(folder: Path) -> dict[str, dict]:
    out = {}
    for name in BENCHMARKS:
        path = folder / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def summary_table(records: dict[str, dict]) -> list[str]:
    lines = ["| benchmark | target | result | met | file (commit, date) |", "|---|---|---|---|---|"]
    for name in BENCHMARKS:
        rec = records.get(name)
        if rec is None:
            note = "no CUDA device was available to this project's runs" if name == "cuda_check" else "not run yet"
            lines.append(f"| `bench/{name}.py` | | {note} | | |")
            continue
        commit = (rec.get("git") or {}).get("commit") or "unknown"
        where = f"[{name}.md](bench/results/{name}.md) ({commit[:8]}{', dirty' if (rec.get('git') or {}).get('dirty') else ''}, " \
                f"{rec.get('started', '')[:10]}{', QUICK' if rec.get('quick') else ''})"
        for row in rec.get("targets") or [{"benchmark": name, "target": "", "result": "(no target rows)", "met": None}]:
            met = {True: "yes", False: "**missed**", None: "(measurement)"}[row.get("met")]
            lines.append(f"| {cell(row['benchmark'])} | {cell(row['target'])} | {cell(row['result'])} | {met} | {where} |")
    return lines


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def write_summary(folder: Path, target: Path) -> Path:
    folder = Path(folder)
    records = load(folder)
    parts = [INTRO, "## Summary", "", *summary_table(records), ""]
    for name in BENCHMARKS:
        md = folder / f"{name}.md"
        if md.is_file():
            parts += ["", md.read_text().rstrip("\n"), ""]
    text = "\n".join(parts).rstrip("\n") + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target
