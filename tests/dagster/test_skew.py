"""Training/serving skew for real: the champion served by a local uvicorn process reading the Feast online
store, a day's transactions sent to it, then that day ingested as the nightly batch does, and the
``feature_skew`` check rebuilding the served transactions' features from the offline store.

Caught up (the online store holds every stored day, the traffic is of the next day): nothing differs.
Stale (two days served before either is ingested): the second day's transactions of customers who
shopped on the first were served without that day; the check fails by exactly their share.

The module's server writes a prediction log of its own (as the closed loop's does), so its checks judge
its traffic only and other modules' monitoring runs never see it. Its days come after every day the
other graph tests ingest, and the online store is refreshed first, so it holds every stored day.
"""

from datetime import date, timedelta

import dagster as dg
import pytest

from assets import ALL_ASSETS
from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.monitoring.traffic import send_traffic
from runs.launch import launch
from tests.support.runs import (
    SMALL_DATA,
    catch_up_features,
    drifted_transactions,
    endpoint,
    forget_days,
    materializations,
    wait_until_logged,
)
from tests.support.tables import table_rows

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
ROWS_PER_DAY = 300
DATA = {**SMALL_DATA["raw_transactions"], "transactions_per_day": ROWS_PER_DAY}
LIVE_DAY = date(2026, 6, 1)
STALE_DAYS = (date(2026, 6, 2), date(2026, 6, 3))


def day_of_traffic(day: date):
    """The synthetic source's transactions of ``day`` (no drift): the rows ingesting ``day`` stores."""
    return drifted_transactions(day, rows=ROWS_PER_DAY, drift=0.0)


@pytest.fixture(scope="module")
def world(bootstrap_result, settings, tmp_path_factory):
    """The code location with the server's log moved to a folder of this module's own, the online store
    loaded with every stored day, and the champion served. Afterwards the module's days are taken out of
    the store again and the features refreshed: a test that serves an earlier day after this module must
    find an online store without them."""
    from definitions import build_definitions

    server = LocalProcessTarget(settings.home / "serving", port=settings.serving_port)
    patch = pytest.MonkeyPatch()
    patch.setenv("ML_PLATFORM_SERVING_LOG_DIR", str(tmp_path_factory.mktemp("skew_predictions")))
    server.stop()  # a server an earlier test left running writes the session's log
    defs = build_definitions(settings)
    try:
        catch_up_features(defs, LIVE_DAY - timedelta(days=1))
        deployed = launch("deploy", defs=defs)
        assert deployed.success, [e.message for e in deployed.all_events if e.event_type_value == "STEP_FAILURE"]
        yield defs
    finally:
        server.stop()
        patch.undo()
        forget_days(defs, [LIVE_DAY, *STALE_DAYS])


def serve(defs, settings, transactions) -> None:
    traffic = send_traffic(endpoint(settings), transactions)
    assert traffic.failed == 0, traffic.errors
    log = wait_until_logged(defs.resources["monitoring"].paths().log_dir, set(transactions["transaction_id"]))
    assert set(transactions["transaction_id"]) <= set(log["request_id"])


def ingest(defs, first: date, last: date) -> None:
    """The nightly batch: the days ingested, customer_stats recomputed, the online store loaded."""
    assert launch("ingest", {"raw_transactions": DATA}, start=first, end=last, defs=defs).success
    assert launch("refresh_features", start=first, end=last, defs=defs).success


def markdown_rows(table) -> dict[str, list[str]]:
    """A table's body rows, by their first cell (table metadata now, see tests/support/tables.py)."""
    return table_rows(table)


def judge(defs, instance):
    result = dg.materialize(
        ALL_ASSETS,
        selection=["feature_skew"],
        resources=defs.resources,
        instance=instance,
        run_config={"ops": {"feature_skew": {"config": {"window": "24h"}}}},
    )
    [evaluation] = result.get_asset_check_evaluations()
    values = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    return evaluation, values, materializations(result, "feature_skew")[0]


@pytest.fixture(scope="module")
def caught_up(world, settings, instance):
    live = day_of_traffic(LIVE_DAY)
    serve(world, settings, live)
    ingest(world, LIVE_DAY, LIVE_DAY)
    return {"live": live, "judged": judge(world, instance)}


@pytest.fixture(scope="module")
def stale(caught_up, world, settings, instance):
    first, second = (day_of_traffic(day) for day in STALE_DAYS)
    serve(world, settings, first)
    serve(world, settings, second)  # the online store still ends with LIVE_DAY
    ingest(world, STALE_DAYS[0], STALE_DAYS[1])
    return {"first": first, "second": second, "judged": judge(world, instance)}


def test_traffic_of_the_day_after_the_stored_ones_is_served_what_training_gives(caught_up):
    evaluation, values, asset = caught_up["judged"]
    served = len(caught_up["live"])
    assert served > 250
    assert evaluation.passed is True and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert (values["rows_compared"], values["rows_mismatched"], values["rows_not_in_offline_store"]) == (served, 0, 0)
    assert values["value"] == 0.0 and values["threshold"] == 0.01
    assert asset["mismatched_share"] == 0.0 and asset["served_rows_with_customer"] == served
    assert f"0 of {served} served transactions" in evaluation.description


def test_a_store_stale_by_a_day_fails_by_the_share_of_customers_who_moved(stale, caught_up):
    evaluation, values, asset = stale["judged"]
    first, second = stale["first"], stale["second"]
    moved = second["customer_id"].isin(set(first["customer_id"]))  # their stats changed on the first day
    expected = int(moved.sum())
    compared = len(caught_up["live"]) + len(first) + len(second)
    assert expected > 0.01 * compared  # enough to break the 1% rule
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert (values["rows_compared"], values["rows_mismatched"], values["rows_not_in_offline_store"]) == (
        compared,
        expected,
        0,
    )
    assert values["value"] == pytest.approx(expected / compared, rel=1e-12)
    assert asset["mismatched_share"] == pytest.approx(expected / compared, rel=1e-12)
    by_feature = markdown_rows(asset["mismatches_by_feature"])
    assert list(by_feature) == list(MODEL_FEATURES)
    assert int(by_feature["total_purchases"][0]) == int(by_feature["lifetime_value"][0]) == expected
    assert int(by_feature["amount"][0]) == int(by_feature["category_code"][0]) == 0  # the request's own fields
    examples = set(asset["example_request_ids"].split(", "))
    assert examples and examples <= set(second.loc[moved, "transaction_id"])
