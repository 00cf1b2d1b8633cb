"""``sodet study``: the experiment matrix for N seeds (``sodet.eval.study`` runs it, ``study_report`` renders it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def study_command(
    student: Annotated[str, typer.Option("--student", help="student model: registry name (sodet zoo) or .pt")] = "yolox-nano",
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="teacher model (default: the student: self-distillation)")] = None,
    student_weights: Annotated[Optional[str], typer.Option("--student-weights", help="student's initial weights (default: its shipped ones)")] = None,
    teacher_weights: Annotated[Optional[str], typer.Option("--teacher-weights", help="teacher's initial weights (default: its shipped ones)")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="COCO folder or data YAML (default: the profile's)")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="class names, e.g. person,car")] = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="seeds 0..N-1 per setting (default: the profile's)")] = None,
    profile: Annotated[str, typer.Option("--profile", help="smoke | cpu | gpu (cfg/study.yaml)")] = "smoke",
    only: Annotated[Optional[str], typer.Option("--only", help="settings to run, e.g. baseline,cp,cwd3")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the cells' commands, run nothing")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="re-render the report of a study folder")] = None,
    project: Annotated[str, typer.Option("--project", help="output root")] = "runs/study",
    name: Annotated[Optional[str], typer.Option("--name", help="study name (default: <student>-<data>-<profile>, so the same command resumes)")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="(default: the profile's)")] = None,
    imgsz: Annotated[Optional[int], typer.Option("--imgsz", help="(default: the profile's)")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="(default: the profile's)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="(default: the profile's)")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="(default: the profile's)")] = None,
    override: Annotated[Optional[list[str]], typer.Option("--override", "-o", help="engine argument KEY=VALUE for every cell")] = None,
    distill_args: Annotated[Optional[str], typer.Option("--distill-args", help="extra options of the distill cells, e.g. '--tau 2'")] = None,
    primary: Annotated[Optional[str], typer.Option("--primary", help="the report's primary metric, COCO's or a protocol's (e.g. APvt) [cfg/study.yaml: APs]")] = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", help="size protocols every cell is scored with: aitod, tinyperson")] = None,
    backend: Annotated[str, typer.Option("--backend", help="where cells run: local (one per GPU, or --jobs N on CPU) | ray | slurm | sequential")] = "local",
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="local: cells side by side on CPU; ray: CPUs of a local Ray instance")] = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="local: the GPUs to use, e.g. 0,1 [all visible]")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="ray: auto or HOST:PORT [a local instance]")] = None,
    cpus_per_cell: Annotated[float, typer.Option("--cpus-per-cell", help="ray on CPU: CPUs each cell asks for")] = 1.0,
    slurm_partition: Annotated[Optional[str], typer.Option("--slurm-partition", help="slurm: partition")] = None,
    slurm_gpus_per_node: Annotated[int, typer.Option("--slurm-gpus-per-node", help="slurm: GPUs per job")] = 1,
    slurm_timeout: Annotated[int, typer.Option("--slurm-timeout", help="slurm: minutes per job")] = 240,
    test_split: Annotated[Optional[str], typer.Option("--test-split", help="split of the final numbers: auto (test where the data has one), none (val), or a name")] = None,
) -> None:
    """The experiment matrix (baseline, copy-paste and its compute-matched controls, weighted loss, teachers, CWD, ...)
    for N seeds, final numbers on the test split; runs/study/<name>/report.md gives each setting's paired difference
    with its confidence intervals and a Holm-corrected verdict on the primary metric."""
    from rich.console import Console

    from sodet.eval import study
    from sodet.eval.study_report import render_report

    console = Console(highlight=False, soft_wrap=True)  # commands stay one line: they are meant to be copied
    if report is not None:
        for path in render_report(report, console, primary=primary):
            console.print(f"wrote {path}")
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    backend_options = {
        "jobs": jobs, "gpus": [g.strip() for g in gpus.split(",")] if gpus else None, "ray_address": ray_address,
        "cpus_per_cell": cpus_per_cell, "slurm_partition": slurm_partition, "slurm_gpus_per_node": slurm_gpus_per_node,
        "slurm_timeout": slurm_timeout,
    }
    given = dict(
        overrides=override, distill_args=distill_args, backend=backend, backend_options=backend_options, student=student,
        teacher=teacher, student_weights=student_weights, teacher_weights=teacher_weights, data=data, classes=classes,
        seeds=seeds, profile=profile, only=only, project=project, name=name, epochs=epochs, imgsz=imgsz, batch=batch,
        workers=workers, device=device, test_split=test_split, primary=primary, protocol=protocol,
    )
    if dry_run:
        study.run(console=console, dry_run=True, **given)
        return
    bar = Progress(TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task("cells", total=None)
    with bar:  # one line per cell start / end above the bar of cells done
        study_dir = study.run(console=bar.console, on_done=lambda done, total: bar.update(task, completed=done, total=total), **given)
    for path in render_report(study_dir, console, primary=primary):
        console.print(f"wrote {path}")
