"""The code location: every asset, check, job, schedule and resource in one dagster.Definitions."""

import dagster as dg

from assets import ALL_ASSETS
from ml_platform.settings import Settings
from resources import build_resources
from sensors import JOBS, SCHEDULES


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=JOBS,
        schedules=SCHEDULES,
        resources=build_resources(settings),
    )


defs = build_definitions()
