"""Group evaluation: challenger against champion on the same test rows, the gates, and promotion."""

from dataclasses import asdict
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from assets.common import Stopwatch, md_table
from assets.training import lineage_metadata
from ml_platform.evaluation.gate import GateConfig, beats_champion, quality_floor
from ml_platform.evaluation.metrics import (
    COUNT_NAMES,
    METRIC_NAMES,
    PR_AUC_SE,
    classification_metrics,
    pr_auc_standard_error,
)
from ml_platform.lineage import version_lineage
from ml_platform.registry import CHALLENGER, CHAMPION
from ml_platform.training.dataset import split_xy
from ml_platform.training.train import predict_probability
from resources.mlflow import MLflowResource
from resources.storage import StateStorage


class EvaluationConfig(dg.Config):
    """The promotion gate (the defaults of ``ml_platform.evaluation.gate.GateConfig``): floors on accuracy
    and PR AUC (accuracy alone is weak on rare fraud), and a challenger must beat the champion on
    ``comparison_metric`` by at least ``min_improvement``; a tie keeps the champion."""

    min_accuracy: float = 0.85
    min_pr_auc: float = 0.30
    comparison_metric: str = "pr_auc"
    min_improvement: float = 0.005


@dg.asset(
    group_name="evaluation",
    deps=["trained_model"],
    kinds={"mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            "quality_floor",
            asset="model_evaluation",
            blocking=True,
            description="the challenger clears the accuracy and PR AUC floors",
        ),
        dg.AssetCheckSpec(
            "beats_champion",
            asset="model_evaluation",
            blocking=True,
            description="the challenger beats the champion by at least the margin; otherwise the champion stays",
        ),
    ],
    description="Accuracy, precision, recall, F1, ROC AUC and PR AUC of the challenger and of the current "
    "champion on the same test rows. Blocking checks gate the promotion.",
)
def model_evaluation(config: EvaluationConfig, training_set: pd.DataFrame, mlflow: MLflowResource):
    if config.comparison_metric not in METRIC_NAMES:
        raise dg.Failure(f"comparison_metric must be one of {METRIC_NAMES}, got {config.comparison_metric!r}")
    registry = mlflow.registry()
    challenger = registry.version_for_alias(CHALLENGER)
    if challenger is None:
        raise dg.Failure(f"no '{CHALLENGER}' version of {registry.model_name}; materialize trained_model first")
    champion = registry.version_for_alias(CHAMPION)
    x_test, y_test = split_xy(training_set, "test")
    if len(x_test) == 0:
        raise dg.Failure("the test split of training_set is empty")
    contenders = {"challenger": challenger}
    if champion is not None and champion != challenger:
        contenders["champion"] = champion
    models = {role: (registry.load_booster(v), registry.threshold(v)) for role, v in contenders.items()}
    timer = Stopwatch()
    with timer.measure():
        probabilities = {role: predict_probability(booster, x_test) for role, (booster, _) in models.items()}
        scores = {
            role: classification_metrics(y_test, probabilities[role], threshold)
            for role, (_, threshold) in models.items()
        }
        # The confusion counts and PR AUC's seeded bootstrap standard error: what live monitoring needs to
        # allow for the uncertainty of these test figures (a test split holds few fraud cases).
        pr_auc_se = pr_auc_standard_error(y_test, probabilities["challenger"])
    gate = GateConfig(config.min_accuracy, config.min_pr_auc, config.comparison_metric, config.min_improvement)
    results = [
        quality_floor(scores["challenger"], gate),
        beats_champion(scores["challenger"], scores.get("champion"), gate),
    ]
    challenger_run = registry.model_version(challenger).run_id
    registry.client.log_batch(
        challenger_run,
        metrics=[_metric(f"test_{name}", scores["challenger"][name]) for name in (*METRIC_NAMES, *COUNT_NAMES)]
        + [_metric(f"test_{PR_AUC_SE}", pr_auc_se)],
    )

    table = pd.DataFrame({role: {m: s[m] for m in METRIC_NAMES} for role, s in scores.items()})
    if "champion" in table:
        table["change"] = table["challenger"] - table["champion"]
    record = {
        "model_name": registry.model_name,
        "challenger_version": challenger,
        "champion_version": champion if champion != challenger else None,
        "test_rows": len(x_test),
        "metrics": scores,
        "gates": {r.name: {"passed": r.passed, "description": r.description} for r in results},
        "passed": all(r.passed for r in results),
        "evaluated_at": datetime.now(UTC).isoformat(),
    }
    yield dg.Output(
        record,
        metadata={
            "challenger_version": challenger,
            "champion_version": record["champion_version"] or "none yet",
            "test_rows": len(x_test),
            **{name: scores["challenger"][name] for name in METRIC_NAMES},
            "comparison": md_table(table),
            "gates_passed": record["passed"],
            "compute_seconds": timer.seconds,
        },
    )
    for result in results:
        yield dg.AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=result.description,
            metadata={k: v for k, v in result.metadata.items()},
        )


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key=key, value=float(value), timestamp=int(datetime.now(UTC).timestamp() * 1000), step=0)


@dg.asset(
    group_name="evaluation",
    kinds={"mlflow"},
    description="The registry alias 'champion' moved to the challenger, only after every gate of "
    "model_evaluation passed; 'previous' then names the rollback target (the last different known-good "
    "champion). Shows when the champion was promoted (its champion history entry) and its lineage: training "
    "set, raw partitions, code version, the Dagster and MLflow runs that trained it.",
)
def champion_model(model_evaluation: dict, mlflow: MLflowResource, state: StateStorage) -> dg.Output[dict]:
    failed = [name for name, gate in model_evaluation["gates"].items() if not gate["passed"]]
    if failed:  # the blocking checks already stop this asset; refuse anyway if run on its own
        raise dg.Failure(f"not promoting v{model_evaluation['challenger_version']}: gates failed: {', '.join(failed)}")
    registry = mlflow.registry()
    version = int(model_evaluation["challenger_version"])
    if registry.version_for_alias(CHALLENGER) != version:
        raise dg.Failure(
            f"the challenger moved to v{registry.version_for_alias(CHALLENGER)} after v{version} was evaluated; "
            "evaluate again before promoting"
        )
    promotion = registry.promote(version, promoted_at=datetime.now(UTC).isoformat())
    lineage = version_lineage(
        registry, promotion.champion, training_sets_dir=state.training_sets_dir(), mlflow_ui=mlflow.ui
    )
    promoted = lineage.promotion
    record = {
        "model_name": registry.model_name,
        "champion_version": promotion.champion,
        "previous_version": promotion.previous,
        "changed": promotion.changed,
        "metrics": model_evaluation["metrics"]["challenger"],
    }
    return dg.Output(
        record,
        metadata={
            "champion_version": promotion.champion,
            "previous_version": promotion.previous if promotion.previous is not None else "none",
            "alias_moved": promotion.changed,
            "model_uri": f"models:/{registry.model_name}@{CHAMPION}",
            **{name: model_evaluation["metrics"]["challenger"][name] for name in METRIC_NAMES},
            **lineage_metadata(lineage, lineage.mlflow_run_url),
            "promoted_at": promoted.promoted_at if promoted is not None else "not recorded",
            "champion_history_entry": dg.MetadataValue.json(asdict(promoted) if promoted is not None else {}),
        },
    )
