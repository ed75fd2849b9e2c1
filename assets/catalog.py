"""What Dagster's catalog says about every asset, applied in one place (:func:`catalogued`, called by
``definitions.build_definitions``): owners, code versions, column schemas, and the freshness of the
monitoring summary.

- Owners: ``ML_PLATFORM_ASSET_OWNERS`` (emails or ``team:<name>``; default ``team:ml-platform``) on every asset.
- Code versions: ``<project version>+<12 hex of a sha256>`` over the source of the asset's module and of every
  ``ml_platform`` module it imports from (:func:`code_version`). A change to what computes an asset changes its
  version, so the UI marks it (and what is below it) as changed code; a change elsewhere does not. The project
  version alone would not move for most changes, and the git commit would move for every asset at every commit.
  What the imported core modules import in turn is not hashed: a change that deep shows with the next project
  version.
- Column schemas (``dagster/column_schema``) of the assets whose value is a table, built from the core's own
  declarations (``TRANSACTION_SCHEMA``, the feature names, the prediction log's arrow schema, the label columns),
  as definition metadata: the catalog shows them before anything is materialized.
- Freshness: ``model_health`` and ``drift_report`` fail a freshness check when their last materialization is
  older than :data:`MONITORING_FRESHNESS` (the monitor job runs hourly), evaluated by :data:`FRESHNESS_SENSOR`;
  and ``model_health`` has a check saying whether the version it judged is still the champion it serves.
"""

import hashlib
import importlib.metadata
import inspect
import sys
from collections.abc import Iterable, Sequence
from datetime import timedelta
from types import ModuleType

import dagster as dg
import pyarrow as pa

from ml_platform.data.schema import ENTITY_COLUMN, ID_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN, TRANSACTION_SCHEMA, Column
from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES
from ml_platform.monitoring.labels import LABEL_COLUMNS
from ml_platform.predictions.writer import _log_schema
from ml_platform.registry import CHAMPION
from ml_platform.serving.batch import DEFAULT_ID_COLUMNS
from ml_platform.settings import Settings
from ml_platform.training.dataset import SPLIT_COLUMN, SPLITS
from resources.mlflow import MLflowResource

COLUMN_SCHEMA_KEY = "dagster/column_schema"
PROJECT = "ml-platform"

# ---- column schemas -----------------------------------------------------------------------------------


def _constraints(column: Column) -> dg.TableColumnConstraints:
    other = []
    if column.minimum is not None:
        other.append(f">= {column.minimum:g}")
    if column.maximum is not None:
        other.append(f"<= {column.maximum:g}")
    if column.allowed is not None:
        other.append("one of " + ", ".join(map(str, column.allowed)))
    return dg.TableColumnConstraints(nullable=False, unique=column.name == ID_COLUMN, other=other)


_TRANSACTION = {column.name: column for column in TRANSACTION_SCHEMA}


def _transaction_column(name: str) -> dg.TableColumn:
    column = _TRANSACTION[name]
    return dg.TableColumn(name, column.kind, description=column.description, constraints=_constraints(column))


def _arrow_kind(data_type: pa.DataType) -> str:
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_integer(data_type):
        return "integer"
    if pa.types.is_floating(data_type):
        return "float"
    return "string"


# The offline table's running stats: a count of orders, the rest amounts or a unix time (ml_platform.features
# .store's Feast view types them Int64 and Float64; that module imports Feast only when applying the repo).
_STORED_FEATURE_KINDS = {"total_purchases": "integer"}


def _schemas() -> dict[str, dg.TableSchema]:
    transactions = dg.TableSchema(columns=[_transaction_column(column.name) for column in TRANSACTION_SCHEMA])
    keys = [_transaction_column(name) for name in (ENTITY_COLUMN, TIMESTAMP_COLUMN)]
    customer_stats = dg.TableSchema(
        columns=[
            *keys,
            *(
                dg.TableColumn(name, _STORED_FEATURE_KINDS.get(name, "float"), description="the customer's history")
                for name in STORED_FEATURES
            ),
        ]
    )
    model_inputs = [dg.TableColumn(name, "float", description="model feature") for name in MODEL_FEATURES]
    training_set = dg.TableSchema(
        columns=[
            *(_transaction_column(name) for name in (ID_COLUMN, ENTITY_COLUMN, TIMESTAMP_COLUMN)),
            *model_inputs,
            _transaction_column(LABEL_COLUMN),
            dg.TableColumn(
                SPLIT_COLUMN,
                "string",
                description="train, validation or test, by time",
                constraints=dg.TableColumnConstraints(nullable=False, other=["one of " + ", ".join(SPLITS)]),
            ),
        ]
    )
    # The log files' arrow schema, as the model server writes them (ml_platform.predictions.writer).
    prediction_log = dg.TableSchema(
        columns=[dg.TableColumn(field.name, _arrow_kind(field.type)) for field in _log_schema()]
    )
    labels = dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind)
            for name, kind in zip(LABEL_COLUMNS, ("string", "boolean", "timestamp"), strict=True)
        ]
    )
    # ml_platform.serving.batch.predict_parquet's output: the id columns, then what it adds to each row.
    batch_predictions = dg.TableSchema(
        columns=[
            *(_transaction_column(name) for name in DEFAULT_ID_COLUMNS),
            dg.TableColumn("probability", "float", description="P(fraud)"),
            dg.TableColumn("is_fraud", "boolean", description="probability >= the version's threshold"),
            dg.TableColumn("model_version", "integer"),
            dg.TableColumn("scored_at", "timestamp"),
        ]
    )
    return {
        "raw_transactions": transactions,
        "validated_transactions": transactions,
        "customer_stats": customer_stats,
        "training_set": training_set,
        "prediction_log": prediction_log,
        "labels": labels,
        "batch_predictions": batch_predictions,
    }


# The assets whose value is a table, and the columns it has.
COLUMN_SCHEMAS: dict[str, dg.TableSchema] = _schemas()


def column_schema_metadata(asset: str) -> dict[str, dg.TableSchema]:
    """``{"dagster/column_schema": ...}`` for a table asset (for a materialization's metadata too), else {}."""
    schema = COLUMN_SCHEMAS.get(asset)
    return {COLUMN_SCHEMA_KEY: schema} if schema is not None else {}


# ---- code versions ------------------------------------------------------------------------------------


def _project_version() -> str:
    try:
        return importlib.metadata.version(PROJECT)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def _core_modules(module: ModuleType) -> list[ModuleType]:
    """The ``ml_platform`` modules ``module`` imports from (modules, functions and classes it names)."""
    names = set()
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and (name == "ml_platform" or name.startswith("ml_platform.")):
            names.add(name)
    return [sys.modules[name] for name in sorted(names) if name in sys.modules]


def code_version(assets_def: dg.AssetsDefinition) -> str:
    """``<project version>+<sha256 prefix>`` of the asset's module and the core modules it imports from."""
    module = inspect.getmodule(assets_def.op.compute_fn.decorated_fn)
    if module is None:
        raise ValueError(f"the module of asset {assets_def.key.to_user_string()} cannot be found")
    digest = hashlib.sha256()
    for part in (module, *_core_modules(module)):
        digest.update(part.__name__.encode())
        digest.update(inspect.getsource(part).encode())
    return f"{_project_version()}+{digest.hexdigest()[:12]}"


# ---- applied to every asset ---------------------------------------------------------------------------


def catalogued(assets: Iterable[dg.AssetsDefinition], settings: Settings) -> list[dg.AssetsDefinition]:
    """``assets`` with the owners of ``settings``, their code version and, for tables, their column schema."""
    owners = list(settings.asset_owners)

    def with_catalog(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
        version = code_version(assets_def)

        def spec(asset_spec: dg.AssetSpec) -> dg.AssetSpec:
            metadata = {**asset_spec.metadata, **column_schema_metadata(asset_spec.key.to_user_string())}
            return asset_spec.replace_attributes(owners=owners, code_version=version, metadata=metadata)

        return assets_def.map_asset_specs(spec)

    return [with_catalog(assets_def) for assets_def in assets]


# ---- freshness of the monitoring summary ----------------------------------------------------------------

# The monitor job runs hourly (monitor_hourly): older than two hours means at least one run missed or failed.
MONITORING_FRESHNESS = timedelta(hours=2)
FRESH_ASSETS = ("model_health", "drift_report")
FRESHNESS_CHECKS: Sequence[dg.AssetChecksDefinition] = dg.build_last_update_freshness_checks(
    assets=list(FRESH_ASSETS), lower_bound_delta=MONITORING_FRESHNESS
)
FRESHNESS_SENSOR = dg.build_sensor_for_freshness_checks(
    freshness_checks=FRESHNESS_CHECKS,
    name="monitoring_freshness",
    default_status=dg.DefaultSensorStatus.RUNNING,
)

SERVING_VERSION_CHECK = "judges_the_champion"


@dg.asset_check(
    asset="model_health",
    name=SERVING_VERSION_CHECK,
    description="The version model_health judged (its model_version) is still the champion, the version the "
    "deployment serves: a summary of a version taken out of service since is a stale judgement (WARN). "
    "Evaluated with each model_health, and whenever run from the UI.",
)
def judges_the_champion(context: dg.AssetCheckExecutionContext, mlflow: MLflowResource) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("model_health"))
    champion = mlflow.registry().version_for_alias(CHAMPION)
    metadata: dict[str, object] = {"champion_version": champion if champion is not None else "none"}
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="model_health was never materialized: no version has been judged",
            metadata=metadata,
        )
    entry = event.asset_materialization.metadata.get("model_version")
    judged = getattr(entry, "value", entry)
    metadata.update(
        judged_version=judged if judged is not None else "not recorded",
        judged_at=dg.MetadataValue.timestamp(event.timestamp),
    )
    current = judged is not None and str(judged) == str(champion if champion is not None else "none")
    shown = f"v{judged}" if isinstance(judged, int) else str(judged)
    description = (
        f"model_health judged {shown}, the champion now"
        if current
        else f"stale: model_health judged {shown}, but the champion now is "
        + (f"v{champion}" if champion is not None else "none")
        + "; materialize model_health (job monitor) to judge it"
    )
    return dg.AssetCheckResult(
        passed=current, severity=dg.AssetCheckSeverity.WARN, description=description, metadata=metadata
    )


CATALOG_CHECKS: list[dg.AssetChecksDefinition] = [*FRESHNESS_CHECKS, judges_the_champion]
