"""The promotion gate: a challenger becomes champion only if it clears the quality floor and does not
regress against the current champion on the same rows."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GateConfig:
    # A model that flags many legit transactions fails the accuracy floor; accuracy alone is weak on rare
    # fraud (always answering "legit" scores about 0.98 at a 2% fraud rate), hence the PR AUC floor too.
    min_accuracy: float = 0.85
    min_pr_auc: float = 0.30
    regression_metric: str = "pr_auc"
    max_regression: float = 0.01  # how much worse than the champion a challenger may be


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    description: str
    metadata: dict[str, float | str]


def quality_floor(challenger: dict[str, float], config: GateConfig) -> GateResult:
    problems = []
    accuracy, pr_auc = challenger["accuracy"], challenger["pr_auc"]
    if not accuracy >= config.min_accuracy:
        problems.append(f"accuracy {accuracy:.4f} is below the floor {config.min_accuracy:.4f}")
    if not pr_auc >= config.min_pr_auc:  # NaN (no positives in the test split) fails too
        problems.append(f"PR AUC {pr_auc:.4f} is below the floor {config.min_pr_auc:.4f}")
    return GateResult(
        name="quality_floor",
        passed=not problems,
        description="; ".join(problems)
        or f"accuracy {accuracy:.4f} >= {config.min_accuracy}, PR AUC {pr_auc:.4f} >= {config.min_pr_auc}",
        metadata={
            "accuracy": accuracy,
            "min_accuracy": config.min_accuracy,
            "pr_auc": pr_auc,
            "min_pr_auc": config.min_pr_auc,
        },
    )


def no_regression(challenger: dict[str, float], champion: dict[str, float] | None, config: GateConfig) -> GateResult:
    metric = config.regression_metric
    if champion is None:
        return GateResult(
            name="no_regression",
            passed=True,
            description="no champion yet: the first model that clears the floor becomes champion",
            metadata={"metric": metric, "challenger": challenger[metric]},
        )
    delta = challenger[metric] - champion[metric]
    passed = not math.isnan(delta) and delta >= -config.max_regression
    verdict = "within" if passed else "beyond"
    return GateResult(
        name="no_regression",
        passed=passed,
        description=(
            f"{metric}: challenger {challenger[metric]:.4f} vs champion {champion[metric]:.4f} "
            f"(change {delta:+.4f}, {verdict} the tolerance -{config.max_regression})"
        ),
        metadata={
            "metric": metric,
            "challenger": challenger[metric],
            "champion": champion[metric],
            "change": delta,
            "tolerance": config.max_regression,
        },
    )
