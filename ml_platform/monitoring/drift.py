"""Per-feature drift of live traffic against the training reference, on every row.

The numbers are Evidently 0.7's (``DataDriftPreset(num_method=..., num_threshold=...)`` with the
categorical features declared categorical and the rest numerical), computed straight from numpy so a
million rows take seconds instead of a minute and a gigabyte. Numerical columns are scored with
``DriftConfig.method``:

- ``wasserstein`` (the default, Evidently's "Wasserstein distance (normed)"): the first Wasserstein
  distance between the two samples divided by the reference's standard deviation (ddof 0, floored at
  0.001 as Evidently does, so a constant reference column gives a finite score); drifted when the
  score is ``>=`` the threshold (default 0.1).
- ``ks`` (Evidently's default for samples of 1000 rows or fewer): the two-sample Kolmogorov-Smirnov
  p-value; drifted when the p-value is ``<=`` the threshold (default 0.05). On large samples nearly
  every shift gets a tiny p-value, which is why Evidently (and this module) default to Wasserstein.

Categorical columns (``DriftConfig.categorical``, by default the model's ``CATEGORICAL_FEATURES``)
are scored with Evidently's own default for a categorical column, whatever ``DriftConfig.method``
says, each with that test's default threshold. Evidently picks the test from the reference's row count
(missing values dropped) and the number of distinct values on both sides together:

- ``jensenshannon`` above 1000 reference rows: the Jensen-Shannon distance (natural log) between the
  two sides' category shares; drifted when ``>=`` 0.1.
- ``chisquare`` up to 1000 reference rows and more than 2 distinct values: the chi-square p-value of
  the current counts against the reference shares scaled to the current row count (a category the
  reference never saw makes it 0); drifted when ``<`` 0.05.
- ``z`` up to 1000 reference rows and at most 2 distinct values: the two-sided p-value of the z-test
  for the difference of the share of values other than the smallest (1 when both sides hold the same
  single value); drifted when ``<`` 0.05.

All three need only each category's count per side, so a categorical column costs one hash
factorization of its values instead of a sort.

As in Evidently, NaN and infinite values are dropped from each side before scoring; a column left
empty on either side is an error naming it.

Why it is fast: each numerical column is sorted once per side (numpy's SIMD sort), and both statistics come from
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

import functools
import html
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.cpus import usable_cpus
from ml_platform.features.engineering import CATEGORICAL_FEATURES

DRIFT_METHODS: tuple[str, ...] = ("wasserstein", "ks")
DEFAULT_THRESHOLDS: dict[str, float] = {"wasserstein": 0.1, "ks": 0.05}
# Evidently's default tests for a categorical column (by their registered names) and their thresholds.
CATEGORICAL_METHODS: tuple[str, ...] = ("jensenshannon", "chisquare", "z")
CATEGORICAL_THRESHOLDS: dict[str, float] = {"jensenshannon": 0.1, "chisquare": 0.05, "z": 0.05}
# The categorical titles are Evidently's display names, which its reports give for a test it chose itself.
METHOD_TITLES: dict[str, str] = {
    "wasserstein": "Wasserstein distance (normed)",
    "ks": "K-S p-value",
    "jensenshannon": "Jensen-Shannon distance",
    "chisquare": "chi-square p_value",
    "z": "Z-test p_value",
}
P_VALUE_METHODS: frozenset[str] = frozenset({"ks", "chisquare", "z"})
# Evidently tests a categorical column with chi-square or z up to this many reference rows, Jensen-Shannon above.
CATEGORICAL_SMALL_MAX_ROWS = 1000
# Evidently's floor for the reference standard deviation in the normed Wasserstein distance.
WASSERSTEIN_MIN_NORM = 0.001
# scipy.stats.ks_2samp(method="auto") is exact up to this many rows a side, asymptotic above.
KS_EXACT_MAX_ROWS = 10_000
# Columns are scored in threads (at most this many) once both sides together hold this many rows.
MAX_WORKERS = 4
PARALLEL_MIN_ROWS = 200_000


def is_drifted(method: str, score: float, threshold: float) -> bool:
    """Evidently's decision for each test: a distance ``>=`` its threshold, a KS p-value ``<=`` it, a
    chi-square or z-test p-value ``<`` it."""
    if method == "ks":
        return bool(score <= threshold)
    if method in P_VALUE_METHODS:
        return bool(score < threshold)
    return bool(score >= threshold)


@dataclass(frozen=True)
class DriftConfig:
    """How drift is scored: the method and per-feature threshold for numerical columns (None: the method's
    default), and which columns are categorical (scored with Evidently's categorical default instead)."""

    method: str = "wasserstein"
    feature_threshold: float | None = None
    categorical: tuple[str, ...] = CATEGORICAL_FEATURES

    def __post_init__(self) -> None:
        if self.method not in DRIFT_METHODS:
            raise ValueError(
                f"method: unknown drift method {self.method!r}; expected one of {', '.join(DRIFT_METHODS)}"
            )
        categorical = self.categorical
        if not isinstance(categorical, tuple | list) or not all(isinstance(name, str) for name in categorical):
            raise ValueError(f"categorical: expected a list of column names, got {categorical!r}")
        object.__setattr__(self, "categorical", tuple(categorical))
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
        """The per-feature threshold in force for numerical columns."""
        return DEFAULT_THRESHOLDS[self.method] if self.feature_threshold is None else float(self.feature_threshold)

    def is_drifted(self, score: float) -> bool:
        """Evidently's decision for a numerical column: distance ``>=`` threshold, or p-value ``<=`` threshold."""
        return is_drifted(self.method, score, self.threshold)


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    score: float
    threshold: float
    drifted: bool
    method: str

    @property
    def strength(self) -> float:
        """How far past (above 1) or short of (below 1) its threshold the score is, whatever the test."""
        if self.method in P_VALUE_METHODS:
            return math.inf if self.score <= 0.0 else self.threshold / self.score
        return self.score / self.threshold

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
    method: str  # the numerical columns' method; each feature names its own
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

    @property
    def methods(self) -> dict[str, str]:
        return {f.feature: f.method for f in self.features}

    def top(self, n: int = 3) -> list[FeatureDrift]:
        return list(self.features[:n])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "feature": [f.feature for f in self.features],
                "score": [f.score for f in self.features],
                "threshold": [f.threshold for f in self.features],
                "drifted": [f.drifted for f in self.features],
                "method": [f.method for f in self.features],
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


def _severity_order(features: list[FeatureDrift]) -> tuple[FeatureDrift, ...]:
    """Most drifted first: drifted before not, then the score furthest past its threshold (stable on ties).

    Distances and p-values compare through their ratio to the threshold (a p-value's inverted), which
    orders features of one test exactly as their scores do."""
    return tuple(sorted(features, key=lambda f: (not f.drifted, -f.strength)))


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


# ---- the statistics from category counts ---------------------------------------------------------
def categorical_method(reference_rows: int, distinct_values: int) -> str:
    """Evidently's default test for a categorical column, from the reference's row count (missing values
    dropped) and the number of distinct values on both sides together."""
    if reference_rows > CATEGORICAL_SMALL_MAX_ROWS:
        return "jensenshannon"
    return "chisquare" if distinct_values > 2 else "z"


def categorical_score(method: str, reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Evidently's ``method`` score from each category's count per side (categories in sorted order, each
    seen on at least one side, both sides non-empty)."""
    from scipy import stats
    from scipy.spatial import distance

    n_reference, n_current = int(reference_counts.sum()), int(current_counts.sum())
    if method == "jensenshannon":
        return float(distance.jensenshannon(reference_counts / n_reference, current_counts / n_current))
    if method == "chisquare":
        expected = reference_counts * (n_current / n_reference)
        with np.errstate(divide="ignore"):  # a category the reference never saw: statistic inf, p-value 0
            return float(stats.chisquare(current_counts, expected).pvalue)
    if method == "z":
        if len(reference_counts) == 1:  # one value, the same on both sides
            return 1.0
        # the share of values other than the smallest, on each side
        p1 = float(n_reference - reference_counts[0]) / n_reference
        p2 = float(n_current - current_counts[0]) / n_current
        pooled = float(p1 * n_reference + p2 * n_current) / (n_reference + n_current)
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n_reference + 1.0 / n_current))
        return float(2 * (1 - stats.norm.cdf(np.abs(z))))
    raise ValueError(f"method: unknown categorical drift test {method!r}; expected one of {CATEGORICAL_METHODS}")


def category_counts(reference_values: np.ndarray, current_values: np.ndarray):
    """Each category's count in the reference and in the current values (categories sorted)."""
    pooled = np.concatenate((reference_values, current_values))
    codes, categories = pd.factorize(pooled, sort=True)
    n_reference = len(reference_values)
    reference_counts = np.bincount(codes[:n_reference], minlength=len(categories))
    current_counts = np.bincount(codes[n_reference:], minlength=len(categories))
    return reference_counts, current_counts


def _finite_sorted(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    finite.sort()
    return finite


def _column_values(frame: pd.DataFrame, column: str, side: str) -> np.ndarray:
    series = frame[column]
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
        raise ValueError(f"{side}[{column!r}]: expected numbers to score drift on, got dtype {series.dtype}")
    return series.to_numpy(dtype="float64", na_value=np.nan)


def _category_values(frame: pd.DataFrame, column: str, side: str) -> np.ndarray:
    """A categorical column's values, missing (and, for numbers, infinite) ones dropped as Evidently does."""
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        values = values[np.isfinite(values)]
    else:
        values = series[series.notna()].to_numpy(dtype=object)
    if len(values) == 0:
        raise ValueError(f"{side}[{column!r}]: no finite values (all NaN or infinite); cannot score drift")
    return values


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


def _column_inputs(reference: pd.DataFrame, current: pd.DataFrame, names: list[str], config: DriftConfig):
    """Each column's name, whether it is categorical, and its values on each side (checked up front)."""
    categorical = set(config.categorical)
    inputs = []
    for name in names:
        values = _category_values if name in categorical else _column_values
        inputs.append(
            (name, name in categorical, values(reference, name, "reference"), values(current, name, "current"))
        )
    return inputs


def drift_methods(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass, immutable default
) -> dict[str, tuple[str, float]]:
    """Each column's test and threshold as :func:`compute_drift` picks them on these rows."""
    names = _check_inputs(reference, current, columns)
    methods: dict[str, tuple[str, float]] = {}
    for name, categorical, reference_values, current_values in _column_inputs(reference, current, names, config):
        if categorical:
            reference_counts, _ = category_counts(reference_values, current_values)
            method = categorical_method(len(reference_values), len(reference_counts))
            methods[name] = (method, CATEGORICAL_THRESHOLDS[method])
        else:
            methods[name] = (config.method, config.threshold)
    return methods


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass, immutable default
) -> DriftReport:
    """Drift of ``current`` against ``reference`` for each of ``columns``, on all rows.

    Equals Evidently's ``DataDriftPreset(num_method=config.method, num_threshold=config.threshold)``
    with ``config.categorical`` declared categorical (see the module docstring): the same scores, tests
    and decisions. Raises ValueError naming the problem when a column is missing or a numerical one not
    numeric, or a side has no rows (or none finite in a column).
    """
    started = time.perf_counter()
    names = _check_inputs(reference, current, columns)
    # Inputs are checked for every column before any work starts, so a bad column fails fast.
    columns_values = _column_inputs(reference, current, names, config)

    def score_column(item: tuple[str, bool, np.ndarray, np.ndarray]) -> FeatureDrift:
        name, categorical, reference_values, current_values = item
        if categorical:
            reference_counts, current_counts = category_counts(reference_values, current_values)
            method = categorical_method(len(reference_values), len(reference_counts))
            score = categorical_score(method, reference_counts, current_counts)
            threshold = CATEGORICAL_THRESHOLDS[method]
            return FeatureDrift(name, score, threshold, is_drifted(method, score, threshold), method)
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
        return FeatureDrift(name, float(score), config.threshold, config.is_drifted(score), config.method)

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
        features=_severity_order(features),
        reference_rows=len(reference),
        current_rows=len(current),
        seconds=time.perf_counter() - started,
    )


# ---- Evidently itself ----------------------------------------------------------------------------
@functools.cache
def _note_container():
    """An Evidently metric container that computes nothing and draws a markdown note at its place."""
    from evidently.core.container import MetricContainer
    from evidently.legacy.renderers.html_widgets import text_widget

    class ReportNote(MetricContainer):
        title: str
        text: str

        def __init__(self, title: str, text: str):
            self.title = title
            self.text = text
            super().__init__(include_tests=False)

        def generate_metrics(self, context):
            return []

        def render(self, context, child_widgets=None):
            return [text_widget(title=self.title, text=self.text)]

    return ReportNote


def _evidently_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    names: list[str],
    config: DriftConfig,
    *,
    methods: dict[str, tuple[str, float]] | None = None,
    drift_share: float = 0.5,
    note: str | None = None,
):
    """Evidently's DataDriftPreset on these rows: each numerical column with ``config``'s method and
    categorical ones with Evidently's default, or each column with its test in ``methods``."""
    import warnings

    categorical = [name for name in names if name in set(config.categorical)]
    with warnings.catch_warnings():
        # Evidently's dependencies warn on import (deprecations), and numpy warns inside Evidently's
        # histograms of columns holding infinities; neither affects the scores.
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(
            numerical_columns=[name for name in names if name not in categorical], categorical_columns=categorical
        )
        if methods is None:
            preset = DataDriftPreset(
                columns=names, drift_share=drift_share, num_method=config.method, num_threshold=config.threshold
            )
        else:
            preset = DataDriftPreset(
                columns=names,
                drift_share=drift_share,
                per_column_method={name: methods[name][0] for name in names},
                per_column_threshold={name: methods[name][1] for name in names},
            )
        items = [_note_container()("About this report", note), preset] if note else [preset]
        return Report(items, include_tests=True).run(
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

    Scores, thresholds and the tests Evidently chose come from the ``ValueDrift`` metrics and each
    feature's drifted flag from Evidently's own ``Value Drift for column ...`` test, so nothing of our
    decision rule is reused here.
    """
    started = time.perf_counter()
    names = _check_inputs(reference, current, columns)
    result = _evidently_snapshot(reference, current, names, config).dict()
    # Evidently names a test it chose itself by its display name, one it was given by its registered name.
    registered = {title: name for name, title in METHOD_TITLES.items() if name in CATEGORICAL_METHODS}
    scores: dict[str, tuple[float, float, str]] = {}
    for metric in result["metrics"]:
        metric_config = metric["config"]
        if metric_config.get("type") == "evidently:metric_v2:ValueDrift":
            method = str(metric_config["method"])
            scores[metric_config["column"]] = (
                float(metric["value"]),
                float(metric_config["threshold"]),
                registered.get(method, method),
            )
    drifted: dict[str, bool] = {}
    for test in result.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            status = getattr(test["status"], "value", test["status"])
            drifted[params["column"]] = str(status).upper() == "FAIL"
    features = [FeatureDrift(name, *scores[name][:2], drifted[name], scores[name][2]) for name in names]
    return DriftReport(
        method=config.method,
        features=_severity_order(features),
        reference_rows=len(reference),
        current_rows=len(current),
        seconds=time.perf_counter() - started,
    )


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame
    return frame.sample(n=rows, random_state=seed).sort_index()


def _report_note(
    reference_rows: tuple[int, int],
    current_rows: tuple[int, int],
    methods: dict[str, tuple[str, float]],
    drift_share: float,
) -> str:
    """The page's statement of the rows it was drawn from and the tests and thresholds it applies."""
    sampled = reference_rows[0] < reference_rows[1] or current_rows[0] < current_rows[1]
    if sampled:
        rows = (
            f"**Drawn from a sample**: a seeded random sample of {reference_rows[0]:,} of the "
            f"{reference_rows[1]:,} reference rows and {current_rows[0]:,} of the {current_rows[1]:,} current "
            "rows. The scores on this page are the sample's; the drift check scores every row, so its "
            "figures (in the asset's metadata) can differ a little from these."
        )
    else:
        rows = f"Drawn from all rows: {reference_rows[1]:,} reference rows and {current_rows[1]:,} current rows."
    tests = "; ".join(
        f"{html.escape(name)}: {METHOD_TITLES.get(method, method)}, threshold {threshold:g}"
        for name, (method, threshold) in methods.items()
    )
    return (
        f"{rows}\n\nDataset drift threshold {drift_share:g}, the drift rule's (the check fails when the share "
        f"of drifted columns is above it). Per-column tests and thresholds, as in the check: {tests}."
    )


def render_drift_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    config: DriftConfig,
    path: Path,
    *,
    drift_share: float,
    sample_rows: int = 20_000,
    seed: int = 0,
) -> Path:
    """Evidently's HTML drift report from a seeded sample of each side, written atomically.

    The page applies the check's own rules: ``drift_share`` (the drift rule's threshold) as the dataset
    drift threshold, and each column's test and threshold as :func:`compute_drift` picks them on all
    rows (so a sample small enough to change Evidently's own choice does not change the test). A note at
    the top says which rows the page was drawn from. The page is for looking at distributions (~4.4 MB
    whatever the rows, plotly embedded); the numbers to act on are :func:`compute_drift`'s on all rows.
    """
    if sample_rows < 1:
        raise ValueError(f"sample_rows: expected at least 1, got {sample_rows}")
    if isinstance(drift_share, bool) or not isinstance(drift_share, int | float) or not 0.0 <= drift_share <= 1.0:
        raise ValueError(f"drift_share: expected a share of columns between 0 and 1, got {drift_share!r}")
    names = _check_inputs(reference, current, columns)
    methods = drift_methods(reference, current, names, config)
    reference_sample = _sample(reference[names], sample_rows, seed)
    current_sample = _sample(current[names], sample_rows, seed + 1)
    note = _report_note(
        (len(reference_sample), len(reference)), (len(current_sample), len(current)), methods, float(drift_share)
    )
    snapshot = _evidently_snapshot(
        reference_sample, current_sample, names, config, methods=methods, drift_share=float(drift_share), note=note
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
