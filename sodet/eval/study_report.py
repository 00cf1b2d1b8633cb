"""A study's report: what each setting changed, per object size, and whether that is more than noise.

For every setting against the baseline: the paired difference of the primary metric (mean over seeds and its t
interval), an image-level bootstrap interval of the same difference (the choice of evaluation images is noise
too), the test (paired where the two settings drew the same sample stream, Welch's otherwise) and its verdict,
Holm-corrected across the settings; the other metrics are secondary, Holm-corrected across settings x metrics.
Settings that control a method's extra compute are compared with it directly. Besides: the compute of each
setting (images seen, optimizer steps, wall time), the baseline's learning curve on the validation split, the
reference study's numbers beside the settings whose treatment matches theirs, charts, and every cell with its
times and the code that ran it.

Everything is read back from the study folder (``study.json`` and each cell's files), so ``sodet study --report
DIR`` renders the same files at any time, also from a study that is still running.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sodet.errors import SodetError
from sodet.eval.compare import COMPARE_KEYS, RunRecord, check_same_data
from sodet.eval.metrics_io import METRICS_FILE, PREDICTIONS_FILE, metric_value, read_metrics
from sodet.eval.stats import (
    ALPHA, CONFIDENCE, NOT_AVAILABLE, MeanCI, PairedDifference, holm, mean_ci, paired_difference, relative_change,
    verdict_of,
)
from sodet.eval.study import DONE, SAME, read_manifest, settings_from, study_config
from sodet.eval.tables import format_value

BUCKETS = {"all": ("AP", "AR100"), "small": ("APs", "ARs"), "medium": ("APm", "ARm"), "large": ("APl", "ARl")}
BASELINE = "baseline"
PAIRED, WELCH = "paired t-test over seeds", "Welch's t-test over seeds"
# COCOeval's area ranges of the AP metrics (what the image bootstrap recomputes)
AREA_OF = {"AP": (0.0, 1e10), "APs": (0.0, 32.0**2), "APm": (32.0**2, 96.0**2), "APl": (96.0**2, 1e10)}
CURVE_KEY = "metrics/AP_coco(B)"  # results.csv: COCO AP of each validated epoch
FLAT = 5.0  # % relative AP the last epoch may add for a learning curve to count as flattened


@dataclass
class CellResult:
    setting: str
    seed: int
    status: str
    metrics: dict[str, Any] | None
    seconds: float | None  # wall time of the cell's training; None when it did not run in this study
    run_dir: Path
    final_dir: Path
    record: dict = field(default_factory=dict)
    training: dict | None = None  # training.json: samples, images seen, optimizer steps
    curve: list[float] = field(default_factory=list)  # COCO AP on val per epoch (settings that validate every epoch)
    same_as: str | None = None
    error: str | None = None
    cwd_share: list[tuple[float, float]] = field(default_factory=list)  # distillation: (det, cwd) loss per epoch


@dataclass
class Comparison:
    """One setting against another on one metric."""

    metric: str
    difference: PairedDifference | None
    change: float | None  # relative change of the means, %
    test: str
    p: float | None
    p_holm: float | None = None
    bootstrap: Any = None  # sodet.eval.bootstrap.BootstrapCI

    @property
    def verdict(self) -> str:
        if self.difference is None:
            return NOT_AVAILABLE
        return verdict_of(self.difference.mean, self.p_holm if self.p_holm is not None else self.p)


@dataclass
class SettingSummary:
    name: str
    label: str
    cells: list[CellResult]
    control_of: str | None = None
    reference_row: str | None = None
    stats: dict[str, MeanCI | None] = field(default_factory=dict)
    vs_baseline: dict[str, Comparison] = field(default_factory=dict)
    paired: bool | None = None  # same sample stream as the baseline, seed by seed
    reference: list[float] | None = None

    def values(self, key: str) -> dict[int, float]:
        """Seed -> value of the finished cells (a bucket without ground truth has none); COCO's numbers or a
        protocol's (``APvt``, ``aitod.APvt``)."""
        out = {}
        for c in self.cells:
            if c.metrics is not None and (v := metric_value(c.metrics, key)) is not None:
                out[c.seed] = v
        return out

    @property
    def same_runs_as(self) -> str | None:
        targets = {c.same_as.split("/")[0] if c.same_as else None for c in self.cells}
        return targets.pop() if len(targets) == 1 and None not in targets else None

    def mean_of(self, fn) -> float | None:
        values = [v for c in self.cells if c.same_as is None and c.metrics is not None and (v := fn(c)) is not None]
        return sum(values) / len(values) if values else None

    @property
    def seconds(self) -> float | None:
        return self.mean_of(lambda c: c.seconds)

    @property
    def images_seen(self) -> float | None:
        return self.mean_of(lambda c: (c.training or {}).get("images_seen"))

    @property
    def optimizer_steps(self) -> float | None:
        return self.mean_of(lambda c: (c.training or {}).get("optimizer_steps"))

    @property
    def epochs(self) -> float | None:
        return self.mean_of(lambda c: (c.training or {}).get("epochs_done"))


@dataclass
class StudyResults:
    dir: Path
    manifest: dict
    settings: list[SettingSummary]
    family: str | None
    dataset: dict | None
    primary: str
    controls: list[tuple[str, str, Comparison]] = field(default_factory=list)  # (setting, its control, comparison)

    def setting(self, name: str) -> SettingSummary | None:
        return next((s for s in self.settings if s.name == name), None)


# reading -----------------------------------------------------------------------------------------------------
def collect(study_dir: Path, primary: str | None = None, resamples: int | None = None) -> StudyResults:
    """Read the study folder: every recorded cell's state, numbers and costs, and the statistics per setting."""
    study_dir = Path(study_dir)
    manifest = read_manifest(study_dir)
    if manifest is None:
        raise SodetError(f"{study_dir / 'study.json'} not found: not a sodet study folder (run sodet study first)")
    config = study_config()
    known = settings_from(config)
    primary = primary or manifest.get("primary") or config.get("primary", "APs")
    protocol = (manifest.get("options") or {}).get("protocol", "coco")
    if primary not in COMPARE_KEYS and primary_stat(primary, protocol) is None:
        raise SodetError(f"--primary {primary}: not one of COCO's metrics ({', '.join(COMPARE_KEYS)}) nor of the "
                         f"study's protocol {protocol}")
    records = manifest.get("cells", {})
    summaries = []
    for name in manifest.get("settings", []):
        cells = [_cell_result(study_dir, name, seed, records[f"{name}/seed{seed}"])
                 for seed in manifest.get("seeds", []) if f"{name}/seed{seed}" in records]
        spec = known.get(name)
        summaries.append(SettingSummary(name, spec.label if spec else name, cells, spec.control_of if spec else None,
                                        spec.reference if spec else None))
    finished = [RunRecord(f"{c.setting}/seed{c.seed}", c.final_dir / METRICS_FILE, c.metrics)
                for s in summaries for c in s.cells if c.metrics is not None]
    if finished:
        check_same_data(finished)
    results = StudyResults(study_dir, manifest, summaries, _family(manifest), finished[0].metrics["dataset"] if finished else None,
                           primary)
    _statistics(results, config, resamples if resamples is not None else int(config.get("bootstrap_resamples", 2000)))
    return results


def _cell_result(study_dir: Path, name: str, seed: int, record: dict) -> CellResult:
    same_as = record.get("same_as")  # another cell's run stands for this one
    trained = same_as or record.get("trained_as")  # ... or only its training, scored this setting's own way
    run_dir = study_dir / trained if trained else study_dir / name / f"seed{seed}"
    final_dir = run_dir
    if record.get("eval_command"):  # where its scoring wrote (a setting scored its own way has a folder of its name)
        parts = record["eval_command"].split()
        final_dir = Path(parts[parts.index("--out") + 1])
    status = record.get("status", "")
    path = final_dir / METRICS_FILE
    metrics = read_metrics(path) if status in {DONE, SAME} and path.is_file() else None
    training = _read_json(run_dir / "training.json")
    seconds = None if same_as else record.get("seconds") if not trained else None
    return CellResult(name, seed, status, metrics, seconds, run_dir, final_dir,
                      record, training, _curve(run_dir), same_as, record.get("error"), _cwd_losses(run_dir))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _curve(run_dir: Path) -> list[float]:
    """COCO AP of each validated epoch (results.csv); empty for runs validated only at their end."""
    try:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader((run_dir / "results.csv").read_text().splitlines())]
    except OSError:
        return []
    values = [float(r.get(CURVE_KEY) or 0) for r in rows]
    return values if len(values) > 1 and all(v > 0 for v in values) else []


def _cwd_losses(run_dir: Path) -> list[tuple[float, float]]:
    """(detection loss, CWD term) per epoch of a distillation run (results.csv batch means); empty otherwise."""
    try:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader((run_dir / "results.csv").read_text().splitlines())]
    except OSError:
        return []
    if not rows or "train/cwd_loss" not in rows[0]:
        return []
    return [(float(r["train/det_loss"]), float(r["train/cwd_loss"])) for r in rows]


def _family(manifest: dict) -> str | None:
    from sodet.models.registry import get_entry

    try:
        return get_entry(manifest.get("options", {}).get("student", "")).family
    except SodetError:
        return None


# statistics --------------------------------------------------------------------------------------------------
def same_stream(a: SettingSummary, b: SettingSummary) -> bool | None:
    """Whether run k of ``a`` drew the batches of run k of ``b`` for every common seed: the same samples per epoch
    (which and how many), epochs and batch size. None when a run's training.json is missing."""
    by_seed = {c.seed: c.training for c in b.cells}
    pairs = [(c.training, by_seed[c.seed]) for c in a.cells if c.seed in by_seed]
    if not pairs or any(x is None or y is None for x, y in pairs):
        return None
    keys = ("sample_stream", "epochs", "batch", "seed")
    return all(all(x.get(k) == y.get(k) for k in keys) for x, y in pairs)


def compare_settings(base: SettingSummary, other: SettingSummary, key: str, paired: bool | None) -> Comparison:
    """``other`` vs ``base`` on ``key`` over their common seeds: paired where the runs are, Welch's otherwise."""
    from scipy import stats

    b, o = base.values(key), other.values(key)
    common = sorted(set(b) & set(o))
    bm = mean_ci(list(b.values()))
    om = mean_ci(list(o.values()))
    change = relative_change(bm.mean if bm else None, om.mean if om else None)
    if paired or paired is None:
        diff = paired_difference([b[s] for s in common], [o[s] for s in common])
        return Comparison(key, diff, change, PAIRED, diff.p if diff else None)
    bv, ov = list(b.values()), list(o.values())
    if len(bv) < 2 or len(ov) < 2:
        diff = PairedDifference(om.mean - bm.mean, None, None, None, min(len(bv), len(ov))) if bm and om else None
        return Comparison(key, diff, change, WELCH, None)
    if max(bv + ov) - min(bv + ov) == 0:
        return Comparison(key, PairedDifference(0.0, 0.0, 0.0, 1.0, min(len(bv), len(ov))), change, WELCH, 1.0)
    t = stats.ttest_ind(ov, bv, equal_var=False)
    low, high = t.confidence_interval(CONFIDENCE)
    diff = PairedDifference(om.mean - bm.mean, float(low), float(high), float(t.pvalue), min(len(bv), len(ov)))
    return Comparison(key, diff, change, WELCH, float(t.pvalue))


def primary_stat(primary: str, protocol: str | None):
    """The protocol Stat a primary metric names (``APvt`` or ``aitod.APvt``), or None."""
    from sodet.eval.protocols import PROTOCOLS

    name, _, key = primary.rpartition(".")
    for p in ([name] if name else [x.strip() for x in str(protocol or "").split(",")]):
        if p in PROTOCOLS:
            found = next((st for st in PROTOCOLS[p]().stats if st.name == key), None)
            if found is not None:
                return PROTOCOLS[p](), found
    return None


def report_keys(results: StudyResults) -> tuple[str, ...]:
    """COCO's eight report numbers, and the primary metric where it is a protocol's."""
    return COMPARE_KEYS if results.primary in COMPARE_KEYS else (results.primary, *COMPARE_KEYS)


def _statistics(results: StudyResults, config: dict, resamples: int) -> None:
    base = results.setting(BASELINE)
    reference = (config.get("reference") or {}).get(results.family or "", {})
    opts = results.manifest.get("options", {})
    real_teacher = opts.get("teacher") not in (None, opts.get("student"))
    keys = report_keys(results)
    for s in results.settings:
        s.stats = {k: mean_ci([v for _, v in sorted(s.values(k).items())]) for k in keys}
        if s.reference_row and reference.get(s.reference_row) and (real_teacher or not _teaches_or_taught(s.name)):
            s.reference = list(reference[s.reference_row])
        if base is None or s is base or s.same_runs_as == BASELINE:
            continue
        s.paired = same_stream(s, base)
        for k in keys:
            s.vs_baseline[k] = compare_settings(base, s, k, s.paired)
    others = [s for s in results.settings if s.vs_baseline]
    # primary: Holm across settings; secondary: across settings x metrics
    primary = [s.vs_baseline[results.primary] for s in others]
    for c, p in zip(primary, holm([c.p for c in primary])):
        c.p_holm = p
    secondary = [s.vs_baseline[k] for s in others for k in keys if k != results.primary]
    for c, p in zip(secondary, holm([c.p for c in secondary])):
        c.p_holm = p
    # a method against its compute-matched controls, on the primary metric (Holm across these comparisons)
    for s in results.settings:
        for control in results.settings:
            if control.control_of == s.name and s.stats.get(results.primary) and control.stats.get(results.primary):
                results.controls.append((s.name, control.name, compare_settings(control, s, results.primary, same_stream(s, control))))
    for (_, _, c), p in zip(results.controls, holm([c.p for _, _, c in results.controls])):
        c.p_holm = p
    _bootstrap(results, base, resamples)


def _teaches_or_taught(name: str) -> bool:
    spec = settings_from(study_config()).get(name)
    return bool(spec and (spec.teacher or spec.model == "teacher"))


def _bootstrap(results: StudyResults, base: SettingSummary | None, resamples: int) -> None:
    """Image-level paired bootstrap of the primary difference, for every comparison on the primary metric."""
    area, max_det, ious = AREA_OF.get(results.primary), 100, None
    stat = primary_stat(results.primary, (results.manifest.get("options") or {}).get("protocol"))
    if stat is not None and stat[1].kind == "ap":  # a protocol's AP: its range, cap and thresholds
        protocol, st = stat
        area = next((lo, hi) for name, lo, hi in protocol.ranges if name == st.range)
        max_det, ious = st.max_det, [st.iou] if st.iou is not None else None
    if area is None or base is None or resamples <= 0 or not results.dataset:
        return
    from sodet.eval.bootstrap import paired_bootstrap, per_image_eval
    from sodet.eval.cocoeval import load_gt

    gt = load_gt(results.dataset["gt"]) if Path(results.dataset["gt"]).is_file() else None
    if gt is None:
        return
    cache: dict[Path, Any] = {}

    def evals(setting: SettingSummary, seeds: list[int]):
        out = []
        for c in sorted(setting.cells, key=lambda c: c.seed):
            if c.seed in seeds:
                path = c.final_dir / PREDICTIONS_FILE
                if path not in cache:
                    kw = {"iou_thresholds": np.asarray(ious)} if ious else {}
                    cache[path] = per_image_eval(gt, json.loads(path.read_text()), area, max_det, **kw)
                out.append(cache[path])
        return out

    def run(a: SettingSummary, b: SettingSummary):
        seeds = sorted(set(a.values(results.primary)) & set(b.values(results.primary)))
        return paired_bootstrap(evals(a, seeds), evals(b, seeds), resamples=resamples, seed=0) if seeds else None

    for s in results.settings:
        if results.primary in s.vs_baseline:
            s.vs_baseline[results.primary].bootstrap = run(base, s)
    for method, control, c in results.controls:
        c.bootstrap = run(results.setting(control), results.setting(method))


# rendering ---------------------------------------------------------------------------------------------------
def _mean_text(stat: MeanCI | None) -> str:
    if stat is None:
        return NOT_AVAILABLE
    return format_value(stat.mean) if stat.half_width is None else f"{format_value(stat.mean)} ± {format_value(stat.half_width)}"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return NOT_AVAILABLE
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _signed(v: float | None, digits: int = 4) -> str:
    return NOT_AVAILABLE if v is None else f"{v:+.{digits}f}"


def _ci_text(low: float | None, high: float | None) -> str:
    return NOT_AVAILABLE if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _p(p: float | None) -> str:
    return NOT_AVAILABLE if p is None else f"{p:.2g}"


def _comparison_cells(c: Comparison) -> list[str]:
    d, b = c.difference, c.bootstrap
    return [
        _signed(d.mean if d else None), _ci_text(d.low if d else None, d.high if d else None),
        _ci_text(b.low, b.high) if b else NOT_AVAILABLE, NOT_AVAILABLE if c.change is None else f"{c.change:+.1f}%",
        "paired" if c.test == PAIRED else "Welch", _p(c.p), _p(c.p_holm), f"**{c.verdict}**",
    ]


def _count(v: float | None) -> str:
    return NOT_AVAILABLE if v is None else f"{v:,.0f}"


def to_markdown(results: StudyResults) -> str:
    m = results.manifest
    o = m.get("options", {})
    prov = m.get("provenance") or {}
    config = study_config()
    reference_label = config.get("reference", {}).get("label", "reference study")
    overrides = ", ".join(f"{k}={v}" for k, v in o.get("overrides", {}).items()) or "none"
    seeds = m.get("seeds", [])
    starts = [cell_started(c) for c in m.get("cells", {}).values() if cell_started(c)]
    ends = [c.get(k) for c in m.get("cells", {}).values() for k in ("ended", "eval_ended") if c.get(k)]
    d = results.dataset or {}
    split_note = (f"the **{d.get('split')}** split ({d.get('num_images')} images), never used for choosing anything"
                  if o.get("test_split") else f"the **{d.get('split')}** split ({d.get('num_images')} images): the data "
                  "has no test split, so these are validation numbers")
    lines = [
        f"# sodet study: {results.dir.name}",
        "",
        f"- Student **{o.get('student')}**" + (f" ({o['student_weights']})" if o.get("student_weights") else " (its default weights)")
        + f", teacher **{o.get('teacher')}**" + (f" ({o['teacher_weights']})" if o.get("teacher_weights") else "") + ".",
        f"- Data `{o.get('data')}`" + (f", classes {o['classes']}" if o.get("classes") else "") + f"; final numbers: COCO AP/AR "
        f"of each run's last weights on {split_note}.",
        f"- Profile **{o.get('profile')}**: epochs {o.get('epochs')}, imgsz {o.get('imgsz')}, batch {o.get('batch')}, "
        f"workers {o.get('workers')}, device {o.get('device')}; engine overrides: {overrides}"
        + (f"; distill options: {' '.join(o['distill_args'])}" if o.get("distill_args") else "") + ".",
        f"- Seeds {', '.join(map(str, seeds))}. **Primary metric: {results.primary}** (each setting vs the baseline, "
        f"Holm-corrected across settings); every other metric is secondary (Holm across settings x metrics).",
    ]
    if m.get("command"):
        lines.append(f"- Command: `{m['command']}`")
    if prov:
        v = prov.get("versions", {})
        lines.append(f"- Code: sodet {v.get('sodet')} at commit `{prov.get('git_commit')}`"
                     + (" (uncommitted changes in the tree)" if prov.get("git_dirty") else " (clean tree)" if prov.get("git_dirty") is False else "")
                     + "; " + ", ".join(f"{k} {x}" for k, x in v.items() if k not in {"sodet"} and x) + ".")
    lines.append(f"- Machine: {m.get('machine', NOT_AVAILABLE)}" + (f"; cells ran {min(starts)} to {max(ends or starts)} (UTC)" if starts else "") + ".")

    base = results.setting(BASELINE)
    lines += ["", "## Settings and their compute", "",
              "Images seen and optimizer steps per run (mean over seeds, from each run's training.json); wall time of one "
              "training run on this machine. *Paired*: run k drew the same samples per epoch, in the same order, as run k "
              "of the baseline (a paired test); otherwise the comparison is unpaired (Welch's test).", "",
              "| setting | what | controls | paired with baseline | epochs | images seen | optimizer steps | time per run |",
              "|---|---|---|---|---|---|---|---|"]
    for s in results.settings:
        paired = "-" if s is base else "same runs" if s.same_runs_as else {True: "yes", False: "no", None: NOT_AVAILABLE}[s.paired]
        lines.append(f"| {s.name} | {s.label} | {s.control_of or ''} | {paired} | {_count(s.epochs)} | {_count(s.images_seen)} | "
                     f"{_count(s.optimizer_steps)} | {_minutes(s.seconds) if not s.same_runs_as else f'(the {s.same_runs_as} runs)'} |")

    head = ("| setting | difference | 95% CI (seeds) | 95% CI (images, bootstrap) | relative | test | p | p (Holm) | verdict |",
            "|---|---|---|---|---|---|---|---|---|")
    lines += ["", f"## Primary: {results.primary} vs the baseline", ""]
    if base is None or not any(base.stats.values()):
        lines.append("No finished baseline run: no differences or verdicts.")
    else:
        boot = next((s.vs_baseline[results.primary].bootstrap for s in results.settings if results.primary in s.vs_baseline
                     and s.vs_baseline[results.primary].bootstrap), None)
        lines += [
            f"Difference = mean over seeds of (setting - baseline) in {results.primary} (absolute). 95% CI (seeds): the t "
            "interval of the paired differences (Welch's interval where the runs are not paired). 95% CI (images): an "
            f"image-level paired bootstrap of the same difference ({boot.resamples if boot else '-'} resamples of the "
            f"evaluation images, seed {boot.seed if boot else 0}, COCO AP recomputed exactly for each; "
            "sodet/eval/bootstrap.py), so that the choice of evaluation images is in the interval too. Verdict from "
            f"the Holm-corrected p at alpha {ALPHA}: better / worse, else within noise.", "", *head,
        ]
        for s in results.settings:
            if results.primary in s.vs_baseline:
                lines.append(f"| {s.name} | " + " | ".join(_comparison_cells(s.vs_baseline[results.primary])) + " |")
            elif s is not base and s.same_runs_as:
                lines.append(f"| {s.name} | same runs as {s.same_runs_as} |" + " |" * 7)
    if results.controls:
        lines += ["", f"## Where a gain comes from: each method against its compute-matched controls ({results.primary})", "",
                  "Difference = method - control; Holm-corrected across these comparisons.", "",
                  "| method vs control | difference | 95% CI (seeds) | 95% CI (images, bootstrap) | relative | test | p | p (Holm) | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, control, c in results.controls:
            lines.append(f"| {method} vs {control} | " + " | ".join(_comparison_cells(c)) + " |")

    keys = report_keys(results)
    if base is not None and any(s.vs_baseline for s in results.settings):
        lines += ["", "## Secondary metrics vs the baseline", "",
                  "Relative change of the means and the verdict (Holm-corrected across settings x secondary metrics; p in "
                  "brackets). Secondary: read as context, not as findings.", "",
                  "| setting | " + " | ".join(k for k in keys if k != results.primary) + " |", "|---|" + "---|" * (len(keys) - 1)]
        for s in results.settings:
            if s.vs_baseline:
                cells = []
                for k in keys:
                    if k == results.primary:
                        continue
                    c = s.vs_baseline[k]
                    cells.append(NOT_AVAILABLE if c.change is None else f"{c.change:+.1f}% {c.verdict} (p {_p(c.p_holm)})")
                lines.append(f"| {s.name} | " + " | ".join(cells) + " |")

    lines += ["", f"## Mean and {CONFIDENCE:.0%} confidence interval over seeds", "",
              f"mean ± t(0.975, n-1) · s / sqrt(n) over the n finished seeds; {NOT_AVAILABLE}: no ground truth in that "
              "size bucket, or no finished run.", "",
              "| setting | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for s in results.settings:
        n = max((st.n for st in s.stats.values() if st is not None), default=0)
        lines.append(f"| {s.name} | {n} | " + " | ".join(_mean_text(s.stats.get(k)) for k in keys) + " |")

    lines += _curve_lines(results)
    lines += _cwd_lines(results)

    shown = [s for s in results.settings if s.reference]
    if shown:
        lines += ["", "## Beside the reference study", "",
                  f"Theirs: **{reference_label}**, single runs of YOLOX-tiny / GFL-R50 on COCO person+car. Ours: analogues "
                  "of the same treatment on other data, with another model and schedule (the mean over our seeds). Only "
                  "settings whose treatment matches theirs are shown (never a teacher equal to the student); compare the "
                  "direction and size of the changes, not the values.", "",
                  "| setting | source | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        ref = (config.get("reference") or {}).get(results.family or "", {})
        for s in shown:
            ours = [_mean_text(s.stats.get(k)).split(" ±")[0] + ("" if s is base or k not in s.vs_baseline or s.vs_baseline[k].change is None
                                                                  else f" ({s.vs_baseline[k].change:+.1f}%)") for k in keys]
            base_ref = ref.get(BASELINE)
            theirs = [format_value(v) + ("" if s is base or not base_ref else f" ({relative_change(base_ref[i], v):+.1f}%)")
                      for i, (k, v) in enumerate(zip(keys, s.reference))]
            lines.append(f"| {s.name} | ours (analogue) | " + " | ".join(ours) + " |")
            lines.append(f"| {s.name} | {reference_label} | " + " | ".join(theirs) + " |")
        note = (config.get("reference", {}).get("notes") or {}).get(results.family or "")
        if note:
            lines += ["", f"Note ({reference_label}): {note}."]

    lines += ["", "## Charts", "", "Mean over seeds per setting, error bars: the 95% confidence interval.", ""]
    lines += [f"![{bucket}]({bucket}.png)" for bucket in BUCKETS]
    lines += ["", "## Cells", "", "| cell | status | ran on | training | scoring | started | ended | commit | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in results.settings:
        for c in s.cells:
            r = c.record
            note = f"same run as {c.same_as}" if c.same_as else (c.error or "")
            lines.append(f"| {c.setting}/seed{c.seed} | {c.status} | {ran_on(r)} | {_minutes(r.get('seconds'))} | {_minutes(r.get('eval_seconds'))} | "
                         f"{cell_started(r)} | {cell_ended(r)} | {str(cell_commit(r))[:10]} | "
                         f"{note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def cell_started(record: dict) -> str:
    """When a cell began: its training, or its scoring where it only scores another cell's weights (slice-val)."""
    return record.get("started") or record.get("eval_started") or ""


def cell_ended(record: dict) -> str:
    """When a cell finished: its scoring, the last step of every cell."""
    return record.get("eval_ended") or record.get("ended") or ""


def cell_commit(record: dict) -> str:
    """The code a cell ran: its training's commit, else its scoring's."""
    return record.get("git_commit") or record.get("eval_git_commit") or ""


def ran_on(record: dict) -> str:
    """Where a cell ran (its backend's worker: host, and GPU when one was handed to it)."""
    host = record.get("host") or ""
    return host + (f" GPU {record['gpu']}" if host and record.get("gpu") not in (None, "") else "")


def _curve_lines(results: StudyResults) -> list[str]:
    """The baseline's COCO AP per epoch on the validation split (mean over seeds), and whether it has flattened."""
    base = results.setting(BASELINE)
    curves = [c.curve for c in (base.cells if base else []) if c.curve and c.same_as is None]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    mean = [sum(c[e] for c in curves) / len(curves) for e in range(n)]
    last_gain = relative_change(mean[-2], mean[-1]) if n > 1 else None
    flat = last_gain is not None and last_gain < FLAT
    lines = ["", "## The baseline's learning curve", "",
             f"COCO AP on the validation split after each epoch (mean over {len(curves)} seeds; validation never changes "
             "training: the generators are restored around it).", "",
             "| epoch | " + " | ".join(str(e + 1) for e in range(n)) + " |", "|---|" + "---|" * n,
             "| AP (val) | " + " | ".join(f"{v:.3f}" for v in mean) + " |", ""]
    if last_gain is not None:
        lines.append(f"The last epoch added {last_gain:+.1f}% relative AP: "
                     + (f"the curve has flattened (below {FLAT:g}%)." if flat else
                        f"the curve has **not** flattened (more than {FLAT:g}%): a longer schedule could change the "
                        "comparison; this is the longest schedule the profile's time budget allows."))
    return lines


def _cwd_lines(results: StudyResults) -> list[str]:
    """How large the distillation term is: its share of the total loss (CWD / (detection + CWD)) per epoch, mean
    over seeds, per distillation setting. A term of 1-2% cannot move a detector much; a null result means more
    where the share is large."""
    rows = []
    for s in results.settings:
        runs = [c.cwd_share for c in s.cells if c.cwd_share and c.same_as is None]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        share = [sum(r[e][1] / (r[e][0] + r[e][1]) for r in runs) / len(runs) for e in range(n)]
        det = [sum(r[e][0] for r in runs) / len(runs) for e in range(n)]
        cwd = [sum(r[e][1] for r in runs) / len(runs) for e in range(n)]
        rows.append((s.name, share, det, cwd, len(runs)))
    if not rows:
        return []
    n = max(len(r[1]) for r in rows)
    lines = ["", "## Distillation: the CWD term's share of the loss", "",
             "CWD term / (detection loss + CWD term) per epoch (batch means from each run's results.csv, mean over seeds); "
             "in brackets the detection loss and the CWD term.", "",
             "| setting | seeds | " + " | ".join(f"epoch {e + 1}" for e in range(n)) + " |", "|---|---|" + "---|" * n]
    for name, share, det, cwd, k in rows:
        cells = [f"{100 * v:.1f}% ({d:.2f} / {c:.3f})" for v, d, c in zip(share, det, cwd)]
        lines.append(f"| {name} | {k} | " + " | ".join(cells + [""] * (n - len(cells))) + " |")
    return lines


def to_csv(results: StudyResults) -> str:
    """One row per setting and metric (long format: what a spreadsheet or pandas pivots)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "metric", "role", "n", "mean", "ci95_low", "ci95_high", "difference", "difference_low",
                     "difference_high", "bootstrap_low", "bootstrap_high", "change_pct", "test", "p", "p_holm", "verdict",
                     "paired", "images_seen", "optimizer_steps", "seconds_per_run", "reference_value"])
    for s in results.settings:
        for key in report_keys(results):
            i = COMPARE_KEYS.index(key) if key in COMPARE_KEYS else None
            st, c = s.stats.get(key), s.vs_baseline.get(key)
            d = c.difference if c else None
            b = c.bootstrap if c else None
            writer.writerow([
                s.name, key, "primary" if key == results.primary else "secondary", st.n if st else 0,
                _num(st.mean if st else None), _num(st.low if st else None), _num(st.high if st else None),
                _num(d.mean if d else None), _num(d.low if d else None), _num(d.high if d else None),
                _num(b.low if b else None), _num(b.high if b else None), _num(c.change if c else None),
                c.test if c else "", _num(c.p if c else None), _num(c.p_holm if c else None), c.verdict if c else "",
                "" if s.paired is None else s.paired, _num(s.images_seen), _num(s.optimizer_steps), _num(s.seconds),
                _num(s.reference[i] if s.reference and i is not None else None),
            ])
    return buffer.getvalue()


def cells_csv(results: StudyResults) -> str:
    """Every cell's own numbers and costs: what the statistics were computed from."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = report_keys(results)
    writer.writerow(["setting", "seed", "status", "seconds", "images_seen", "optimizer_steps", "sample_stream",
                     *keys, "final_dir", "git_commit", "started", "ended", "ran_on", "note"])
    for s in results.settings:
        for c in s.cells:
            t = c.training or {}
            values = [_num(metric_value(c.metrics, k)) if c.metrics else "" for k in keys]
            writer.writerow([c.setting, c.seed, c.status, _num(c.seconds), t.get("images_seen", ""), t.get("optimizer_steps", ""),
                             t.get("sample_stream", ""), *values, str(c.final_dir), cell_commit(c.record),
                             cell_started(c.record), cell_ended(c.record),
                             ran_on(c.record), f"same run as {c.same_as}" if c.same_as else c.error or ""])
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
            errors = [st.half_width if st and st.half_width is not None else float("nan") for st in stats]
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
    from sodet.eval.compare import Comparison as RunComparison

    runs = [
        RunRecord(s.name, results.dir / s.name, {k: st.mean if (st := s.stats.get(k)) else None for k in COMPARE_KEYS})
        for s in results.settings if any(s.stats.values())
    ]
    if not runs:
        return None
    table = RunComparison(runs).to_rich()
    table.title = f"mean over seeds, change vs {runs[0].name} (verdicts: report.md)"
    return table


def render_report(study_dir: Path, console=None, primary: str | None = None, resamples: int | None = None) -> list[Path]:
    """Write report.md, report.csv, cells.csv and the bucket charts into the study folder (each written to a
    temporary file and renamed); returns the paths. With a rich ``console``, the means are printed there too."""
    from sodet.files import write_text_atomic

    study_dir = Path(study_dir)
    results = collect(study_dir, primary, resamples)
    if console is not None and (table := summary_table(results)) is not None:
        console.print(table)
    files = [study_dir / "report.md", study_dir / "report.csv", study_dir / "cells.csv"]
    for path, text in zip(files, (to_markdown(results), to_csv(results), cells_csv(results))):
        write_text_atomic(path, text)
    return files + save_charts(results, study_dir)
