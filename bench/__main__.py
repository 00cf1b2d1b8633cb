"""``python -m bench``: re-run every benchmark, one after another (never two at once: they time the machine), each
writing its results files (``NAME.md``, ``NAME.json``) to ``--out``; then rebuild BENCHMARKS.md from the files
there: a summary table with a row for every target, met or missed, then each benchmark's own report.

    python -m bench                      # all, into bench/results/, BENCHMARKS.md rebuilt
    python -m bench --quick --out /tmp/b # a smoke check in minutes (QUICK files are not results)
    python -m bench --only eval_speed,predict_speed
    python -m bench --summary            # rebuild BENCHMARKS.md from the files only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.summary import BENCHMARKS, ROOT, RESULTS, write_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every benchmark's smoke check")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the results files [bench/results]")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--summary", action="store_true", help="only rebuild BENCHMARKS.md from the results files")
    a = ap.parse_args()
    out = Path(a.out)
    names = a.only.split(",") if a.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"error: unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    failed = []
    if not a.summary:
        for name in names:
            if name == "cuda_check" and not cuda_available():
                print(f"== {name}: skipped (no CUDA device here; `python bench/cuda_check.py --device cpu --quick` runs its path on CPU)")
                continue
            cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--out", str(out), *(["--quick"] if a.quick else [])]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            t = time.perf_counter()
            code = subprocess.call(cmd, cwd=ROOT)
            print(f"== {name}: {'done' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - t:.0f} s", flush=True)
            if code != 0:
                failed.append(name)
    target = ROOT / "BENCHMARKS.md" if out.resolve() == RESULTS.resolve() else out / "BENCHMARKS.md"
    write_summary(out, target)
    print(f"wrote {target}")
    if failed:
        sys.exit(f"error: {', '.join(failed)} failed (their previous results files, if any, are left as they were)")


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
