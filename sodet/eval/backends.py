"""Where a study's cells run: one after another (``sequential``), side by side on one machine (``local``: one per
GPU, or ``--jobs N`` on CPU), on a Ray cluster (``ray``) or as a SLURM job array (``slurm``, through submitit).

Every backend runs the SAME cell: ``run_cell_job`` starts the cell's ordinary ``sodet train|distill`` process and
its scoring, in its run folder, and returns what happened; the study runner (``sodet.eval.study.run_study``)
decides which cells need running and when (a distillation after its teacher), merges the results into
``study.json`` and renders the report, so resume, failure handling and the report are shared. A backend only
decides where and when a job runs. Ray's and submitit's packages are optional extras.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sodet.errors import SodetError

BACKENDS = ("sequential", "local", "ray", "slurm")
FINISHED = "metrics.json"


@dataclass
class CellJob:
    """What a worker needs to run one cell, and nothing it would have to import the study for (it pickles)."""

    key: str
    tag: str
    study_dir: str
    dir: str  # the cell's own folder (removed before a fresh training)
    run_dir: str  # where its run is (its own folder, or the identical cell's whose weights it scores)
    final_dir: str
    log_name: str
    command: list[str] | None  # None: the training is done (or another cell's); only the scoring runs
    eval_command: list[str] | None
    commit: str | None = None
    env: dict = field(default_factory=dict)
    requires: dict = field(default_factory=dict)  # file -> what it is: a teacher's finished run, checked at start


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def _die_with_parent() -> None:
    """In the cell's process (Linux): be killed when the process that started it dies (a Ray worker cancelled or
    lost, a SLURM job ended), so no orphaned training keeps a GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_process(args: list[str], log: Path, env: dict | None = None) -> int:
    """``python -m sodet.cli ARGS`` with its output in ``log``, in a process group of its own (Ctrl-C of the study
    stops it with the study, and it dies with the process that started it); returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "sodet.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, start_new_session=True,
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        with _children_lock:
            _children.add(p)
        try:
            return p.wait()
        finally:
            with _children_lock:
                _children.discard(p)


def stop_children() -> None:
    """Kill every cell process this process started (Ctrl-C): finished cells stay, the killed ones start afresh."""
    with _children_lock:
        for p in list(_children):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def last_error(log: Path) -> str:
    """The line of a cell's log that says why it failed: the CLI's 'error:' line, else the last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]


def run_cell_job(job: CellJob, runner=None, echo=None) -> dict:
    """Run one cell (training unless done, then its scoring) and return its record's new fields, including where
    it ran. The same function for every backend; ``runner`` replaces the process (tests)."""
    import shutil

    echo = echo or (lambda s: None)
    runner = runner or (lambda args, log: run_process(args, log, job.env))
    study_dir, run_dir, final_dir = Path(job.study_dir), Path(job.run_dir), Path(job.final_dir)
    record = {"host": socket.gethostname(), "gpu": job.env.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    missing = [what for path, what in job.requires.items() if not Path(path).is_file()]
    if missing:
        echo(f"{job.tag}: skipped, {missing[0]} did not finish")
        return {**record, "ok": False, "skipped": True, "error": f"{missing[0]} did not finish"}
    steps = []
    if job.command is not None and not (run_dir / FINISHED).is_file():
        cell_dir = Path(job.dir)
        if cell_dir.exists() or cell_dir.is_symlink():  # a killed run: start afresh (never half a result)
            cell_dir.unlink() if cell_dir.is_symlink() else shutil.rmtree(cell_dir)
        steps.append(("train", job.command, run_dir / FINISHED))
    if job.eval_command is not None and not (final_dir / FINISHED).is_file():
        steps.append(("eval", job.eval_command, final_dir / FINISHED))
    ok = True
    for step, command, marker in steps:
        log = study_dir / "logs" / (job.log_name + ("" if step == "train" else f"-{step}") + ".log")
        echo(f"{job.tag}: {shlex.join(['sodet', *command])}")
        start, started = time.perf_counter(), now()
        code = runner(command, log)
        seconds = time.perf_counter() - start
        ok = code == 0 and marker.is_file()
        key = "" if step == "train" else f"{step}_"
        record.update({f"{key}returncode": code, f"{key}seconds": round(seconds, 1), f"{key}started": started,
                       f"{key}ended": now(), f"{key}log": str(log.relative_to(study_dir)), f"{key}git_commit": job.commit})
        if not ok:
            record["error"] = last_error(log) if code != 0 else f"exit 0 but no {marker.relative_to(run_dir.parent)}"
            echo(f"{job.tag}: {step} failed in {seconds:.0f} s ({record['error']})")
            break
        where = f" on {record['host']}" + (f", GPU {record['gpu']}" if record["gpu"] else "")
        echo(f"{job.tag}: {step} done in {seconds:.0f} s{where}")
    record["ok"] = ok and (run_dir / FINISHED).is_file() and (job.eval_command is None or (final_dir / FINISHED).is_file())
    return record


# backends ----------------------------------------------------------------------------------------------------
class Backend:
    """Runs CellJobs; ``submit`` returns a handle, ``wait`` the handles that completed (with their records)."""

    name = "sequential"
    slots = 1
    chains = False  # True: a job may be submitted with the handles it waits for (Ray object dependencies)

    def describe(self) -> str:
        return "one cell at a time"

    def submit(self, jobs: list[CellJob], after: list[list] | None = None) -> list:
        """Start ``jobs``; with ``chains``, ``after[i]`` holds the handles job i waits for."""
        raise NotImplementedError

    def wait(self, handles: list) -> list[tuple[object, dict]]:
        raise NotImplementedError

    def cancel(self) -> None:
        stop_children()

    def close(self) -> None:
        pass


class LocalBackend(Backend):
    """Cells side by side on this machine: one per GPU (``CUDA_VISIBLE_DEVICES`` set per cell), or N on CPU."""

    name = "local"

    def __init__(self, jobs: int | None = None, gpus: list[str] | None = None, runner=None, echo=None):
        if gpus:
            self.devices = [str(g) for g in gpus]
        else:
            self.devices = [None] * max(1, int(jobs or 1))
        self.slots = len(self.devices)
        self.free = list(range(self.slots))
        self.pool = ThreadPoolExecutor(max_workers=self.slots)
        self.runner, self.echo = runner, echo
        self.slot_of: dict[Future, int] = {}

    def describe(self) -> str:
        if self.devices[0] is not None:
            return f"{self.slots} cells at a time, one per GPU ({', '.join(self.devices)})"
        return f"{self.slots} cells at a time on this machine"

    def submit(self, jobs, after=None):
        handles = []
        for job in jobs:
            slot = self.free.pop(0)
            if self.devices[slot] is not None:
                job.env = {**job.env, "CUDA_VISIBLE_DEVICES": self.devices[slot]}
            future = self.pool.submit(run_cell_job, job, self.runner, self.echo)
            self.slot_of[future] = slot
            handles.append(future)
        return handles

    def wait(self, handles):
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out = []
        for f in done:
            self.free.append(self.slot_of.pop(f))
            out.append((f, f.result()))
        return out

    def close(self):
        self.pool.shutdown(wait=True)


class SequentialBackend(LocalBackend):
    name = "sequential"

    def __init__(self, runner=None, echo=None):
        super().__init__(jobs=1, runner=runner, echo=echo)

    def describe(self) -> str:
        return "one cell at a time"


class RayBackend(Backend):
    """Each cell a Ray task asking for one GPU (or ``--cpus-per-cell`` CPUs), on whichever node Ray picks; lost
    nodes' tasks are retried (``max_retries``). The study folder must be on storage every node sees."""

    name = "ray"
    chains = True

    def __init__(self, address: str | None = None, cpus_per_cell: float = 1.0, gpus_per_cell: float | None = None,
                 max_retries: int = 2, num_cpus: int | None = None, study_dir: Path | None = None):
        try:
            import ray
        except ImportError:
            raise SodetError("--backend ray needs the ray package: pip install 'sodet[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kw = {"address": address} if address else {"num_cpus": num_cpus}
            try:
                ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kw)
            except ConnectionError as e:
                raise SodetError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        gpus = gpus_per_cell if gpus_per_cell is not None else (1.0 if ray.cluster_resources().get("GPU") else 0.0)
        self.remote = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus, max_retries=max_retries)(_run_after)
        self.inflight: list = []
        self.capacity = max(1, int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1) // max(gpus or cpus_per_cell, 1e-9)))
        self.slots = 1 << 30  # every cell is submitted at once: Ray queues them by resources (nodes added later help)
        self.resources = f"{gpus:g} GPU" if gpus else f"{cpus_per_cell:g} CPUs"
        if study_dir is not None:
            self.check_shared(Path(study_dir))

    def describe(self) -> str:
        nodes = len([n for n in self.ray.nodes() if n.get("Alive")])
        return f"Ray: {nodes} node(s), {self.resources} per cell, {self.capacity} at a time now"

    def check_shared(self, study_dir: Path) -> None:
        """Every node must see the study folder (a marker written here, looked for on each node)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        marker = study_dir / ".ray-shared-check"
        study_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(platform.node())
        probe = self.ray.remote(num_cpus=0)(lambda p: (socket.gethostname(), Path(p).is_file()))
        nodes = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive")]
        seen = self.ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(str(marker))
                             for n in nodes])
        marker.unlink(missing_ok=True)
        blind = sorted({host for host, ok in seen if not ok})
        if blind:
            raise SodetError(f"the study folder {study_dir} is not visible on Ray node(s) {', '.join(blind)}: put it on "
                             "storage every node mounts (--project)")

    def submit(self, jobs, after=None):
        after = after or [[] for _ in jobs]
        handles = [self.remote.remote(job, *deps) for job, deps in zip(jobs, after)]  # Ray runs a job after its deps
        self.inflight.extend(handles)
        return handles

    def wait(self, handles):
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for h in ready:
            self.inflight.remove(h)
            try:
                out.append((h, self.ray.get(h)))
            except Exception as e:  # noqa: BLE001  (retries spent, or its teacher's task failed)
                out.append((h, {"ok": False, "error": f"ray: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]}))
        return out

    def cancel(self):
        for h in self.inflight:  # the cell processes die with their workers
            self.ray.cancel(h, force=True)

    def close(self):
        if self.started_here:
            self.ray.shutdown()


def _run_after(job: CellJob, *teachers: dict) -> dict:
    """A Ray task: ``teachers`` are the results of the tasks it was chained after (Ray starts it once they are
    ready); whether they finished is read from their runs' files (``job.requires``)."""
    return run_cell_job(job)


class SlurmBackend(Backend):
    """Cells as SLURM jobs through submitit: the cells that are ready together are ONE job array, a distillation
    after its teacher (the study submits it when the teacher's job has finished). ``cluster="local"`` runs the
    same jobs through submitit's local executor (tests, and a machine without SLURM)."""

    name = "slurm"

    def __init__(self, folder: Path, partition: str | None = None, gpus_per_node: int = 1, timeout_min: int = 240,
                 cpus_per_task: int | None = None, cluster: str | None = None, parallelism: int = 64):
        try:
            import submitit
        except ImportError:
            raise SodetError("--backend slurm needs the submitit package: pip install 'sodet[slurm]'") from None
        self.submitit = submitit
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = {"timeout_min": int(timeout_min)}
        if self.executor.cluster == "slurm":
            params.update(slurm_array_parallelism=parallelism, gpus_per_node=int(gpus_per_node))
            if partition:
                params["slurm_partition"] = partition
            if cpus_per_task:
                params["cpus_per_task"] = int(cpus_per_task)
        self.executor.update_parameters(**params)
        self.slots = parallelism
        self.partition, self.gpus = partition, gpus_per_node

    def describe(self) -> str:
        where = f"partition {self.partition or '(default)'}, {self.gpus} GPU per job" if self.executor.cluster == "slurm" else "submitit's local executor"
        return f"SLURM job arrays through submitit ({where})"

    def submit(self, jobs, after=None):
        if not jobs:
            return []
        return list(self.executor.map_array(run_cell_job, jobs))

    def wait(self, handles):
        while True:
            done = [h for h in handles if h.done()]
            if done:
                out = []
                for h in done:
                    try:
                        out.append((h, h.result()))
                    except Exception as e:  # noqa: BLE001  (a job that died: its cell failed)
                        out.append((h, {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}))
                return out
            time.sleep(1.0)

    def cancel(self):
        pass


def make_backend(name: str, *, study_dir: Path, jobs: int | None = None, gpus: list[str] | None = None,
                 ray_address: str | None = None, cpus_per_cell: float = 1.0, slurm_partition: str | None = None,
                 slurm_gpus_per_node: int = 1, slurm_timeout: int = 240, runner=None, echo=None) -> Backend:
    if name not in BACKENDS:
        raise SodetError(f"--backend must be one of {', '.join(BACKENDS)}, not '{name}'")
    if jobs is not None and jobs < 1:
        raise SodetError(f"--jobs must be at least 1, got {jobs}")
    if name == "sequential":
        return SequentialBackend(runner, echo)
    if name == "local":
        if gpus is not None and jobs is not None:
            raise SodetError("--gpus and --jobs are two ways to say how many cells run at once: give one")
        if gpus is None and not jobs:
            gpus = visible_gpus() or None
        return LocalBackend(jobs=jobs, gpus=gpus, runner=runner, echo=echo)
    if name == "ray":
        return RayBackend(ray_address, cpus_per_cell, num_cpus=jobs, study_dir=study_dir)
    return SlurmBackend(study_dir / "slurm", slurm_partition, slurm_gpus_per_node, slurm_timeout,
                        cluster=os.environ.get("SODET_SUBMITIT_CLUSTER"))


def visible_gpus() -> list[str]:
    """The GPUs this machine shows (``CUDA_VISIBLE_DEVICES`` respected), as indices to hand each cell."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []
