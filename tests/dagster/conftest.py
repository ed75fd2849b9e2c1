"""One shared, expensive set-up for the Dagster tests: the whole graph materialized once on small data."""

from datetime import date

import dagster as dg
import pytest

from ml_platform.cli import launch
from tests.conftest import SESSION_SETTINGS

SMALL_DATA = {"raw_transactions": {"n_customers": 1_500, "transactions_per_day": 1_200, "seed": 7}}
FIRST_DAY, LAST_DAY = date(2026, 3, 1), date(2026, 3, 14)


@pytest.fixture(scope="session")
def settings():
    return SESSION_SETTINGS


@pytest.fixture(scope="session")
def defs(settings):
    from definitions import build_definitions

    return build_definitions(settings)


@pytest.fixture(scope="session")
def instance(settings):
    return dg.DagsterInstance.get()


@pytest.fixture(scope="session")
def bootstrap_run(defs, instance):
    """raw data -> champion over 14 days, in one run (what `make demo` does), and the registry's aliases
    right after it (later tests train more versions)."""
    result = launch("bootstrap", SMALL_DATA, start=FIRST_DAY, end=LAST_DAY, defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return result, defs.resources["mlflow"].registry().aliases()


@pytest.fixture(scope="session")
def bootstrap_result(bootstrap_run):
    return bootstrap_run[0]


@pytest.fixture(scope="session")
def registry(defs):
    return defs.resources["mlflow"].registry()
