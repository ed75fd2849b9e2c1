"""Scale benchmark: one day's feature refresh with a short and with a long history already stored.

The feature refresh is incremental: ``customer_stats`` of a day continues from the state the day before
left, and ``online_features`` writes only the customers that day changed. So a day's refresh should cost
the same whether 30 or 120 days are stored before it. Two contestants, the same daily volume, each from
an empty state directory:
- short: ``--short`` days of history (default 30);
- long: ``--long`` days of history (default 120).

For each, in fresh Python processes on its own state directory:
1. history build ("backfill"): job ``ingest`` over the history days in one run, then job
   ``refresh_features`` over them in one run (the day-by-day fold of ``customer_stats``);
2. single-shot reference: ``compute_customer_stats`` over the whole stored history in one call (the core's
   brute force, what the offline table cost before it was incremental), the stored days read untimed;
   beside it the same days folded by the core in memory (``fold_customer_stats``, nothing written), which
   tells the fold's compute from the asset's reading and writing of each day;
3. a daily refresh of the next day (``--rounds``, default 3, taken in turns by the two contestants; the
   median round counts): job ``ingest`` (load + validate) and job ``refresh_features``
   (``customer_stats``, the Feast repo applied, the day's changed customers written online) for that one
   day, timed from a process that has already loaded the code location (its imports do not count; Feast's
   do, about a second in step ``feature_store``, the first to open the store, as in a daily run's process).

Printed: the refresh's wall time and each step's seconds (run step timings, and the assets'
``compute_seconds`` metadata) for both contestants and the ratio long/short (target: at most 1.2x); the
history build's cost per transaction, the whole build and ``customer_stats`` alone, beside the single-shot
path's (target: the long fold of ``customer_stats`` costs no more per row than the single shot, although
it also writes each day's rows and state); the machine (CPUs, load average before the runs).

    python bench/scale.py                         # 50,000 transactions a day, 30 and 120 days of history
    python bench/scale.py --quick                 # 5,000 a day, 6 and 24 days: a couple of minutes
    python bench/scale.py --per-day 20000 --short 10 --long 40
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_DAY = date(2026, 1, 1)
CUSTOMERS = 20_000
RATIO_TARGET = 1.2
# The steps of a daily refresh, in the order they run: job ingest, then job refresh_features.
INGEST_STEPS = ("raw_transactions", "validated_transactions")
FEATURE_STEPS = ("customer_stats", "feature_store", "online_features")


def _prepared_definitions():
    """Settings of this process's state directory applied, and the code location loaded."""
    from ml_platform.settings import Settings
    from runs.launch import load_definitions, quiet_warnings

    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    quiet_warnings()
    return settings, load_definitions()


def _run(job: str, days: tuple[date, date], per_day: int, defs) -> dict:
    """One run of ``job`` over the days [first, last]: its wall time, each step's seconds and the assets'
    compute seconds (a run over several days repeats the same figure on each day's materialization)."""
    from runs.launch import failure_report, launch

    params = {"raw_transactions": {"transactions_per_day": per_day, "n_customers": CUSTOMERS}}
    started = time.perf_counter()
    result = launch(job, params if job == "ingest" else None, start=days[0], end=days[1], defs=defs)
    wall = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"job {job} over {days[0]} .. {days[1]} failed:\n{failure_report(result)}")
    steps = {
        event.step_key: event.event_specific_data.duration_ms / 1000
        for event in result.all_events
        if event.event_type_value == "STEP_SUCCESS"
    }
    compute: dict[str, float] = {}
    rows = 0
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        metadata = {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
        if "compute_seconds" in metadata:
            compute[name] = float(metadata["compute_seconds"])
        if name == "validated_transactions":
            rows = int(metadata.get("dagster/row_count", metadata.get("rows_in_run", 0)))
    return {"wall": wall, "steps": steps, "compute": compute, "rows": rows}


def history_child(days: int, per_day: int) -> dict:
    """The history build: ingest over every history day in one run, then the features over them in one."""
    _, defs = _prepared_definitions()
    span = (FIRST_DAY, FIRST_DAY + timedelta(days=days - 1))
    ingest = _run("ingest", span, per_day, defs)
    features = _run("refresh_features", span, per_day, defs)
    return {"ingest": ingest, "features": features, "rows": ingest["rows"]}


def single_shot_child(days: int, per_day: int) -> dict:
    """``compute_customer_stats`` over the whole stored history in one call; reading it is not timed."""
    import pandas as pd

    from ml_platform.features.engineering import (
        compute_customer_stats,
        empty_customer_state,
        fold_customer_stats,
    )
    from ml_platform.settings import Settings
    from ml_platform.storage import table_path

    settings = Settings.from_env()
    history = pd.concat(
        [
            pd.read_parquet(table_path(settings.data_dir, "validated_transactions", day.isoformat()))
            for day in (FIRST_DAY + timedelta(days=offset) for offset in range(days))
        ],
        ignore_index=True,
    )
    started = time.perf_counter()
    stats = compute_customer_stats(history)
    seconds = time.perf_counter() - started
    # The same days folded one by one in memory, nothing written: what the asset's fold costs without its I/O.
    days_of_history = [pd.Timestamp(FIRST_DAY + timedelta(days=offset), tz="UTC") for offset in range(days)]
    started = time.perf_counter()
    fold_rows = sum(len(rows) for _, _, rows in fold_customer_stats(empty_customer_state(), days_of_history, history))
    fold_seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": len(history),
        "stats_rows": len(stats),
        "fold_seconds": fold_seconds,
        "fold_rows": fold_rows,
    }


def refresh_child(days: int, per_day: int) -> dict:
    """One daily refresh of the day after the history: ingest of that day, then its features."""
    _, defs = _prepared_definitions()
    day = FIRST_DAY + timedelta(days=days)
    ingest = _run("ingest", (day, day), per_day, defs)
    features = _run("refresh_features", (day, day), per_day, defs)
    return {"ingest": ingest, "features": features, "rows": ingest["rows"], "day": str(day)}


CHILDREN = {"history": history_child, "single_shot": single_shot_child, "refresh": refresh_child}


def _child(mode: str, home: Path, days: int, per_day: int) -> dict:
    from runs.progress import child_environment, current

    env = {**os.environ, "ML_PLATFORM_HOME": str(home), "PYTHONWARNINGS": "ignore", **child_environment()}
    current().line(f"{days} days: {mode.replace('_', ' ')} ...")
    started = time.perf_counter()
    # The child's stderr is this process's: its runs' progress (a line per step, counting from the benchmark's
    # start) shows as it happens; its stdout is the figures.
    completed = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--days", str(days), "--per-day", str(per_day)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:])
        raise SystemExit(f"{mode} with {days} days failed (exit {completed.returncode}); its state is kept in {home}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    figures["process_wall"] = time.perf_counter() - started
    current().line(f"{days} days: {mode.replace('_', ' ')} done in {figures['process_wall']:.1f} s")
    return figures


def run_contestants(lengths: dict[str, int], per_day: int, rounds: int, keep: bool) -> dict[str, dict]:
    """Each contestant's history and single shot, then ``rounds`` daily refreshes of the next day, taken in
    turns (short, long, short, long, ...), each in a fresh process as a scheduled run is: a burst of load
    from elsewhere on the machine falls on both contestants alike. The same day is refreshed each round (the
    same work: the day re-ingested, its stats recomputed from the same state); the round with the median
    wall time is each contestant's figure, and every round's wall time is kept."""
    homes = {name: Path(tempfile.mkdtemp(prefix=f"ml_platform_bench_scale_{days}d_")) for name, days in lengths.items()}
    results: dict[str, dict] = {}
    for name, days in lengths.items():
        print(f"  {days} days of history: state in {homes[name]}", flush=True)
        results[name] = {mode: _child(mode, homes[name], days, per_day) for mode in ("history", "single_shot")}
    refreshes: dict[str, list[dict]] = {name: [] for name in lengths}
    for _ in range(rounds):
        for name, days in lengths.items():
            refreshes[name].append(_child("refresh", homes[name], days, per_day))
    for name, done in refreshes.items():
        walls = [refresh["ingest"]["wall"] + refresh["features"]["wall"] for refresh in done]
        results[name]["refresh"] = done[sorted(range(len(done)), key=walls.__getitem__)[len(done) // 2]]
        results[name]["refresh_walls"] = walls
    if not keep:
        for home in homes.values():
            shutil.rmtree(home, ignore_errors=True)
    return results


def _refresh_phases(refresh: dict) -> list[tuple[str, float, float | None]]:
    """(step, step seconds, the asset's compute seconds) of a refresh, in the order the steps ran."""
    phases = []
    for job, steps in (("ingest", INGEST_STEPS), ("features", FEATURE_STEPS)):
        for step in steps:
            phases.append((step, refresh[job]["steps"].get(step, 0.0), refresh[job]["compute"].get(step)))
    return phases


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(args: argparse.Namespace, results: dict[str, dict], load_before: tuple[float, float, float]) -> None:
    short, long = results["short"], results["long"]
    names = (f"{args.short} days", f"{args.long} days")

    print(
        f"\ndaily refresh of the next day ({args.per_day:,} transactions): the median of {args.rounds} rounds, "
        "taken in turns"
    )
    print(f"  {'step (s): run step / asset compute':<38}{names[0]:>20}{names[1]:>20}")
    for (step, short_step, short_compute), (_, long_step, long_compute) in zip(
        _refresh_phases(short["refresh"]), _refresh_phases(long["refresh"]), strict=True
    ):
        shown = [
            f"{seconds:.2f} / {compute:.2f}" if compute is not None else f"{seconds:.2f} / -"
            for seconds, compute in ((short_step, short_compute), (long_step, long_compute))
        ]
        print(f"    {step:<36}{shown[0]:>20}{shown[1]:>20}")
    walls = {}
    for name, contestant in (("short", short), ("long", long)):
        refresh = contestant["refresh"]
        walls[name] = (refresh["ingest"]["wall"], refresh["features"]["wall"])
    print(f"    {'job ingest (wall)':<36}{walls['short'][0]:>20.2f}{walls['long'][0]:>20.2f}")
    print(f"    {'job refresh_features (wall)':<36}{walls['short'][1]:>20.2f}{walls['long'][1]:>20.2f}")
    refresh_short, refresh_long = sum(walls["short"]), sum(walls["long"])
    print(f"  {'daily refresh, wall (s)':<38}{refresh_short:>20.2f}{refresh_long:>20.2f}")
    every = [", ".join(f"{wall:.1f}" for wall in contestant["refresh_walls"]) for contestant in (short, long)]
    print(f"  {'  every round (s)':<38}{every[0]:>20}{every[1]:>20}")
    print(
        f"  {'  its process, imports included (s)':<38}"
        f"{short['refresh']['process_wall']:>20.1f}{long['refresh']['process_wall']:>20.1f}"
    )
    stats_short = short["refresh"]["features"]["compute"].get("customer_stats", 0.0)
    stats_long = long["refresh"]["features"]["compute"].get("customer_stats", 0.0)

    print("\nhistory build (backfill): ingest and refresh_features over the history days, one run each")
    print(f"  {'':<38}{names[0]:>20}{names[1]:>20}")
    per_row: dict[str, dict[str, float]] = {}
    for name, contestant in (("short", short), ("long", long)):
        history = contestant["history"]
        rows = max(history["rows"], 1)
        build = history["ingest"]["wall"] + history["features"]["wall"]
        per_row[name] = {
            "rows": history["rows"],
            "build": build,
            "build_us": build / rows * 1e6,
            "stats_us": history["features"]["compute"].get("customer_stats", 0.0) / rows * 1e6,
            "single_us": contestant["single_shot"]["seconds"] / max(contestant["single_shot"]["rows"], 1) * 1e6,
            "single": contestant["single_shot"]["seconds"],
            "core_fold": contestant["single_shot"]["fold_seconds"],
            "core_fold_us": contestant["single_shot"]["fold_seconds"] / rows * 1e6,
            "stats": history["features"]["compute"].get("customer_stats", 0.0),
        }
    rows_line = [
        ("transactions", "rows", ",.0f"),
        ("build wall (s)", "build", ".1f"),
        ("build per row (us)", "build_us", ".2f"),
        ("customer_stats fold (s)", "stats", ".2f"),
        ("customer_stats fold per row (us)", "stats_us", ".2f"),
        ("core fold, in memory (s)", "core_fold", ".2f"),
        ("core fold per row (us)", "core_fold_us", ".2f"),
        ("single shot (s)", "single", ".2f"),
        ("single shot per row (us)", "single_us", ".2f"),
    ]
    for label, key, fmt in rows_line:
        print(f"    {label:<36}{per_row['short'][key]:>20{fmt}}{per_row['long'][key]:>20{fmt}}")

    ratio = refresh_long / refresh_short if refresh_short else float("inf")
    stats_ratio = stats_long / stats_short if stats_short else float("inf")
    long_fold, long_single = per_row["long"]["stats_us"], per_row["long"]["single_us"]
    print(
        f"\ntargets: daily refresh long/short <= {RATIO_TARGET}x -> {ratio:.2f}x "
        f"({_verdict(ratio <= RATIO_TARGET)}; customer_stats alone {stats_ratio:.2f}x)"
    )
    print(
        f"         {args.long}-day fold of customer_stats per row <= single shot per row -> "
        f"{long_fold:.2f} us against {long_single:.2f} us ({_verdict(long_fold <= long_single)}); "
        f"the core's fold alone {per_row['long']['core_fold_us']:.2f} us; "
        f"the whole build costs {per_row['long']['build_us']:.2f} us a row"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average before {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f}, after {' '.join(f'{value:.2f}' for value in os.getloadavg())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-day", type=int, default=50_000, help="transactions a day (default 50,000)")
    parser.add_argument("--short", type=int, default=30, help="days of history of the short contestant")
    parser.add_argument("--long", type=int, default=120, help="days of history of the long contestant")
    parser.add_argument("--quick", action="store_true", help="5,000 transactions a day, 6 and 24 days")
    parser.add_argument("--keep", action="store_true", help="keep the state directories")
    parser.add_argument("--rounds", type=int, default=3, help="daily refreshes per contestant (the median counts)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--days", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(CHILDREN[args.child](args.days, args.per_day)))
        return

    if args.quick:
        args.per_day, args.short, args.long = 5_000, 6, 24
    if not 0 < args.short < args.long:
        parser.error(f"--short ({args.short}) must be at least 1 and less than --long ({args.long})")
    refresh_day = FIRST_DAY + timedelta(days=args.long)
    if refresh_day >= datetime.now(UTC).date():
        parser.error(f"--long {args.long}: the refresh day {refresh_day} is not a past day (history from {FIRST_DAY})")

    load_before = os.getloadavg()
    print(
        f"scale benchmark: {args.per_day:,} transactions a day, {CUSTOMERS:,} customers, "
        f"{args.short} and {args.long} days of history from {FIRST_DAY}, then one daily refresh"
    )
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    results = run_contestants({"short": args.short, "long": args.long}, args.per_day, args.rounds, args.keep)
    report(args, results, load_before)


if __name__ == "__main__":
    main()
