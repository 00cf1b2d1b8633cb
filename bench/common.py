"""What every benchmark shares: where it ran (commit, dirty flag, versions, machine, load before and after, the
command), a fair timing loop (contenders alternated A B A B after warm-ups, >= 3 repeats, medians and ranges),
and its results files: ``NAME.md`` (the report, also printed) and ``NAME.json`` (its target rows, from which
``python -m bench`` builds BENCHMARKS.md's summary table).

A benchmark script::

    run = Run("eval_speed", __doc__)            # parses --quick / --out, records load and provenance
    times = alternate({"pycocotools": a, "sodet": b}, repeats=run.repeats(5, 3), warmup=1)
    run.target("scoring 5,000 images vs pycocotools", ">= 4x faster", ratio, met=ratio >= 4)
    run.write(lines)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sodet.eval.study import cpu_model  # noqa: E402  (the machine named as a study names it)


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def git_state() -> dict:
    """sodet's commit and whether the tree had uncommitted changes to tracked files (numbers of a dirty tree are
    not the commit's). Results files (bench/results, BENCHMARKS.md) do not count: a run of every benchmark
    rewrites them one by one, and they are what the benchmarks write, not what they measure."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results",
                         ":(exclude)BENCHMARKS.md")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("sodet", "torch", "torchvision", "ultralytics", "pixeltable-yolox", "numpy", "opencv-python",
                 "faster-coco-eval", "pycocotools", "sahi", "onnxruntime", "onnxruntime-gpu", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    out = {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return out


# timing ------------------------------------------------------------------------------------------------------
def alternate(contenders: dict[str, Callable[[], float | None]], repeats: int = 3, warmup: int = 1) -> dict[str, list[float]]:
    """Run each contender ``warmup`` times (not kept), then ``repeats`` rounds in alternating order (A B, B A, A B,
    ...): the order a machine's drift or a cache favours changes every round. A contender returns the value to
    keep (e.g. images/s) or None to have its wall time in seconds kept."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            value = contenders[name]()
            samples[name].append(time.perf_counter() - start if value is None else float(value))
    return samples


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    """'median (min - max, n=N)' of a contender's samples."""
    return f"{fmt.format(med(values))} ({fmt.format(min(values))} - {fmt.format(max(values))}, n={len(values)})"


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    """Round by round a / b (the rounds of ``alternate`` pair up), so a slow round slows both sides of a ratio."""
    return [x / y for x, y in zip(a, b) if y]


# the run and its files ---------------------------------------------------------------------------------------
class Run:
    """One benchmark run: its options (``--quick``, ``--out DIR``, plus the script's own), where it ran, its
    target rows and its results files."""

    def __init__(self, name: str, doc: str | None, parser: argparse.ArgumentParser | None = None, argv=None):
        self.name = name
        self.parser = parser or argparse.ArgumentParser(description=(doc or name).strip().split("\n\n")[0],
                                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        self.parser.add_argument("--quick", action="store_true", help="a smoke check in seconds to minutes (its numbers are not results)")
        self.parser.add_argument("--out", default=str(RESULTS), help="folder of the results files [bench/results]")
        self.argv = sys.argv[1:] if argv is None else list(argv)
        self.load_before = load_average()
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.rows: list[dict] = []
        self.args = None

    def parse(self):
        self.args = self.parser.parse_args(self.argv)
        self.quick = self.args.quick
        return self.args

    def repeats(self, full: int, quick: int = 1) -> int:
        return quick if self.quick else max(3, full)

    def target(self, benchmark: str, target: str, result: str, met: bool | None, anchor: str = "") -> None:
        """A row of BENCHMARKS.md's summary: what was measured, the target, the result, met or not (None: no
        target, a measurement only)."""
        self.rows.append({"benchmark": benchmark, "target": target, "result": result, "met": met, "anchor": anchor})

    def header(self) -> list[str]:
        git, v, m = git_state(), versions(), machine()
        command = shlex.join(["python", f"bench/{self.name}.py", *self.argv])
        vs = ", ".join(f"{k} {x}" for k, x in v.items())
        where = f"{m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f", {m['os']}, host {m['host']}"
        return [
            f"- command: `{command}`" + (" (QUICK: a smoke check, not a result)" if self.quick else ""),
            f"- commit: {git['commit'] or 'unknown'}" + (" (dirty: uncommitted changes to tracked files)" if git["dirty"] else ""),
            f"- date: {self.started} to {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
            f"- machine: {where}",
            f"- versions: {vs}",
            f"- load average (1 min) before / after: {self.load_before} / {load_average()}",
        ]

    def write(self, lines: list[str], title: str | None = None) -> Path:
        """Write NAME.md (title, where it ran, ``lines``) and NAME.json (the same plus the target rows), each whole."""
        out = Path(self.args.out if self.args else RESULTS)
        out.mkdir(parents=True, exist_ok=True)
        head = [f"## {title or self.name}", ""] + self.header() + [""]
        text = "\n".join(head + list(lines)).rstrip("\n") + "\n"
        record = {"name": self.name, "title": title or self.name, "quick": self.quick, "command": head[2][len("- command: "):],
                  "git": git_state(), "versions": versions(), "machine": machine(), "started": self.started,
                  "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_before": self.load_before,
                  "load_after": load_average(), "targets": self.rows}
        for path, body in ((out / f"{self.name}.md", text), (out / f"{self.name}.json", json.dumps(record, indent=1) + "\n")):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(body)
            os.replace(tmp, path)
        print(text)
        return out / f"{self.name}.md"
