"""``sodet compare``: runs side by side, each number with its relative change against the first run.

Modelled on the reference study's results table (AP and AR per object size, change vs baseline in %). Numbers
from different ground truth, split or classes are not comparable, so such runs are refused, not tabulated.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from sodet.errors import SodetError
from sodet.eval.metrics_io import DATASET_KEYS, METRICS_FILE, metric_value, protocol_keys, read_metrics
from sodet.eval.tables import NOT_AVAILABLE, format_value

COMPARE_KEYS = ("AP", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl")
SIZE_KEYS = {"AP": ("APs", "APm", "APl"), "AR": ("ARs", "ARm", "ARl")}
BEST_STYLE = "bold green"


@dataclass
class RunRecord:
    """One compared run: its display name, where its metrics came from, and the metrics.json content."""

    name: str
    metrics_path: Path
    metrics: dict[str, Any]


@dataclass
class Comparison:
    """The compared runs (the first is the baseline) and, once saved, the files written."""

    runs: list[RunRecord]
    keys: tuple[str, ...] = COMPARE_KEYS
    files: dict[str, Path] = field(default_factory=dict)
    protocol: str | None = None  # the size protocol whose numbers are compared (None: COCO's buckets)

    def value(self, row: int, key: str) -> float | None:
        return metric_value(self.runs[row].metrics, key, self.protocol)

    def change(self, row: int, key: str) -> float | None:
        """Relative change vs the baseline in %, or None (baseline row, n/a on either side, baseline 0)."""
        base, value = self.value(0, key), self.value(row, key)
        if row == 0 or base is None or value is None or base == 0:
            return None
        return (value - base) / base * 100.0

    def best(self, key: str) -> set[int]:
        """Rows holding the column's highest value (ties all count); none when fewer than two runs have a value."""
        values = {i: self.value(i, key) for i in range(len(self.runs))}
        values = {i: v for i, v in values.items() if v is not None}
        if len(values) < 2:
            return set()
        top = max(values.values())
        return {i for i, v in values.items() if v == top}

    def cell(self, row: int, key: str) -> str:
        """'0.219 (+28.8%)'; the baseline row and n/a cells show the value only."""
        text = format_value(self.value(row, key))
        change = self.change(row, key)
        return text if change is None else f"{text} ({change:+.1f}%)"

    def to_rich(self) -> Table:
        table = Table(title=f"vs baseline {self.runs[0].name}")
        table.add_column("run", style="bold", overflow="fold")
        for key in self.keys:
            table.add_column(key, justify="right")
        best = {key: self.best(key) for key in self.keys}
        for i, run in enumerate(self.runs):
            cells = []
            for key in self.keys:  # the change on a second line keeps 9 columns inside an 80-column terminal
                value, change = format_value(self.value(i, key)), self.change(i, key)
                text = value if change is None else f"{value}\n[dim]{change:+.1f}%[/dim]"
                cells.append(f"[{BEST_STYLE}]{text}[/]" if i in best[key] else text)
            table.add_row(run.name, *cells, end_section=True)
        return table

    def to_markdown(self) -> str:
        dataset = self.runs[0].metrics["dataset"]
        best = {key: self.best(key) for key in self.keys}
        lines = [
            f"Baseline: {self.runs[0].name}. Each cell: value (relative change vs the baseline); best per column in "
            f"bold; {NOT_AVAILABLE}: no ground truth in that size bucket.",
            f"Data: {dataset.get('gt')} (split {dataset.get('split')}, classes {', '.join(dataset.get('classes', []))}, "
            f"{dataset.get('num_images')} images).",
            "",
            "| run | " + " | ".join(self.keys) + " |",
            "|---|" + "---|" * len(self.keys),
        ]
        for i, run in enumerate(self.runs):
            cells = [f"**{self.cell(i, k)}**" if i in best[k] else self.cell(i, k) for k in self.keys]
            lines.append(f"| {_markdown_escape(run.name)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One row per run: the value of each column and its change in % (n/a where undefined)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["run", "metrics", *(c for k in self.keys for c in (k, f"{k}_change_pct"))])
        for i, run in enumerate(self.runs):
            row: list[str] = [run.name, str(run.metrics_path)]
            for key in self.keys:
                value, change = self.value(i, key), self.change(i, key)
                row.append(NOT_AVAILABLE if value is None else repr(value))
                row.append("" if i == 0 else NOT_AVAILABLE if change is None else f"{change:.2f}")
            writer.writerow(row)
        return buffer.getvalue()

    def save_plot(self, path: Path) -> None:
        """Bars of AP and AR per size bucket, one bar per run; n/a buckets are left empty and labelled."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend switch
        from matplotlib.figure import Figure

        if self.protocol:
            return self.save_protocol_plot(path)
        figure = Figure(figsize=(max(8.0, 2.0 + 1.2 * len(self.runs)), 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, 2, sharey=True)
        width = 0.8 / len(self.runs)
        for ax, (family, keys) in zip(axes, SIZE_KEYS.items()):
            for i, run in enumerate(self.runs):
                xs = [j - 0.4 + width * (i + 0.5) for j in range(len(keys))]
                values = [self.value(i, k) for k in keys]
                ax.bar(xs, [float("nan") if v is None else v for v in values], width, label=run.name)
                for x, v in zip(xs, values):
                    if v is None:
                        ax.text(x, 0.01, NOT_AVAILABLE, ha="center", va="bottom", fontsize=7, rotation=90)
            ax.set_xticks(range(len(keys)), ["small", "medium", "large"])
            ax.set_xlim(-0.5, len(keys) - 0.5)  # all-n/a bars would not widen the axis
            ax.set_title(f"{family} by object size")
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("COCO metric (IoU .50:.95)")
        axes[1].legend(fontsize=8, loc="upper left")
        figure.savefig(path, dpi=120)

    def save_protocol_plot(self, path: Path) -> None:
        """Bars of the protocol's numbers, one bar per run."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(max(8.0, 1.0 + 0.6 * len(self.keys) * len(self.runs) / 2), 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        width = 0.8 / len(self.runs)
        for i, run in enumerate(self.runs):
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(self.keys))]
            ax.bar(xs, [float("nan") if (v := self.value(i, k)) is None else v for k in self.keys], width, label=run.name)
        ax.set_xticks(range(len(self.keys)), self.keys, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"protocol {self.protocol}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        figure.savefig(path, dpi=120)

    def save(self, out_dir: Path) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files = {
            "markdown": out_dir / "compare.md",
            "csv": out_dir / "compare.csv",
            "plot": out_dir / "compare.png",
        }
        self.files["markdown"].write_text(self.to_markdown())
        self.files["csv"].write_text(self.to_csv())
        self.save_plot(self.files["plot"])
        return self.files


def compare(paths: list[Path], out: Path | None = None, protocol: str | None = None) -> Comparison:
    """Load the runs' metrics (run directories or metrics.json files; the first is the baseline), refuse runs
    scored on different data, and write compare.md, compare.csv and compare.png to ``out`` when given. With
    ``protocol``, the protocol's numbers (every run must have been scored with it: ``sodet val --protocol``)."""
    if not paths:
        raise SodetError("compare needs at least one run directory or metrics.json")
    metrics_paths = [find_metrics(Path(p)) for p in paths]
    names = run_names(metrics_paths)
    runs = [RunRecord(name, path, read_metrics(path)) for name, path in zip(names, metrics_paths)]
    check_same_data(runs)
    if protocol and protocol != "coco":
        keys = protocol_keys(runs[0].metrics, protocol)
        lacking = [r.name for r in runs if protocol_keys(r.metrics, protocol) != keys or not keys]
        if lacking:
            raise SodetError(f"runs {', '.join(lacking)} were not scored with protocol {protocol}: sodet val --protocol {protocol}")
        comparison = Comparison(runs, keys=tuple(keys), protocol=protocol)
    else:
        comparison = Comparison(runs)
    if out is not None:
        comparison.save(Path(out))
    return comparison


def find_metrics(path: Path) -> Path:
    """The metrics.json a path stands for: the file itself, DIR/metrics.json, or the single one below DIR."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise SodetError(f"no such run directory or metrics file: {path}")
    direct = path / METRICS_FILE
    if direct.is_file():
        return direct
    found = sorted(path.rglob(METRICS_FILE))
    if not found:
        raise SodetError(f"no {METRICS_FILE} in {path}: evaluate the run first (sodet val)")
    if len(found) > 1:
        raise SodetError(f"{len(found)} {METRICS_FILE} files below {path} (e.g. {found[0]}, {found[1]}); name one")
    return found[0]


def run_names(metrics_paths: list[Path]) -> list[str]:
    """Each run's directory name, with as many parent folders as it takes to tell equal names apart."""
    dirs = [p.resolve().parent for p in metrics_paths]
    depth = 1
    while True:
        names = ["/".join(d.parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names) or depth >= max(len(d.parts) for d in dirs):
            return names
        depth += 1


def check_same_data(runs: list[RunRecord]) -> None:
    """Raise a one-line SodetError unless every run was scored on the baseline's ground truth, split and classes."""
    base = runs[0]
    base_data = _dataset_of(base)
    for run in runs[1:]:
        data = _dataset_of(run)
        if base_data.get("gt_sha256") and data.get("gt_sha256"):
            same_gt = base_data["gt_sha256"] == data["gt_sha256"]
            gt_what = (f"gt sha256 {base_data['gt_sha256'][:12]}", f"{data['gt_sha256'][:12]}")
        else:
            same_gt = Path(base_data["gt"]).resolve() == Path(data["gt"]).resolve()
            gt_what = (f"gt {base_data['gt']}", str(data["gt"]))
        differences = [
            (same_gt, *gt_what),
            (base_data["split"] == data["split"], f"split {base_data['split']!r}", repr(data["split"])),
            (
                sorted(base_data["classes"]) == sorted(data["classes"]),
                f"classes {base_data['classes']}",
                str(data["classes"]),
            ),
            (base_data["num_images"] == data["num_images"], f"{base_data['num_images']} images", str(data["num_images"])),
        ]
        for same, base_text, run_text in differences:
            if not same:
                raise SodetError(
                    f"cannot compare {run.name} with baseline {base.name}: scored on different data "
                    f"({base_text} vs {run_text}); compare runs evaluated on the same ground truth, split and classes"
                )


def default_out_dir(names: list[str]) -> Path:
    """runs/compare/<baseline>-vs-<other>..., shortened when many runs are compared."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", n).strip("_") or "run" for n in names]
    name = "-vs-".join(safe)
    if len(name) > 80:
        name = f"{safe[0][:60]}-vs-{len(safe) - 1}-runs"
    return Path("runs") / "compare" / name


def _dataset_of(run: RunRecord) -> dict[str, Any]:
    dataset = run.metrics.get("dataset")
    if not isinstance(dataset, dict):
        raise SodetError(f"{run.metrics_path} has no 'dataset' record; re-evaluate the run")
    missing = [k for k in DATASET_KEYS if k not in dataset]
    if missing:
        raise SodetError(f"{run.metrics_path} lacks dataset.{', dataset.'.join(missing)}; re-evaluate the run")
    return dataset


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")
