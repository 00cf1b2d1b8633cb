"""Statistics over seeds: is a method's change larger than what re-running the baseline with another seed gives?

Each setting runs with the same N seeds; where a setting draws the same sample stream as the baseline (the same
epoch length and images), run k of both sees the same batches, and a paired t-test over seeds removes the
seed-to-seed spread both share. Student's t (``scipy.stats``) gives the confidence intervals and p-values: with
3-5 seeds a normal approximation would be far too narrow. Many settings and metrics are tested at once, so the
verdicts are Holm-corrected (``holm``): the primary metric across settings, the secondary ones across settings x
metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05
CONFIDENCE = 0.95
PAIRED_TEST = "paired t-test over seeds (two-sided)"
BETTER, WORSE, NOISE, ONE_SEED, NOT_AVAILABLE = "better", "worse", "within noise", "n/a (1 seed)", "n/a"


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values and the half-width of its t-based confidence interval (None with fewer than 2 values)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI | None:
    """Mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n) (scipy's one-sample t interval); None for no values."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n < 2:
        return MeanCI(mean, None, n)
    spread = max(values) - min(values)
    if spread == 0:
        return MeanCI(mean, 0.0, n)
    low, high = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return MeanCI(mean, float(high - low) / 2, n)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of scipy's paired t-test of b against a (pairs in order); None with fewer than 2 pairs.

    Differences that are all equal have no spread: p is 1.0 when they are all zero (the same result: nothing
    to detect; scipy says nan) and 0.0 otherwise (every seed moved by exactly the same amount)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired test needs pairs: {len(a)} vs {len(b)} values")
    if len(a) < 2:
        return None
    d = [y - x for x, y in zip(a, b)]
    scale = max(abs(v) for v in (*a, *b)) or 1.0  # rounding leaves ~1e-17 of spread in equal differences
    if max(d) - min(d) <= 1e-12 * scale:
        return 1.0 if abs(math.fsum(d) / len(d)) <= 1e-12 * scale else 0.0
    return float(stats.ttest_rel(b, a).pvalue)


@dataclass(frozen=True)
class PairedDifference:
    """Mean over seeds of (setting - baseline), its t-based confidence interval and the paired test's p-value."""

    mean: float
    low: float | None
    high: float | None
    p: float | None
    n: int


def paired_difference(base: Sequence[float], other: Sequence[float], confidence: float = CONFIDENCE) -> PairedDifference | None:
    """The paired difference of two settings over the seeds both finished (pairs in order)."""
    if not base or len(base) != len(other):
        return None
    d = [y - x for x, y in zip(base, other)]
    ci = mean_ci(d, confidence)
    return PairedDifference(ci.mean, ci.low, ci.high, paired_t_test(base, other), len(d))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (a test rejects at alpha when its adjusted p is below alpha; the family-
    wise error rate stays at alpha). None entries (no test) stay None and are not counted."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(indexed)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict_of(change: float | None, p: float | None, alpha: float = ALPHA) -> str:
    """better / worse / within noise (higher is better, as for every COCO AP and AR) from a (corrected) p-value."""
    if change is None:
        return NOT_AVAILABLE
    if p is None:
        return ONE_SEED
    if p >= alpha:
        return NOISE
    return BETTER if change > 0 else WORSE


def verdict(base: Sequence[float], other: Sequence[float], alpha: float = ALPHA) -> tuple[str, float | None]:
    """The uncorrected verdict and p-value of one comparison (paired t-test over the seeds both finished);
    "n/a (1 seed)" with fewer than 2 pairs, "n/a" with none."""
    if not base or not other:
        return NOT_AVAILABLE, None
    p = paired_t_test(base, other)
    return verdict_of(math.fsum(other) - math.fsum(base), p, alpha), p


def relative_change(base: float | None, value: float | None) -> float | None:
    """(value - base) / base in %, None where either is missing or the base is 0 (as ``sodet compare``)."""
    if base is None or value is None or base == 0:
        return None
    return (value - base) / base * 100.0
