"""Dagster Pipes entrypoint for training: ``python -m ml_platform.training.pipes_entrypoint``.

Launched by the orchestrator as a local subprocess or in a (GPU) pod, it reads its job from the Pipes
extras and reports the registered model back as the asset's materialization. It uses only
``dagster_pipes``, the dependency-free protocol package, never the ``dagster`` framework.

Two ways to start it:

- plain (a pod, or a subprocess started when training is due): the Pipes bootstrap variables
  (``DAGSTER_PIPES_CONTEXT``, ``DAGSTER_PIPES_MESSAGES``) are in the environment already;
- ``--wait-for-bootstrap`` (a process started ahead of its job, see ``resources.training``): it first
  imports what training uses (:func:`prewarm`), then waits for one line on stdin, the bootstrap message
  (:func:`bootstrap_message`): the Pipes variables and the rest of the launcher's environment as it is
  when the job comes, and its working directory. The job itself (the MLflow store, the training set) is
  only opened once that message has arrived, exactly as in the plain mode. Stdin closed without a message
  (the launcher had no job for it) ends the process quietly with status 0.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from typing import IO

from dagster_pipes import PipesContext, open_dagster_pipes

from ml_platform.settings import Settings
from ml_platform.shutdown import exit_without_teardown
from ml_platform.training.job import TrainingJob, run_training_job

WAIT_FOR_BOOTSTRAP = "--wait-for-bootstrap"

# What a training job imports on its way (XGBoost and scikit-learn for the fit, MLflow's SQL stores and their
# migrations, MLflow's model flavour, datasets and signatures, matplotlib for the figures, Parquet, and
# GitPython, which MLflow uses for a run's source tags): several seconds of a cold start, none of it specific
# to a job.
PREWARM_MODULES = (
    "pyarrow.parquet",
    "xgboost",
    "sklearn",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.db.utils",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic",
    "mlflow.xgboost",
    "mlflow.models",
    "mlflow.data.pandas_dataset",
    "ml_platform.evaluation.plots",
    "git",
)


def main(argv: list[str] | None = None) -> bool:
    """Run one training job through Pipes; False when started to wait for a job and none came."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], [WAIT_FOR_BOOTSTRAP]):
        raise SystemExit(f"usage: python -m ml_platform.training.pipes_entrypoint [{WAIT_FOR_BOOTSTRAP}]; got {args}")
    # MLflow's own SQLAlchemy deprecation notices are noise in the run's log.
    warnings.filterwarnings("ignore", module=r"(mlflow|sqlalchemy)(\..*)?$")
    if args == [WAIT_FOR_BOOTSTRAP]:
        prewarm()
        if not receive_bootstrap(sys.stdin):
            return False
    with open_dagster_pipes() as pipes:
        Settings.from_env().apply_environment()
        job = TrainingJob(**pipes.extras["job"])
        result = run_training_job(job, log=pipes.log.info)
        report(pipes, result)
    return True


def prewarm() -> None:
    """Import what a training job will use, and fill MLflow's map of installed distributions.

    A module that fails to import here is skipped: the job imports it again itself and reports a failure
    through Pipes, where the orchestrator shows it. MLflow's map (module -> distribution, read from every
    installed package's metadata, over a second) is built when a model is logged, to check its pip
    requirements against this environment; checking the XGBoost requirement the registry logs builds it now.
    """
    for module in PREWARM_MODULES:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - see the docstring: the job's own import reports it
            continue
    try:
        import xgboost
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches([f"xgboost=={xgboost.__version__}"])
    except Exception:  # noqa: BLE001 - an optimisation only; log_model builds the map itself when it has to
        pass


def bootstrap_message(environment: Mapping[str, str], started_with: Mapping[str, str], cwd: str) -> bytes:
    """The line a process started with ``--wait-for-bootstrap`` waits for: ``environment`` (the launcher's,
    with the Pipes bootstrap variables) as the changes from ``started_with``, the environment the process
    was started with, and the working directory the job runs in."""
    message = {
        "set": {name: value for name, value in environment.items() if started_with.get(name) != value},
        "unset": sorted(name for name in started_with if name not in environment),
        "cwd": cwd,
    }
    return (json.dumps(message) + "\n").encode()


def receive_bootstrap(stream: IO[str]) -> bool:
    """Read the bootstrap message (:func:`bootstrap_message`) from ``stream`` and apply it to this process:
    its environment and working directory become the launcher's. False when the stream closed without one."""
    line = stream.readline()
    if not line.strip():
        return False
    try:
        message = json.loads(line)
        changes, removed, cwd = dict(message["set"]), list(message["unset"]), str(message["cwd"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"the bootstrap message on stdin is not the launcher's ({error}): {line[:200]!r}") from error
    for name in removed:
        os.environ.pop(name, None)
    os.environ.update({str(name): str(value) for name, value in changes.items()})
    os.chdir(cwd)
    return True


def report(pipes: PipesContext, result: dict[str, object]) -> None:
    importance = result.pop("feature_importance", None) or {}
    metadata: dict[str, object] = {key: value for key, value in result.items() if value is not None}
    if importance:  # a Dagster table (records and schema, as Pipes carries one), shares to 4 significant digits
        ranked = sorted(importance.items(), key=lambda kv: -kv[1])
        metadata["feature_importance"] = {
            "raw_value": {
                "records": [{"feature": name, "gain share": float(f"{share:.4g}")} for name, share in ranked],
                "schema": [{"name": "feature", "type": "string"}, {"name": "gain share", "type": "float"}],
            },
            "type": "table",
        }
    pipes.report_asset_materialization(metadata=metadata)


if __name__ == "__main__":
    main()  # a failure raises: a traceback and status 1, as from any Python program
    # The process is done once its result is reported: the orchestrator need not wait for the interpreter to
    # free what training loaded (about a second). Also when no job came: the imports need no teardown either.
    exit_without_teardown()
