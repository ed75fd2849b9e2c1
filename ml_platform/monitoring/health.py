"""The model's health assembled from everything monitoring reads: one builder for the ``model_health``
asset and for ``ml-platform status``, so the UI and the terminal never disagree.

It gathers the champion from the registry, what the endpoint says (``/health``, ``/metrics``), the
prediction log of a window, the labels known by the end of the window and the training reference,
then computes drift, live performance, serving figures and the alert rules that fire. Each part may
be missing (no server, no traffic, no labels, no training set yet): the part is left out and the
dashboard says "n/a", because a dashboard is needed most when something is down.

Also here: where monitoring keeps its files (:class:`MonitoringPaths`), the training reference
(:func:`reference_features`) and the ``/metrics`` scrape kept between runs (:class:`ScrapeState`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.features.engineering import DRIFT_FEATURES
from ml_platform.monitoring.alerts import DEFAULT_RULES, AlertRule, evaluate_rules
from ml_platform.monitoring.dashboard import ModelHealth, health_status
from ml_platform.monitoring.drift import DriftConfig, DriftReport, compute_drift
from ml_platform.monitoring.labels import LOCATION_NAME as LABELS_LOCATION
from ml_platform.monitoring.labels import LabelStore
from ml_platform.monitoring.performance import LivePerformance, VariantComparison, live_performance, variant_performance
from ml_platform.monitoring.serving_metrics import (
    ServingMetrics,
    prometheus_serving_metrics,
    scrape_metrics,
    serving_metrics,
)
from ml_platform.monitoring.window import ANSWERED_VARIANTS, Window, read_predictions
from ml_platform.predictions.store import log_location
from ml_platform.serving.client import ModelServerClient, ModelServerError
from ml_platform.settings import Settings, SettingsError
from ml_platform.storage import file_digest, write_text_atomic
from ml_platform.training.dataset import SPLIT_COLUMN
from ml_platform.training.datasets import stored_training_set_path
from ml_platform.training.datasets import training_sets_dir as default_training_sets_dir

# The split whose rows are the drift reference (the split is by time, so this is the newest slice).
REFERENCE_SPLIT = "test"  # drift's reference: the newest slice the champion was judged on


@dataclass(frozen=True)
class MonitoringPaths:
    """Where monitoring reads and writes, all under the state directory.

    - ``log_dir``: the prediction log the model server writes: a local folder (a ``Path``) or an object-store
      URI (``s3://bucket/prefix``, kept as text). Settings' ``prediction_log_uri`` (else ``logs/predictions``),
      unless ``ML_PLATFORM_SERVING_LOG_DIR`` moves it, as it moves the server's;
    - ``root``: ``<home>/monitoring``, holding ``labels/`` (the label store), ``reports/`` (drift HTML,
      dashboard PNG), ``state/`` (the last ``/metrics`` scrape) and ``alerts.jsonl`` (the alert history).
    - ``labels_location``: the label store when it is not ``root/labels``: a local folder (a ``Path``) or an
      object-store URI (text), from settings' ``labels_uri`` (``ML_PLATFORM_LABELS_URI``). :attr:`labels_dir`
      is where the store is, either way.
    """

    log_dir: Path | str
    root: Path
    labels_location: Path | str | None = None

    def __post_init__(self) -> None:
        if self.labels_location is not None:
            object.__setattr__(self, "labels_location", log_location(self.labels_location, what=LABELS_LOCATION))

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> MonitoringPaths:
        env = os.environ if environ is None else environ
        moved = env.get("ML_PLATFORM_SERVING_LOG_DIR")
        try:
            log_dir = log_location(moved) if moved else settings.prediction_log
        except ValueError as error:
            raise SettingsError(f"ML_PLATFORM_SERVING_LOG_DIR={moved!r} is not valid: {error}") from error
        labels = settings.labels_location if settings.labels_uri else None
        return cls(log_dir=log_dir, root=settings.home / "monitoring", labels_location=labels)

    @property
    def labels_dir(self) -> Path | str:
        """The label store: ``labels_location`` when set (a ``Path`` when local, URI text otherwise), else
        ``root/labels``."""
        return self.labels_location if self.labels_location is not None else self.root / "labels"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def alerts_path(self) -> Path:
        return self.root / "alerts.jsonl"

    def labels(self) -> LabelStore:
        return LabelStore(self.labels_dir)

    def scrape_state(self) -> ScrapeState:
        return ScrapeState(self.state_dir / "metrics-scrape.json")


class ScrapeState:
    """The endpoint's ``/metrics`` text between monitoring runs, so counters become per-period deltas.

    ``latest`` is the scrape of the last ``serving_metrics`` run and ``baseline`` the one that run
    compared against; :meth:`advance` moves them on. A reader that comes after that run (the dashboard)
    compares a fresh scrape with ``baseline``, covering the same period as the run did.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, str | None]:
        try:
            record = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"baseline": None, "latest": None}
        return {"baseline": record.get("baseline"), "latest": record.get("latest")}

    def latest(self) -> str | None:
        return self._read()["latest"]

    def baseline(self) -> str | None:
        return self._read()["baseline"]

    def advance(self, scrape: str) -> None:
        """Record ``scrape`` as the latest; the previous latest becomes the baseline (atomic write)."""
        write_text_atomic(self.path, json.dumps({"baseline": self.latest(), "latest": scrape}))


@dataclass(frozen=True)
class TrainingReference:
    """The training set a model version is judged against: drift's reference is its test split.

    ``digest`` is the sha256 of the file at ``path``. ``fallback_reason`` is None when it is the version's
    own training set (the stored file its ``training_set_digest`` tag names); otherwise it says why the
    current training set stands in.
    """

    model_version: int | None
    digest: str
    path: Path
    fallback_reason: str | None = None

    @property
    def note(self) -> str | None:
        """What a report says about its reference when it is not the version's own training set."""
        if self.fallback_reason is None:
            return None
        return f"{self.fallback_reason}: judged against the current training set"


def training_reference(
    registry,
    version: int | None,
    training_set_path: Path,
    training_sets_dir: Path | None = None,
) -> TrainingReference:
    """Which training set judges ``version`` (of ``registry``, a :class:`ml_platform.registry.Registry`).

    Its own: the stored file under ``training_sets_dir`` (default: ``training_sets`` beside
    ``training_set_path``) named by its digest tag. A version without the tag (registered before training
    sets were kept, or pinned from elsewhere), one whose file is not kept here, or no version at all is
    judged against the current training set at ``training_set_path``, with a note saying so; when that
    does not exist either, FileNotFoundError says what is missing.
    """
    from ml_platform.registry import TRAINING_SET_DIGEST_TAG

    current = Path(training_set_path)
    store = Path(training_sets_dir) if training_sets_dir is not None else default_training_sets_dir(current.parent)
    if version is None:
        why = "no champion to judge"
    else:
        digest = registry.training_set_digest(version)
        if digest:
            try:
                return TrainingReference(version, digest, stored_training_set_path(store, digest))
            except (FileNotFoundError, ValueError) as error:
                why = f"v{version}'s own training set cannot be read: {error}"
        else:
            why = (
                f"v{version} has no {TRAINING_SET_DIGEST_TAG} tag (registered before training sets were kept, "
                "or pinned from elsewhere)"
            )
    if not current.exists():
        raise FileNotFoundError(
            f"{current} does not exist; materialize training_set first (the drift reference); {why}"
        )
    return TrainingReference(version, file_digest(current), current, fallback_reason=why)


def reference_features(training_set_path: Path, columns: Sequence[str] = DRIFT_FEATURES) -> pd.DataFrame:
    """The training set's test split, only ``columns``: drift's reference.

    The test split is the newest slice of the data the model was built and judged on (the split is by
    time), so drift measures how traffic moved since then, not how the world looked at the start of the
    history. Reads only those columns and the rows of the test split (the file can be large). Which
    training set judges a version: :func:`training_reference`.
    """
    import pyarrow.parquet as pq

    path = Path(training_set_path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; materialize training_set first (the drift reference)")
    table = pq.read_table(path, columns=list(columns), filters=[(SPLIT_COLUMN, "=", REFERENCE_SPLIT)])
    return table.to_pandas()


def rule_values(
    *,
    drift: DriftReport | None = None,
    performance: LivePerformance | None = None,
    serving: ServingMetrics | None = None,
) -> dict[str, float]:
    """The metrics the alert rules compare (``AlertRule.metric`` names); unknown ones are NaN (never fire).

    ``accuracy_drop`` is the drop of recall, precision or PR AUC that the window shows with confidence
    (:meth:`LivePerformance.confident_drop`): the rule fires exactly when the ``accuracy_drop`` check fails
    at the default minimum of labelled positives."""
    nan = float("nan")
    values = {
        "drift_score": drift.drift_score if drift is not None else nan,
        "accuracy_drop": performance.confident_drop() if performance is not None else nan,
        "latency_p99_ms": serving.latency_p99_ms if serving is not None and serving.rows else nan,
        "error_rate": serving.error_rate if serving is not None and serving.requests else nan,
    }
    return {name: float(value) for name, value in values.items()}


def rules_with_thresholds(
    thresholds: Mapping[str, float], rules: Mapping[str, AlertRule] = DEFAULT_RULES
) -> dict[str, AlertRule]:
    """``rules`` with the thresholds given by rule name replaced (the rest as they are)."""
    unknown = sorted(set(thresholds) - set(rules))
    if unknown:
        raise ValueError(f"thresholds: unknown rule(s) {', '.join(unknown)}; expected some of {', '.join(rules)}")
    changed = dict(rules)
    for name, threshold in thresholds.items():
        try:
            changed[name] = replace(rules[name], threshold=float(threshold))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} threshold: {error}") from error
    return changed


def served_health(endpoint: str | None, token: str | None = None, timeout: float = 3.0) -> dict | None:
    """The endpoint's ``/health`` answer when it answers 200, else None (down, not ready, unreachable)."""
    if not endpoint:
        return None
    try:
        with ModelServerClient(endpoint, token=token, timeout=timeout) as client:
            return client.health()
    except ModelServerError:
        return None


def collect_model_health(
    registry,
    paths: MonitoringPaths,
    window: Window,
    *,
    endpoint: str | None,
    token: str | None = None,
    training_set_path: Path | None = None,
    drift_config: DriftConfig = DriftConfig(),  # noqa: B008 - frozen dataclass
    rules: Mapping[str, AlertRule] = DEFAULT_RULES,
    training_sets_dir: Path | None = None,
    reference: TrainingReference | None = None,
    prometheus_url: str = "",
) -> ModelHealth:
    """The champion's health over ``window``: the one builder behind ``model_health`` and ``status``.

    ``registry`` is a :class:`ml_platform.registry.Registry`. Reads the prediction log and the labels
    known at the end of the window, scrapes ``/metrics`` (counters compared with the baseline the last
    ``serving_metrics`` run used), and scores drift against the test split of ``reference``, by default
    the champion's own training set (:func:`training_reference` of ``training_set_path`` and
    ``training_sets_dir``). Without either, drift is left out. With ``prometheus_url`` the serving figures are
    summed over every replica Prometheus scrapes (:func:`prometheus_serving_metrics`) instead of one scrape of
    ``endpoint``; raises :class:`PrometheusError` when Prometheus cannot answer.
    """
    from ml_platform.registry import CHAMPION, PROMOTED_AT_TAG

    version = registry.version_for_alias(CHAMPION)
    health = served_health(endpoint, token)
    served = read_predictions(paths.log_dir, window, variants=None)  # shadow scores too, for the variants
    predictions = served.loc[served["variant"].isin(list(ANSWERED_VARIANTS))].reset_index(drop=True)

    drift = None
    if len(predictions) and (reference is not None or training_set_path is not None):
        try:
            if reference is None:
                reference = training_reference(registry, version, training_set_path, training_sets_dir)
            drift = compute_drift(reference_features(reference.path), predictions, DRIFT_FEATURES, drift_config)
        except FileNotFoundError:  # no training set yet: shown as n/a
            drift = None
        except ValueError:  # nothing scoreable (e.g. a feature with no finite value): shown as n/a
            drift = None

    performance = None
    deployed_at = None
    variants: VariantComparison | None = None
    if version is not None:
        labels = paths.labels().read(as_of=window.end)
        performance = live_performance(predictions, labels, registry.test_metrics(version), model_version=version)
        if served["variant"].nunique() > 1:
            variants = variant_performance(served, labels, champion_version=version)
        deployed_at = registry.model_version(version).tags.get(PROMOTED_AT_TAG)

    serving = None
    if prometheus_url:
        serving = prometheus_serving_metrics(predictions, window, prometheus_url)
    elif health is not None or len(predictions):
        scrape = scrape_metrics(endpoint, token=token) if health is not None and endpoint else None
        serving = serving_metrics(
            predictions, window, scrape=scrape, previous_scrape=paths.scrape_state().baseline() if scrape else None
        )

    alerts = evaluate_rules(
        rule_values(drift=drift, performance=performance, serving=serving),
        model=registry.model_name,
        window=window.label,
        rules=rules,
    )
    return ModelHealth(
        model_name=registry.model_name,
        model_version=version,
        status=health_status(model_version=version, server_up=health is not None, alerts=alerts),
        deployed_at=deployed_at,
        uptime_seconds=health.get("uptime_seconds") if health else None,
        endpoint=endpoint,
        serving=serving,
        performance=performance,
        drift=drift,
        prediction_scores=predictions["probability"].to_numpy(dtype="float64") if len(predictions) else np.empty(0),
        alerts=alerts,
        variants=variants,
    )


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None when it is unknown (NaN): what metadata and JSON can carry."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
