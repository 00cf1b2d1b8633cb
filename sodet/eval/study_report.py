"""A study's report: per setting the mean and 95% CI over seeds, the change vs baseline with a paired test's
verdict, the reference study's own numbers beside ours, bar charts per object size, the run time per setting.

Everything is read back from the study folder (``study.json`` and each cell's metrics.json), so
``sodet study --report DIR`` renders the same files at any time, also from a study that is still running.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sodet.errors import SodetError
from sodet.eval.compare import COMPARE_KEYS, RunRecord, check_same_data
from sodet.eval.metrics_io import METRICS_FILE, read_metrics
from sodet.eval.stats import ALPHA, CONFIDENCE, PAIRED_TEST, MeanCI, mean_ci, relative_change, verdict
from sodet.eval.study import DONE, SAME, read_manifest, settings_from, study_config
from sodet.eval.tables import NOT_AVAILABLE, format_value

BUCKETS = {"all": ("AP", "AR100"), "small": ("APs", "ARs"), "medium": ("APm", "ARm"), "large": ("APl", "ARl")}
BASELINE = "baseline"


@dataclass
class CellResult:
    setting: str
    seed: int
    status: str
    metrics: dict[str, Any] | None
    seconds: float | None  # wall time of the cell's run; None when it did not run in this study
    seconds_source: str
    run_dir: Path
    same_as: str | None = None
    error: str | None = None


@dataclass
class SettingSummary:
    name: str
    label: str
    cells: list[CellResult]
    stats: dict[str, MeanCI | None] = field(default_factory=dict)
    change: dict[str, float | None] = field(default_factory=dict)
    verdict: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    reference: list[float] | None = None
    reference_change: dict[str, float | None] = field(default_factory=dict)

    def values(self, key: str) -> dict[int, float]:
        """Seed -> value of the finished cells (a bucket without ground truth has none)."""
        out = {}
        for c in self.cells:
            if c.metrics is not None and c.metrics.get(key) is not None:
                out[c.seed] = float(c.metrics[key])
        return out

    @property
    def same_runs_as(self) -> str | None:
        """The setting whose runs stand for all of this one's (a teacher identical to the student)."""
        targets = {c.same_as.split("/")[0] if c.same_as else None for c in self.cells}
        return targets.pop() if len(targets) == 1 and None not in targets else None

    @property
    def seconds(self) -> float | None:
        times = [c.seconds for c in self.cells if c.seconds is not None and c.same_as is None and c.metrics is not None]
        return sum(times) / len(times) if times else None


@dataclass
class StudyResults:
    dir: Path
    manifest: dict
    settings: list[SettingSummary]
    family: str | None
    dataset: dict | None

    def setting(self, name: str) -> SettingSummary | None:
        return next((s for s in self.settings if s.name == name), None)


def collect(study_dir: Path) -> StudyResults:
    """Read the study folder: every recorded cell's state, metrics and time, and the statistics per setting."""
    study_dir = Path(study_dir)
    manifest = read_manifest(study_dir)
    if manifest is None:
        raise SodetError(f"{study_dir / 'study.json'} not found: not a sodet study folder (run sodet study first)")
    config = study_config()
    known = settings_from(config)
    records = manifest.get("cells", {})
    summaries = []
    for name in manifest.get("settings", []):
        cells = []
        for seed in manifest.get("seeds", []):
            record = records.get(f"{name}/seed{seed}")
            if record is None:
                continue
            cells.append(_cell_result(study_dir, name, seed, record))
        label = known[name].label if name in known else name
        summaries.append(SettingSummary(name, label, cells))
    finished = [RunRecord(f"{c.setting}/seed{c.seed}", c.run_dir / METRICS_FILE, c.metrics)
                for s in summaries for c in s.cells if c.metrics is not None]
    if finished:
        check_same_data(finished)
    results = StudyResults(study_dir, manifest, summaries, _family(manifest), finished[0].metrics["dataset"] if finished else None)
    _statistics(results, config)
    return results


def _cell_result(study_dir: Path, name: str, seed: int, record: dict) -> CellResult:
    same_as = record.get("same_as")
    run_dir = study_dir / same_as if same_as else study_dir / name / f"seed{seed}"
    status = record.get("status", "")
    metrics_path = run_dir / METRICS_FILE
    metrics = read_metrics(metrics_path) if status in {DONE, SAME} and metrics_path.is_file() else None
    seconds, source = record.get("seconds"), "wall time of the cell's process"
    if metrics is not None and seconds is None and same_as is None:
        seconds, source = _results_csv_time(run_dir), "results.csv (training and per-epoch validation only)"
    return CellResult(name, seed, status, metrics, None if same_as else seconds, source, run_dir, same_as, record.get("error"))


def _results_csv_time(run_dir: Path) -> float | None:
    """The engine's ``time`` column: seconds from the start of training to the end of the last epoch."""
    path = run_dir / "results.csv"
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
        return float(rows[-1]["time"]) if rows else None
    except (OSError, KeyError, ValueError):
        return None


def _family(manifest: dict) -> str | None:
    from sodet.models.registry import get_entry

    try:
        return get_entry(manifest.get("options", {}).get("student", "")).family
    except SodetError:
        return None


def _statistics(results: StudyResults, config: dict) -> None:
    base = results.setting(BASELINE)
    reference = (config.get("reference") or {}).get(results.family or "", {})
    for s in results.settings:
        ref = reference.get(s.name)
        s.reference = list(ref) if ref else None
        for key in COMPARE_KEYS:
            values = s.values(key)
            s.stats[key] = mean_ci([values[k] for k in sorted(values)], CONFIDENCE)
            if base is None or s is base:
                continue
            base_values = base.values(key)
            common = sorted(set(values) & set(base_values))
            s.verdict[key] = verdict([base_values[k] for k in common], [values[k] for k in common], ALPHA)
            b, v = base.stats.get(key) or mean_ci([base_values[k] for k in sorted(base_values)]), s.stats[key]
            s.change[key] = relative_change(b.mean if b else None, v.mean if v else None)
        if ref and reference.get(BASELINE) and s.name != BASELINE:
            s.reference_change = {k: relative_change(reference[BASELINE][i], ref[i]) for i, k in enumerate(COMPARE_KEYS)}


# rendering ---------------------------------------------------------------------------------------------------
def _mean_text(stat: MeanCI | None) -> str:
    if stat is None:
        return NOT_AVAILABLE
    return format_value(stat.mean) if stat.half_width is None else f"{format_value(stat.mean)} ± {format_value(stat.half_width)}"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return NOT_AVAILABLE
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _change_text(change: float | None) -> str:
    return NOT_AVAILABLE if change is None else f"{change:+.1f}%"


def _verdict_text(s: SettingSummary, key: str) -> str:
    word, p = s.verdict.get(key, (NOT_AVAILABLE, None))
    if s.same_runs_as == BASELINE:
        return "same runs as baseline"
    change = s.change.get(key)
    text = word if change is None else f"{change:+.1f}% {word}"
    return text if p is None else f"{text} (p {p:.2g})"


def to_markdown(results: StudyResults) -> str:
    m = results.manifest
    o = m.get("options", {})
    reference_label = study_config().get("reference", {}).get("label", "reference study")
    overrides = ", ".join(f"{k}={v}" for k, v in o.get("overrides", {}).items()) or "none"
    seeds = m.get("seeds", [])
    started = [c.get("started") for c in m.get("cells", {}).values() if c.get("started")]
    lines = [
        f"# sodet study: {results.dir.name}",
        "",
        f"- Student **{o.get('student')}**" + (f" ({o['student_weights']})" if o.get("student_weights") else " (its shipped weights)")
        + f", teacher **{o.get('teacher')}**" + (f" ({o['teacher_weights']})" if o.get("teacher_weights") else "") + ".",
        f"- Data `{o.get('data')}`" + (f", classes {o['classes']}" if o.get("classes") else "") + ".",
        f"- Profile **{o.get('profile')}**: epochs {o.get('epochs')}, imgsz {o.get('imgsz')}, batch {o.get('batch')}, "
        f"workers {o.get('workers')}, device {o.get('device')}; engine overrides: {overrides}"
        + (f"; distill options: {' '.join(o['distill_args'])}" if o.get("distill_args") else "") + ".",
        f"- Seeds {', '.join(map(str, seeds))}: a seed fixes the data order and augmentation, so run k of every setting "
        "sees the same batches and forms a pair with run k of the baseline.",
    ]
    if m.get("command"):
        lines.append(f"- Command: `{m['command']}`")
    lines.append(f"- Machine: {m.get('machine', NOT_AVAILABLE)}" + (f"; cells started {min(started)} to {max(started)} (UTC)" if started else "") + ".")
    if results.dataset:
        d = results.dataset
        lines.append(f"- Scored: COCO AP/AR of each run's final weights on `{d.get('gt')}` (split {d.get('split')}, "
                     f"{d.get('num_images')} images, classes {', '.join(d.get('classes', []))}).")
    lines += ["", "## Settings", "", "| setting | what | command (first seed) |", "|---|---|---|"]
    for s in results.settings:
        command = m.get("cells", {}).get(f"{s.name}/seed{seeds[0]}", {}).get("command", "") if seeds else ""
        lines.append(f"| {s.name} | {s.label} | `{command}` |")

    keys = COMPARE_KEYS
    lines += [
        "", f"## Mean and {CONFIDENCE:.0%} confidence interval over seeds", "",
        f"mean ± t(0.975, n-1) · s / sqrt(n) over the n finished seeds (Student's t); {NOT_AVAILABLE}: no ground truth "
        "in that size bucket, or no finished run. Time: wall time of one run (mean over its seeds).", "",
        "| setting | n | " + " | ".join(keys) + " | time per run |", "|---|---|" + "---|" * (len(keys) + 1),
    ]
    for s in results.settings:
        n = max((st.n for st in s.stats.values() if st is not None), default=0)
        time_text = f"(the {s.same_runs_as} runs)" if s.same_runs_as else _minutes(s.seconds)
        lines.append(f"| {s.name} | {n} | " + " | ".join(_mean_text(s.stats.get(k)) for k in keys) + f" | {time_text} |")

    base = results.setting(BASELINE)
    lines += ["", "## Change vs baseline", ""]
    if base is None or not any(base.stats.values()):
        lines.append("No finished baseline run: no changes or verdicts.")
    else:
        lines += [
            f"Relative change of the mean vs the baseline's mean, and the verdict of a {PAIRED_TEST} on the seeds both "
            f"finished: better / worse at alpha {ALPHA}, else within noise; p in brackets; "
            "n/a (1 seed): one pair cannot tell a change from noise.", "",
            "| setting | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
        ]
        for s in results.settings:
            if s is not base:
                lines.append(f"| {s.name} | " + " | ".join(_verdict_text(s, k) for k in keys) + " |")

    with_reference = [s for s in results.settings if s.reference]
    if with_reference:
        lines += [
            "", "## Beside the reference study", "",
            f"Theirs: **{reference_label}**, on other data and with other models (their setting's single run; in "
            "brackets its change vs their baseline). Ours: the mean over our seeds (its change vs our baseline). "
            "Compare the direction and size of the changes, not the values.", "",
            "| setting | source | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys),
        ]
        for s in with_reference:
            ours = [_mean_text(s.stats.get(k)).split(" ±")[0] + ("" if s.name == BASELINE else f" ({_change_text(s.change.get(k))})") for k in keys]
            theirs = [format_value(v) + ("" if s.name == BASELINE else f" ({_change_text(s.reference_change.get(k))})")
                      for k, v in zip(keys, s.reference)]
            lines.append(f"| {s.name} | ours (mean) | " + " | ".join(ours) + " |")
            lines.append(f"| {s.name} | {reference_label} | " + " | ".join(theirs) + " |")
        note = (study_config().get("reference", {}).get("notes") or {}).get(results.family or "")
        if note:
            lines += ["", f"Note ({reference_label}): {note}."]

    lines += ["", "## Charts", "", "Mean over seeds per setting, error bars: the 95% confidence interval.", ""]
    lines += [f"![{bucket}]({bucket}.png)" for bucket in BUCKETS]
    lines += ["", "## Cells", "", "| cell | status | time | note |", "|---|---|---|---|"]
    for s in results.settings:
        for c in s.cells:
            note = f"same run as {c.same_as}" if c.same_as else (c.error or "")
            lines.append(f"| {c.setting}/seed{c.seed} | {c.status} | {_minutes(c.seconds)} | {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def to_csv(results: StudyResults) -> str:
    """One row per setting and metric (long format: what a spreadsheet or pandas pivots)."""
    label = study_config().get("reference", {}).get("label", "reference")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "metric", "n", "mean", "ci95_low", "ci95_high", "change_pct_vs_baseline", "p_value",
                     "test", "verdict", "seconds_per_run", "reference_value", "reference_change_pct", "reference_source"])
    for s in results.settings:
        for i, key in enumerate(COMPARE_KEYS):
            st = s.stats.get(key)
            word, p = s.verdict.get(key, ("", None))
            ref = s.reference[i] if s.reference else None
            writer.writerow([
                s.name, key, st.n if st else 0, _num(st.mean if st else None), _num(st.low if st else None),
                _num(st.high if st else None), _num(s.change.get(key)), _num(p), PAIRED_TEST if key in s.verdict else "",
                word, _num(s.seconds), _num(ref), _num(s.reference_change.get(key)), label if ref is not None else "",
            ])
    return buffer.getvalue()


def cells_csv(results: StudyResults) -> str:
    """Every cell's own numbers: what the statistics were computed from."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "seed", "status", "seconds", *COMPARE_KEYS, "run_dir", "note"])
    for s in results.settings:
        for c in s.cells:
            values = [_num(c.metrics.get(k)) if c.metrics else "" for k in COMPARE_KEYS]
            writer.writerow([c.setting, c.seed, c.status, _num(c.seconds), *values, str(c.run_dir),
                             f"same run as {c.same_as}" if c.same_as else c.error or ""])
    return buffer.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{float(value):.6g}"  # six significant digits: p-values stay readable


def save_charts(results: StudyResults, out_dir: Path) -> list[Path]:
    """One PNG per size bucket: AP and AR per setting, error bars the 95% CI (matplotlib's Agg canvas directly,
    with its bundled font: nothing is downloaded)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [s.name for s in results.settings]
    paths = []
    for bucket, keys in BUCKETS.items():
        figure = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(names)), 3.6), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, 2)
        for ax, key in zip(axes, keys):
            stats = [s.stats.get(key) for s in results.settings]
            means = [st.mean if st else float("nan") for st in stats]
            errors = [st.half_width if st and st.half_width is not None else float("nan") for st in stats]  # no bar
            palette = [f"C{j}" for j in range(10) if j != 7]  # C7 is grey: the baseline's
            colours = ["0.55" if n == BASELINE else palette[i % len(palette)] for i, n in enumerate(names)]
            ax.bar(range(len(names)), means, yerr=errors, capsize=3, color=colours)
            if BASELINE in names and stats[names.index(BASELINE)] is not None:
                ax.axhline(stats[names.index(BASELINE)].mean, color="0.3", linestyle="--", linewidth=0.8)
            for i, st in enumerate(stats):
                if st is None:
                    ax.text(i, 0, NOT_AVAILABLE, ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{key} ({bucket} objects)")
            ax.grid(axis="y", alpha=0.3)
            ax.set_ylim(bottom=0)
        axes[0].set_ylabel("mean over seeds ± 95% CI")
        path = out_dir / f"{bucket}.png"
        figure.savefig(path, dpi=110)
        paths.append(path)
    return paths


def summary_table(results: StudyResults):
    """The means per setting with their change vs baseline, as ``sodet compare`` shows runs (None: no results)."""
    from sodet.eval.compare import Comparison

    runs = [
        RunRecord(s.name, results.dir / s.name, {k: st.mean if (st := s.stats.get(k)) else None for k in COMPARE_KEYS})
        for s in results.settings if any(s.stats.values())
    ]
    if not runs:
        return None
    table = Comparison(runs).to_rich()
    table.title = f"mean over seeds, change vs {runs[0].name} (verdicts: report.md)"
    return table


def render_report(study_dir: Path, console=None) -> list[Path]:
    """Write report.md, report.csv, cells.csv and the bucket charts into the study folder; returns the paths.
    With a rich ``console``, the means are printed there too."""
    study_dir = Path(study_dir)
    results = collect(study_dir)
    if console is not None and (table := summary_table(results)) is not None:
        console.print(table)
    files = [study_dir / "report.md", study_dir / "report.csv", study_dir / "cells.csv"]
    files[0].write_text(to_markdown(results))
    files[1].write_text(to_csv(results))
    files[2].write_text(cells_csv(results))
    return files + save_charts(results, study_dir)
