"""Where training runs: the same entrypoint as a local subprocess here, a GPU pod in production.

Both run ``python -m ml_platform.training.pipes_entrypoint`` through Dagster Pipes, so the asset code
does not change when training moves to Kubernetes: only this resource does.
"""

import sys
from abc import ABC, abstractmethod
from dataclasses import asdict

import dagster as dg

from ml_platform.training.job import TrainingJob

ENTRYPOINT = ["-m", "ml_platform.training.pipes_entrypoint"]


class TrainingCompute(dg.ConfigurableResource, ABC):
    @abstractmethod
    def train(self, context: dg.AssetExecutionContext, job: TrainingJob) -> dg.MaterializeResult:
        """Run the training job and return the asset materialization it reported."""


class LocalTrainingCompute(TrainingCompute):
    """A Pipes subprocess on this machine; uses the local GPU when XGBoost can see one."""

    python_executable: str = ""  # empty: the interpreter running Dagster

    def train(self, context: dg.AssetExecutionContext, job: TrainingJob) -> dg.MaterializeResult:
        command = [self.python_executable or sys.executable, *ENTRYPOINT]
        client = dg.PipesSubprocessClient()
        return client.run(command=command, context=context, extras={"job": asdict(job)}).get_materialize_result()
