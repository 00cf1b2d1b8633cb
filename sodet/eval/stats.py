"""Statistics over seeds: is a method's change larger than what re-running the baseline with another seed gives?

The reference study reported single runs, and its changes of 1-3 % may be noise. Here each setting runs with the
same N seeds; a seed fixes the data order and augmentation, so run k of a method and run k of the baseline form a
pair, and a paired t-test over seeds removes the seed-to-seed spread both share. Student's t (scipy) gives the
confidence interval of a mean and the test's p-value: with 3-5 seeds a normal approximation would be far too narrow.
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
    """Mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n), s the sample standard deviation; None for no values."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n < 2:
        return MeanCI(mean, None, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return MeanCI(mean, float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n), n)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t-test of b against a (pairs in order); None with fewer than 2 pairs.

    Differences that are all equal have no spread: p is 1.0 when they are all zero (the same result: nothing
    to detect; scipy says nan) and 0.0 otherwise (every seed moved by exactly the same amount; scipy agrees)."""
    from scipy.stats import t

    if len(a) != len(b):
        raise ValueError(f"paired test needs pairs: {len(a)} vs {len(b)} values")
    n = len(a)
    if n < 2:
        return None
    d = [y - x for x, y in zip(a, b)]
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in d) / (n - 1))
    scale = max(abs(v) for v in (*a, *b)) or 1.0  # rounding leaves ~1e-17 of spread in equal differences
    if sd <= 1e-12 * scale:
        return 1.0 if abs(mean) <= 1e-12 * scale else 0.0
    statistic = mean / (sd / math.sqrt(n))
    return float(2 * t.sf(abs(statistic), n - 1))


def verdict(base: Sequence[float], other: Sequence[float], alpha: float = ALPHA) -> tuple[str, float | None]:
    """better / worse / within noise (higher is better, as for every COCO AP and AR) and the p-value, from the
    paired t-test over the seeds both settings finished; "n/a (1 seed)" when fewer than 2 pairs, "n/a" when
    there are none (a bucket without ground truth, or no finished seed in common)."""
    if not base or not other:
        return NOT_AVAILABLE, None
    p = paired_t_test(base, other)
    if p is None:
        return ONE_SEED, None
    if p >= alpha:
        return NOISE, p
    return (BETTER if math.fsum(other) > math.fsum(base) else WORSE), p


def relative_change(base: float | None, value: float | None) -> float | None:
    """(value - base) / base in %, None where either is missing or the base is 0 (as ``sodet compare``)."""
    if base is None or value is None or base == 0:
        return None
    return (value - base) / base * 100.0
