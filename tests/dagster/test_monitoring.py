"""The monitoring group for real: the champion served by a local uvicorn process, drifted traffic sent to
it over HTTP, late labels (some inverted), the prediction log compacted, and the monitor job's checks
compared with figures computed independently from the same files (Evidently for drift, pandas for
accuracy and latency). Also: `ml-platform drift` and `status`, and a worse retrain deploying nothing."""

import math
from datetime import UTC, date, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from assets import ALL_ASSETS
from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.features.engineering import DRIFT_FEATURES, MODEL_FEATURES
from ml_platform.monitoring.drift import DriftConfig, evidently_drift
from ml_platform.monitoring.health import reference_features
from ml_platform.monitoring.window import Window, read_predictions
from ml_platform.predictions import PredictionBatch, PredictionLogger, compact_day, read_prediction_log
from ml_platform.registry import CHAMPION
from ml_platform.serving.client import ModelServerClient
from ml_platform.training.datasets import stored_training_set_path
from resources.monitoring import MonitoringResource
from runs.cli import app
from runs.launch import launch
from tests.support.runs import (
    check_results,
    drifted_transactions,
    endpoint,
    materializations,
    run_monitor,
    send_with_labels,
    wait_until_logged,
)

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
runner = CliRunner()
MONITORING_DAY = date(2026, 5, 10)  # a drifted day no other test sends or ingests
FLIPPED = 0.3


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def metadata_values(evaluation) -> dict:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


@pytest.fixture(scope="module")
def served(bootstrap_result, defs, settings):
    """The champion served by the deploy job (a real uvicorn process on the session's port)."""
    result = launch("deploy", defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    yield LocalProcessTarget(settings.home / "serving", port=settings.serving_port)


@pytest.fixture(scope="module")
def drifted_traffic(served, settings, defs):
    transactions = drifted_transactions(MONITORING_DAY)
    return {"transactions": transactions, **send_with_labels(settings, defs, transactions, FLIPPED)}


@pytest.fixture(scope="module")
def monitor_run(drifted_traffic, defs):
    result = launch("monitor", defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return result


@pytest.fixture(scope="module")
def judged(monitor_run, instance) -> Window:
    """The 24 hours of log the monitor run judged, ending when it finished: answers logged after it (by
    the tests that run later) are not in its figures, so they are not in the independent ones either."""
    finished = instance.get_run_record_by_id(monitor_run.run_id).end_time
    return Window.parse("24h", end=datetime.fromtimestamp(finished, UTC))


# ---- the prediction log, by day --------------------------------------------------------------------------
def write_parts(log_dir, day: date, parts: int, rows: int, version: int = 1) -> None:
    """``parts`` files of the real log writer for ``day`` (one flush each)."""
    logger = PredictionLogger(log_dir, flush_rows=10**6, flush_seconds=3600)
    logger.start()
    rng = np.random.default_rng(int(day.strftime("%Y%m%d")))
    start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC).timestamp()
    for part in range(parts):
        for row in range(rows):
            logger.log(
                PredictionBatch(
                    time=start + 60 * (rows * part + row),
                    request_ids=[f"{day}-{part}-{row}"],
                    customer_ids=[row],
                    features=rng.random((1, len(MODEL_FEATURES))),
                    probabilities=rng.random(1),
                    is_fraud=np.array([row % 7 == 0]),
                    threshold=0.5,
                    model_version=version + part % 2,
                    variant="champion" if part % 2 == 0 else "challenger",
                    latency_ms=1.0 + row,
                )
            )
        assert logger.flush()
    logger.close()


def test_prediction_log_compacts_a_day_into_one_file_with_the_same_rows(defs, instance, tmp_path):
    day = date(2026, 4, 7)
    write_parts(tmp_path, day, parts=3, rows=4)
    folder = tmp_path / f"date={day}"
    before = read_prediction_log(tmp_path, day)
    assert len(list(folder.glob("part-*.parquet"))) == 3 and len(before) == 12

    resources = {**defs.resources, "monitoring": MonitoringResource(log_dir=str(tmp_path), monitoring_dir="/x")}
    result = dg.materialize(
        ALL_ASSETS, selection=["prediction_log"], resources=resources, instance=instance, partition_key=str(day)
    )
    parts = list(folder.glob("part-*.parquet"))
    assert len(parts) == 1 and "compacted" in parts[0].name
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".compaction")) == [parts[0].name]
    pd.testing.assert_frame_equal(read_prediction_log(tmp_path, day), before)
    metadata = materializations(result, "prediction_log")[0]
    assert metadata["dagster/row_count"] == 12
    assert metadata["files_compacted"] == 3 and metadata["files_now"] == 1
    assert metadata["versions"] == "v1, v2"
    assert metadata["latency_p99_ms"] == pytest.approx(float(before["latency_ms"].quantile(0.99)))

    again = compact_day(tmp_path, day)  # one file already: nothing to do
    assert (again.compacted, again.files_before, again.rows) == (False, 1, 12)


def test_drift_check_fails_with_the_score_evidently_gives(monitor_run, judged, drifted_traffic, registry, defs):
    checks = evaluations(monitor_run)
    drift = checks["drift_score"]
    assert drift.passed is False and drift.severity == dg.AssetCheckSeverity.WARN
    values = metadata_values(drift)
    paths = defs.resources["monitoring"].paths()
    current = read_predictions(paths.log_dir, judged)
    # The reference is the judged version's own training set, stored under its digest.
    digest = registry.training_set_digest(values["model_version"])
    reference = reference_features(stored_training_set_path(defs.resources["state"].training_sets_dir(), digest))
    assert values["training_set_digest"] == digest
    independent = evidently_drift(reference, current, DRIFT_FEATURES, DriftConfig())
    assert values["value"] == pytest.approx(independent.drift_score, abs=1e-12)
    assert values["value"] > 0.15 and values["threshold"] == 0.15
    assert values["window"].endswith("(1d)")
    assert "amount" in values["drifted_features"].split(", ")
    report = materializations(monitor_run, "drift_report")[0]
    assert report["drift_score"] == values["value"] and report["rows"] == len(current)
    assert report["reference_rows"] == len(reference)
    with open(report["report"]) as html:  # Evidently's page: every feature, and the dataset's drift share
        page = html.read()
    assert all(feature in page for feature in DRIFT_FEATURES) and "Drifted Columns" in page


def test_accuracy_drop_equals_the_logged_answers_against_the_labels(
    monitor_run, judged, drifted_traffic, defs, registry
):
    """30% of the labels flipped: recall collapses (most flipped labels call legit answers fraud), and the
    check names it, with the figures computed here from the log and the label store (scikit-learn, and
    scipy's beta quantile for the one-sided Clopper-Pearson bound)."""
    checks = evaluations(monitor_run)
    drop = checks["accuracy_drop"]
    assert drop.passed is False and drop.severity == dg.AssetCheckSeverity.ERROR
    champion = registry.version_for_alias(CHAMPION)
    paths = defs.resources["monitoring"].paths()
    log = read_predictions(paths.log_dir, judged)
    labels = paths.labels().read(as_of=judged.end)
    # The champion's labelled answers in the window: this module's traffic, and any another graph test
    # sent to the same champion earlier in the session.
    answered = log[log["model_version"] == champion].merge(labels, on="request_id")
    assert answered["request_id"].isin(drifted_traffic["transactions"]["transaction_id"]).sum() == len(
        drifted_traffic["transactions"]
    )
    truth, flagged = answered["label"].astype(bool), answered["is_fraud"].astype(bool)
    tp, fp, fn = int((truth & flagged).sum()), int((~truth & flagged).sum()), int((truth & ~flagged).sum())
    live = {
        "accuracy": float((truth == flagged).mean()),
        "recall": tp / (tp + fn),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "pr_auc": float(average_precision_score(truth, answered["probability"])),
    }
    level = 1 - (1 - 0.95) / 3  # the default confidence, shared by recall, precision and PR AUC
    recall_bound = float(stats.beta.ppf(level, tp + 1, fn))
    evaluated = registry.client.get_run(registry.model_version(champion).run_id).data.metrics
    test = {name: evaluated[f"test_{name}"] for name in live}
    values = metadata_values(drop)
    dropped = values["dropped"].split(", ")
    assert "recall" in dropped and test["recall"] - recall_bound > 0.05
    assert values["value"] == pytest.approx(max(test[name] - live[name] for name in dropped), abs=1e-12)
    assert values["value"] > 0.05 and values["threshold"] == 0.05
    assert values["model_version"] == champion and values["labeled_rows"] == len(answered)
    assert values["labelled_positives"] == tp + fn > 20
    assert drop.description.startswith(values["dropped"].replace("pr_auc", "PR AUC") + " dropped by more than 0.05")
    assert f"on {len(answered)} labelled rows ({tp + fn} positives) of v{champion}" in drop.description
    performance = materializations(monitor_run, "live_performance")[0]
    for name in live:
        assert performance[name] == pytest.approx(live[name], abs=1e-12), name
        assert performance[f"baseline_{name}"] == pytest.approx(test[name], abs=1e-12), name
        assert performance[f"{name}_drop"] == pytest.approx(test[name] - live[name], abs=1e-12), name
    assert performance["recall_upper_bound"] == pytest.approx(recall_bound, abs=1e-9)
    assert performance["labelled_positives"] == tp + fn and performance["confidence"] == 0.95


def test_serving_checks_read_the_log_and_the_metrics_endpoint(monitor_run, judged, defs):
    checks = evaluations(monitor_run)
    paths = defs.resources["monitoring"].paths()
    current = read_predictions(paths.log_dir, judged)
    latency = metadata_values(checks["latency_p99"])
    # The verdict follows the figure: on a busy machine a batch may take longer than the 200 ms rule.
    assert checks["latency_p99"].passed is (latency["value"] <= latency["threshold"])
    assert latency["value"] == pytest.approx(float(np.percentile(current["latency_ms"], 99)))
    assert latency["threshold"] == 200.0
    errors = metadata_values(checks["error_rate"])
    assert checks["error_rate"].passed is True and errors["value"] == 0.0 and errors["threshold"] == 0.01
    assert errors["requests"] > 0  # counted from /metrics, which answers on the served endpoint
    figures = materializations(monitor_run, "serving_metrics")[0]
    assert figures["rows"] == len(current) and figures["errors"] == 0
    assert (paths.state_dir / "metrics-scrape.json").exists()


def test_model_health_summarizes_it_all(monitor_run, registry):
    health = materializations(monitor_run, "model_health")[0]
    assert health["status"] == "degraded"  # an ERROR rule (accuracy_drop) is firing
    assert health["model_version"] == registry.version_for_alias(CHAMPION)
    assert health["alerts"].startswith("accuracy_drop (ERROR)") or "accuracy_drop (ERROR)" in health["alerts"]
    assert "### Drift" in health["dashboard"] and "### Live performance" in health["dashboard"]
    with open(health["dashboard_png"], "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_thresholds_come_from_the_monitoring_resource(drifted_traffic, monitor_run, defs, instance):
    # After monitor_run: a monitor run counts the requests since the last one's /metrics scrape, so a run
    # between the traffic and monitor_run would leave monitor_run none to count.
    strict = run_monitor(defs, instance, latency_p99_threshold_ms=0.001, drift_score_threshold=1.0)
    checks = evaluations(strict)
    assert checks["latency_p99"].passed is False and metadata_values(checks["latency_p99"])["threshold"] == 0.001
    assert checks["drift_score"].passed is True and metadata_values(checks["drift_score"])["threshold"] == 1.0


def test_checks_with_nothing_to_judge_pass_and_say_why(served, defs, instance, tmp_path):
    quiet = run_monitor(defs, instance, log_dir=str(tmp_path / "empty-log"))
    assert quiet.success
    checks = evaluations(quiet)
    assert set(checks) == {
        "drift_score",
        "accuracy_drop",
        "latency_p99",
        "error_rate",
        "feature_skew",
        "prediction_drift",
    }
    for name in ("drift_score", "accuracy_drop", "latency_p99", "feature_skew", "prediction_drift"):
        assert checks[name].passed is True, name
        assert checks[name].description.startswith("nothing to judge"), checks[name].description
        assert metadata_values(checks[name])["value"] is None
    assert "no predictions logged" in checks["drift_score"].description
    assert "no labeled predictions" in checks["accuracy_drop"].description
    assert materializations(quiet, "model_health")[0]["predictions"] == 0


def test_a_bad_window_fails_the_run_naming_it(defs, instance):
    result = run_monitor(defs, instance, window="soon")
    assert not result.success
    failures = [e.event_specific_data.error.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and all("'soon' is not a window length" in message for message in failures)


# ---- the command line ----------------------------------------------------------------------------------
def test_drift_command_prints_the_table_and_exits_by_the_rule(monitor_run, settings):
    drifted = runner.invoke(app, ["drift", "--model", settings.model_name, "--window", "7d"])
    assert drifted.exit_code == 1, drifted.output
    assert "feature" in drifted.output and "amount" in drifted.output and "DRIFT" in drifted.output
    assert "the rule fires above 0.15: DRIFT" in drifted.output
    tolerant = runner.invoke(app, ["drift", "--window", "7d", "--method", "ks", "--max-drift-score", "1.0"])
    assert tolerant.exit_code == 0, tolerant.output
    assert "K-S p-value" in tolerant.output and "no drift" in tolerant.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "churn"], "not 'churn'"),
        (["--window", "a week"], "'a week' is not a window length"),
        (["--method", "psi"], "unknown drift method 'psi'"),
        (["--threshold", "-1"], "feature_threshold"),
    ],
)
def test_drift_command_rejects_bad_input(args, expected, bootstrap_result):
    result = runner.invoke(app, ["drift", *args])
    assert result.exit_code == 2
    assert expected in result.output


def test_drift_command_says_when_there_is_no_traffic(bootstrap_result, tmp_path, monkeypatch):
    monkeypatch.setenv("ML_PLATFORM_SERVING_LOG_DIR", str(tmp_path))
    result = runner.invoke(app, ["drift", "--window", "7d"])
    assert result.exit_code == 2
    assert "no predictions logged" in result.output and "send traffic" in result.output


def test_status_prints_the_health_the_asset_records(monitor_run, registry):
    result = runner.invoke(app, ["status"], catch_exceptions=False)
    assert result.exit_code == 1, result.output  # degraded: status says so in its exit code, for scripts
    champion = registry.version_for_alias(CHAMPION)
    assert f"champion   v{champion}" in result.output
    assert f"{registry.model_name} v{champion}  [DEGRADED]" in result.output
    assert "[ERROR] accuracy_drop" in result.output and "drift score" in result.output
    bad = runner.invoke(app, ["status", "--window", "yesterday"])
    assert bad.exit_code == 2 and "'yesterday' is not a window length" in bad.output


# ---- a worse retrain changes nothing that serves ----------------------------------------------------------
def test_a_worse_retrain_is_stopped_by_the_gates_and_nothing_is_deployed(served, defs, registry, settings):
    champion = registry.version_for_alias(CHAMPION)
    assert served.health()["model_version"] == champion
    weak = {"trained_model": {"n_estimators": 1, "max_depth": 1, "learning_rate": 0.05, "early_stopping_rounds": 0}}
    result = launch("retrain", weak, defs=defs)
    assert not result.success
    checks = check_results(result)
    assert checks[("model_evaluation", "beats_champion")] is False
    assert ("model_deployment", "smoke") not in checks  # the deployment step never ran
    assert not materializations(result, "champion_model") and not materializations(result, "model_deployment")
    assert registry.version_for_alias(CHAMPION) == champion
    with ModelServerClient(endpoint(settings)) as client:
        answer = client.predict([50.0] * 9)
    assert answer["model_version"] == champion
    assert not math.isnan(answer["probability"])
    # on disk before the next test: a monitor run must not miss an answer the server still holds
    logged = wait_until_logged(defs.resources["monitoring"].paths().log_dir, {answer["request_id"]})
    assert answer["request_id"] in set(logged["request_id"])
