"""``sodet study``: the reference study's experiment matrix, each setting for N seeds, as ordinary CLI runs.

The matrix and the profiles are data (``cfg/study.yaml``). Every cell is a ``sodet train`` or ``sodet distill``
run in ``<project>/<name>/<setting>/seed<k>/``, started as a subprocess so that a crash stays in its cell; its
command can be re-run alone. A cell whose metrics.json exists is finished and never run again, so a killed study
resumes where it stopped; a cell without one is started afresh. ``study.json`` in the study folder records the
options (a resumed study must use the same ones), each cell's command, state and wall time; the report
(``sodet.eval.study_report``) is rendered from it and the cells' metrics.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sodet.errors import SodetError
from sodet.eval.metrics_io import METRICS_FILE

MANIFEST = "study.json"
PROFILE_KEYS = ("data", "seeds", "epochs", "imgsz", "batch", "workers", "device", "overrides", "distill_args", "test_split")
FINAL = "test"  # a cell's folder for its scoring on the test split
DONE, FAILED, SKIPPED, SAME, PENDING = "done", "failed", "skipped", "same run", "pending"


def study_config() -> dict:
    """cfg/study.yaml: settings, profiles and the reference study's numbers."""
    from sodet.assets import load_cfg

    return load_cfg("study.yaml")


@dataclass(frozen=True)
class Setting:
    """One row of the matrix: extra CLI arguments, which model trains, the setting whose run is its teacher, its
    own engine overrides and a factor on the profile's epochs (a teacher trained longer)."""

    name: str
    label: str
    args: tuple[str, ...]
    model: str = "student"  # or "teacher"
    teacher: str | None = None  # a distillation setting names its teacher setting
    epochs_scale: float = 1.0
    overrides: tuple[tuple[str, Any], ...] = ()
    control_of: str | None = None  # the setting whose extra compute this one matches (for the report)
    reference: str | None = None  # the reference study's row of the same treatment, where the treatment matches
    eval_args: tuple[str, ...] = ()  # extra options of the final scoring (e.g. sliced inference: --slice 320)
    one_run: bool = False  # trained once (seed 0) and used by every seed (a teacher trained for longer)

    @property
    def command(self) -> str:
        return "distill" if self.teacher else "train"


def settings_from(config: dict) -> dict[str, Setting]:
    out = {}
    for name, spec in config["settings"].items():
        unknown = set(spec) - {"label", "args", "model", "teacher", "epochs_scale", "overrides", "control_of", "reference",
                               "eval_args", "one_run"}
        if unknown:
            raise SodetError(f"cfg/study.yaml: setting {name} has unknown keys {sorted(unknown)}")
        out[name] = Setting(
            name=name, label=spec.get("label", name), args=tuple(str(a) for a in spec.get("args", [])),
            model=spec.get("model", "student"), teacher=spec.get("teacher"),
            epochs_scale=float(spec.get("epochs_scale", 1.0)),
            overrides=tuple((spec.get("overrides") or {}).items()), control_of=spec.get("control_of"),
            reference=spec.get("reference"), eval_args=tuple(str(a) for a in spec.get("eval_args", [])),
            one_run=bool(spec.get("one_run", False)),
        )
    return out


@dataclass
class StudyOptions:
    """What decides the cells' commands: a study resumed with other options would mix incomparable runs."""

    student: str
    teacher: str
    student_weights: str | None
    teacher_weights: str | None
    data: str
    classes: str | None
    profile: str
    epochs: int
    imgsz: int
    batch: int
    workers: int
    device: str | None
    overrides: dict[str, Any]
    distill_args: list[str]
    test_split: str | None = None  # where the final numbers come from (None: the validation split)
    protocol: str = "coco"  # size protocols scored beside COCO's buckets (every cell's validation and scoring)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_profile(name: str, config: dict, **given: Any) -> tuple[dict, list[str]]:
    """The profile's values with the command line's on top (None = not given). ``overrides`` merge key by key;
    ``distill_args`` append. Returns the values and a list saying what the command line changed."""
    profiles = config["profiles"]
    if name not in profiles:
        raise SodetError(f"unknown study profile '{name}' (known: {', '.join(profiles)}; they live in cfg/study.yaml)")
    values = {k: profiles[name].get(k) for k in PROFILE_KEYS}
    values["overrides"] = dict(values["overrides"] or {})
    values["distill_args"] = [str(a) for a in values["distill_args"] or []]
    changed = []
    for key, value in given.items():
        if value is None or value == [] or value == {}:
            continue
        if key == "overrides":
            values["overrides"].update(value)
        elif key == "distill_args":
            values["distill_args"].extend(value)
        else:
            values[key] = value
        changed.append(key)
    return values, changed


def resolve_data(data: str | None, profile: str) -> str:
    """An existing folder or YAML (made absolute: cells may run from elsewhere), or an embedded dataset's name."""
    if not data:
        raise SodetError(f"profile '{profile}' names no data: pass --data DIR (a COCO folder or a data YAML)")
    path = Path(data)
    if path.exists():
        return str(path.resolve())
    from sodet.assets import embedded_data

    try:
        return str(embedded_data(str(data)))
    except SodetError:
        raise SodetError(f"data not found: {data} (a COCO folder, a data YAML, or an embedded set: coco-pc-mini, hit-uav-mini)") from None


@dataclass
class Cell:
    """One run of the matrix. ``same_as`` names an earlier cell with the identical command (e.g. a teacher that
    is the student trained on the same data): that run stands for this one."""

    setting: Setting
    seed: int
    dir: Path
    command: list[str]
    teacher_cell: Cell | None = None
    same_as: Cell | None = None
    eval_command: list[str] | None = None  # the final scoring of the run's last weights on the test split

    @property
    def key(self) -> str:
        return f"{self.setting.name}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        """Where the run's files are: its own folder, or the identical earlier cell's."""
        return self.same_as.run_dir if self.same_as else self.dir

    @property
    def weights(self) -> Path:
        """The run's final weights (what it is scored on and what it teaches with; best.pt of a run validated every
        epoch would be chosen on the validation split)."""
        return self.run_dir / "weights" / "last.pt"

    @property
    def final_dir(self) -> Path:
        """Where the numbers the report uses are: the test-split scoring (a setting scored its own way, e.g. sliced,
        in a folder of its name beside it), or the run's own final validation."""
        if not self.eval_command:
            return self.run_dir
        return self.run_dir / (f"{FINAL}-{self.setting.name}" if self.setting.eval_args else FINAL)

    def trained(self) -> bool:
        """Training finished: its final evaluation wrote metrics.json (and best.pt / last.pt exist)."""
        return (self.run_dir / METRICS_FILE).is_file()

    def finished(self) -> bool:
        """Trained and, with a test split, scored on it."""
        return self.trained() and (self.final_dir / METRICS_FILE).is_file()

    def shell(self) -> str:
        """The command as a user types it (the study starts it as ``python -m sodet.cli ...``)."""
        return shlex.join(["sodet", *self.command])

    def eval_shell(self) -> str | None:
        return shlex.join(["sodet", *self.eval_command]) if self.eval_command else None


def cell_command(
    setting: Setting, seed: int, out_dir: Path, opts: StudyOptions, teacher_weights_path: Path | None
) -> list[str]:
    """The CLI arguments of one cell (after ``sodet``)."""
    args: list[str] = [setting.command]
    if setting.teacher:
        args += ["--teacher", str(teacher_weights_path)]
    model, weights = (opts.teacher, opts.teacher_weights) if setting.model == "teacher" else (opts.student, opts.student_weights)
    if setting.model not in ("student", "teacher"):  # a model of its own, e.g. "{student}-p2"
        model, weights = setting.model.format(student=opts.student, teacher=opts.teacher), None
    args += ["--model", model]
    if weights:
        args += ["--weights", weights]
    args += ["--data", opts.data]
    if opts.classes:
        args += ["--classes", opts.classes]
    epochs = max(1, round(opts.epochs * setting.epochs_scale))
    args += ["--epochs", str(epochs), "--imgsz", str(opts.imgsz), "--batch", str(opts.batch), "--workers", str(opts.workers)]
    if opts.device not in (None, ""):
        args += ["--device", str(opts.device)]
    args += ["--seed", str(seed), "--project", str(out_dir.parent), "--name", out_dir.name, "--exist-ok"]
    args += list(setting.args)
    if setting.teacher:
        args += opts.distill_args
    if getattr(opts, "protocol", "coco") != "coco":
        args += ["--protocol", opts.protocol]
    for key, value in {**opts.overrides, **dict(setting.overrides)}.items():
        args += ["-o", f"{key}={value}"]
    return args


def eval_command(out_dir: Path, opts: StudyOptions, setting: Setting | None = None) -> list[str] | None:
    """``sodet val`` of the run's last weights on the test split (none without one, unless the setting scores its
    own way: then on the validation split): the final numbers come from images no choice was made on; the run's
    classes travel in its checkpoint."""
    extra = list(setting.eval_args) if setting else []
    if not opts.test_split and not extra:
        return None
    folder = f"{FINAL}-{setting.name}" if extra else FINAL
    args = ["val", "--model", str(out_dir / "weights" / "last.pt"), "--data", opts.data, "--split", opts.test_split or "val",
            "--imgsz", str(opts.imgsz), "--batch", str(opts.batch), "--out", str(out_dir / folder), "--no-size-buckets", *extra]
    if getattr(opts, "protocol", "coco") != "coco":
        args += ["--protocol", opts.protocol]
    if opts.device not in (None, ""):
        args += ["--device", str(opts.device)]
    return args


def build_cells(study_dir: Path, settings: Sequence[Setting], seeds: Sequence[int], opts: StudyOptions,
                all_settings: dict[str, Setting]) -> list[Cell]:
    """Seed by seed (a killed study leaves complete seeds), each setting after the teacher it needs. Teacher
    cells of settings not asked for are built (as dependencies) but only returned when asked for or needed."""
    wanted = {s.name for s in settings}
    needed = set(wanted) | {s.teacher for s in settings if s.teacher}
    order = [s for s in all_settings.values() if s.name in needed]
    cells: list[Cell] = []
    once: dict[str, Cell] = {}  # the single run of a one_run setting (seed 0)
    for seed in seeds:
        by_name: dict[str, Cell] = {}
        for setting in order:
            if setting.one_run and setting.name in once:
                by_name[setting.name] = once[setting.name]
                continue
            run_seed = 0 if setting.one_run else seed
            out_dir = study_dir / setting.name / f"seed{run_seed}"
            teacher = by_name.get(setting.teacher) if setting.teacher else None
            command = cell_command(setting, run_seed, out_dir, opts, teacher.weights if teacher else None)
            cell = Cell(setting, run_seed, out_dir, command, teacher_cell=teacher,
                        eval_command=eval_command(out_dir, opts, setting))
            same_key = _without_output(command)
            cell.same_as = next((c.same_as or c for c in by_name.values() if _without_output(c.command) == same_key), None)
            if cell.same_as is not None and cell.eval_command:  # scored its own way on the identical run's weights
                cell.eval_command = eval_command(cell.same_as.run_dir, opts, setting)
            by_name[setting.name] = cell
            if setting.one_run:
                once[setting.name] = cell
            cells.append(cell)
    return cells


OUTPUT_ONLY = ("val=", "plots=")  # engine options that change what a run writes, never its weights (validation
# leaves the random generators as it found them: SodetTrainer.validate)


def _without_output(command: list[str]) -> tuple[str, ...]:
    """A command without what only decides where and what it writes: two cells whose commands agree on the rest
    train the same weights."""
    out, skip = [], False
    for i, a in enumerate(command):
        if skip:
            skip = False
            continue
        if a in {"--project", "--name"} or (a == "-o" and i + 1 < len(command) and command[i + 1].startswith(OUTPUT_ONLY)):
            skip = True
            continue
        out.append(a)
    return tuple(out)


# manifest ----------------------------------------------------------------------------------------------------
def read_manifest(study_dir: Path) -> dict | None:
    path = Path(study_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SodetError(f"cannot read {path}: {e}") from None


def write_manifest(study_dir: Path, manifest: dict) -> None:
    from sodet.files import write_text_atomic

    write_text_atomic(Path(study_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # never half a manifest


def check_same_options(manifest: dict, opts: StudyOptions, study_dir: Path) -> None:
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(StudyOptions) if f.default is not dataclasses.MISSING}
    old = manifest.get("options", {})
    new = opts.to_dict()
    # an option a study's manifest lacks was written by a sodet without it: the option's default is what ran
    diffs = [f"{k} {old.get(k, defaults.get(k))!r} -> {new[k]!r}" for k in new if old.get(k, defaults.get(k)) != new[k]]
    if diffs:
        raise SodetError(
            f"{study_dir} was run with other options ({'; '.join(diffs)}): its runs would not be comparable; "
            "pass --name for a new study or the same options to resume"
        )


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux): float kernels differ between CPU models, so a run's
    numbers reproduce exactly on the same model only."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    cpu = cpu_model()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.node()}: {platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU cores{gpu}"


def provenance() -> dict:
    """What ran a study: sodet's git commit (and whether its tree had changes), the versions that decide the
    numbers, the machine."""
    from importlib.metadata import PackageNotFoundError, version

    import sodet

    versions = {"python": platform.python_version(), "sodet": sodet.__version__}
    for dist in ("torch", "torchvision", "ultralytics", "pixeltable-yolox", "pycocotools", "faster-coco-eval"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    source = Path(sodet.__file__).resolve().parents[1]
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            status = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True,
                                    timeout=10).stdout
            dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": commit or "unknown (not a git checkout)", "git_dirty": dirty, "versions": versions,
            "machine": machine()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# running -----------------------------------------------------------------------------------------------------
Runner = Callable[[list[str], Path], int]


def run_cli(args: list[str], log: Path) -> int:
    """Run ``python -m sodet.cli ARGS`` with its output in ``log``; returns the exit code."""
    from sodet.eval.backends import run_process

    return run_process(args, log)


@dataclass
class Study:
    """A study folder's cells and what happened to them."""

    dir: Path
    cells: list[Cell]
    records: dict[str, dict] = field(default_factory=dict)


def run_study(
    study_dir: Path, cells: list[Cell], manifest: dict, *, runner: Runner | None = None,
    echo: Callable[[str], None] = print, backend=None, on_done: Callable[[int, int], None] | None = None,
) -> Study:
    """Run every unfinished cell (a failure is recorded and the rest go on; a distillation whose teacher did not
    finish is skipped; a trained run not yet scored is only scored) on ``backend`` (``sodet.eval.backends``:
    sequential by default), each cell once the cells it depends on are finished. ``study.json`` is rewritten
    (atomically) after each cell; Ctrl-C stops the running cells and keeps the finished ones."""
    from sodet.eval.backends import SequentialBackend

    backend = backend or SequentialBackend(runner, echo)
    study = Study(study_dir, cells, manifest.setdefault("cells", {}))
    commit = (manifest.get("provenance") or {}).get("git_commit")
    tags = {cell.key: f"[{i}/{len(cells)}] {cell.key}" for i, cell in enumerate(cells, 1)}
    for cell in cells:
        record = study.records.setdefault(cell.key, {})
        record.update(setting=cell.setting.name, seed=cell.seed, command=cell.shell())
        if cell.eval_command:
            record["eval_command"] = cell.eval_shell()
    pending, running = list(cells), {}
    done_count, total = 0, len(cells)

    def save():
        manifest["updated"] = now()
        write_manifest(study_dir, manifest)
        if on_done is not None:
            on_done(done_count, total)

    try:
        while pending or running:
            busy = {id(c) for c in pending} | {id(c) for c in running.values()}
            ready = []
            handle_of = {id(c): h for h, c in running.items()}
            for cell in list(pending):
                if len(running) + len(ready) >= backend.slots:
                    break
                if any(id(d) in busy for d in (cell.teacher_cell, cell.same_as) if d is not None and d is not cell):
                    # a backend that chains (Ray) takes a distillation at once, to start after its teacher's task
                    chain = backend.chains and cell.same_as is None and id(cell.teacher_cell) in handle_of
                    if not chain:
                        continue
                pending.remove(cell)  # still busy for the cells after it in this pass: it has not run yet
                after = [handle_of[id(cell.teacher_cell)]] if cell.teacher_cell is not None and id(cell.teacher_cell) in handle_of else []
                job = _decide(study_dir, cell, study.records[cell.key], tags[cell.key], commit, echo, chained=bool(after))
                if job is None:
                    busy.discard(id(cell))  # decided without running: its dependents may go on
                    done_count += 1
                    save()
                else:
                    ready.append((cell, job, after))
            if ready:
                handles = backend.submit([job for _, job, _ in ready], after=[a for _, _, a in ready])
                for handle, (cell, _, _) in zip(handles, ready):
                    running[handle] = cell
                    handle_of[id(cell)] = handle
                    if backend.name in {"ray", "slurm"}:  # the worker's own lines stay on its node
                        echo(f"{tags[cell.key]}: submitted to {backend.name}")
            if running:
                for handle, result in backend.wait(list(running)):
                    cell = running.pop(handle)
                    record = study.records[cell.key]
                    ok = result.pop("ok", False)
                    skipped = result.pop("skipped", False)
                    if ok:
                        record.pop("error", None)
                    record.update(result)
                    record["status"] = DONE if ok and cell.finished() else SKIPPED if skipped else FAILED
                    done_count += 1
                    where = f" on {record.get('host')}" + (f", GPU {record['gpu']}" if record.get("gpu") else "")
                    echo(f"{tags[cell.key]}: {record['status']}{where} ({done_count}/{total} cells)")
                    save()
            elif pending and not ready:  # cannot happen with an acyclic matrix; never spin
                raise SodetError(f"cells {', '.join(c.key for c in pending)} wait on each other")
    except KeyboardInterrupt:
        backend.cancel()
        save()
        raise
    finally:
        backend.close()
    save()
    return study


def _decide(study_dir: Path, cell: Cell, record: dict, tag: str, commit: str | None, echo, chained: bool = False):
    """What a cell needs now: nothing (recorded here: an identical cell's run stands for it, it finished before,
    or its teacher failed), or a CellJob to run. ``chained``: its teacher is still running, on a backend that
    starts the job after it (the job checks the teacher's run at start)."""
    from sodet.eval.backends import CellJob

    if cell.same_as is not None and not (cell.setting.eval_args and cell.same_as.trained()):
        record.update(same_as=cell.same_as.key)
        target = (read_manifest(study_dir) or {}).get("cells", {}).get(cell.same_as.key, {})
        record["status"] = SAME if cell.same_as.finished() else target.get("status", FAILED)
        if cell.same_as.finished():
            _link(cell.dir, cell.same_as.run_dir)
        echo(f"{tag}: same command as {cell.same_as.key}, its run stands for this one")
        return None
    if cell.same_as is None and cell.finished():
        record["status"] = DONE
        echo(f"{tag}: finished before, not re-run")
        return None
    if cell.teacher_cell is not None and not chained and not cell.teacher_cell.trained():
        record.update(status=SKIPPED, error=f"its teacher {cell.teacher_cell.key} did not finish")
        echo(f"{tag}: skipped, teacher {cell.teacher_cell.key} did not finish")
        return None
    if cell.same_as is not None:  # the identical run's weights, scored this setting's way (e.g. sliced)
        record.pop("same_as", None)
        record["trained_as"] = cell.same_as.key
        _link(cell.dir, cell.same_as.run_dir)
        if cell.finished():
            record["status"] = DONE
            return None
    return CellJob(
        key=cell.key, tag=tag, study_dir=str(study_dir), dir=str(cell.dir), run_dir=str(cell.run_dir),
        final_dir=str(cell.final_dir), log_name=f"{cell.setting.name}-seed{cell.seed}",
        command=None if cell.same_as is not None or cell.trained() else cell.command, eval_command=cell.eval_command,
        commit=commit,
        requires={str(cell.teacher_cell.run_dir / METRICS_FILE): f"its teacher {cell.teacher_cell.key}"} if cell.teacher_cell else {},
    )


def _link(link: Path, target: Path) -> None:
    """The identical cell's folder, as a relative symlink (where the filesystem has them; the manifest says it)."""
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    except OSError:
        pass


def plan(
    *, student: str, teacher: str | None, student_weights: str | None, teacher_weights: str | None, data: str | None,
    classes: str | None, seeds: int | None, profile: str, only: str | None, project: str, name: str | None,
    epochs: int | None = None, imgsz: int | None = None, batch: int | None = None, workers: int | None = None,
    device: str | None = None, overrides: dict | None = None, distill_args: list[str] | None = None,
    test_split: str | None = None, protocol: str | None = None,
) -> tuple[Path, StudyOptions, list[Setting], list[int], list[Cell], list[str]]:
    """Resolve profile and options into the study folder, its settings, seeds and cells; notes for the user."""
    config = study_config()
    all_settings = settings_from(config)
    check_models(student, teacher)
    values, _ = resolve_profile(
        profile, config, data=data, seeds=seeds, epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
        device=device, overrides=overrides, distill_args=distill_args, test_split=test_split,
    )
    notes = []
    if only:
        names = [s.strip() for s in only.split(",") if s.strip()]
        unknown = [n for n in names if n not in all_settings]
        if unknown:
            raise SodetError(f"--only: unknown setting {', '.join(unknown)} (known: {', '.join(all_settings)})")
        chosen = [all_settings[n] for n in all_settings if n in names]
        extra = sorted({s.teacher for s in chosen if s.teacher} - set(names))
        if extra:
            notes.append(f"added {', '.join(extra)}: the distillation settings asked for need their teacher runs")
            chosen = [all_settings[n] for n in all_settings if n in set(names) | set(extra)]
    else:
        chosen = list(all_settings.values())
    n_seeds = int(values["seeds"] if values["seeds"] is not None else 1)
    if n_seeds < 1:
        raise SodetError(f"--seeds must be at least 1, got {n_seeds}")
    for key in ("epochs", "imgsz", "batch"):
        if values[key] is None or int(values[key]) < 1:
            raise SodetError(f"--{key} must be a positive integer, got {values[key]!r}")
    opts = StudyOptions(
        student=student, teacher=teacher or student, student_weights=_path_or_name(student_weights),
        teacher_weights=_path_or_name(teacher_weights), data=resolve_data(values["data"], profile), classes=classes,
        profile=profile, epochs=int(values["epochs"]), imgsz=int(values["imgsz"]), batch=int(values["batch"]),
        workers=int(values["workers"] or 0), device=None if values["device"] is None else str(values["device"]),
        overrides=values["overrides"], distill_args=values["distill_args"],
    )
    opts.test_split = resolve_test_split(opts.data, values.get("test_split") or "auto")
    if protocol:
        from sodet.eval.protocols import get_protocols

        get_protocols(protocol)
        opts.protocol = protocol
    notes.append(f"final numbers on the '{opts.test_split}' split" if opts.test_split else
                 "no test split in the data: final numbers on the validation split (the report says so)")
    study_name = name or default_name(opts)
    study_dir = (Path(project) / study_name).resolve()
    seed_list = list(range(n_seeds))
    cells = build_cells(study_dir, chosen, seed_list, opts, all_settings)
    return study_dir, opts, chosen, seed_list, cells, notes


def resolve_test_split(data: str, requested: str) -> str | None:
    """The split the final numbers come from: ``auto`` is ``test`` where the data has one; ``none`` scores on the
    validation split (as every run's own final validation does); a name must exist."""
    path = Path(data)
    if path.suffix.lower() in {".yaml", ".yml"}:
        from ultralytics.utils import YAML

        splits = {k for k in ("train", "val", "test") if YAML.load(path).get(k)}
        has = lambda s: s in splits  # noqa: E731
    else:
        has = lambda s: (path / "annotations" / f"{s}.json").is_file() and (path / "images" / s).is_dir()  # noqa: E731
    if requested in (None, "", "none"):
        return None
    if requested == "auto":
        return "test" if has("test") else None
    if not has(requested):
        raise SodetError(f"--test-split {requested}: {data} has no such split")
    return requested


def check_models(*models: str | None) -> None:
    """Registry names or existing checkpoints: refused here, not once per cell (nothing is downloaded yet)."""
    from sodet.models.resolve import resolve_model

    for model in models:
        if model is not None:
            resolve_model(model, fetch=False)


def _path_or_name(value: str | None) -> str | None:
    """Weights given as a path are made absolute (the cells' commands must work from anywhere)."""
    if value in (None, ""):
        return None
    return str(Path(value).resolve()) if Path(value).exists() else value


def default_name(opts: StudyOptions) -> str:
    """<student>-<data>-<profile>: the same command finds the same folder again, so it resumes."""
    data = Path(opts.data)
    data_name = data.stem if data.suffix.lower() in {".yaml", ".yml"} else data.name
    return f"{Path(opts.student).stem}-{data_name}-{opts.profile}"


def run(
    *, console, dry_run: bool = False, overrides: list[str] | None = None, distill_args: str | None = None,
    primary: str | None = None, backend: str = "local", backend_options: dict | None = None,
    on_done: Callable[[int, int], None] | None = None, **given,
) -> Path | None:
    """``sodet study``: plan the cells and run the unfinished ones (or print them with ``dry_run``). ``given``: the
    options of ``plan``. Returns the study folder (None for a dry run), for the report to be rendered from."""
    from sodet.options import check_known_engine_keys, parse_overrides

    study_dir, opts, chosen, seed_list, cells, notes = plan(
        overrides=parse_overrides(overrides), distill_args=shlex.split(distill_args) if distill_args else None, **given,
    )
    check_known_engine_keys(opts.overrides)
    for note in notes:
        console.print(f"note: {note}")
    manifest = read_manifest(study_dir)
    if manifest is not None:
        check_same_options(manifest, opts, study_dir)
    from sodet.eval.backends import BACKENDS

    if backend not in BACKENDS:
        raise SodetError(f"--backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if dry_run:
        if backend == "slurm":
            o = backend_options or {}
            first = [c for c in cells if c.teacher_cell is None and c.same_as is None and not c.finished()]
            later = [c for c in cells if c.teacher_cell is not None and not c.finished()]
            print(f"# slurm: one job array of {len(first)} cells (partition {o.get('slurm_partition') or '(default)'}, "
                  f"{o.get('slurm_gpus_per_node', 1)} GPU per job, timeout {o.get('slurm_timeout', 240)} min), then "
                  f"{len(later)} distillation cells, each after its teacher's job")
        for cell in cells:
            state = ("finished" if cell.finished() else "") if cell.same_as is None else (
                f"trained as {cell.same_as.key}, scored its own way" if cell.setting.eval_args else f"same run as {cell.same_as.key}")
            print(f"# {cell.key}" + (f" ({state})" if state else ""))
            print(cell.shell())
            if cell.eval_command and (cell.same_as is None or cell.setting.eval_args):
                print(cell.eval_shell())
        return None
    study_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest or {"created": now()}
    invocation = {"started": now(), **provenance(),
                  "command": shlex.join(["sodet", "study", *sys.argv[2:]]) if sys.argv[1:2] == ["study"] else None}
    manifest.setdefault("invocations", []).append(invocation)
    manifest.update(
        options=opts.to_dict(), machine=invocation["machine"], provenance=invocation,
        primary=primary or manifest.get("primary") or study_config().get("primary", "APs"),
        settings=_merge_order(manifest.get("settings", []), [s.name for s in settings_from(study_config()).values()
                                                              if any(c.setting.name == s.name for c in cells)]),
        seeds=sorted(set(manifest.get("seeds", [])) | set(seed_list)),
        command=invocation["command"],
    )
    write_manifest(study_dir, manifest)
    from sodet.eval.backends import make_backend

    backend_options = dict(backend_options or {})
    if backend == "local" and str(opts.device).lower() == "cpu" and not backend_options.get("gpus"):
        backend_options["jobs"] = backend_options.get("jobs") or 1  # CPU cells: side by side only when asked (--jobs)
    runner = make_backend(backend, study_dir=study_dir, echo=console.print, **backend_options)
    console.print(f"running on: {runner.describe()}")
    run_study(study_dir, cells, manifest, echo=console.print, backend=runner, on_done=on_done)
    return study_dir


def _merge_order(old: list[str], new: list[str]) -> list[str]:
    """The settings a study folder holds, in the matrix's order."""
    names = set(old) | set(new)
    return [s for s in study_config()["settings"] if s in names]
