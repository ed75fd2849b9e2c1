"""Accuracy drop measurement: false alarms of the ``accuracy_drop`` check on healthy days, and what it sees
on a day of novel fraud, judged against a point baseline ("before") and against a baseline with its own
uncertainty ("after").

Each world is the one tests/unit/test_accuracy_drop.py builds, with its own generator seed: 20 days of
synthetic transactions at the default 2% fraud rate (2,000 a day) train a small XGBoost model; its test
split gives the baseline as model evaluation registers it (``classification_metrics``, whose confusion
counts come with it, and ``pr_auc_standard_error``). Each of the 50 following days is one healthy window
(about 40 fraud cases), every answer labelled; then one day whose fraud is all in the novel pattern.

"before" is the same live figures judged with the baseline's lower bounds removed (a version evaluated
before the counts were logged); "after" allows for them. Figures are printed, never asserted.

    python bench/accuracy_drop.py                    # 5 worlds (seeds 11..15), ~2 min on 2 cores
    python bench/accuracy_drop.py --seeds 11 12 13 14 15 16 17 18 19 20   # ~4 min
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ml_platform.data.synthetic import SyntheticConfig, generate_day, generate_transactions  # noqa: E402
from ml_platform.evaluation.metrics import PR_AUC_SE, classification_metrics, pr_auc_standard_error  # noqa: E402
from ml_platform.features.engineering import model_features, stats_before  # noqa: E402
from ml_platform.monitoring.alerts import DEFAULT_RULES  # noqa: E402
from ml_platform.monitoring.performance import judge_accuracy_drop, live_performance  # noqa: E402
from ml_platform.training.dataset import assemble_training_set, split_xy  # noqa: E402
from ml_platform.training.train import TrainingParams, fit, predict_probability  # noqa: E402

HISTORY_START = date(2025, 1, 1)
HISTORY_DAYS = 20
HEALTHY_WINDOWS = 50
FIRST_WINDOW = HISTORY_START + timedelta(days=HISTORY_DAYS)
NOVEL_DAY = FIRST_WINDOW + timedelta(days=HEALTHY_WINDOWS)
PARAMS = TrainingParams(n_estimators=60, max_depth=4, device="cpu", n_jobs=2)
THRESHOLD = DEFAULT_RULES["accuracy_drop"].threshold
VERSION = 1


def judged(day: pd.DataFrame, probability: np.ndarray, threshold: float, baseline: dict):
    """The live figures of one fully labelled day, and the verdicts before and after."""
    answers = pd.DataFrame(
        {
            "request_id": day["transaction_id"].to_numpy(),
            "is_fraud": probability >= threshold,
            "probability": probability,
            "model_version": VERSION,
        }
    )
    labels = pd.DataFrame({"request_id": day["transaction_id"].to_numpy(), "label": day["is_fraud"].to_numpy() == 1})
    performance = live_performance(answers, labels, baseline, model_version=VERSION)
    point = replace(performance, baseline_lower_bounds={})
    return performance, judge_accuracy_drop(point, THRESHOLD), judge_accuracy_drop(performance, THRESHOLD)


def world(seed: int) -> dict:
    config = SyntheticConfig(seed=seed)
    transactions = generate_transactions(config, HISTORY_START, NOVEL_DAY)
    stats = stats_before(transactions)
    history = (transactions["event_timestamp"].dt.date < FIRST_WINDOW).to_numpy()
    training_set = assemble_training_set(
        transactions[history].reset_index(drop=True), stats[history].reset_index(drop=True)
    )
    model = fit(*split_xy(training_set, "train"), *split_xy(training_set, "validation"), PARAMS)
    x_test, y_test = split_xy(training_set, "test")
    test_probability = predict_probability(model.booster, x_test)
    baseline = classification_metrics(y_test, test_probability, model.threshold)
    baseline[PR_AUC_SE] = pr_auc_standard_error(y_test, test_probability)
    probability = predict_probability(model.booster, model_features(transactions, stats))

    dates = transactions["event_timestamp"].dt.date
    before, after, unjudged = [], [], 0
    for offset in range(HEALTHY_WINDOWS):
        on_day = (dates == FIRST_WINDOW + timedelta(days=offset)).to_numpy()
        _, point, allowed = judged(transactions[on_day], probability[on_day], model.threshold, baseline)
        unjudged += not allowed.judged
        if point.fires:
            before.append(f"{offset}:{','.join(point.dropped)}")
        if allowed.fires:
            after.append(f"{offset}:{','.join(allowed.dropped)}")

    day = generate_day(replace(config, novel_fraud=1.0), NOVEL_DAY)
    features = model_features(day, stats_before(day, history=pd.concat([transactions, day], ignore_index=True)))
    novel, novel_before, novel_after = judged(
        day, predict_probability(model.booster, features), model.threshold, baseline
    )
    return {
        "seed": seed,
        "test_positives": baseline["true_positives"] + baseline["false_negatives"],
        "baseline": baseline,
        "lower": novel.baseline_lower_bounds,
        "before": before,
        "after": after,
        "unjudged": unjudged,
        "novel": novel,
        "novel_before": novel_before,
        "novel_after": novel_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    args = parser.parse_args()
    totals = {"before": 0, "after": 0, "days": 0}
    for seed in args.seeds:
        started = time.perf_counter()
        result = world(seed)
        base, lower, novel = result["baseline"], result["lower"], result["novel"]
        point = replace(novel, baseline_lower_bounds={})
        totals["before"] += len(result["before"])
        totals["after"] += len(result["after"])
        totals["days"] += HEALTHY_WINDOWS
        print(
            f"seed {seed}: {result['test_positives']} test positives; baseline (lower bound) "
            + ", ".join(
                f"{name} {base[name]:.3f} ({lower.get(name, float('nan')):.3f})"
                for name in ("recall", "precision", "pr_auc")
            )
            + f", pr_auc_se {base[PR_AUC_SE]:.3f}"
        )
        print(
            f"  healthy days: false alarms before {len(result['before'])} {result['before']}, "
            f"after {len(result['after'])} {result['after']}; unjudged {result['unjudged']}"
        )
        print(
            f"  novel day: {novel.labelled_positives} positives, recall {novel.metrics['recall']:.3f}, "
            f"PR AUC {novel.metrics['pr_auc']:.3f}; confident drop (before, after) "
            + ", ".join(
                f"{name} {point.bound_drop(name):.3f}, {novel.bound_drop(name):.3f}" for name in ("recall", "pr_auc")
            )
            + f"; fires before {result['novel_before'].dropped}, after {result['novel_after'].dropped}"
            f" ({time.perf_counter() - started:.0f} s)"
        )
    print(
        f"false alarms over {len(args.seeds)} worlds x {HEALTHY_WINDOWS} healthy days: "
        f"before {totals['before']} of {totals['days']} ({totals['before'] / totals['days']:.1%}), "
        f"after {totals['after']} of {totals['days']} ({totals['after'] / totals['days']:.1%})"
    )


if __name__ == "__main__":
    main()
