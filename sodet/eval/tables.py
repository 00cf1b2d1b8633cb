"""The 12 COCO numbers as a table, overall and per class: rich for the terminal, plain text for logs.

A bucket without ground truth shows "n/a", never 0: a 0 would read as a total failure on that size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from sodet.eval.cocoeval import METRIC_KEYS

NOT_AVAILABLE = "n/a"


def format_value(value: float | None, digits: int = 3) -> str:
    """A metric as text; None (or COCO's -1) is 'n/a'."""
    if value is None or value == -1:
        return NOT_AVAILABLE
    return f"{value:.{digits}f}"


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """('all', 12 cells) followed by one row per class."""
    rows = [("all", [format_value(metrics.get(k)) for k in METRIC_KEYS])]
    for name, values in metrics.get("per_class", {}).items():
        rows.append((str(name), [format_value(values.get(k)) for k in METRIC_KEYS]))
    return rows


def format_table(metrics: Mapping[str, Any], title: str | None = None) -> Table:
    """A rich Table: the overall row first (bold), then one row per class."""
    table = Table(title=title)
    table.add_column("class", style="bold")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    for i, (name, cells) in enumerate(metric_rows(metrics)):
        table.add_row(name, *cells, style="bold" if i == 0 else None, end_section=i == 0)
    return table


def format_text(metrics: Mapping[str, Any]) -> str:
    """The same table as aligned plain text (no colour codes), for logs and files."""
    rows = metric_rows(metrics)
    name_width = max(len("class"), *(len(name) for name, _ in rows))
    widths = [max(len(key), *(len(cells[j]) for _, cells in rows)) for j, key in enumerate(METRIC_KEYS)]
    lines = ["  ".join([f"{'class':<{name_width}}", *(f"{k:>{w}}" for k, w in zip(METRIC_KEYS, widths))])]
    for name, cells in rows:
        lines.append("  ".join([f"{name:<{name_width}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]))
    return "\n".join(lines)


def before_after_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """The 12 numbers of the starting weights and of the trained ones ("AP before -> after"), as plain text."""
    lines = [f"{'':<7}{'before':>8}  ->  {'after':>7}  {'change':>7}"]
    for k in METRIC_KEYS:
        b, a = before.get(k), after.get(k)
        change = "" if b is None or a is None else f"{a - b:+.3f}"
        lines.append(f"{k:<7}{format_value(b):>8}  ->  {format_value(a):>7}  {change:>7}")
    return "\n".join(lines)


def format_protocol_table(name: str, block: Mapping[str, Any]) -> Table:
    """One protocol's numbers (``metrics["protocols"][name]``), overall and per class."""
    keys = [k for k in block if k != "per_class"]
    table = Table(title=f"protocol {name}")
    table.add_column("class", style="bold")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_row("all", *(format_value(block.get(k)) for k in keys), style="bold", end_section=True)
    for cls, values in (block.get("per_class") or {}).items():
        table.add_row(str(cls), *(format_value(values.get(k)) for k in keys))
    return table
