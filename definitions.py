"""The code location: every asset, check, job, schedule, sensor and resource in one dagster.Definitions."""

import dagster as dg

from assets import ALL_ASSETS
from ml_platform.settings import Settings
from resources import build_executor, build_resources
from sensors import JOBS, SCHEDULES, SENSORS


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources=build_resources(settings),
        executor=build_executor(settings),  # None (Dagster's default) unless the steps run as Kubernetes Jobs
    )


defs = build_definitions()
