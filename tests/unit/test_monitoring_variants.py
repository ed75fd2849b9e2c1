"""Every variant judged side by side: counts and metrics per variant on a hand-made log with known counts,
the difference with the champion and its bootstrap interval, and the dashboard's variant table."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from ml_platform.monitoring.dashboard import ModelHealth, render_markdown, render_terminal
from ml_platform.monitoring.performance import variant_performance

# Requests r0..r11; labels arrived for r0..r9, of which r0..r3 are fraud.
REQUESTS = [f"r{i}" for i in range(12)]
TRUTH = {f"r{i}": int(i < 4) for i in range(10)}
CHAMPION_FLAGS = {"r0", "r1", "r2", "r4"}  # 3 true positives, 1 false positive: precision 3/4, recall 3/4
SHADOW_FLAGS = {"r0", "r1", "r4", "r5", "r6"}  # 2 true positives, 3 false positives: precision 2/5, recall 2/4
# An A/B split's challenger answers other requests: c0..c5, labels for c0..c4, c0 and c1 fraud.
SPLIT_REQUESTS = [f"c{i}" for i in range(6)]
SPLIT_TRUTH = {f"c{i}": int(i < 2) for i in range(5)}
SPLIT_FLAGS = {"c0", "c3"}  # 1 true positive, 1 false positive: precision 1/2, recall 1/2


def answers(requests, flags, variant: str, version: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    flagged = np.array([r in flags for r in requests])
    probability = np.where(flagged, 0.5 + 0.5 * rng.random(len(requests)), 0.5 * rng.random(len(requests)))
    return pd.DataFrame(
        {
            "request_id": requests,
            "is_fraud": flagged,
            "probability": probability,
            "model_version": version,
            "variant": variant,
        }
    )


def hand_made_log() -> tuple[pd.DataFrame, pd.DataFrame]:
    log = pd.concat(
        [
            answers(["old0"], {"old0"}, "champion", 1, seed=0),  # the previous champion's answer: not counted
            answers(REQUESTS, CHAMPION_FLAGS, "champion", 2, seed=1),
            answers(REQUESTS, SHADOW_FLAGS, "challenger_shadow", 3, seed=2),
            answers(SPLIT_REQUESTS, SPLIT_FLAGS, "challenger", 3, seed=3),
        ],
        ignore_index=True,
    )
    truth = {**TRUTH, **SPLIT_TRUTH, "old0": 0}
    labels = pd.DataFrame({"request_id": list(truth), "label": list(truth.values())})
    return log, labels


def expected_pr_auc(log: pd.DataFrame, variant: str, truth: dict[str, int]) -> float:
    rows = log.loc[(log["variant"] == variant) & log["request_id"].isin(list(truth)) & (log["model_version"] > 1)]
    return float(average_precision_score([truth[r] for r in rows["request_id"]], rows["probability"]))


def test_each_variant_has_its_counts_and_metrics():
    log, labels = hand_made_log()
    comparison = variant_performance(log, labels, champion_version=2)
    assert comparison.names == ["champion", "challenger", "challenger_shadow"]
    champion, challenger, shadow = comparison.variants
    assert (champion.versions, champion.rows, champion.labeled_rows, champion.positives) == ((2,), 12, 10, 4)
    assert (shadow.versions, shadow.rows, shadow.labeled_rows, shadow.positives) == ((3,), 12, 10, 4)
    assert (challenger.versions, challenger.rows, challenger.labeled_rows, challenger.positives) == ((3,), 6, 5, 2)
    assert champion.metrics["precision"] == 0.75 and champion.metrics["recall"] == 0.75
    assert shadow.metrics["precision"] == 0.4 and shadow.metrics["recall"] == 0.5
    assert challenger.metrics["precision"] == 0.5 and challenger.metrics["recall"] == 0.5
    assert champion.confusion == {"true_positives": 3, "false_positives": 1, "false_negatives": 1, "true_negatives": 5}
    assert shadow.confusion == {"true_positives": 2, "false_positives": 3, "false_negatives": 2, "true_negatives": 3}
    assert champion.metrics["pr_auc"] == pytest.approx(expected_pr_auc(log, "champion", TRUTH))
    assert shadow.metrics["pr_auc"] == pytest.approx(expected_pr_auc(log, "challenger_shadow", TRUTH))
    assert challenger.metrics["pr_auc"] == pytest.approx(expected_pr_auc(log, "challenger", SPLIT_TRUTH))
    # Without the version filter, the previous champion's labelled answer counts too.
    pooled = variant_performance(log, labels).get("champion")
    assert (pooled.versions, pooled.rows, pooled.labeled_rows) == ((1, 2), 13, 11)


def test_differences_with_the_champion_come_with_a_seeded_interval_around_them():
    log, labels = hand_made_log()
    comparison = variant_performance(log, labels, champion_version=2)
    champion, challenger, shadow = comparison.variants
    assert champion.differences == {} and champion.intervals == {}
    assert shadow.differences["precision"] == pytest.approx(0.4 - 0.75)
    assert shadow.differences["recall"] == pytest.approx(0.5 - 0.75)
    assert challenger.differences["recall"] == pytest.approx(0.5 - 0.75)
    assert shadow.paired is True and challenger.paired is False  # same requests vs other requests
    for item in (shadow, challenger):
        for name, difference in item.differences.items():
            low, high = item.intervals[name]
            assert -1.0 <= low <= difference <= high <= 1.0, (item.variant, name)
    assert variant_performance(log, labels, champion_version=2) == comparison  # seeded: the same window, the same
    other_seed = variant_performance(log, labels, champion_version=2, seed=1).get("challenger")
    assert other_seed.intervals != challenger.intervals


def test_a_shadow_identical_to_the_champion_differs_by_exactly_nothing():
    log, labels = hand_made_log()
    champion_rows = log.loc[(log["variant"] == "champion") & (log["model_version"] == 2)]
    twin = champion_rows.assign(variant="challenger_shadow", model_version=3)
    comparison = variant_performance(pd.concat([champion_rows, twin]), labels, champion_version=2)
    shadow = comparison.get("challenger_shadow")
    assert shadow.paired is True
    assert shadow.differences == {"precision": 0.0, "recall": 0.0, "pr_auc": 0.0}
    assert shadow.intervals == {"precision": (0.0, 0.0), "recall": (0.0, 0.0), "pr_auc": (0.0, 0.0)}


def test_the_split_interval_agrees_with_the_two_proportion_interval_on_many_rows():
    """Independent arms: the bootstrap interval of the recall difference is close to the normal two-sample
    (Wald) interval when each arm holds hundreds of positives."""
    rng = np.random.default_rng(4)
    n = 4_000
    frames, truth = [], {}
    for variant, recall, prefix in (("champion", 0.80, "a"), ("challenger", 0.70, "b")):
        ids = [f"{prefix}{i}" for i in range(n)]
        fraud = rng.random(n) < 0.25
        flagged = np.where(fraud, rng.random(n) < recall, rng.random(n) < 0.02)
        frames.append(
            pd.DataFrame(
                {"request_id": ids, "is_fraud": flagged, "probability": flagged * 0.5 + 0.4 * rng.random(n)}
            ).assign(model_version=1 if variant == "champion" else 2, variant=variant)
        )
        truth.update(zip(ids, fraud.astype(int), strict=True))
    labels = pd.DataFrame({"request_id": list(truth), "label": list(truth.values())})
    comparison = variant_performance(pd.concat(frames), labels, champion_version=1, resamples=400)
    champion, challenger = comparison.variants
    p1, n1 = champion.metrics["recall"], champion.positives
    p2, n2 = challenger.metrics["recall"], challenger.positives
    half = 1.959964 * np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    low, high = challenger.intervals["recall"]
    assert challenger.differences["recall"] == pytest.approx(p2 - p1)
    assert low == pytest.approx(p2 - p1 - half, abs=0.015)
    assert high == pytest.approx(p2 - p1 + half, abs=0.015)
    assert high < 0  # the challenger is worse, and the interval says so


def test_no_champion_rows_and_no_labels_give_unknown_differences():
    log, _ = hand_made_log()
    shadow_only = log.loc[log["variant"] == "challenger_shadow"]
    comparison = variant_performance(shadow_only, pd.DataFrame({"request_id": [], "label": []}))
    assert comparison.names == ["challenger_shadow", "champion"]
    shadow = comparison.get("challenger_shadow")
    assert (shadow.rows, shadow.labeled_rows, shadow.positives) == (12, 0, 0)
    assert all(np.isnan(value) for value in shadow.metrics.values())
    assert all(np.isnan(value) for value in shadow.differences.values())


def test_a_log_without_variants_is_a_named_error():
    log, labels = hand_made_log()
    with pytest.raises(ValueError, match="predictions: missing column"):
        variant_performance(log.drop(columns="variant"), labels)
    with pytest.raises(ValueError, match="confidence must be a number"):
        variant_performance(log, labels, confidence=1.5)


def test_the_dashboard_shows_the_variant_table_only_with_more_than_one_variant():
    log, labels = hand_made_log()
    comparison = variant_performance(log, labels, champion_version=2)
    health = ModelHealth(model_name="fraud", model_version=2, status="healthy", variants=comparison)
    markdown = render_markdown(health)
    assert "### Variants (95% interval of the difference with the champion)" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| challenger_shadow |"))
    assert "| v3 | 12 | 10 | 4 | 0.4000 | 0.5000 |" in row and "-0.350 [" in row
    terminal = render_terminal(health)
    assert "challenger_shadow" in terminal and "precision -0.350 [" in terminal
    alone = variant_performance(log.loc[log["variant"] == "champion"], labels, champion_version=2)
    assert len(alone) == 1
    quiet = ModelHealth(model_name="fraud", model_version=2, status="healthy", variants=alone)
    assert "Variants" not in render_markdown(quiet) and "variants" not in render_terminal(quiet)
