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
    study_dir = study.run(
        console=console, dry_run=dry_run, overrides=override, distill_args=distill_args, student=student,
        teacher=teacher, student_weights=student_weights, teacher_weights=teacher_weights, data=data, classes=classes,
        seeds=seeds, profile=profile, only=only, project=project, name=name, epochs=epochs, imgsz=imgsz, batch=batch,
        workers=workers, device=device, test_split=test_split, primary=primary, protocol=protocol,
    )
    if study_dir is not None:
        for path in render_report(study_dir, console, primary=primary):
            console.print(f"wrote {path}")
