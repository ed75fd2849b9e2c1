"""The promotion gate: a challenger becomes champion only if it clears the quality floor and beats the
current champion on the same rows by a stated margin; a tie (a retrain that made the same model) keeps the
champion."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GateConfig:
    # A model that flags many legit transactions fails the accuracy floor; accuracy alone is weak on rare
    # fraud (always answering "legit" scores about 0.98 at a 2% fraud rate), hence the PR AUC floor too.
    min_accuracy: float = 0.85
    min_pr_auc: float = 0.30
    comparison_metric: str = "pr_auc"
    # How much better than the champion a challenger must score to replace it: a challenger that only ties
    # (the same model again) or improves by noise keeps the champion, and so its rollback history.
    min_improvement: float = 0.005


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


def beats_champion(challenger: dict[str, float], champion: dict[str, float] | None, config: GateConfig) -> GateResult:
    """Passes when there is no champion yet, or when the challenger scores at least ``min_improvement``
    above it on ``comparison_metric``. A tie, a smaller gain, a loss or NaN fails: the champion stays."""
    metric = config.comparison_metric
    if champion is None:
        return GateResult(
            name="beats_champion",
            passed=True,
            description="no champion yet: the first model that clears the floor becomes champion",
            metadata={"metric": metric, "challenger": challenger[metric]},
        )
    change = challenger[metric] - champion[metric]
    # A change equal to the margin up to float rounding (0.605 - 0.600) counts as reaching it.
    passed = not math.isnan(change) and (
        change >= config.min_improvement or math.isclose(change, config.min_improvement, rel_tol=0, abs_tol=1e-12)
    )
    verdict = (
        "at least the margin: the challenger replaces the champion"
        if passed
        else "below the margin: the champion stays"
    )
    return GateResult(
        name="beats_champion",
        passed=passed,
        description=(
            f"{metric}: challenger {challenger[metric]:.4f} vs champion {champion[metric]:.4f}, "
            f"change {change:+.4f}, margin {config.min_improvement:+.4f}, {verdict}"
        ),
        metadata={
            "metric": metric,
            "challenger": challenger[metric],
            "champion": champion[metric],
            "change": change,
            "min_improvement": config.min_improvement,
        },
    )
