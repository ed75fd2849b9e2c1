"""The rollback job: put the last different known-good champion back and prove it is what serves.

A job of ops rather than assets: it changes the registry and the deployment, then reports the new state
of ``model_deployment`` (an AssetMaterialization with the environment and the smoke check's verdict in its
metadata), so the asset's history in the UI shows the rollback.

The redeploy goes through the configured environment's target, the one the deploy used: on Kubernetes
(pinned) it is a rollout of the restored version; the local process follows the alias the rollback moved.
"""

from datetime import UTC, datetime

import dagster as dg

from assets.deployment import smoke_check, smoke_rows
from ml_platform.deploy.local import DeploymentError
from ml_platform.registry import CHAMPION, RegistryError
from resources.deployment import DeploymentEnvironments, UnknownEnvironment
from resources.mlflow import MLflowResource
from resources.storage import StateStorage


class RollbackConfig(dg.Config):
    """``reason``: recorded on the version taken out; ``environment``: where to redeploy (empty: the default)."""

    reason: str = "manual rollback"
    environment: str = ""


@dg.op(
    description="Alias 'champion' to the rollback target ('previous': the most recently promoted version that "
    "was not rolled back and is not the same model); the version taken out is tagged with when and why."
)
def roll_back_champion(
    context: dg.OpExecutionContext, config: RollbackConfig, mlflow: MLflowResource, deployment: DeploymentEnvironments
) -> dict:
    try:
        environment = deployment.environment(config.environment)  # refused before the registry changes
    except UnknownEnvironment as error:
        raise dg.Failure(f"config environment: {error}") from error
    registry = mlflow.registry()
    bad = registry.version_for_alias(CHAMPION)
    try:
        promotion = registry.rollback(rolled_back_at=datetime.now(UTC).isoformat(), reason=config.reason)
    except RegistryError as error:
        raise dg.Failure(str(error)) from error
    further = f"v{promotion.previous}" if promotion.previous is not None else "no known-good version left"
    context.log.info(
        f"{registry.model_name}: champion v{bad} -> v{promotion.champion} in {environment} ({config.reason}); "
        f"a further rollback would go to: {further}"
    )
    return {
        "environment": environment,
        "model_name": registry.model_name,
        "from_version": bad,
        "to_version": promotion.champion,
        "next_version": promotion.previous,
    }


@dg.op(description="Serve the restored champion in the rollback's environment and verify what answers.")
def redeploy_and_verify(
    context: dg.OpExecutionContext,
    rollback: dict,
    mlflow: MLflowResource,
    deployment: DeploymentEnvironments,
    state: StateStorage,
) -> dict:
    version, environment = rollback["to_version"], rollback["environment"]
    target = deployment.for_environment(environment)
    try:
        report = target.deploy(rollback["model_name"], version)
    except DeploymentError as error:
        raise dg.Failure(f"redeploying v{version} to {environment} after the rollback failed: {error}") from error
    check = smoke_check(target, mlflow.registry(), version, smoke_rows(state), environment=environment)
    context.log_event(
        dg.AssetMaterialization(
            asset_key="model_deployment",
            description=f"rolled back from v{rollback['from_version']} to v{version} in {environment}",
            metadata={
                "environment": environment,
                "model_version": version,
                "pinned": target.pins(),
                "rolled_back_from": rollback["from_version"],
                "endpoint": dg.MetadataValue.url(report.url),
                "deploy_seconds": report.seconds,
                "smoke_passed": check.passed,
                "smoke": check.description or "",
            },
        )
    )
    if not check.passed:
        raise dg.Failure(
            f"after the rollback the {environment} endpoint does not serve v{version} correctly: {check.description}"
        )
    return {**rollback, "endpoint": report.url, "seconds": report.seconds}


@dg.job(
    description="Alias 'champion' back to the last known-good version, redeploy it to the configured environment "
    "(a rollout of that version where the environment pins), verify what is serving."
)
def rollback():
    redeploy_and_verify(roll_back_champion())
