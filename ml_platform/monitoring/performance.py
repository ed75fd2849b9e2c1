"""Live model quality: the served predictions judged by the labels that have arrived.

The prediction log holds each answer's decision (``is_fraud``, at the model's own threshold) and its
score (``probability``); the label store holds the late ground truth. Joining them on ``request_id``
gives accuracy, precision, recall, F1 and PR AUC on real traffic, compared with the same metrics the
version scored on its test split when it was evaluated.

With fraud a few percent of traffic, accuracy barely moves when the model stops catching fraud, so
the "accuracy drop" the alert rules watch is judged on the metrics of the rare class
(:data:`JUDGED_METRICS`: recall, precision, PR AUC), and only when it is significant: each live metric
comes with a one-sided upper confidence bound (Clopper-Pearson for the proportions, a seeded
percentile bootstrap for F1 and PR AUC), and a metric has dropped when even that bound is more than
the threshold below the baseline. ``confidence`` holds for the judged metrics together (Bonferroni:
each bound is at ``1 - (1 - confidence) / 3``), so three chances to fire do not triple the false
alarms. A window with too few labelled positives is not judged at all.

The baseline is itself a measurement (recall on about a hundred test positives is uncertain by several
points, and one baseline is shared by every window the version is judged on), so when the version's
evaluation logged its test confusion counts and PR AUC's bootstrap standard error, the baseline gets a
one-sided lower bound at the same level (Clopper-Pearson from the counts, normal from the standard
error), and a metric has dropped when the live upper bound is more than the threshold below the
baseline's lower bound. The test split and the window are independent samples, so the two errors would
have to add up to more than both margins: this keeps ``confidence`` (it is more cautious than combining
the two standard errors, which on healthy synthetic days still let a lucky baseline raise alarms). A
version evaluated without them is judged against the point value of its baseline, as the check's
description says.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ml_platform.evaluation.metrics import COUNT_NAMES, PR_AUC_SE

LIVE_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "pr_auc")
# The metrics the accuracy drop is judged on: those of the rare class, which move when fraud is missed.
JUDGED_METRICS: tuple[str, ...] = ("recall", "precision", "pr_auc")
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_LABELLED_POSITIVES = 20
BOOTSTRAP_RESAMPLES = 500
BOOTSTRAP_SEED = 0

_TITLES = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1", "pr_auc": "PR AUC"}


def _nan_to_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(float(value))


@dataclass(frozen=True)
class LivePerformance:
    model_version: int | None
    labeled_rows: int
    unlabeled_rows: int
    metrics: dict[str, float]  # LIVE_METRICS on labeled traffic (NaN when none is labeled or undefined)
    baseline: dict[str, float]  # the same names from the version's evaluation
    positive_rate: float = float("nan")  # share of labeled rows that are fraud
    confusion: dict[str, int] = field(default_factory=dict)  # true/false positives/negatives
    upper_bounds: dict[str, float] = field(default_factory=dict)  # one-sided bound of each, at ``bound_level``
    confidence: float = DEFAULT_CONFIDENCE  # for the judged metrics together
    # one-sided lower bound of each baseline metric at ``bound_level``, where the evaluation logged what it
    # needs (:func:`baseline_lower_bounds`); a metric without one is judged against its point value
    baseline_lower_bounds: dict[str, float] = field(default_factory=dict)

    @property
    def bound_level(self) -> float:
        """The level of each of ``upper_bounds``: ``confidence`` shared by the judged metrics (Bonferroni)."""
        return bonferroni_level(self.confidence)

    @property
    def label_coverage(self) -> float:
        total = self.labeled_rows + self.unlabeled_rows
        return self.labeled_rows / total if total else float("nan")

    @property
    def labelled_positives(self) -> int:
        """Labelled rows that are fraud: what recall and PR AUC are measured on."""
        return int(self.confusion.get("true_positives", 0) + self.confusion.get("false_negatives", 0))

    def drop(self, name: str = "accuracy") -> float:
        """``baseline - live`` for metric ``name`` (positive = worse live); NaN when either is unknown."""
        live = self.metrics.get(name, float("nan"))
        base = self.baseline.get(name, float("nan"))
        if live is None or base is None:
            return float("nan")
        return float(base) - float(live)

    def bound_drop(self, name: str) -> float:
        """The drop of metric ``name`` the window shows with confidence (bounds at :attr:`bound_level`):
        ``baseline lower bound - live upper bound``, or ``baseline - live upper bound`` when the
        baseline has no lower bound (taken as exact). NaN when the upper bound or the baseline is unknown."""
        bound = self.upper_bounds.get(name, float("nan"))
        base = self.baseline.get(name, float("nan"))
        if not (_known(bound) and _known(base)):
            return float("nan")
        lower = self.baseline_lower_bounds.get(name)
        return float(lower if _known(lower) else base) - float(bound)

    def confident_drop(self, min_labelled_positives: int = DEFAULT_MIN_LABELLED_POSITIVES) -> float:
        """The largest :meth:`bound_drop` of the judged metrics: the accuracy drop rule fires when it is
        above the threshold. NaN (never fires) with fewer than ``min_labelled_positives`` labelled
        positives or when no judged metric has both a bound and a baseline."""
        if self.labelled_positives < min_labelled_positives:
            return float("nan")
        drops = [self.bound_drop(name) for name in JUDGED_METRICS]
        known = [drop for drop in drops if _known(drop)]
        return max(known) if known else float("nan")

    def to_dict(self) -> dict:
        """JSON-able (NaN becomes null)."""
        return {
            "model_version": self.model_version,
            "labeled_rows": self.labeled_rows,
            "unlabeled_rows": self.unlabeled_rows,
            "labelled_positives": self.labelled_positives,
            "label_coverage": _nan_to_none(self.label_coverage),
            "positive_rate": _nan_to_none(self.positive_rate),
            "metrics": {name: _nan_to_none(value) for name, value in self.metrics.items()},
            "baseline": {name: _nan_to_none(value) for name, value in self.baseline.items()},
            "drops": {name: _nan_to_none(self.drop(name)) for name in LIVE_METRICS},
            "confidence": self.confidence,
            "bound_level": self.bound_level,
            "upper_bounds": {name: _nan_to_none(value) for name, value in self.upper_bounds.items()},
            "baseline_lower_bounds": {name: _nan_to_none(value) for name, value in self.baseline_lower_bounds.items()},
            "bound_drops": {name: _nan_to_none(self.bound_drop(name)) for name in LIVE_METRICS},
            "confusion": dict(self.confusion),
        }


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float in (0.5, 1) (shared by the judged metrics' one-sided bounds), else a
    ValueError naming it."""
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.5 < value < 1.0:
        raise ValueError(f"confidence must be a number in (0.5, 1), got {confidence!r}")
    return value


def bonferroni_level(confidence: float) -> float:
    """The level of each judged metric's bound so that ``confidence`` holds for all of them together."""
    return 1.0 - (1.0 - confidence) / len(JUDGED_METRICS)


def proportion_upper_bound(successes: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial proportion (1.0 with no trials: no evidence)."""
    from scipy import stats

    if trials == 0:
        return 1.0
    # The upper end of the two-sided exact interval at 2c-1 leaves 1-c above it: the one-sided bound at c.
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=2.0 * confidence - 1.0, method="exact"
    )
    return float(interval.high)


def proportion_lower_bound(successes: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a binomial proportion (0.0 with no trials: no evidence)."""
    from scipy import stats

    if trials == 0:
        return 0.0
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=2.0 * confidence - 1.0, method="exact"
    )
    return float(interval.low)


def _whole_count(name: str, value: object) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise ValueError(f"baseline: {name} must be a whole number >= 0, got {value!r}")
    return int(number)


def baseline_lower_bounds(baseline: Mapping[str, float], level: float) -> dict[str, float]:
    """One-sided lower bounds at ``level`` of the version's test metrics in ``baseline``, from what its
    evaluation logged beside them: accuracy, precision and recall from the test confusion counts
    (:data:`COUNT_NAMES`, Clopper-Pearson), PR AUC from its bootstrap standard error (:data:`PR_AUC_SE`,
    normal). A metric whose figures are absent (a version evaluated before they were logged) has no
    bound; figures that are there but not counts (negative, fractional, some of the four missing) or a
    standard error that is not a number >= 0 raise a ValueError naming them."""
    from scipy import stats

    bounds: dict[str, float] = {}
    present = [name for name in COUNT_NAMES if baseline.get(name) is not None]
    if present and len(present) < len(COUNT_NAMES):
        missing = ", ".join(name for name in COUNT_NAMES if name not in present)
        raise ValueError(f"baseline: test confusion counts incomplete, {missing} missing")
    if present:
        tp, fp, fn, tn = (_whole_count(name, baseline[name]) for name in COUNT_NAMES)
        for name, successes, trials in (
            ("accuracy", tp + tn, tp + fp + fn + tn),
            ("precision", tp, tp + fp),
            ("recall", tp, tp + fn),
        ):
            if _known(baseline.get(name)):
                bounds[name] = proportion_lower_bound(successes, trials, level)
    error = baseline.get(PR_AUC_SE)
    if error is not None and not (isinstance(error, float) and math.isnan(error)):
        try:
            error = float(error)
        except (TypeError, ValueError):
            error = float("nan")
        if not (math.isfinite(error) and error >= 0):
            raise ValueError(f"baseline: {PR_AUC_SE} must be a number >= 0, got {baseline[PR_AUC_SE]!r}")
        if _known(baseline.get("pr_auc")):
            bounds["pr_auc"] = max(float(baseline["pr_auc"]) - float(stats.norm.ppf(level)) * error, 0.0)
    return bounds


def _f1(truth: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    """F1 along ``axis`` of 0/1 arrays (0 where there is no positive on either side, as scikit-learn)."""
    true_positives = np.sum(truth * predicted, axis=axis)
    denominator = np.sum(truth, axis=axis) + np.sum(predicted, axis=axis)
    return np.divide(2.0 * true_positives, denominator, out=np.zeros(np.shape(true_positives)), where=denominator > 0)


def _average_precision(truth: np.ndarray, probability: np.ndarray) -> float:
    """PR AUC as model evaluation computes it (scikit-learn's average precision)."""
    from sklearn.metrics import average_precision_score

    with warnings.catch_warnings():  # a resample without positives scores 0, without a warning per resample
        warnings.simplefilter("ignore")
        return float(average_precision_score(truth, probability))


def bootstrap_upper_bound(
    data: tuple[np.ndarray, ...],
    statistic,
    confidence: float,
    *,
    vectorized: bool,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> float:
    """One-sided percentile-bootstrap upper bound of ``statistic`` over rows resampled together (seeded)."""
    from scipy import stats

    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=resamples,
        vectorized=vectorized,
        paired=True,
        confidence_level=confidence,
        alternative="less",
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(min(result.confidence_interval.high, 1.0))  # percentile interpolation may pass 1 by an ulp


def live_performance(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    baseline: Mapping[str, float],
    *,
    model_version: int | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> LivePerformance:
    """Accuracy, precision, recall, F1 and PR AUC of the logged answers against the arrived labels,
    each with its one-sided upper bound (at :func:`bonferroni_level` of ``confidence``).

    ``predictions`` are prediction log rows (``request_id``, ``is_fraud``, ``probability``,
    ``model_version``); ``labels`` are label store rows (``request_id``, ``label``), one per request.
    With ``model_version`` only that version's rows count (the version serving now: a rollback must not
    be judged by its predecessor's answers). Rows without a label are counted as unlabeled. PR AUC
    (and its bound) is NaN unless the labelled rows hold both classes. Bounds: Clopper-Pearson for
    accuracy, precision and recall; a percentile bootstrap of ``resamples`` rows-with-replacement
    resamples (seeded by ``seed``: the same window always gives the same bound) for F1 and PR AUC.
    ``baseline`` may also hold the test confusion counts and PR AUC's standard error the evaluation
    logged: the baseline then gets lower bounds too (:func:`baseline_lower_bounds`).
    """
    from sklearn import metrics as skm

    confidence = check_confidence(confidence)
    for side, frame, needed in (
        ("predictions", predictions, ("request_id", "is_fraud", "probability", "model_version")),
        ("labels", labels, ("request_id", "label")),
    ):
        missing = [name for name in needed if name not in frame.columns]
        if missing:
            raise ValueError(f"{side}: missing column(s) {', '.join(missing)}")
    rows = predictions
    if model_version is not None:
        rows = rows.loc[rows["model_version"] == int(model_version)]
    # ids as text on both sides: an empty label frame must not fail the join on dtype
    known = pd.DataFrame({"request_id": labels["request_id"].astype(str), "label": labels["label"].to_numpy()})
    known = known.drop_duplicates("request_id", keep="last")
    answers = pd.DataFrame(
        {
            "request_id": rows["request_id"].astype(str),
            "is_fraud": rows["is_fraud"].to_numpy(),
            "probability": rows["probability"].to_numpy(dtype="float64"),
        }
    )
    joined = answers.merge(known, on="request_id", how="left", validate="many_to_one")
    labeled = joined.loc[joined["label"].notna()]
    labeled_rows = len(labeled)
    base = {name: float(baseline[name]) for name in LIVE_METRICS if name in baseline and baseline[name] is not None}
    level = bonferroni_level(confidence)
    base_lower = baseline_lower_bounds(baseline, level)
    if labeled_rows == 0:
        return LivePerformance(
            model_version=model_version,
            labeled_rows=0,
            unlabeled_rows=len(joined),
            metrics={name: float("nan") for name in LIVE_METRICS},
            baseline=base,
            upper_bounds={name: float("nan") for name in LIVE_METRICS},
            confidence=confidence,
            baseline_lower_bounds=base_lower,
        )
    truth = labeled["label"].to_numpy().astype(bool).astype(int)
    predicted = labeled["is_fraud"].to_numpy().astype(bool).astype(int)
    probability = labeled["probability"].to_numpy(dtype="float64")
    tn, fp, fn, tp = (int(count) for count in skm.confusion_matrix(truth, predicted, labels=[0, 1]).ravel())
    both_classes = 0 < tp + fn < labeled_rows
    metrics = {
        "accuracy": float(skm.accuracy_score(truth, predicted)),
        "precision": float(skm.precision_score(truth, predicted, zero_division=0)),
        "recall": float(skm.recall_score(truth, predicted, zero_division=0)),
        "f1": float(skm.f1_score(truth, predicted, zero_division=0)),
        "pr_auc": _average_precision(truth, probability) if both_classes else float("nan"),
    }
    bootstrap = {"confidence": level, "resamples": resamples, "seed": seed}
    upper_bounds = {
        "accuracy": proportion_upper_bound(tp + tn, labeled_rows, level),
        "precision": proportion_upper_bound(tp, tp + fp, level),
        "recall": proportion_upper_bound(tp, tp + fn, level),
        "f1": bootstrap_upper_bound((truth, predicted), _f1, vectorized=True, **bootstrap)
        if labeled_rows > 1
        else float("nan"),
        "pr_auc": bootstrap_upper_bound((truth, probability), _average_precision, vectorized=False, **bootstrap)
        if both_classes
        else float("nan"),
    }
    return LivePerformance(
        model_version=model_version,
        labeled_rows=labeled_rows,
        unlabeled_rows=len(joined) - labeled_rows,
        metrics=metrics,
        baseline=base,
        positive_rate=float(np.mean(truth)),
        confusion={"true_negatives": tn, "false_positives": fp, "false_negatives": fn, "true_positives": tp},
        upper_bounds=upper_bounds,
        confidence=confidence,
        baseline_lower_bounds=base_lower,
    )


@dataclass(frozen=True)
class AccuracyDropVerdict:
    """What the accuracy drop check decided about one :class:`LivePerformance`.

    ``judged`` is False when there was nothing to judge by (no labelled rows, no baseline, too few
    labelled positives): the check then passes. ``dropped`` names the judged metrics whose drop is
    significantly beyond the threshold; ``value`` is the decisive drop: the largest point drop among
    ``dropped``, else the largest point drop of the judged metrics (None when not judged).
    ``baseline_bounds`` holds the lower bound of each judged metric's baseline that the verdict allowed
    for (empty when the baseline counts are unknown and it was judged against the point values).
    """

    fires: bool
    judged: bool
    value: float | None
    dropped: tuple[str, ...]
    description: str
    baseline_bounds: dict[str, float] = field(default_factory=dict)


def judge_accuracy_drop(
    performance: LivePerformance,
    threshold: float,
    *,
    min_labelled_positives: int = DEFAULT_MIN_LABELLED_POSITIVES,
    window: str = "",
) -> AccuracyDropVerdict:
    """Fires when recall, precision or PR AUC of ``performance`` fell more than ``threshold`` below the
    baseline with confidence: :meth:`LivePerformance.bound_drop` is above ``threshold`` (the live upper
    bound below the baseline's lower bound, or its point value where that is unknown). Judges only
    with at least ``min_labelled_positives`` labelled positives. ``window`` (its label) is named in the
    description, and so is a baseline judged as a point value."""
    if isinstance(min_labelled_positives, bool) or not isinstance(min_labelled_positives, int):
        raise ValueError(f"min_labelled_positives must be an integer, got {min_labelled_positives!r}")
    if min_labelled_positives < 1:
        raise ValueError(f"min_labelled_positives must be at least 1, got {min_labelled_positives}")
    version = f"v{performance.model_version}" if performance.model_version is not None else "the model"
    over = f" over {window}" if window else ""
    counts = f"{performance.labeled_rows} labelled rows ({performance.labelled_positives} positives) of {version}{over}"

    def not_judged(reason: str) -> AccuracyDropVerdict:
        return AccuracyDropVerdict(False, False, None, (), f"nothing to judge: {reason}")

    if performance.labeled_rows == 0:
        return not_judged(f"no labeled predictions of {version}{over} ({performance.unlabeled_rows} awaiting labels)")
    judged = [name for name in JUDGED_METRICS if _known(performance.baseline.get(name))]
    if not judged:
        return not_judged(f"{version} has no test metrics to compare with (it was never evaluated)")
    if performance.labelled_positives < min_labelled_positives:
        return not_judged(
            f"not enough labels: {performance.labelled_positives} labelled positives among "
            f"{performance.labeled_rows} labelled rows of {version}{over}, {min_labelled_positives} needed"
        )
    dropped = tuple(name for name in judged if performance.bound_drop(name) > threshold)
    point_drops = {name: performance.drop(name) for name in (dropped or judged) if _known(performance.drop(name))}
    value = max(point_drops.values()) if point_drops else None
    level = f"{performance.bound_level:.1%}"
    lower = {
        name: performance.baseline_lower_bounds[name]
        for name in judged
        if _known(performance.baseline_lower_bounds.get(name))
    }

    def shown(name: str) -> str:
        allowed = f", test's lower bound {_number(lower[name])}" if name in lower else ""
        return (
            f"{_TITLES[name]} {_number(performance.metrics.get(name))} vs {_number(performance.baseline.get(name))} "
            f"at test (upper {level} bound {_number(performance.upper_bounds.get(name))}{allowed})"
        )

    if dropped:
        description = (
            f"{', '.join(_TITLES[name] for name in dropped)} dropped by more than {_number(threshold)}: "
            f"{'; '.join(shown(name) for name in dropped)}; on {counts}"
        )
    else:
        description = (
            f"no significant drop beyond {_number(threshold)}: {'; '.join(shown(name) for name in judged)}; on {counts}"
        )
    if not lower:
        description += "; baseline counts unknown: judged against the point value"
    elif len(lower) < len(judged):
        pointed = ", ".join(_TITLES[name] for name in judged if name not in lower)
        description += f"; baseline uncertainty of {pointed} unknown: judged against its point value"
    return AccuracyDropVerdict(bool(dropped), True, value, dropped, description, lower)


def _number(value: float | None) -> str:
    return f"{float(value):.3g}" if _known(value) else "unknown"


# ---- every variant side by side ----------------------------------------------------------------------
# The server's variants (the ``variant`` column of the prediction log): the champion's answers, the
# challenger's under an A/B split, and the challenger's shadow scores (computed for the same requests as
# the champion's, never returned).
CHAMPION_VARIANT = "champion"
KNOWN_VARIANTS: tuple[str, ...] = (CHAMPION_VARIANT, "challenger", "challenger_shadow")
# What each variant is compared on: the metrics of the rare class.
VARIANT_METRICS: tuple[str, ...] = ("precision", "recall", "pr_auc")
UNKNOWN_VARIANT = "unknown"  # a log row without a variant


@dataclass(frozen=True)
class VariantPerformance:
    """One variant's answers in the window judged by the labels that have arrived.

    ``differences`` (this variant minus the champion) and ``intervals`` (two-sided, at the comparison's
    ``confidence``) are empty for the champion itself and NaN where either side's metric is undefined.
    """

    variant: str
    versions: tuple[int, ...]  # the model versions whose answers are counted
    rows: int
    labeled_rows: int
    positives: int  # labelled rows that are fraud
    metrics: dict[str, float]  # VARIANT_METRICS (NaN when undefined: PR AUC without both classes)
    confusion: dict[str, int] = field(default_factory=dict)
    differences: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    paired: bool = False  # the interval came from resampling the same requests on both sides

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "versions": list(self.versions),
            "rows": self.rows,
            "labeled_rows": self.labeled_rows,
            "positives": self.positives,
            "metrics": {name: _nan_to_none(value) for name, value in self.metrics.items()},
            "confusion": dict(self.confusion),
            "differences": {name: _nan_to_none(value) for name, value in self.differences.items()},
            "intervals": {name: [_nan_to_none(v) for v in bounds] for name, bounds in self.intervals.items()},
            "paired": self.paired,
        }


@dataclass(frozen=True)
class VariantComparison:
    """Every variant of a window side by side, the champion first; see :func:`variant_performance`."""

    variants: tuple[VariantPerformance, ...]
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = BOOTSTRAP_RESAMPLES

    def __len__(self) -> int:
        return len(self.variants)

    def get(self, variant: str) -> VariantPerformance | None:
        return next((v for v in self.variants if v.variant == variant), None)

    @property
    def names(self) -> list[str]:
        return [v.variant for v in self.variants]

    def to_frame(self) -> pd.DataFrame:
        """One row per variant: counts, metrics, and for the others the difference with the champion and
        its interval as text (``+0.012 [-0.030, +0.051]``)."""
        rows = []
        for item in self.variants:
            row: dict[str, object] = {
                "variant": item.variant,
                "versions": ", ".join(f"v{v}" for v in item.versions) or "none",
                "rows": item.rows,
                "labelled_rows": item.labeled_rows,
                "positives": item.positives,
            }
            for name in VARIANT_METRICS:
                value = item.metrics.get(name)
                row[name] = f"{value:.4f}" if _known(value) else "n/a"
            for name in VARIANT_METRICS:
                row[f"{name} vs champion"] = _difference_text(item, name)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "confidence": self.confidence,
            "resamples": self.resamples,
            "variants": [v.to_dict() for v in self.variants],
        }


def _difference_text(item: VariantPerformance, name: str) -> str:
    if name not in item.differences:
        return ""
    low, high = item.intervals.get(name, (float("nan"), float("nan")))
    if not _known(item.differences[name]):
        return "n/a"
    return f"{item.differences[name]:+.3f} [{low:+.3f}, {high:+.3f}]"


def _variant_order(name: str) -> tuple[int, str]:
    return (KNOWN_VARIANTS.index(name) if name in KNOWN_VARIANTS else len(KNOWN_VARIANTS), name)


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, dtype="float64"), np.asarray(denominator, dtype="float64")
    return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0)


def _rare_class_metric(name: str, truth: np.ndarray, predicted: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Metric ``name`` along the last axis (rows resampled along it): precision and recall at the model's
    own decisions, PR AUC of the scores (one resample at a time; 0 for a resample without positives)."""
    if name == "precision":
        return _rate(np.sum(truth * predicted, axis=-1), np.sum(predicted, axis=-1))
    if name == "recall":
        return _rate(np.sum(truth * predicted, axis=-1), np.sum(truth, axis=-1))
    if truth.ndim == 1:
        return np.asarray(_average_precision(truth, probability))
    return np.array([_average_precision(t, p) for t, p in zip(truth, probability, strict=True)])


@dataclass(frozen=True)
class _Labelled:
    """A variant's labelled answers, aligned by row: request ids, truth, decisions and scores."""

    request_ids: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.truth[index], self.predicted[index], self.probability[index]

    def metric(self, name: str) -> float:
        if name == "pr_auc" and not 0 < int(self.truth.sum()) < len(self.truth):
            return float("nan")
        return float(_rare_class_metric(name, self.truth, self.predicted, self.probability))


def _difference_interval(
    champion: _Labelled, other: _Labelled, name: str, confidence: float, resamples: int, seed: int
) -> tuple[tuple[float, float], bool]:
    """Two-sided percentile-bootstrap interval of ``metric(other) - metric(champion)`` and whether it
    was paired. When both hold the same labelled requests (a shadow test), the requests are resampled
    once for both sides; otherwise (an A/B split's arms are different requests) each side's rows are
    resampled on their own. Seeded: the same window always gives the same interval."""
    from scipy import stats

    paired = len(champion.request_ids) == len(other.request_ids) and bool(
        np.array_equal(np.sort(champion.request_ids), np.sort(other.request_ids))
    )
    vectorized = name != "pr_auc"
    if paired:
        # Align the other side on the champion's requests so each resampled index is one request.
        order = pd.Index(other.request_ids).get_indexer(champion.request_ids)
        aligned = _Labelled(champion.request_ids, *other.take(order))

        def statistic(index, axis=-1):
            index = np.asarray(index, dtype=np.intp)
            return _rare_class_metric(name, *aligned.take(index)) - _rare_class_metric(name, *champion.take(index))

        data = (np.arange(len(champion.truth)),)
    else:

        def statistic(champion_index, other_index, axis=-1):
            champion_index = np.asarray(champion_index, dtype=np.intp)
            other_index = np.asarray(other_index, dtype=np.intp)
            return _rare_class_metric(name, *other.take(other_index)) - _rare_class_metric(
                name, *champion.take(champion_index)
            )

        data = (np.arange(len(champion.truth)), np.arange(len(other.truth)))
    with warnings.catch_warnings():  # a constant difference (identical models) is not an error
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            data,
            statistic,
            n_resamples=resamples,
            vectorized=vectorized,
            paired=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    interval = result.confidence_interval
    return (float(interval.low), float(interval.high)), paired


def variant_performance(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    champion_version: int | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> VariantComparison:
    """Each variant of the prediction log (champion, challenger, challenger_shadow, ...) judged by the
    arrived labels: rows, labelled rows, labelled positives, precision, recall and PR AUC, and for each
    variant other than the champion its difference with the champion with a two-sided ``confidence``
    interval (:func:`_difference_interval`: a seeded percentile bootstrap over labelled rows).

    Labels are joined by ``request_id`` for each variant separately: a shadow row carries the
    challenger's own decision and score for the same request as the champion's row. With
    ``champion_version``, only that version's champion rows count (as :func:`live_performance` judges the
    champion); the other variants keep every version, listed in ``versions``. Without champion rows the
    differences are NaN. Rows without a variant count as ``unknown``.
    """
    confidence = check_confidence(confidence)
    for side, frame, needed in (
        ("predictions", predictions, ("request_id", "is_fraud", "probability", "model_version", "variant")),
        ("labels", labels, ("request_id", "label")),
    ):
        missing = [name for name in needed if name not in frame.columns]
        if missing:
            raise ValueError(f"{side}: missing column(s) {', '.join(missing)}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a whole number of at least 1, got {resamples!r}")
    known = pd.DataFrame({"request_id": labels["request_id"].astype(str), "label": labels["label"].to_numpy()})
    known = known.drop_duplicates("request_id", keep="last")
    variants = predictions["variant"].astype("object").where(predictions["variant"].notna(), UNKNOWN_VARIANT)
    answers = pd.DataFrame(
        {
            "request_id": predictions["request_id"].astype(str).to_numpy(),
            "is_fraud": predictions["is_fraud"].to_numpy(),
            "probability": predictions["probability"].to_numpy(dtype="float64"),
            "model_version": predictions["model_version"].to_numpy(),
            "variant": variants.astype(str).to_numpy(),
        }
    )
    if champion_version is not None:
        answers = answers.loc[
            (answers["variant"] != CHAMPION_VARIANT) | (answers["model_version"] == int(champion_version))
        ]
    joined = answers.merge(known, on="request_id", how="left", validate="many_to_one")
    names = sorted(set(joined["variant"]) | {CHAMPION_VARIANT}, key=_variant_order)
    labelled: dict[str, _Labelled] = {}
    measured: dict[str, VariantPerformance] = {}
    for name in names:
        rows = joined.loc[joined["variant"] == name]
        done = rows.loc[rows["label"].notna()]
        item = _Labelled(
            done["request_id"].to_numpy(dtype=str),
            done["label"].to_numpy().astype(bool).astype(int),
            done["is_fraud"].to_numpy().astype(bool).astype(int),
            done["probability"].to_numpy(dtype="float64"),
        )
        labelled[name] = item
        tp = int(np.sum(item.truth * item.predicted))
        fp = int(np.sum(item.predicted)) - tp
        fn = int(np.sum(item.truth)) - tp
        measured[name] = VariantPerformance(
            variant=name,
            versions=tuple(sorted(int(v) for v in pd.unique(rows["model_version"].dropna()))),
            rows=len(rows),
            labeled_rows=len(done),
            positives=int(item.truth.sum()),
            metrics={metric: item.metric(metric) if len(done) else float("nan") for metric in VARIANT_METRICS},
            confusion={
                "true_positives": tp,
                "false_positives": fp,
                "false_negatives": fn,
                "true_negatives": len(done) - tp - fp - fn,
            },
        )
    if measured[CHAMPION_VARIANT].rows == 0 and len(names) > 1:
        names = [name for name in names if name != CHAMPION_VARIANT] + [CHAMPION_VARIANT]
    results = []
    champion = labelled[CHAMPION_VARIANT]
    for name in names:
        item = measured[name]
        if name != CHAMPION_VARIANT:
            differences, intervals, paired = {}, {}, False
            for metric in VARIANT_METRICS:
                base, value = measured[CHAMPION_VARIANT].metrics[metric], item.metrics[metric]
                differences[metric] = value - base if _known(base) and _known(value) else float("nan")
                if _known(differences[metric]) and len(champion.truth) > 1 and len(labelled[name].truth) > 1:
                    intervals[metric], paired = _difference_interval(
                        champion, labelled[name], metric, confidence, resamples, seed
                    )
                else:
                    intervals[metric] = (float("nan"), float("nan"))
            item = replace(item, differences=differences, intervals=intervals, paired=paired)
        results.append(item)
    return VariantComparison(tuple(results), confidence=confidence, resamples=resamples)
