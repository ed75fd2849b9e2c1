"""deploy/dagster/dagster.yaml loads as a real DagsterInstance on PostgreSQL (127.0.0.1:5432) and stores runs."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from ml_platform.settings import DAGSTER_TEMPLATE
from tests.support.homes import PG_HOST, PG_PORT, PG_USER, pg_query, recreate_database

# This module and test_production.py recreate databases on the one PostgreSQL server (127.0.0.1:5432):
# under pytest-xdist they run on one worker (--dist loadgroup), never at the same time.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("postgres")]
INSTANCE_DB = "mlp_it_instance"


@pytest.fixture
def pg_environment(main_postgres, monkeypatch):
    recreate_database(PG_PORT, INSTANCE_DB)
    for name, value in {
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": INSTANCE_DB,
    }.items():
        monkeypatch.setenv(name, value)


def template_instance(tmp_path) -> dg.DagsterInstance:
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DAGSTER_TEMPLATE.parent), config_filename="dagster.yaml")
    return dg.DagsterInstance.from_ref(ref)


@dg.op
def add_one() -> int:
    return 1 + 1


@dg.job
def tiny():
    add_one()


def test_the_template_loads_on_postgresql_and_stores_a_run(pg_environment, tmp_path):
    with template_instance(tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        result = tiny.execute_in_process(instance=instance)
        assert result.success and result.output_for_node("add_one") == 2
    rows = pg_query(PG_PORT, INSTANCE_DB, "SELECT run_id, pipeline_name, status FROM runs")
    assert rows == [(result.run_id, "tiny", "SUCCESS")]
    (events,) = pg_query(PG_PORT, INSTANCE_DB, "SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,))[0]
    assert events >= 5
    with template_instance(tmp_path) as again:  # a second process (here: instance) sees the same run
        assert again.get_run_by_id(result.run_id).is_success


def test_a_missing_connection_variable_is_named(pg_environment, tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(dg.DagsterInvalidConfigError, match='environment variable "DAGSTER_PG_HOST" which is not set'):
        template_instance(tmp_path)
