"""Small statistics for reports: paired ratios and means over seeds, with confidence intervals."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def paired_ratio(a: list[float], b: list[float], confidence: float = 0.95) -> dict:
    """Geometric mean of per-item ratios a/b, with a t-interval on the log ratios.

    Items are prompts; both methods ran on each, in the same run.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = (a_arr > 0) & (b_arr > 0)
    logs = np.log(a_arr[ok] / b_arr[ok])
    n = int(logs.size)
    if n == 0:
        return {"ratio": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    mean = float(logs.mean())
    if n == 1:
        return {"ratio": math.exp(mean), "lo": float("nan"), "hi": float("nan"), "n": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * logs.std(ddof=1) / math.sqrt(n))
    return {"ratio": math.exp(mean), "lo": math.exp(mean - half), "hi": math.exp(mean + half), "n": n}


def mean_ci(values: list[float], confidence: float = 0.95) -> dict:
    """Mean of independent runs (seeds) with a t-interval; missing values (None, NaN) left out."""
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(x.size)}
