"""The code location: every asset, check, job, schedule, sensor and resource in one dagster.Definitions."""

import dagster as dg

from assets import ALL_ASSETS
from assets.catalog import CATALOG_CHECKS, FRESHNESS_SENSOR, catalogued
from assets.common import check_partitions_start
from ml_platform.settings import Settings
from resources import build_executor, build_resources
from sensors import JOBS, SCHEDULES, SENSORS


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    check_partitions_start(settings)  # a start later than stored days is refused, naming the setting
    return dg.Definitions(
        assets=catalogued(ALL_ASSETS, settings),  # owners, code versions, column schemas (assets.catalog)
        asset_checks=CATALOG_CHECKS,  # freshness of the monitoring summary, and whether it judged the champion
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=[*SENSORS, FRESHNESS_SENSOR],
        resources=build_resources(settings),
        executor=build_executor(settings),  # None (Dagster's default) unless the steps run as Kubernetes Jobs
    )


defs = build_definitions()
