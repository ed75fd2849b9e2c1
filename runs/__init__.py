"""Runs of the code location's jobs, launched from the command line: the Dagster half of ``ml-platform``.

This package stands above ``definitions.py``: it loads the code location and runs its jobs in this
process on the local Dagster instance, so they show up in the UI next to scheduled and sensor runs.

- ``launch``: launch a job and read back what its run produced;
- ``closed_loop``: the closed loop of ``make demo`` and tests/e2e, the sensors ticked step by step;
- ``cli``: the commands that launch runs or need the code location's resources, added to the core's
  typer app (``ml_platform/cli.py`` holds the Dagster-free commands); the ``ml-platform`` entry point.
"""
