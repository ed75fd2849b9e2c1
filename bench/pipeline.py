"""End-to-end pipeline benchmark: empty state directory -> champion model, on 1,000,000 transactions.

Two contestants, each in a fresh Python process (so imports count), each from an empty state directory:
- platform: the whole asset graph as `make demo` runs it (a Dagster run over the daily partitions, then one
  from training to promotion; training through Pipes, MLflow registry, Feast point-in-time join);
- bare core: the same core functions called one after another in a plain script, no orchestration
  (the floor: what the work costs without Dagster, Pipes and the IO manager).

The platform's process ends as the ``ml-platform`` commands end theirs, without the interpreter's teardown
(``ml_platform.shutdown``); the plain script ends as any Python script does.

Printed for each: wall time, the time spent in the compute itself (data generation, validation,
feature computation, the point-in-time join, training, evaluation), and the share outside it
(orchestration, imports, storage I/O, tracking), and the platform overhead over the bare core: (platform wall -
bare wall) / platform wall, what the orchestration costs beyond the same work done plainly. Targets for the
platform: under 90 s, both overheads under 25%.

    python bench/pipeline.py                      # 1,000,000 transactions over 30 days
    python bench/pipeline.py --transactions 200000 --days 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_DAY = date(2026, 1, 1)
CUSTOMERS = 20_000


def platform_child(days: int, per_day: int) -> dict:
    """The asset graph, as `make demo` runs it; compute figures come from each asset's metadata."""
    from ml_platform.settings import Settings
    from runs.launch import launch_graph, quiet_warnings

    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    quiet_warnings()
    params = {"raw_transactions": {"transactions_per_day": per_day, "n_customers": CUSTOMERS}}
    result = launch_graph(params, start=FIRST_DAY, end=FIRST_DAY + timedelta(days=days - 1))
    if not result.success:
        raise SystemExit("platform run failed")
    compute: dict[str, float] = {}
    rows = 0
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
        if name == "trained_model":
            compute[name] = float(metadata["train_seconds"])
        elif "compute_seconds" in metadata:
            compute[name] = float(metadata["compute_seconds"])  # a range run repeats it per day: same value
        if name == "training_set":
            rows = int(metadata["dagster/row_count"])
    champion = result.output_for_node("champion_model")
    return {"compute": compute, "rows": rows, "champion": champion["champion_version"]}


def bare_child(days: int, per_day: int) -> dict:
    """The same work with no orchestration: core functions in sequence, data passed in memory."""
    from datetime import datetime

    from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
    from ml_platform.data.validation import validate_transactions
    from ml_platform.evaluation.metrics import classification_metrics, pr_auc_standard_error
    from ml_platform.features.engineering import compute_customer_stats
    from ml_platform.features.store import (
        FeatureRepo,
        feature_definitions,
        load_online_store,
        open_store,
        point_in_time_stats,
        write_offline_table,
    )
    from ml_platform.registry import Registry
    from ml_platform.settings import Settings
    from ml_platform.training.dataset import assemble_training_set, split_xy
    from ml_platform.training.train import TrainingParams, fit, model_signature, predict_probability
    from runs import progress

    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    compute: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        compute[name] = compute.get(name, 0.0) + time.perf_counter() - started
        progress.current().line(f"bare core: {name} in {time.perf_counter() - started:.1f} s")  # to stderr
        return value

    config = SyntheticConfig(n_customers=CUSTOMERS, transactions_per_day=per_day)
    transactions = timed("raw_transactions", generate_transactions, config, FIRST_DAY, FIRST_DAY + timedelta(days))
    outcomes = timed("validated_transactions", validate_transactions, transactions)
    assert all(o.passed for o in outcomes)
    stats = timed("customer_stats", compute_customer_stats, transactions)
    repo = FeatureRepo.from_settings(settings)
    write_offline_table(repo, stats)
    store = open_store(repo)
    timed("feature_store", store.apply, feature_definitions(repo))
    timed(
        "online_features",
        load_online_store,
        store,
        stats["event_timestamp"].min().to_pydatetime(),
        stats["event_timestamp"].max().to_pydatetime() + timedelta(seconds=1),
    )
    joined = timed("training_set", point_in_time_stats, store, transactions)
    training_set = timed("training_set", assemble_training_set, transactions, joined)
    x_train, y_train = split_xy(training_set, "train")
    x_valid, y_valid = split_xy(training_set, "validation")
    trained = fit(x_train, y_train, x_valid, y_valid, TrainingParams())
    compute["trained_model"] = trained.train_seconds
    registry = Registry.from_settings(settings)
    registered = registry.log_and_register(
        trained,
        params={},
        run_key="bench",
        signature=model_signature(trained.booster, x_valid.head(5)),
        example=x_valid.head(5),
        run_tags={},
        figures={},
    )
    x_test, y_test = split_xy(training_set, "test")

    def evaluate():  # what model_evaluation computes: the test metrics and PR AUC's bootstrap standard error
        probability = predict_probability(trained.booster, x_test)
        metrics = classification_metrics(y_test, probability, trained.threshold)
        return metrics, pr_auc_standard_error(y_test, probability)

    timed("model_evaluation", evaluate)
    registry.promote(registered.version, promoted_at=datetime.now(UTC).isoformat())
    return {"compute": compute, "rows": len(training_set), "champion": registered.version}


def run_contestant(mode: str, days: int, per_day: int) -> dict:
    from runs.progress import child_environment, current

    home = Path(tempfile.mkdtemp(prefix=f"ml_platform_bench_{mode}_"))
    env = {**os.environ, "ML_PLATFORM_HOME": str(home), "PYTHONWARNINGS": "ignore", **child_environment()}
    current().line(f"{mode}: a fresh process on an empty state directory ({home})")
    started = time.perf_counter()
    # The child's stderr is this process's: its progress (a line per step, counting from the benchmark's start)
    # shows as it happens; its stdout is the figures.
    completed = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--days", str(days), "--per-day", str(per_day)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:])
        raise SystemExit(f"{mode} run failed (exit {completed.returncode}); its state is kept in {home}")
    current().line(f"{mode}: done in {wall:.1f} s")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    figures["wall"] = wall
    shutil.rmtree(home, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--child", choices=["platform", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--per-day", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(REPO))
        child = platform_child if args.child == "platform" else bare_child
        print(json.dumps(child(args.days, args.per_day)))
        if args.child == "platform":  # it ends as the `ml-platform` commands do; the plain script as Python does
            from ml_platform.shutdown import exit_without_teardown

            exit_without_teardown()
        return

    per_day = max(1, round(args.transactions / args.days))
    print(
        f"pipeline benchmark: ~{per_day * args.days:,} transactions over {args.days} days, "
        f"{CUSTOMERS:,} customers, 2 contestants from empty state directories\n"
    )
    results = {mode: run_contestant(mode, args.days, per_day) for mode in ("platform", "bare")}

    stages = list(results["platform"]["compute"])
    print(f"{'compute per stage (s)':<26}{'platform':>10}{'bare core':>11}")
    for stage in stages:
        print(
            f"  {stage:<24}{results['platform']['compute'].get(stage, 0):>10.2f}"
            f"{results['bare']['compute'].get(stage, 0):>11.2f}"
        )
    print()
    print(f"{'':<26}{'platform':>10}{'bare core':>11}")
    for mode in results:
        results[mode]["compute_total"] = sum(results[mode]["compute"].values())
        results[mode]["overhead"] = 1 - results[mode]["compute_total"] / results[mode]["wall"]
    print(f"  {'rows in training set':<24}{results['platform']['rows']:>10,}{results['bare']['rows']:>11,}")
    print(f"  {'wall time (s)':<24}{results['platform']['wall']:>10.1f}{results['bare']['wall']:>11.1f}")
    print(
        f"  {'compute (s)':<24}{results['platform']['compute_total']:>10.1f}{results['bare']['compute_total']:>11.1f}"
    )
    print(f"  {'outside compute':<24}{results['platform']['overhead']:>10.1%}{results['bare']['overhead']:>11.1%}")
    print(f"  {'champion version':<24}{results['platform']['champion']:>10}{results['bare']['champion']:>11}")
    platform, bare = results["platform"], results["bare"]
    # The platform's own cost: its wall beyond the bare core's for the same work (imports, storage, tracking
    # and compute that both pay cancel out), as a share of the platform's wall.
    over_bare = (platform["wall"] - bare["wall"]) / platform["wall"]
    print(f"  {'platform over bare core':<24}{over_bare:>10.1%}")

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    print(
        f"\ntargets (platform): wall < 90 s -> {platform['wall']:.1f} s ({verdict(platform['wall'] < 90)}); "
        f"outside compute < 25% -> {platform['overhead']:.1%} ({verdict(platform['overhead'] < 0.25)}); "
        f"overhead over the bare core < 25% -> {over_bare:.1%} ({verdict(over_bare < 0.25)})"
    )
    print(
        f"platform cost over the bare core: +{platform['wall'] - bare['wall']:.1f} s "
        f"((platform wall - bare wall) / platform wall = {over_bare:.1%})"
    )


if __name__ == "__main__":
    main()
