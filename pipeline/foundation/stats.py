"""Honest numbers: how sure an accuracy is, and whether two classifiers scored on the same images
really differ. Every function returns plain values and every output names its method.

  accuracy        Wilson score interval (95%) on correct/n over images: good coverage even for
                  small n or accuracies near 0 or 1, where the normal approximation is not.
  per-class recall  the same interval on each class's correct/support.
  paired          two classifiers on the same images: paired percentile bootstrap (images resampled
                  with replacement, seeded) of the accuracy difference B - A, and McNemar's exact
                  test (Dietterich, 1998): under "no difference" each image only one of them gets
                  right is equally likely to be A's or B's, so the discordant counts are Binomial(n, 1/2).
  over seeds      mean, sample standard deviation and Student-t interval of the mean.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054          # the standard normal's 97.5% quantile
ACCURACY_METHOD = "95% Wilson score interval over images"
PAIRED_METHOD = ("difference B - A with a 95% paired percentile bootstrap over images "
                 "({resamples} resamples, seed {seed}); McNemar's exact two-sided p from the discordant images")
SEEDS_METHOD = "mean, sample standard deviation and 95% Student-t interval of the mean over seeds"
RESAMPLES = 2000


def wilson(correct: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct/n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact ends at 0 and n (the formula gives them up to rounding)
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def accuracy(correct: int, n: int) -> dict:
    """{"accuracy", "low", "high", "n"}: an accuracy with its 95% Wilson interval."""
    low, high = wilson(int(correct), int(n))
    return {"accuracy": correct / n if n else 0.0, "low": low, "high": high, "n": int(n)}


def per_class_recall(y_true, y_pred, n_classes: int) -> list[tuple[float, float]]:
    """The Wilson interval of each class's recall (correct among its images)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return [wilson(int(np.sum((y_true == c) & (y_pred == c))), int(np.sum(y_true == c))) for c in range(n_classes)]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value from the discordant counts: 2 * P(X <= min) for
    X ~ Binomial(only_a + only_b, 1/2), at most 1; 1.0 when nothing is discordant."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    from scipy.stats import binom
    return float(min(1.0, 2 * binom.cdf(min(only_a, only_b), n, 0.5)))


def paired_bootstrap(correct_a, correct_b, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high): accuracy of B minus accuracy of A on the same images, with the 95%
    percentile interval of that difference over images resampled with replacement. Swapping A and B
    negates all three (the same resamples are drawn)."""
    d = np.asarray(correct_b, np.int8) - np.asarray(correct_a, np.int8)
    if len(d) == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // len(d))        # ~4 M indices at a time: bounded memory for large splits
    means = np.concatenate([d[rng.integers(0, len(d), (min(chunk, resamples - i), len(d)))].mean(axis=1)
                            for i in range(0, resamples, chunk)])
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(d.mean()), float(low), float(high)


def paired(correct_a, correct_b, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Two classifiers' per-image correctness on the same images: both accuracies with intervals,
    the difference B - A with its paired bootstrap interval, McNemar's exact p and the counts."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results need the same images: {a.shape} vs {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    diff, low, high = paired_bootstrap(a, b, resamples, seed)
    return {"a": accuracy(int(a.sum()), len(a)), "b": accuracy(int(b.sum()), len(b)),
            "difference": diff, "difference_low": low, "difference_high": high,
            "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b),
            "method": PAIRED_METHOD.format(resamples=resamples, seed=seed)}


def over_seeds(values) -> dict:
    """{"mean", "sd", "low", "high", "n"} of per-seed accuracies; sd and interval None for one seed."""
    v = np.asarray(values, float)
    n, mean = len(v), float(v.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "low": None, "high": None, "n": n}
    from scipy.stats import t
    sd = float(v.std(ddof=1))
    half = float(t.ppf((1 + LEVEL) / 2, n - 1)) * sd / math.sqrt(n)
    # accuracies: the interval never leaves [0, 1] (with few seeds the t interval can)
    return {"mean": mean, "sd": sd, "low": max(0.0, mean - half), "high": min(1.0, mean + half), "n": n}


def interval_text(value: float, low: float | None, high: float | None, digits: int = 4) -> str:
    """"0.8123 [0.8012, 0.8230]": a number with its interval, as every report prints it."""
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def signed_text(value: float, low: float, high: float, digits: int = 4) -> str:
    """"+0.0120 [-0.0040, +0.0280]": a difference with its interval."""
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
