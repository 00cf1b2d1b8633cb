"""``sodet compare``: evaluated runs side by side (``sodet.eval.compare`` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from sodet.eval.compare import compare, default_out_dir, find_metrics, run_names


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or metrics.json files; the first is the baseline.")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Output directory (default: runs/compare/<names>).")
    ] = None,
    protocol: Annotated[
        Optional[str], typer.Option("--protocol", help="compare a size protocol's numbers (aitod, tinyperson, edges)")
    ] = None,
) -> None:
    """Compare evaluated runs: AP/AR per object size (or a size protocol's buckets) with the relative change vs the
    first run."""
    if out is None:
        out = default_out_dir(run_names([find_metrics(Path(p)) for p in runs]))
    comparison = compare(runs, out, protocol)
    console = Console()
    console.print(comparison.to_rich())
    for path in comparison.files.values():
        console.print(f"wrote {path}")
