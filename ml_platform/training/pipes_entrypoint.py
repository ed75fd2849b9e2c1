"""Dagster Pipes entrypoint for training: ``python -m ml_platform.training.pipes_entrypoint``.

Launched by the orchestrator as a local subprocess or in a (GPU) pod, it reads its job from the Pipes
extras and reports the registered model back as the asset's materialization. It uses only
``dagster_pipes``, the dependency-free protocol package, never the ``dagster`` framework.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import warnings

from dagster_pipes import PipesContext, open_dagster_pipes

from ml_platform.settings import Settings
from ml_platform.training.job import TrainingJob, run_training_job


def main() -> None:
    # MLflow's own SQLAlchemy deprecation notices are noise in the run's log.
    warnings.filterwarnings("ignore", module=r"(mlflow|sqlalchemy)(\..*)?$")
    with open_dagster_pipes() as pipes:
        Settings.from_env().apply_environment()
        job = TrainingJob(**pipes.extras["job"])
        result = run_training_job(job, log=pipes.log.info)
        report(pipes, result)


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


def exit_without_teardown() -> None:
    """End this process with status 0 now that the result is reported, skipping the interpreter's teardown.

    Freeing one by one the objects of every module loaded here (MLflow, SQLAlchemy, pandas, XGBoost and the
    training set) takes about a second at shutdown, and the orchestrator waits for the process to exit; the
    operating system takes the memory back at once. What a normal exit does first still happens here: other
    non-daemon threads are waited for, the exit handlers run (MLflow's: end an open run, delete its
    temporary directories; logging's flush) and the standard streams are flushed.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what the interpreter runs at exit, before the teardown skipped here
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()  # a failure raises: a traceback and status 1, as from any Python program
    exit_without_teardown()
