"""A shadow test for real: the champion served by a local uvicorn process with a challenger beside it, the
routing switched to shadow through the server's ``/admin/routing`` (admin token), traffic sent, and
``live_performance`` reporting both variants with the figures computed independently from the same log and
labels; ``prediction_drift`` passing on clean traffic and failing on drifted traffic.

Each phase's server writes a prediction log of its own (as test_skew.py's does), so the checks judge only
that phase's traffic and other modules' monitoring runs never see it. Afterwards the routing is put back,
the server stopped and the challenger alias restored.
"""

import time
from contextlib import contextmanager
from datetime import date

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from assets import ALL_ASSETS
from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.monitoring.dashboard import render_markdown
from ml_platform.monitoring.health import collect_model_health
from ml_platform.monitoring.traffic import send_traffic
from ml_platform.monitoring.window import Window
from ml_platform.registry import CHALLENGER, CHAMPION
from ml_platform.serving.client import ModelServerClient
from runs.launch import launch
from tests.support.runs import drifted_transactions, endpoint, materializations, send_with_labels, wait_until_logged
from tests.support.tables import table_rows

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
ADMIN_TOKEN = "variants-adm1n"
CLEAN_DAY, DRIFTED_DAY = date(2026, 7, 1), date(2026, 7, 2)  # days no test ingests
ROWS = 400  # a day of about this many transactions
SHADOW = "challenger_shadow"
WEAK = {"trained_model": {"n_estimators": 1, "max_depth": 1, "early_stopping_rounds": 0}}


@pytest.fixture(scope="module")
def versions(bootstrap_result, defs, registry):
    """(champion, challenger): a weak retrain registers the challenger and the gates stop it there. The
    challenger alias is put back as it was after the module."""
    before = registry.version_for_alias(CHALLENGER)
    champion = registry.version_for_alias(CHAMPION)
    launch("retrain", WEAK, defs=defs)
    challenger = registry.version_for_alias(CHALLENGER)
    assert registry.version_for_alias(CHAMPION) == champion
    assert challenger is not None and challenger != champion
    yield champion, challenger
    if before is not None:
        registry.set_alias(CHALLENGER, before)
    else:
        registry.client.delete_registered_model_alias(registry.model_name, CHALLENGER)


def set_mode(url: str, mode: str) -> dict:
    answer = httpx.put(
        f"{url}/admin/routing", json={"mode": mode}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


@contextmanager
def shadow_server(settings, log_dir, challenger: int):
    """The code location with the server's log in ``log_dir``, the champion served with the challenger
    scoring every request in shadow; the routing goes back to split and the server stops afterwards."""
    from definitions import build_definitions

    server = LocalProcessTarget(settings.home / "serving", port=settings.serving_port)
    url = endpoint(settings)
    patch = pytest.MonkeyPatch()
    patch.setenv("ML_PLATFORM_SERVING_LOG_DIR", str(log_dir))
    patch.setenv("ML_PLATFORM_SERVING_ADMIN_TOKEN", ADMIN_TOKEN)
    server.stop()  # a server an earlier test left running writes another log, without the admin token
    try:
        defs = build_definitions(settings)
        deployed = launch("deploy", defs=defs)
        assert deployed.success, [e.message for e in deployed.all_events if e.event_type_value == "STEP_FAILURE"]
        with ModelServerClient(url, admin_token=ADMIN_TOKEN) as admin:
            deadline = time.monotonic() + 60
            while admin.routing().get("challenger_version") != challenger and time.monotonic() < deadline:
                time.sleep(0.5)  # the server follows the registry's aliases
            assert admin.routing()["challenger_version"] == challenger
        assert set_mode(url, "shadow")["mode"] == "shadow"
        yield defs
        assert set_mode(url, "split")["mode"] == "split"
    finally:
        server.stop()
        patch.undo()


def serve(defs, settings, transactions: pd.DataFrame, labelled: bool) -> pd.DataFrame:
    """Send ``transactions`` (with their labels when ``labelled``); the log once both variants' rows are in."""
    if labelled:
        send_with_labels(settings, defs, transactions, flip_fraction=0.0)
    else:
        traffic = send_traffic(endpoint(settings), transactions)
        assert traffic.failed == 0, traffic.errors
    log_dir = defs.resources["monitoring"].paths().log_dir
    wanted = set(transactions["transaction_id"])
    deadline = time.monotonic() + 60
    while True:
        log = wait_until_logged(log_dir, wanted)
        counts = log.loc[log["request_id"].isin(wanted), "variant"].value_counts().to_dict()
        if counts == {"champion": len(wanted), SHADOW: len(wanted)} or time.monotonic() > deadline:
            assert counts == {"champion": len(wanted), SHADOW: len(wanted)}
            return log
        time.sleep(0.25)


def judge(defs, instance):
    result = dg.materialize(
        ALL_ASSETS,
        selection=["live_performance", "prediction_drift"],
        resources=defs.resources,
        instance=instance,
    )
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return result, checks


@pytest.fixture(scope="module")
def clean(versions, settings, instance, tmp_path_factory):
    transactions = drifted_transactions(CLEAN_DAY, rows=ROWS, drift=0.0)
    with shadow_server(settings, tmp_path_factory.mktemp("variants_clean"), versions[1]) as defs:
        log = serve(defs, settings, transactions, labelled=True)
        labels = defs.resources["monitoring"].paths().labels().read()
        result, checks = judge(defs, instance)
        registry, paths = defs.resources["mlflow"].registry(), defs.resources["monitoring"].paths()
        health = collect_model_health(registry, paths, Window.parse("24h"), endpoint=None)
    return {
        "log": log,
        "labels": labels,
        "result": result,
        "checks": checks,
        "sent": len(transactions),
        "health": health,
    }


@pytest.fixture(scope="module")
def drifted(clean, versions, settings, instance, tmp_path_factory):
    transactions = drifted_transactions(DRIFTED_DAY, rows=ROWS, drift=1.0)
    with shadow_server(settings, tmp_path_factory.mktemp("variants_drifted"), versions[1]) as defs:
        log = serve(defs, settings, transactions, labelled=False)
        result, checks = judge(defs, instance)
    return {"log": log, "result": result, "checks": checks, "sent": len(transactions)}


def markdown_rows(table) -> dict[str, list[str]]:
    """A table's body rows, by their first cell (table metadata now, see tests/support/tables.py)."""
    return table_rows(table)


def expected_figures(log: pd.DataFrame, labels: pd.DataFrame, variant: str) -> dict[str, float]:
    """A variant's figures straight from the log and the labels (joined by request id), by scikit-learn."""
    rows = log.loc[log["variant"] == variant].merge(
        labels.drop_duplicates("request_id", keep="last")[["request_id", "label"]], on="request_id"
    )
    truth, predicted = rows["label"].astype(int), rows["is_fraud"].astype(int)
    return {
        "labelled_rows": len(rows),
        "positives": int(truth.sum()),
        "precision": precision_score(truth, predicted, zero_division=0),
        "recall": recall_score(truth, predicted, zero_division=0),
        "pr_auc": average_precision_score(truth, rows["probability"]),
    }


def test_a_shadow_test_shows_both_variants_with_their_figures(clean, versions):
    champion, challenger = versions
    metadata = materializations(clean["result"], "live_performance")[0]
    sent, rows = clean["sent"], clean["log"]["variant"].value_counts().to_dict()
    assert metadata["variant_names"] == f"champion, {SHADOW}"
    # The deploy's smoke request is a champion answer of its own (before the routing went to shadow).
    assert metadata["champion_rows"] == rows["champion"] == sent + 1 and metadata[f"{SHADOW}_rows"] == sent
    for variant in ("champion", SHADOW):
        expected = expected_figures(clean["log"], clean["labels"], variant)
        assert expected["labelled_rows"] == sent and 0 < expected["positives"] < sent
        assert metadata[f"{variant}_labelled_rows"] == sent
        assert metadata[f"{variant}_positives"] == expected["positives"]
        for name in ("precision", "recall", "pr_auc"):
            assert metadata.get(f"{variant}_{name}", 0.0) == pytest.approx(expected[name], abs=1e-12), (variant, name)
    for name in ("precision", "recall", "pr_auc"):
        difference = metadata.get(f"{SHADOW}_{name}", 0.0) - metadata.get(f"champion_{name}", 0.0)
        assert metadata[f"{SHADOW}_{name}_diff"] == pytest.approx(difference, abs=1e-12)
        assert metadata[f"{SHADOW}_{name}_diff_low"] <= difference <= metadata[f"{SHADOW}_{name}_diff_high"]
    table = markdown_rows(metadata["variants"])
    assert table["champion"][:4] == [f"v{champion}", str(sent + 1), str(sent), str(metadata["champion_positives"])]
    assert table[SHADOW][:4] == [f"v{challenger}", str(sent), str(sent), str(metadata[f"{SHADOW}_positives"])]
    # The dashboard (model_health, ml-platform status) shows the same variants.
    health = clean["health"]
    assert health.variants.names == ["champion", SHADOW]
    shown = health.variants.get(SHADOW)
    assert (shown.rows, shown.labeled_rows, shown.positives) == (sent, sent, metadata[f"{SHADOW}_positives"])
    assert shown.metrics["recall"] == metadata[f"{SHADOW}_recall"]
    assert shown.intervals["recall"] == (metadata[f"{SHADOW}_recall_diff_low"], metadata[f"{SHADOW}_recall_diff_high"])
    assert f"| {SHADOW} | v{challenger} | {sent} | {sent} |" in render_markdown(health)
    # The accuracy drop check still judges the champion's answers only.
    accuracy = clean["checks"]["accuracy_drop"]
    assert accuracy.metadata["labeled_rows"].value == sent
    assert accuracy.metadata["model_version"].value == champion


def test_prediction_drift_passes_on_clean_traffic(clean, versions):
    check = clean["checks"]["prediction_drift"]
    values = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert check.passed is True and check.severity == dg.AssetCheckSeverity.WARN
    assert values["threshold"] == 0.1 and values["method"] == "Wasserstein distance (normed)"
    assert 0.0 <= values["value"] < 0.1
    served = clean["log"].loc[clean["log"]["variant"] == "champion", "probability"]
    assert values["rows"] == len(served) == clean["sent"] + 1  # the champion's answers only, no shadow score
    assert values["reference_rows"] > 100
    assert values["model_version"] == versions[0]
    assert values["served_p50"] == pytest.approx(float(np.median(served)))


def test_prediction_drift_fails_on_drifted_traffic(drifted, versions):
    check = drifted["checks"]["prediction_drift"]
    values = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    assert values["value"] >= 0.1 and values["rows"] == drifted["sent"] + 1
    assert check.description.startswith("drifted: Wasserstein distance (normed)")
    asset = materializations(drifted["result"], "prediction_drift")[0]
    assert asset["score"] == values["value"] and asset["drifted"] is True
    assert asset["reference_rows"] == values["reference_rows"] and asset["model_version"] == versions[0]
    assert asset["served_p50"] != asset["reference_p50"]
