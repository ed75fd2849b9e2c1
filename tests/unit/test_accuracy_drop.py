"""The accuracy drop check on a model trained the way the platform trains one: it fires on a day of
fraud in a pattern the model has never seen, stays quiet on 50 healthy days, and does not judge a
window with too few labelled positives.

The world: 20 days of seeded synthetic transactions at the default 2% fraud rate (5,000 customers,
2,000 transactions a day) train a small XGBoost model; its test split gives the baseline as model
evaluation registers it: the metrics with the confusion counts and PR AUC's bootstrap standard error, so
the check allows for the baseline's own uncertainty. Each window is one later day of traffic (about 40
fraud cases), scored with features from the customers' history before each transaction, every answer
labelled.
"""

from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.data.synthetic import SyntheticConfig, generate_day, generate_transactions
from ml_platform.evaluation.metrics import PR_AUC_SE, classification_metrics, pr_auc_standard_error
from ml_platform.features.engineering import model_features, stats_before
from ml_platform.monitoring.alerts import DEFAULT_RULES
from ml_platform.monitoring.performance import (
    DEFAULT_MIN_LABELLED_POSITIVES,
    JUDGED_METRICS,
    AccuracyDropVerdict,
    LivePerformance,
    judge_accuracy_drop,
    live_performance,
)
from ml_platform.training.dataset import assemble_training_set, split_xy
from ml_platform.training.train import TrainingParams, fit, predict_probability

CONFIG = SyntheticConfig(seed=11)  # the generator's defaults: 2% fraud, 2,000 transactions a day
HISTORY_START = date(2025, 1, 1)
HISTORY_DAYS = 20
HEALTHY_WINDOWS = 50
FIRST_WINDOW = HISTORY_START + timedelta(days=HISTORY_DAYS)
NOVEL_DAY = FIRST_WINDOW + timedelta(days=HEALTHY_WINDOWS)  # after every healthy window
PARAMS = TrainingParams(n_estimators=60, max_depth=4, device="cpu", n_jobs=2)
THRESHOLD = DEFAULT_RULES["accuracy_drop"].threshold
VERSION = 1


@dataclass(frozen=True)
class World:
    transactions: pd.DataFrame  # the history and the healthy days
    probability: np.ndarray  # the model's score of each of them
    threshold: float  # the model's decision threshold
    booster: object
    baseline: dict[str, float]  # the test split's metrics


@pytest.fixture(scope="module")
def world() -> World:
    transactions = generate_transactions(CONFIG, HISTORY_START, NOVEL_DAY)
    stats = stats_before(transactions)
    history = (transactions["event_timestamp"].dt.date < FIRST_WINDOW).to_numpy()
    training_set = assemble_training_set(
        transactions[history].reset_index(drop=True), stats[history].reset_index(drop=True)
    )
    model = fit(*split_xy(training_set, "train"), *split_xy(training_set, "validation"), PARAMS)
    x_test, y_test = split_xy(training_set, "test")
    test_probability = predict_probability(model.booster, x_test)
    baseline = classification_metrics(y_test, test_probability, model.threshold)  # with the confusion counts
    baseline[PR_AUC_SE] = pr_auc_standard_error(y_test, test_probability)
    probability = predict_probability(model.booster, model_features(transactions, stats))
    return World(transactions, probability, model.threshold, model.booster, baseline)


def judge(
    world: World, day: pd.DataFrame, probability: np.ndarray, *, labelled: np.ndarray | None = None, **options
) -> tuple[LivePerformance, AccuracyDropVerdict]:
    """The check on one day: the prediction log's answers and the label store's rows (all, or ``labelled``)."""
    answers = pd.DataFrame(
        {
            "request_id": day["transaction_id"].to_numpy(),
            "is_fraud": probability >= world.threshold,
            "probability": probability,
            "model_version": VERSION,
        }
    )
    labels = pd.DataFrame({"request_id": day["transaction_id"].to_numpy(), "label": day["is_fraud"].to_numpy() == 1})
    if labelled is not None:
        labels = labels[labelled]
    performance = live_performance(answers, labels, world.baseline, model_version=VERSION)
    return performance, judge_accuracy_drop(performance, THRESHOLD, window="1d", **options)


def novel_day(world: World, novel_fraud: float) -> tuple[pd.DataFrame, np.ndarray]:
    """The day after the healthy windows with ``novel_fraud`` of its fraud in the new pattern, scored."""
    day = generate_day(replace(CONFIG, novel_fraud=novel_fraud), NOVEL_DAY)
    history = pd.concat([world.transactions, day], ignore_index=True)
    features = model_features(day, stats_before(day, history=history))
    return day, predict_probability(world.booster, features)


def test_the_model_is_good_at_the_fraud_it_was_trained_on(world):
    assert world.baseline["recall"] > 0.55 and world.baseline["precision"] > 0.7 and world.baseline["pr_auc"] > 0.7
    assert world.baseline["positive_rate"] == pytest.approx(0.02, abs=0.005)


def test_a_day_of_novel_fraud_fails_the_check(world):
    day, probability = novel_day(world, novel_fraud=1.0)
    performance, verdict = judge(world, day, probability)
    assert len(day) == pytest.approx(2_000, rel=0.05)
    assert performance.labelled_positives >= DEFAULT_MIN_LABELLED_POSITIVES
    assert performance.metrics["recall"] < 0.15 and performance.metrics["pr_auc"] < 0.15
    assert abs(performance.drop("accuracy")) < 0.02  # what plain accuracy saw: nothing
    print(
        f"\nnovel day: {performance.labelled_positives} positives, recall {performance.metrics['recall']:.3f}, "
        f"PR AUC {performance.metrics['pr_auc']:.3f}; confident drops "
        + ", ".join(f"{name} {performance.bound_drop(name):.3f}" for name in JUDGED_METRICS)
    )
    assert verdict.fires and verdict.judged
    assert {"recall", "pr_auc"} <= set(verdict.dropped)
    # judged against the baseline's lower bounds, from the counts and the standard error evaluation logged
    assert set(verdict.baseline_bounds) == set(JUDGED_METRICS)
    for name in JUDGED_METRICS:
        assert world.baseline[name] - 0.15 < verdict.baseline_bounds[name] < world.baseline[name], name
        assert performance.bound_drop(name) == pytest.approx(
            verdict.baseline_bounds[name] - performance.upper_bounds[name]
        )
    assert performance.bound_drop("recall") > 0.4 and performance.bound_drop("pr_auc") > 0.6
    assert "test's lower bound" in verdict.description and "baseline counts unknown" not in verdict.description
    # a version evaluated before the counts were logged is judged against the point values, and says so
    point = judge_accuracy_drop(replace(performance, baseline_lower_bounds={}), THRESHOLD, window="1d")
    assert point.dropped == verdict.dropped and point.baseline_bounds == {}
    assert point.description.endswith("; baseline counts unknown: judged against the point value")
    assert verdict.value == pytest.approx(max(performance.drop(name) for name in verdict.dropped))
    assert verdict.value > 0.5
    assert verdict.description.startswith("recall")
    assert f"({performance.labelled_positives} positives) of v{VERSION} over 1d" in verdict.description
    # the same day with its fraud as usual: the model catches it and the check stays quiet
    usual_day, usual_probability = novel_day(world, novel_fraud=0.0)
    assert not usual_day.equals(day)
    usual, quiet = judge(world, usual_day, usual_probability)
    assert usual.labelled_positives == performance.labelled_positives  # the same fraud, looking as it used to
    assert not quiet.fires and quiet.judged


def test_fifty_healthy_days_raise_no_alarm(world):
    dates = world.transactions["event_timestamp"].dt.date
    alarms, point_alarms, drops, positives = 0, 0, [], []
    for offset in range(HEALTHY_WINDOWS):
        on_day = (dates == FIRST_WINDOW + timedelta(days=offset)).to_numpy()
        performance, verdict = judge(world, world.transactions[on_day], world.probability[on_day])
        assert verdict.judged, verdict.description  # every day has enough positives: none passes unjudged
        assert set(verdict.baseline_bounds) == set(JUDGED_METRICS)
        point = replace(performance, baseline_lower_bounds={})  # the baseline as an exact figure
        for name in JUDGED_METRICS:  # allowing for the baseline's uncertainty always asks for a larger drop
            assert performance.bound_drop(name) < point.bound_drop(name) - 0.05, name
        alarms += verdict.fires
        point_alarms += judge_accuracy_drop(point, THRESHOLD).fires
        drops.append([performance.drop(name) for name in JUDGED_METRICS])
        positives.append(performance.labelled_positives)
    drops = np.array(drops)
    print(
        f"\nfalse alarms: {alarms} of {HEALTHY_WINDOWS} healthy days ({point_alarms} against the point "
        f"baseline); labelled positives "
        f"{min(positives)}..{max(positives)}; point drops (median, median |drop|, max) "
        + ", ".join(
            f"{name} {np.median(drops[:, i]):.3f}, {np.median(np.abs(drops[:, i])):.3f}, {drops[:, i].max():.3f}"
            for i, name in enumerate(JUDGED_METRICS)
        )
    )
    assert alarms == 0
    assert np.abs(np.median(drops, axis=0)).max() < THRESHOLD  # a typical healthy day is within it
    assert drops.max() > THRESHOLD  # ... yet single days do: the guard, not luck, kept the check quiet


def test_too_few_labelled_positives_pass_with_not_enough_labels(world):
    day, probability = novel_day(world, novel_fraud=1.0)
    fraud = np.flatnonzero(day["is_fraud"].to_numpy() == 1)
    labelled = day["is_fraud"].to_numpy() == 0  # every legit answer labelled, but only 10 fraud cases so far
    labelled[fraud[:10]] = True
    performance, verdict = judge(world, day, probability, labelled=labelled)
    assert performance.labelled_positives == 10 and performance.metrics["recall"] < 0.15
    assert not verdict.fires and not verdict.judged and verdict.value is None
    assert "not enough labels: 10 labelled positives among" in verdict.description
    assert f"{DEFAULT_MIN_LABELLED_POSITIVES} needed" in verdict.description
    _, judged_anyway = judge(world, day, probability, labelled=labelled, min_labelled_positives=10)
    assert judged_anyway.fires  # the labels, not the model, were what kept it quiet
