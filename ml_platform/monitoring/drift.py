"""Per-feature drift of live traffic against the training reference, on every row.

The numbers are Evidently 0.7's (``DataDriftPreset(method=..., threshold=...)`` with the columns
declared numerical), computed straight from numpy so a million rows take seconds instead of a
minute and a gigabyte:

- ``wasserstein`` (the default, Evidently's "Wasserstein distance (normed)"): the first Wasserstein
  distance between the two samples divided by the reference's standard deviation (ddof 0, floored at
  0.001 as Evidently does, so a constant reference column gives a finite score); drifted when the
  score is ``>=`` the threshold (default 0.1).
- ``ks`` (Evidently's default for samples of 1000 rows or fewer): the two-sample Kolmogorov-Smirnov
  p-value; drifted when the p-value is ``<=`` the threshold (default 0.05). On large samples nearly
  every shift gets a tiny p-value, which is why Evidently (and this module) default to Wasserstein.

As in Evidently, NaN and infinite values are dropped from each side before scoring; a column left
empty on either side is an error naming it.

Why it is fast: each column is sorted once per side (numpy's SIMD sort), and both statistics come from
one merge of the two sorted samples. The merged order's running count of reference values gives both
empirical CDFs at every point, which is what :func:`scipy.stats.wasserstein_distance` and
:func:`scipy.stats.ks_2samp` compute with an argsort and two binary searches per sample. At tied
values the running count is only correct at the last of the tie, so the Wasserstein integral (whose
step width is 0 inside a tie) is unaffected and the KS statistic is read at tie ends only. The sums are
the same floating point operations as scipy's, so the scores are bit-for-bit scipy's; the tests hold
them to Evidently's own report. On large inputs the columns are scored in threads (numpy releases the GIL
while it sorts), which uses a multi-core machine without changing any number.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.cpus import usable_cpus

DRIFT_METHODS: tuple[str, ...] = ("wasserstein", "ks")
DEFAULT_THRESHOLDS: dict[str, float] = {"wasserstein": 0.1, "ks": 0.05}
METHOD_TITLES: dict[str, str] = {"wasserstein": "Wasserstein distance (normed)", "ks": "K-S p-value"}
# Evidently's floor for the reference standard deviation in the normed Wasserstein distance.
WASSERSTEIN_MIN_NORM = 0.001
# scipy.stats.ks_2samp(method="auto") is exact up to this many rows a side, asymptotic above.
KS_EXACT_MAX_ROWS = 10_000
# Columns are scored in threads (at most this many) once both sides together hold this many rows.
MAX_WORKERS = 4
PARALLEL_MIN_ROWS = 200_000


@dataclass(frozen=True)
class DriftConfig:
    """How drift is scored: the method and the per-feature threshold (None: the method's default)."""

    method: str = "wasserstein"
    feature_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in DRIFT_METHODS:
            raise ValueError(
                f"method: unknown drift method {self.method!r}; expected one of {', '.join(DRIFT_METHODS)}"
            )
        threshold = self.feature_threshold
        if threshold is None:
            return
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise ValueError(f"feature_threshold: expected a finite number, got {threshold!r}")
        if self.method == "ks" and not 0.0 < threshold < 1.0:
            raise ValueError(f"feature_threshold: a KS p-value threshold must be in (0, 1), got {threshold}")
        if self.method == "wasserstein" and threshold <= 0.0:
            raise ValueError(f"feature_threshold: a Wasserstein threshold must be positive, got {threshold}")

    @property
    def threshold(self) -> float:
        """The per-feature threshold in force."""
        return DEFAULT_THRESHOLDS[self.method] if self.feature_threshold is None else float(self.feature_threshold)

    def is_drifted(self, score: float) -> bool:
        """Evidently's decision: distance ``>=`` threshold, or p-value ``<=`` threshold."""
        if self.method == "ks":
            return bool(score <= self.threshold)
        return bool(score >= self.threshold)


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    score: float
    threshold: float
    drifted: bool
    method: str

    def to_dict(self) -> dict:
        return {
            "feature": self.feature,
            "score": float(self.score),
            "threshold": float(self.threshold),
            "drifted": bool(self.drifted),
            "method": self.method,
        }


@dataclass(frozen=True)
class DriftReport:
    method: str
    features: tuple[FeatureDrift, ...]  # most drifted first
    reference_rows: int
    current_rows: int
    seconds: float = field(default=0.0, compare=False)

    @property
    def drift_score(self) -> float:
        """Share of features drifted (0..1): Evidently's dataset-level drift share."""
        return sum(f.drifted for f in self.features) / len(self.features) if self.features else 0.0

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def scores(self) -> dict[str, float]:
        return {f.feature: f.score for f in self.features}

    def top(self, n: int = 3) -> list[FeatureDrift]:
        return list(self.features[:n])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "feature": [f.feature for f in self.features],
                "score": [f.score for f in self.features],
                "threshold": [f.threshold for f in self.features],
                "drifted": [f.drifted for f in self.features],
            }
        )

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "drift_score": self.drift_score,
            "drifted_features": self.drifted_features,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "features": [f.to_dict() for f in self.features],
        }


def _severity_order(features: list[FeatureDrift], method: str) -> tuple[FeatureDrift, ...]:
    """Most drifted first: drifted before not, then the strongest evidence (stable on ties)."""
    sign = 1.0 if method == "ks" else -1.0  # small p-value / large distance = more drift
    return tuple(sorted(features, key=lambda f: (not f.drifted, sign * f.score)))


# ---- the statistics from sorted samples ----------------------------------------------------------
def _merged_cdf_counts(reference_sorted: np.ndarray, current_sorted: np.ndarray):
    """The pooled sorted values and, at each, how many reference / current values are at or before it."""
    n_reference = len(reference_sorted)
    pooled = np.concatenate((reference_sorted, current_sorted))
    # Two sorted runs: the stable (tim)sort merges them in linear time.
    order = np.argsort(pooled, kind="stable")
    pooled = pooled[order]
    reference_count = np.cumsum(order < n_reference)
    current_count = np.arange(1, len(pooled) + 1) - reference_count
    return pooled, reference_count, current_count


def wasserstein_sorted(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> float:
    """``scipy.stats.wasserstein_distance`` of two sorted, finite, non-empty samples."""
    pooled, reference_count, current_count = _merged_cdf_counts(reference_sorted, current_sorted)
    deltas = np.diff(pooled)
    difference = reference_count[:-1] / len(reference_sorted) - current_count[:-1] / len(current_sorted)
    return float(np.vecdot(np.abs(difference), deltas))


def ks_pvalue_sorted(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> float:
    """``scipy.stats.ks_2samp(reference, current).pvalue`` (two-sided, method auto) of sorted samples."""
    from scipy import stats

    n1, n2 = len(reference_sorted), len(current_sorted)
    if max(n1, n2) <= KS_EXACT_MAX_ROWS:  # scipy's exact branch: small, so let scipy do it
        return float(stats.ks_2samp(reference_sorted, current_sorted).pvalue)
    pooled, reference_count, current_count = _merged_cdf_counts(reference_sorted, current_sorted)
    tie_end = np.empty(len(pooled), dtype=bool)
    np.not_equal(pooled[1:], pooled[:-1], out=tie_end[:-1])
    tie_end[-1] = True
    differences = reference_count[tie_end] / n1 - current_count[tie_end] / n2
    max_s = float(differences.max())
    min_s = float(np.clip(-differences.min(), 0, 1))
    statistic = min_s if min_s > max_s else max_s
    # scipy's asymptotic branch for two-sided tests (Smirnov's distribution at the effective n)
    m, n = sorted([float(n1), float(n2)], reverse=True)
    effective_n = m * n / (m + n)
    return float(np.clip(stats.distributions.kstwo.sf(statistic, np.round(effective_n)), 0, 1))


def _finite_sorted(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    finite.sort()
    return finite


def _column_values(frame: pd.DataFrame, column: str, side: str) -> np.ndarray:
    series = frame[column]
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
        raise ValueError(f"{side}[{column!r}]: expected numbers to score drift on, got dtype {series.dtype}")
    return series.to_numpy(dtype="float64", na_value=np.nan)


def _check_inputs(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    if isinstance(columns, str):
        raise ValueError(f"columns: expected a list of column names, got the string {columns!r}")
    names = list(columns)
    if not names:
        raise ValueError("columns: expected at least one column to score drift on")
    for side, frame in (("reference", reference), ("current", current)):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{side}: expected a pandas DataFrame, got {type(frame).__name__}")
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise ValueError(f"{side}: missing column(s) {', '.join(map(repr, missing))}")
        if len(frame) == 0:
            raise ValueError(f"{side}: no rows to compare; drift needs rows on both sides")
    return names


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass, immutable default
) -> DriftReport:
    """Drift of ``current`` against ``reference`` for each of ``columns``, on all rows.

    Equals Evidently's ``DataDriftPreset(method=config.method, threshold=config.threshold)`` with the
    columns declared numerical (see the module docstring). Raises ValueError naming the problem when a
    column is missing or not numeric, or a side has no rows (or none finite in a column).
    """
    started = time.perf_counter()
    names = _check_inputs(reference, current, columns)
    threshold = config.threshold
    # Inputs are checked for every column before any work starts, so a bad column fails fast.
    columns_values = [
        (name, _column_values(reference, name, "reference"), _column_values(current, name, "current")) for name in names
    ]

    def score_column(item: tuple[str, np.ndarray, np.ndarray]) -> FeatureDrift:
        name, reference_values, current_values = item
        reference_sorted = _finite_sorted(reference_values)
        current_sorted = _finite_sorted(current_values)
        for side, values in (("reference", reference_sorted), ("current", current_sorted)):
            if len(values) == 0:
                raise ValueError(f"{side}[{name!r}]: no finite values (all NaN or infinite); cannot score drift")
        if config.method == "wasserstein":
            norm = max(float(np.std(reference_sorted)), WASSERSTEIN_MIN_NORM)
            score = wasserstein_sorted(reference_sorted, current_sorted) / norm
        else:
            score = ks_pvalue_sorted(reference_sorted, current_sorted)
        return FeatureDrift(name, float(score), threshold, config.is_drifted(score), config.method)

    # numpy's sorts and ufuncs release the GIL: columns in threads use the machine's cores (the results
    # do not depend on it). Small inputs stay on this thread, where a pool would cost more than it saves.
    workers = min(len(names), usable_cpus(), MAX_WORKERS)
    if workers > 1 and len(reference) + len(current) >= PARALLEL_MIN_ROWS:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drift") as pool:
            features = list(pool.map(score_column, columns_values))
    else:
        features = [score_column(item) for item in columns_values]
    return DriftReport(
        method=config.method,
        features=_severity_order(features, config.method),
        reference_rows=len(reference),
        current_rows=len(current),
        seconds=time.perf_counter() - started,
    )


# ---- Evidently itself ----------------------------------------------------------------------------
def _evidently_snapshot(reference: pd.DataFrame, current: pd.DataFrame, names: list[str], config: DriftConfig):
    import warnings

    with warnings.catch_warnings():
        # Evidently's dependencies warn on import (deprecations), and numpy warns inside Evidently's
        # histograms of columns holding infinities; neither affects the scores.
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(numerical_columns=names)
        preset = DataDriftPreset(columns=names, method=config.method, threshold=config.threshold)
        return Report([preset], include_tests=True).run(
            Dataset.from_pandas(current[names], data_definition=definition),  # current FIRST
            Dataset.from_pandas(reference[names], data_definition=definition),
        )


def evidently_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    config: DriftConfig = DriftConfig(),  # noqa: B008
) -> DriftReport:
    """The same report computed by Evidently's ``DataDriftPreset`` (slow: for benchmarks and tests).

    Scores come from the ``ValueDrift`` metrics and each feature's drifted flag from Evidently's own
    ``Value Drift for column ...`` test, so nothing of our decision rule is reused here.
    """
    started = time.perf_counter()
    names = _check_inputs(reference, current, columns)
    result = _evidently_snapshot(reference, current, names, config).dict()
    scores: dict[str, tuple[float, float]] = {}
    for metric in result["metrics"]:
        metric_config = metric["config"]
        if metric_config.get("type") == "evidently:metric_v2:ValueDrift":
            scores[metric_config["column"]] = (float(metric["value"]), float(metric_config["threshold"]))
    drifted: dict[str, bool] = {}
    for test in result.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            status = getattr(test["status"], "value", test["status"])
            drifted[params["column"]] = str(status).upper() == "FAIL"
    features = [FeatureDrift(name, scores[name][0], scores[name][1], drifted[name], config.method) for name in names]
    return DriftReport(
        method=config.method,
        features=_severity_order(features, config.method),
        reference_rows=len(reference),
        current_rows=len(current),
        seconds=time.perf_counter() - started,
    )


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame
    return frame.sample(n=rows, random_state=seed).sort_index()


def render_drift_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    config: DriftConfig,
    path: Path,
    *,
    sample_rows: int = 20_000,
    seed: int = 0,
) -> Path:
    """Evidently's HTML drift report from a seeded sample of each side, written atomically.

    The page is for looking at distributions (it is ~4.4 MB whatever the rows, plotly embedded); its
    scores are the sample's, the numbers to act on are :func:`compute_drift`'s on all rows.
    """
    if sample_rows < 1:
        raise ValueError(f"sample_rows: expected at least 1, got {sample_rows}")
    names = _check_inputs(reference, current, columns)
    snapshot = _evidently_snapshot(
        _sample(reference[names], sample_rows, seed), _sample(current[names], sample_rows, seed + 1), names, config
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        snapshot.save_html(str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
