"""Group deployment: a model version served in a deployment environment (with a smoke check) and daily
batch predictions."""

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException

from assets.common import DAILY_PARTITIONS, Stopwatch
from ml_platform.deploy.local import DeploymentError
from ml_platform.features.engineering import MODEL_FEATURES, model_features
from ml_platform.features.store import point_in_time_stats
from ml_platform.registry import CHAMPION, RegistryError
from ml_platform.serving.batch import predict_parquet
from ml_platform.serving.client import BadAnswer, ModelServerClient, ServerUnreachable, StatusError
from ml_platform.storage import write_table
from ml_platform.training.train import predict_probability
from resources.deployment import DeploymentEnvironments, DeploymentTarget, UnknownEnvironment
from resources.feast import FeastResource
from resources.mlflow import MLflowResource
from resources.storage import StateStorage

SMOKE_TOLERANCE = 1e-6
# The run tag that says which environment a deploy or a rollback went to (the UI filters runs by it).
ENVIRONMENT_TAG = "ml_platform/environment"


class DeployConfig(dg.Config):
    """What to deploy where: ``environment`` empty is the default deployment environment (the profile's);
    ``version`` 0 is the champion. A version other than the champion is made the champion first (the old
    one becomes 'previous'), so the rollback job can undo it."""

    environment: str = ""
    version: int = 0


def smoke_rows(state: StateStorage, rows: int = 3) -> pd.DataFrame:
    """A few rows of model features from the training set (read without loading the whole file); where this
    state directory has no training set (a CI runner deploying to a cluster), one row of zeros: the check
    compares the served answer with the offline one for the same row, whichever row it is."""
    path = state.table_path("training_set")
    if not path.exists():
        return pd.DataFrame([[0.0] * len(MODEL_FEATURES)], columns=list(MODEL_FEATURES))
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=list(MODEL_FEATURES)))
    return batch.to_pandas()


@dg.asset(
    group_name="deployment",
    deps=["champion_model"],
    kinds={"fastapi"},
    check_specs=[
        dg.AssetCheckSpec(
            "smoke",
            asset="model_deployment",
            blocking=True,
            description="the environment's endpoint is healthy, serves the deployed version, answers a prediction "
            "equal to the offline prediction for the same row, and requires the configured tokens",
        )
    ],
    description="A model version (the champion unless configured) served in a deployment environment (the "
    "default one unless configured): the local process, or a Kubernetes overlay with the version pinned.",
)
def model_deployment(
    context: dg.AssetExecutionContext,
    config: DeployConfig,
    mlflow: MLflowResource,
    deployment: DeploymentEnvironments,
    state: StateStorage,
):
    try:
        environment = deployment.environment(config.environment)
    except UnknownEnvironment as error:
        raise dg.Failure(f"config environment: {error}") from error
    if config.version < 0:
        raise dg.Failure(f"config version must be a registry version, or 0 for the champion; got {config.version}")
    target = deployment.for_environment(environment)
    registry = mlflow.registry()
    champion = registry.version_for_alias(CHAMPION)
    version = config.version or champion
    if version is None:
        raise dg.Failure(f"{registry.model_name} has no '{CHAMPION}' version to deploy; materialize champion_model")
    promoted = version != champion
    if promoted:
        try:
            registry.pin(version, promoted_at=datetime.now(UTC).isoformat())
        except (RegistryError, MlflowException) as error:  # MLflow's: the version does not exist
            raise dg.Failure(f"{registry.model_name} v{version} cannot be deployed: {error}") from error
        context.log.info(f"{registry.model_name}: champion v{champion} -> v{version} (deployed to {environment})")
    try:
        report = target.deploy(registry.model_name, version)
    except DeploymentError as error:
        raise dg.Failure(f"deploying {registry.model_name} v{version} to {environment} failed: {error}") from error
    yield dg.Output(
        None,
        metadata={
            "environment": environment,
            "model_version": version,
            "pinned": target.pins(),
            "promoted_from": champion if promoted and champion is not None else dg.MetadataValue.null(),
            "endpoint": dg.MetadataValue.url(report.url),
            "target": report.target,
            "started_server": report.started_server,
            "deploy_seconds": report.seconds,
            "detail": report.detail,
            "deployed_at": datetime.now(UTC).isoformat(),
        },
    )
    yield smoke_check(target, registry, version, smoke_rows(state), environment=environment)


def smoke_check(
    deployment: DeploymentTarget, registry, version: int, rows: pd.DataFrame, *, environment: str
) -> dg.AssetCheckResult:
    """Health says ``version`` is served, the endpoint's answer equals the offline prediction, and the
    server requires the tokens the deployment has: a prediction without the scoring token is refused,
    the admin token opens /admin/routing. The metadata names the ``environment`` (a failure rolls it back)."""
    url, token, admin_token = deployment.endpoint(), deployment.token(), deployment.admin_token()
    problems: list[str] = []
    metadata: dict[str, object] = {"environment": environment, "endpoint": url, "expected_version": version}
    features = rows.iloc[0].to_numpy(dtype="float64").tolist()  # NaN (a missing value) is sent as null
    try:
        with ModelServerClient(url, token=token) as client:
            status, health = _answered(client.health)
            metadata["health_status"] = status
            served_version = health.get("model_version") if status == 200 else None
            if status != 200 or served_version != version:
                problems.append(f"/health answered {status} with version {served_version}, not v{version}")
            offline = float(predict_probability(registry.load_booster(version), rows)[0])
            status, prediction = _answered(lambda: client.predict(features))
        metadata["predict_status"] = status
        if status != 200:
            problems.append(f"/predict answered {status}: {prediction}")
        else:
            served = float(prediction["probability"])
            metadata.update(served_probability=served, offline_probability=offline)
            metadata["difference"] = abs(served - offline)
            if prediction.get("model_version") != version:
                problems.append(f"/predict answered with v{prediction.get('model_version')}, not v{version}")
            if abs(served - offline) > SMOKE_TOLERANCE:
                problems.append(f"/predict gave {served:.8f}, offline {offline:.8f}")
        problems.extend(_auth_problems(url, token, admin_token, features, metadata))
    except (ServerUnreachable, BadAnswer) as error:
        problems.append(str(error))
    return dg.AssetCheckResult(
        check_name="smoke",
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems)
        or f"v{version} healthy in {environment} at {url}; /predict equals the offline prediction",
        metadata=metadata,
    )


def _answered(call: Callable[[], dict]) -> tuple[int, dict | str]:
    """(200, what ``call`` returned), or (the status, the server's message) when the server refused; a
    server that does not answer, or answers what the protocol does not allow, raises."""
    try:
        return 200, call()
    except StatusError as error:
        return error.status_code, error.detail


def _auth_problems(
    url: str, token: str | None, admin_token: str | None, features: list, metadata: dict[str, object]
) -> list[str]:
    """What is wrong with the served endpoint's auth, given the tokens this deployment holds."""
    problems = []
    metadata["scoring_auth"] = "required" if token else "not checked: this deployment holds no scoring token"
    if token:
        with ModelServerClient(url) as anonymous:
            status, _ = _answered(lambda: anonymous.predict(features))
        metadata["predict_without_token_status"] = status
        if status != 401:
            problems.append(f"/predict without the scoring token answered {status}, not 401: the token is not required")
    metadata["admin_auth"] = "opens /admin" if admin_token else "not checked: this deployment holds no admin token"
    if admin_token:
        with ModelServerClient(url, admin_token=admin_token) as admin:
            status, _ = _answered(admin.routing)
        metadata["admin_routing_status"] = status
        if status != 200:
            problems.append(f"GET /admin/routing with the admin token answered {status}, not 200")
    return problems


@dg.asset(
    group_name="deployment",
    partitions_def=DAILY_PARTITIONS,
    deps=["champion_model", "feature_store"],
    kinds={"xgboost", "parquet"},
    description="Every transaction of the day scored by the champion (with the customer stats served that "
    "day: through the end of the day before, as in training), streamed parquet to parquet in bounded memory, "
    "with model version and scoring time on every row.",
)
def batch_predictions(
    context: dg.AssetExecutionContext,
    validated_transactions: pd.DataFrame,
    mlflow: MLflowResource,
    feast: FeastResource,
    state: StateStorage,
) -> dg.MaterializeResult:
    registry = mlflow.registry()
    version = registry.version_for_alias(CHAMPION)
    if version is None:
        raise dg.Failure(f"{registry.model_name} has no '{CHAMPION}' version; materialize champion_model first")
    booster, threshold = registry.load_booster(version), registry.threshold(version)
    timer = Stopwatch()
    with timer.measure():
        stats = point_in_time_stats(feast.store(), validated_transactions)
        ids = validated_transactions[["transaction_id", "customer_id", "event_timestamp"]].reset_index(drop=True)
        features = pd.concat([ids, model_features(validated_transactions, stats).reset_index(drop=True)], axis=1)
    destination = state.table_path("batch_predictions", context.partition_key)
    with tempfile.TemporaryDirectory(dir=destination.parent.parent) as scratch:
        source = Path(scratch) / "features.parquet"
        write_table(features, source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        result = predict_parquet(source, destination, booster, model_version=version, threshold=threshold)
    flagged = pq.read_table(destination, columns=["is_fraud"]).column("is_fraud").to_pandas().sum()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.rows,
            "model_version": version,
            "flagged_as_fraud": int(flagged),
            "rows_per_second": result.rows_per_second,
            "path": dg.MetadataValue.path(str(destination)),
            "compute_seconds": timer.seconds + result.seconds,
        }
    )
