"""Dagster Pipes entrypoint for training: ``python -m ml_platform.training.pipes_entrypoint``.

Launched by the orchestrator as a local subprocess or in a (GPU) pod, it reads its job from the Pipes
extras and reports the registered model back as the asset's materialization. It uses only
``dagster_pipes``, the dependency-free protocol package, never the ``dagster`` framework.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
