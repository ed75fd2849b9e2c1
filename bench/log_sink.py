"""Prediction log sink benchmark: the model server's requests/s with its log in an S3-compatible object
store beside the same server with its log in a local folder.

Two contestants, one at a time, each ``python -m ml_platform.serving --no-feast`` on 127.0.0.1 and the same
registered champion, loaded by POST /predict of one row (the serving benchmark's load and helpers,
``bench/serving.py``: wrk, 2 threads, keep-alive connections, a warm-up first):
- local: the log in a local folder (the default sink);
- s3: the log in a bucket of a moto S3 server on loopback (``ML_PLATFORM_PREDICTION_LOG_URI=s3://...``,
  endpoint and credentials from the standard AWS variables), the journal in a local folder.
The log flushes as in production (a part every 2 s). The contestants alternate, ``--rounds`` each, and
each keeps its best round: on a shared machine the box's speed drifts between minutes. After each round
the server is stopped with SIGTERM and the log read back from where it went: it must hold at least the
round's answered requests (the check request and the warm-up's are logged too).

The request path is the same for both (the row goes to the local journal before the answer); only the
background writer differs (a PUT per part instead of a rename), so the target is s3 >= 90% of local's
requests/s (printed, never asserted).

    python bench/log_sink.py                  # 15 s per round, 8 connections, 2 rounds each
    python bench/log_sink.py --seconds 30 --connections 16 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import serving as house  # noqa: E402 - the serving benchmark's load generator, servers and model preparation

TARGET = 0.90


def contestants(setup: dict, work: Path, base_env: dict[str, str], s3_env: dict[str, str], uri: str, round_: int):
    command = [sys.executable, "-m", "ml_platform.serving", "--host", "127.0.0.1", "--port", "{port}", "--no-feast"]
    body = {"features": setup["features"]}
    local_log = work / f"local-log-{round_}"
    s3_uri = f"{uri}/round-{round_}"
    return [
        (
            house.Contestant(
                "local",
                "local folder",
                command,
                "/predict",
                body,
                "/v2/health/ready",
                {**base_env, "ML_PLATFORM_SERVING_LOG_DIR": str(local_log)},
            ),
            str(local_log),
        ),
        (
            house.Contestant(
                "s3",
                "S3 (moto)",
                command,
                "/predict",
                body,
                "/v2/health/ready",
                {
                    **base_env,
                    **s3_env,
                    "ML_PLATFORM_PREDICTION_LOG_URI": s3_uri,
                    "ML_PLATFORM_PREDICTION_JOURNAL_DIR": str(work / f"journal-{round_}"),
                    "ML_PLATFORM_REPLICA_NAME": "bench-0",
                },
            ),
            s3_uri,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="load per round (default 15)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per contestant, alternating (default 2)")
    parser.add_argument("--child", choices=["prepare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(house.child_prepare([])))
        return 0
    if not house.WRK:
        print("wrk, the load generator, is not installed; install it with `apt-get install wrk`", file=sys.stderr)
        return 2
    if importlib.util.find_spec("moto") is None:
        print("moto[server] is not installed; pip install the test extra (moto[server])", file=sys.stderr)
        return 2

    import logging

    from ml_platform.predictions import read_prediction_log
    from tests.support.s3 import s3_bucket

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ml_platform_bench_log_sink_"))
    home = work / "home"
    tracking_uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    base_env = {
        **os.environ,
        "ML_PLATFORM_HOME": str(home),
        "ML_PLATFORM_MLFLOW_URI": tracking_uri,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MPLCONFIGDIR": str(home / "cache" / "matplotlib"),
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": str(work / "tmp"),
    }
    (work / "tmp").mkdir()
    completed = subprocess.run(
        [sys.executable, __file__, "--child", "prepare"], env=base_env, cwd=work, capture_output=True, text=True
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        return 1
    setup = json.loads(completed.stdout.strip().splitlines()[-1])
    print(
        f"log sink benchmark: {setup['model_name']} v{setup['version']}, {setup['trees']} trees; "
        f"wrk -t {min(house.WRK_THREADS, args.connections)} -c {args.connections} -d {args.seconds}s after a "
        f"{house.WARMUP_SECONDS} s warm-up, {args.rounds} round(s) each, alternating; {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before",
        flush=True,
    )
    best: dict[str, dict] = {}
    with s3_bucket(prefix="bench") as bucket:
        try:
            _rounds(args, setup, work, base_env, bucket, best, read_prediction_log)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _report(best)
    return 0


def _rounds(args, setup, work, base_env, bucket, best, read_prediction_log) -> None:
    """Alternate the contestants ``args.rounds`` times; keep each one's best round in ``best``."""
    for round_ in range(args.rounds):
        for contestant, location in contestants(setup, work, base_env, bucket.env, bucket.uri, round_):
            figures = house.measure(contestant, work, args.seconds, args.connections)
            answered = figures["requests"] - figures["status"]
            logged = len(read_prediction_log(location))
            figures["logged"] = logged
            complete = "complete" if logged >= answered else f"ROWS MISSING: fewer than the {answered:,} answered"
            print(
                f"  round {round_ + 1} {contestant.label:>12}: {figures['requests_per_second']:8.0f} req/s, "
                f"p99 {figures['p99_us'] / 1000:.1f} ms, {logged:,} rows logged after SIGTERM ({complete}), "
                f"exit {figures['exit_code']}",
                flush=True,
            )
            if (
                contestant.key not in best
                or figures["requests_per_second"] > best[contestant.key]["requests_per_second"]
            ):
                best[contestant.key] = figures


def _report(best: dict[str, dict]) -> None:
    local, s3 = best["local"], best["s3"]
    ratio = s3["requests_per_second"] / local["requests_per_second"]
    print("\n                 local folder      S3 (moto)")
    print(f"  requests/s   {local['requests_per_second']:12.0f}   {s3['requests_per_second']:12.0f}")
    print(f"  p50 ms       {local['p50_us'] / 1000:12.2f}   {s3['p50_us'] / 1000:12.2f}")
    print(f"  p99 ms       {local['p99_us'] / 1000:12.2f}   {s3['p99_us'] / 1000:12.2f}")
    print(f"  errors       {local['status'] + local['socket_errors']:12d}   {s3['status'] + s3['socket_errors']:12d}")
    print(f"  rows logged  {local['logged']:12,d}   {s3['logged']:12,d}")
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"\n  S3 / local requests/s: {ratio:.1%} (target >= {TARGET:.0%}: {verdict})")


if __name__ == "__main__":
    raise SystemExit(main())
