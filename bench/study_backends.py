"""Study backends (issue 21.7): wall time of the same smoke study run sequentially, with ``--backend local --jobs 2``
and through a local Ray instance (``--backend ray --jobs 2``), and the overhead Ray adds per cell.

Each round runs the three backends in turn (order alternating round by round: A B C, C B A, ...), each into a fresh
study folder, the whole ``sodet study`` process timed; ratios per round against the sequential run. Ray's own cost
per cell: a Ray task running the cell wrapper on a finished cell (nothing to train: what Ray adds around a cell),
against the same wrapper called directly.

    python bench/study_backends.py                     # writes bench/results/study_backends.{md,json}
    python bench/study_backends.py --quick --out /tmp/b
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Run, alternate, med, paired_ratios, spread  # noqa: E402

BACKENDS = {"sequential": ["--backend", "sequential"], "local --jobs 2": ["--backend", "local", "--jobs", "2"],
            "ray --jobs 2": ["--backend", "ray", "--jobs", "2"]}


def study_runner(name: str, extra: list[str], only: str, work: Path, counter: list[int]):
    def go():
        counter[0] += 1
        folder = work / f"{name.split()[0]}-{counter[0]}"
        cmd = [sys.executable, "-m", "sodet.cli", "study", "--only", only, "--project", str(work), "--name", folder.name, *extra]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if done.returncode != 0:
            raise SystemExit(f"{name}: the study failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        shutil.rmtree(folder, ignore_errors=True)
        return seconds
    return go


def ray_overhead(work: Path, tasks: int) -> tuple[float, float, float]:
    """(ms per cell through a Ray task, ms called directly, Ray's start-up s) on a cell with nothing left to do."""
    import ray

    from sodet.eval.backends import CellJob, RayBackend, run_cell_job

    cell = work / "done-cell"
    (cell / "weights").mkdir(parents=True, exist_ok=True)
    (cell / "metrics.json").write_text("{}")
    job = CellJob(key="c/seed0", tag="c", study_dir=str(work), dir=str(cell), run_dir=str(cell), final_dir=str(cell),
                  log_name="c", command=["train"], eval_command=None)
    t = time.perf_counter()
    backend = RayBackend(num_cpus=2)
    startup = time.perf_counter() - t
    backend.wait(backend.submit([job]))  # a worker started and sodet imported there: the first cell's extra
    t = time.perf_counter()
    for _ in range(tasks):
        backend.wait(backend.submit([job]))
    via_ray = (time.perf_counter() - t) * 1e3 / tasks
    t = time.perf_counter()
    for _ in range(tasks):
        run_cell_job(job)
    direct = (time.perf_counter() - t) * 1e3 / tasks
    backend.close()
    assert not ray.is_initialized()
    return via_ray, direct, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="baseline,cp,cp-nopaste,baseline-matched,wl-study,cwd1",
                    help="settings of the smoke study (profile smoke: 1 seed, 1 epoch, 160 px, embedded HIT-UAV subset)")
    ap.add_argument("--repeats", type=int, default=3)
    run = Run("study_backends", __doc__, ap)
    a = run.parse()
    only = "baseline,cp" if a.quick else a.only
    work = Path(tempfile.mkdtemp(prefix="sodet-bench-backends-"))
    counter = [0]
    contenders = {name: study_runner(name, extra, only, work, counter) for name, extra in BACKENDS.items()}
    samples = alternate(contenders, repeats=run.repeats(a.repeats, 1), warmup=0 if a.quick else 1)
    seq = samples["sequential"]
    lines = [f"Smoke study `sodet study --only {only}` (profile smoke: 1 seed, 1 epoch at 160 px on the embedded HIT-UAV "
             f"subset; {os.cpu_count()} cores), the whole process timed, {len(seq)} alternated rounds"
             f"{'' if a.quick else ' after one warm-up round'}.", "",
             "| backend | wall s | vs sequential (per round) |", "|---|---|---|"]
    for name, values in samples.items():
        ratios = paired_ratios(values, seq)
        lines.append(f"| {name} | {spread(values, '{:.1f}')} | {spread(ratios, '{:.2f}')} |")
        if name != "sequential":
            run.target(f"smoke study ({only.count(',') + 1} settings), {name} vs sequential on {os.cpu_count()} cores",
                       "(a measurement)", f"{med(ratios):.2f}x the wall time ({min(ratios):.2f}-{max(ratios):.2f})", None)
    via_ray, direct, startup = ray_overhead(work, 5 if a.quick else 30)
    lines += ["", f"Ray per cell: a task running the cell wrapper on a finished cell took {via_ray:.1f} ms (called directly: "
              f"{direct:.2f} ms), so Ray adds about {via_ray - direct:.1f} ms per cell once its workers run; starting the "
              f"local Ray instance took {startup:.1f} s (once per study). On this 2-core machine two cells side by side "
              "share the cores each would use alone, so the gain of running them together is small here; on a machine "
              "with a GPU per cell it is the number of GPUs."]
    run.target("Ray's overhead per cell (task around a finished cell)", "(a measurement)",
               f"+{via_ray - direct:.1f} ms per cell; {startup:.1f} s to start a local instance", None)
    shutil.rmtree(work, ignore_errors=True)
    run.write(lines, title="Study backends: sequential vs local --jobs 2 vs Ray")


if __name__ == "__main__":
    main()
