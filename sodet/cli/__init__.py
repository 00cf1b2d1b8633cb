"""The ``sodet`` command line: train, distill, val, predict, export, compare, study, zoo and dataset tools.

Bad input ends in one line on stderr and exit code 1, never a traceback (``SODET_DEBUG=1`` shows it). Commands
live by subject (``commands.py``, ``study.py``, ``compare.py``, ``data.py``) and call ``sodet.api`` / ``sodet.eval``
functions; this module only assembles them.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console

import sodet  # noqa: F401  (switches the engine offline before it is imported)
from sodet.cli import commands
from sodet.cli.compare import compare_command
from sodet.cli.data import data_app
from sodet.cli.study import study_command
from sodet.errors import SodetError

app = typer.Typer(
    help="sodet: make lightweight detectors better at small objects (copy-paste oversampling, small-object "
    "weighted box loss, channel-wise distillation, size-bucket COCO evaluation, seeded studies) on the Ultralytics "
    "engine.",
    no_args_is_help=True,
    add_completion=False,
)
for name in ("train", "distill", "val", "predict", "export", "zoo"):
    app.command(name)(getattr(commands, name))
app.command("compare")(compare_command)
app.command("study")(study_command)
app.add_typer(data_app, name="data")


def show_version(value: bool) -> None:
    if value:
        Console().print(f"sodet {sodet.__version__}")
        raise typer.Exit()


@app.callback()
def app_options(
    version: Optional[bool] = typer.Option(None, "--version", callback=show_version, is_eager=True, help="show the version and exit"),
):
    pass


def main() -> None:
    """Entry point: typer handles usage errors, --help and exit codes; anything else is one line, exit code 1."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001  (SystemExit from typer passes through)
        if os.environ.get("SODET_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        prefix = "" if isinstance(e, SodetError) else f"{type(e).__name__}: "
        Console(stderr=True).print(f"[red]error:[/red] {prefix}{msg}", highlight=False, soft_wrap=True)
        sys.exit(1)
