"""Online serving benchmark: our model server against ``mlflow models serve`` on the same registered version.

Three contestants, one at a time (never two servers at once), each a subprocess bound to 127.0.0.1 on a
free port, waited on until ready, checked with one request, warmed up, then loaded and stopped:
- ours: ``python -m ml_platform.serving --no-feast``, POST /predict {"features": [9 numbers]};
- mlflow: ``mlflow models serve -m models:/<name>/<version> --env-manager local``, POST /invocations
  {"dataframe_split": {...}} with the same row (MLflow's own defaults: one uvicorn worker, access log on);
- floor: a bare FastAPI app whose POST /predict returns a constant, under the uvicorn settings ours uses
  (``uvicorn.run`` defaults: one worker, loop and HTTP parser auto (uvloop, httptools), access log off);
- entity: ours with the feature store, POST /predict {"customer_id", "amount", "category", "channel",
  "event_timestamp"} (the request a payment system sends: the customer's stats read from Feast's online
  store), rotating over the bodies of 2,000 customers that exist; on SQLite (the local profile) and, with
  ``--online-store redis`` or ``both``, on Redis at 127.0.0.1:6379 (database 14, flushed before and after);
- the Open Inference Protocol: ours on POST /v2/models/<name>/infer (one row in JSON FP64, one row in
  binary FP64 with the answer in binary as Triton's client asks by default, 100 rows in JSON FP64) and
  ours on POST /invocations (one row, dataframe_split: the body `mlflow models serve` gets), against
  Seldon MLServer 1.7.1 with mlserver-xgboost given the champion's model.ubj as it is (one row in FP32,
  the datatype its examples send, and in FP64; 100 rows in FP32). MLServer runs from a virtualenv of its
  own (it pins older FastAPI/pydantic than ours), installed by this script from PyPI on first use under
  <ML_PLATFORM_HOME or ./.ml_platform>/cache/bench/ and reused after; as one process (parallel_workers 0:
  inference in the server's own process, as ours), its metrics server off, its access log off as ours
  (``debug: false``), XGBoost on one thread as ours (OMP_NUM_THREADS=1). Once more as MLServer starts by
  default (debug on, XGBoost's OpenMP threads on every core, where they contend with the server's own
  thread and the load generator), one row, for reference.

One model serves all: trained with ``ml_platform.training.train.fit`` on a small generated training set
(customer stats from ``pandas.merge_asof``, as the unit tests build it, no Feast), registered through
``Registry.log_and_register`` and promoted to champion in a temporary ML_PLATFORM_HOME (sqlite MLflow store).
The entity contestants' Feast repo holds the training customers' stats (``compute_customer_stats``),
applied and materialized into the online store as the pipeline's assets do.

The same load generator for all: wrk, 2 threads, 8 keep-alive connections, single-row requests, for
--seconds each. Printed: requests/s, p50, p99, errors. Targets (printed, never asserted): ours >= 10x
mlflow's requests/s with p99 <= 1/5 of mlflow's; ours >= half the floor's requests/s; entity /predict >= 10x
mlflow's requests/s with p99 <= 2x the p99 of ours with the features in the body; our OIP infer (one row,
JSON) >= 5x MLServer's requests/s (one row, FP32) with p99 <= 1/3 of its p99, and >= 2x its rows/s on
100-row requests; /invocations and entity /predict >= 50% of /predict's requests/s. Every contestant's
answer for the same row is checked against the in-process probability (within 1e-6: MLServer answers in
FP32).

    python bench/serving.py                   # 15 s per contestant, 8 connections
    python bench/serving.py --seconds 30 --connections 16
    python bench/serving.py --online-store both   # entity /predict on SQLite and on Redis (needs redis-server)
    python bench/serving.py --only v2,v2_batch,mlserver,mlserver_batch --rounds 3   # some contestants, medians
    python bench/serving.py --only v2,v2_batch --baseline /tmp/before   # ours now and from another source tree

--only runs the named contestants (the keys are listed by --help). --rounds runs them all that many times,
interleaved (round 1 of each, then round 2 ...), and reports each figure's median: on a shared machine the
rounds spread other work over every contestant alike. --baseline runs each of our contestants also from
another checkout of this repository (its directory first on PYTHONPATH), in the same rounds, as
``<key>_base``, and prints now against then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: mlflow, and uvicorn for `mlflow models serve` (trap 11)
WRK = "/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else shutil.which("wrk")
WRK_THREADS = 2
WARMUP_SECONDS = 3
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
ENTITY_CUSTOMERS = 2_000  # entity bodies sent in rotation, one customer each
REDIS_DB = 14  # the Redis entity contestant's database on 127.0.0.1:6379, flushed before and after
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
ENTITY_LABELS = {"entity": "entity /predict, SQLite online", "entity_redis": "entity /predict, Redis online"}
MLSERVER_PACKAGES = ("mlserver==1.7.1", "mlserver-xgboost==1.7.1")
MLSERVER_MODEL = "fraud"  # the name MLServer serves the champion's file under
MLSERVER_VENV = Path(os.environ.get("ML_PLATFORM_HOME") or REPO / ".ml_platform") / "cache" / "bench" / "mlserver-1.7.1"
BATCH_ROWS = 100
AGREEMENT = 1e-6  # every answer for the checked row within this of the in-process probability
OIP_LABELS = {
    "v2": "ours: v2 infer, 1 row JSON FP64",
    "v2_binary": "ours: v2 infer, 1 row binary FP64",
    "v2_batch": f"ours: v2 infer, {BATCH_ROWS} rows JSON FP64",
    "invocations": "ours: /invocations dataframe_split",
    "mlserver": "MLServer: v2 infer, 1 row FP32",
    "mlserver_fp64": "MLServer: v2 infer, 1 row FP64",
    "mlserver_batch": f"MLServer: v2 infer, {BATCH_ROWS} rows FP32",
    "mlserver_shipped": "MLServer, its defaults: 1 row FP32",
}

FLOOR_APP = '''"""The framework's floor: a bare FastAPI endpoint returning a constant, run as ours runs."""

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.post("/predict")
async def f():
    return {"probability": 0.5}


if __name__ == "__main__":
    # The same call as ml_platform.serving.__main__: one worker, loop and http "auto", access log off.
    uvicorn.run(app, host=sys.argv[1], port=int(sys.argv[2]), log_level="info", access_log=False)
'''

# wrk's done() hook reports exact figures (microseconds) on one line; --latency still prints its table.
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"

{requests}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p75_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d, \\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, "
    .. "\\"status\\": %d, \\"timeout\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(75),
    latency:percentile(90), latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# For a contestant with many bodies: each request the next body in turn, the requests formatted once.
WRK_ROTATION = """bodies = {bodies}
local prepared = {{}}
local next_index = 0

function init(args)
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format(nil, nil, nil, body)
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end
"""


# ---- preparation (a process of its own: the parent imports nothing heavy) ------------------------
def child_prepare(online_stores: list[str]) -> dict:
    """Train a small model, register it and make it champion in ML_PLATFORM_HOME, load the training
    customers' stats into each of ``online_stores``; return what the load needs."""
    from datetime import UTC, date, datetime

    from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
    from ml_platform.features.engineering import MODEL_FEATURES, stats_before
    from ml_platform.registry import CHAMPION, Registry
    from ml_platform.settings import Settings
    from ml_platform.training.dataset import assemble_training_set, split_xy
    from ml_platform.training.train import TrainingParams, fit, model_signature, params_dict, predict_probability

    settings = Settings.from_env()
    settings.apply_environment()
    settings.prepare()
    started = time.perf_counter()

    # A model the size the demo trains (~40k rows over 14 days: tens of trees, not the handful a toy set
    # stops at), so the XGBoost share of each request is what a user's champion costs.
    config = SyntheticConfig(seed=11, n_customers=3_000, transactions_per_day=3_000, fraud_rate=0.02)
    transactions = generate_transactions(config, date(2024, 3, 1), date(2024, 3, 14))
    training_set = assemble_training_set(transactions, stats_before(transactions))
    x_train, y_train = split_xy(training_set, "train")
    x_valid, y_valid = split_xy(training_set, "validation")
    params = TrainingParams(device="cpu", n_jobs=2)
    trained = fit(x_train, y_train, x_valid, y_valid, params)

    registry = Registry.from_settings(settings)
    registered = registry.log_and_register(
        trained,
        params=params_dict(params),
        run_key="bench-serving",
        signature=model_signature(trained.booster, x_valid.head(5)),
        example=x_valid.head(5),
        run_tags={},
        figures={},
    )
    registry.promote(registered.version, promoted_at=datetime.now(UTC).isoformat())
    assert registry.version_for_alias(CHAMPION) == registered.version

    row = x_valid.dropna().iloc[[0]].astype("float64")  # a real row with customer history: no missing values
    entity = prepare_feature_stores(settings, transactions, trained.booster, online_stores)
    return {
        **entity,
        "model_name": settings.model_name,
        "version": registered.version,
        "tracking_uri": settings.tracking_uri,
        "rows": len(training_set),
        "trees": trained.best_iteration + 1,
        "columns": list(MODEL_FEATURES),
        "features": [float(v) for v in row.iloc[0]],
        "probability": float(predict_probability(trained.booster, row)[0]),
        # the batch contestants' rows: the row above first, then the next complete rows
        "batch_features": x_valid.dropna().head(BATCH_ROWS).astype("float64").to_numpy().tolist(),
        "model_file": registered_model_file(registry, registered.version),
        "prepare_seconds": time.perf_counter() - started,
    }


def registered_model_file(registry, version: int) -> str:
    """The version's native XGBoost model file as registered (fetched by MLflow into TMPDIR when remote)."""
    import mlflow.artifacts

    from ml_platform.registry import native_model_file

    uri = registry.client.get_model_version_download_uri(registry.model_name, str(version))
    return native_model_file(mlflow.artifacts.download_artifacts(artifact_uri=uri), f"version {version}")


def redis_home(home: Path) -> Path:
    """The state directory of the Redis entity contestant: the same MLflow store, a Feast repo on Redis."""
    return home.parent / "home_redis"


def flush_bench_redis() -> None:
    """Empty the benchmark's Redis database; exits naming Redis when it does not answer."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=2, retry=None)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as error:
        raise SystemExit(
            f"Redis is not answering on 127.0.0.1:6379 ({error}); start it (`redis-server --daemonize yes "
            '--bind 127.0.0.1 --port 6379 --save ""`) or run with --online-store sqlite'
        ) from None
    finally:
        client.close()


def prepare_feature_stores(settings, transactions, booster, online_stores: list[str]) -> dict:
    """The training customers' stats in a Feast repo per online store (applied, materialized as the
    ``online_features`` asset does), the entity bodies to send, and the first body's probability in process."""
    from datetime import timedelta

    import numpy as np
    import pandas as pd

    from ml_platform.data.schema import CATEGORIES, CHANNELS, ENTITY_COLUMN, TIMESTAMP_COLUMN
    from ml_platform.features.engineering import MODEL_FEATURES, STORED_FEATURES, compute_customer_stats, model_features
    from ml_platform.features.store import (
        FeatureRepo,
        feature_definitions,
        load_online_store,
        open_store,
        write_offline_table,
    )
    from ml_platform.settings import Settings
    from ml_platform.training.train import predict_probability

    stats = compute_customer_stats(transactions)
    window = (stats[TIMESTAMP_COLUMN].min().to_pydatetime(), stats[TIMESTAMP_COLUMN].max().to_pydatetime())
    loaded = {}
    for kind in online_stores:
        if kind == "sqlite":
            repo = FeatureRepo.from_settings(settings)
        else:
            env = {**os.environ, "ML_PLATFORM_HOME": str(redis_home(settings.home)), "ML_PLATFORM_REDIS_URL": REDIS_URL}
            repo = FeatureRepo.from_settings(Settings.from_env(env))
        write_offline_table(repo, stats)
        store = open_store(repo)
        store.apply(feature_definitions(repo))
        started = time.perf_counter()
        load_online_store(store, window[0], window[1] + timedelta(seconds=1))
        loaded[kind] = time.perf_counter() - started

    # one transaction per customer, an hour and a quarter after the customer's last order
    latest = stats.groupby(ENTITY_COLUMN).tail(1).sort_values(ENTITY_COLUMN).head(ENTITY_CUSTOMERS)
    rng = np.random.default_rng(5)
    transactions_sent = pd.DataFrame(
        {
            ENTITY_COLUMN: latest[ENTITY_COLUMN].to_numpy(),
            "amount": np.round(rng.lognormal(3.5, 1.0, len(latest)), 2).clip(0.01, 100_000.0),
            "category": rng.choice(CATEGORIES, len(latest)),
            "channel": rng.choice(CHANNELS, len(latest)),
            TIMESTAMP_COLUMN: latest[TIMESTAMP_COLUMN].to_numpy() + pd.Timedelta(minutes=77),
        }
    )
    transactions_sent[TIMESTAMP_COLUMN] = pd.to_datetime(transactions_sent[TIMESTAMP_COLUMN], utc=True)
    bodies = [
        {
            "customer_id": int(row.customer_id),
            "amount": float(row.amount),
            "category": str(row.category),
            "channel": str(row.channel),
            "event_timestamp": row.event_timestamp.isoformat(),
        }
        for row in transactions_sent.itertuples(index=False)
    ]
    first = model_features(transactions_sent.head(1), latest[list(STORED_FEATURES)].head(1).set_axis([0]))
    return {
        "entity_bodies": bodies,
        "entity_probability": float(predict_probability(booster, first[list(MODEL_FEATURES)])[0]),
        "customers": int(stats[ENTITY_COLUMN].nunique()),
        "materialize_seconds": loaded,
    }


# ---- servers -----------------------------------------------------------------------------------
@dataclass
class Contestant:
    key: str
    label: str
    command: list[str]
    path: str  # the POST route loaded
    body: dict | bytes  # a dict is sent as JSON; bytes as they are (with ``headers``)
    ready_path: str | None  # GET route that answers 200 once ready; None: poll the POST route itself
    env: dict[str, str] = field(default_factory=dict)
    bodies: list[dict] = field(default_factory=list)  # when given, sent in rotation (``body`` is the first)
    headers: dict[str, str] = field(default_factory=dict)  # request headers besides Content-Type: JSON


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    url: str, body: dict | bytes | None = None, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Server:
    """A contestant's process in a session of its own, so that stopping it stops all it started."""

    def __init__(self, contestant: Contestant, port: int, work: Path) -> None:
        self.contestant = contestant
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = work / f"{contestant.key}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                contestant.command,
                env=contestant.env,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self) -> float:
        started = time.monotonic()
        path = self.contestant.ready_path or self.contestant.path
        body = None if self.contestant.ready_path else self.contestant.body
        while True:
            try:
                if http(self.url + path, body, timeout=2.0)[0] == 200:
                    return time.monotonic() - started
            except (OSError, urllib.error.URLError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.contestant.key} exited ({self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() - started > START_TIMEOUT:
                raise RuntimeError(f"{self.contestant.key} not ready after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # graceful: finish in-flight requests, flush logs
                self.process.wait(STOP_TIMEOUT)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # anything the group left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


# ---- load --------------------------------------------------------------------------------------
def run_wrk(url: str, script: Path, seconds: int, connections: int) -> dict:
    threads = min(WRK_THREADS, connections)
    command = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script)]
    completed = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    figures = json.loads(lines[-1][len("BENCH ") :])
    figures["requests_per_second"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["socket_errors"] = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    figures["failed"] = figures["status"] > 0 or figures["socket_errors"] > 0
    figures["report"] = "\n".join(line for line in completed.stdout.splitlines() if not line.startswith("BENCH "))
    return figures


def measure(contestant: Contestant, work: Path, seconds: int, connections: int) -> dict:
    script = work / f"{contestant.key}.lua"
    rotation = ""
    if contestant.bodies:  # a Lua table of string literals
        literals = ",\n  ".join(lua_string(json.dumps(body).encode()) for body in contestant.bodies)
        rotation = WRK_ROTATION.format(bodies="{\n  " + literals + "\n}")
    headers = "".join(
        f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}\n" for k, v in contestant.headers.items()
    )
    # the body as a Lua string literal
    body = contestant.body if isinstance(contestant.body, bytes) else json.dumps(contestant.body).encode()
    script.write_text(WRK_SCRIPT.format(body=lua_string(body), requests=headers + rotation))
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in contestant.command]
    server = Server(Contestant(**{**contestant.__dict__, "command": command}), port, work)
    try:
        ready = server.wait_ready()
        status, answer = http(server.url + contestant.path, contestant.body, headers=contestant.headers)
        if status != 200:
            raise RuntimeError(f"{contestant.key}: POST {contestant.path} answered {status}: {answer[:500]!r}")
        run_wrk(server.url + contestant.path, script, WARMUP_SECONDS, connections)
        figures = run_wrk(server.url + contestant.path, script, seconds, connections)
        figures["ready_seconds"] = ready
        figures["answer"] = parse_answer(answer)
    finally:
        exit_code = server.stop()
    figures["exit_code"] = exit_code
    return figures


def contestants(setup: dict, work: Path, base_env: dict[str, str]) -> list[Contestant]:
    (work / "floor_app.py").write_text(FLOOR_APP)
    model_uri = f"models:/{setup['model_name']}/{setup['version']}"
    features = setup["features"]
    return [
        Contestant(
            "ours",
            "ours: ml_platform.serving /predict",
            [sys.executable, "-m", "ml_platform.serving", "--host", "127.0.0.1", "--port", "{port}", "--no-feast"],
            "/predict",
            {"features": features},
            "/v2/health/ready",
            {**base_env, "ML_PLATFORM_SERVING_LOG_DIR": str(work / "home" / "logs" / "bench_predictions")},
        ),
        Contestant(
            "mlflow",
            "mlflow models serve /invocations",
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                "{port}",
            ],
            "/invocations",
            {"dataframe_split": {"columns": setup["columns"], "data": [features]}},
            "/ping",
            base_env,
        ),
        Contestant(
            "floor",
            "floor: bare FastAPI constant",
            [sys.executable, str(work / "floor_app.py"), "127.0.0.1", "{port}"],
            "/predict",
            {},
            None,
            base_env,
        ),
    ]


def entity_contestants(setup: dict, work: Path, base_env: dict[str, str]) -> list[Contestant]:
    """Ours with the feature store, one per prepared online store, sent the entity bodies in rotation."""
    bodies = setup["entity_bodies"]
    home = Path(base_env["ML_PLATFORM_HOME"])
    homes = {"entity": home, "entity_redis": redis_home(home)}
    extra = {"entity": {}, "entity_redis": {"ML_PLATFORM_REDIS_URL": REDIS_URL}}
    return [
        Contestant(
            key,
            ENTITY_LABELS[key],
            [sys.executable, "-m", "ml_platform.serving", "--host", "127.0.0.1", "--port", "{port}"],
            "/predict",
            bodies[0],
            "/v2/health/ready",  # ready once the champion is loaded and the feature store open
            {
                **base_env,
                **extra[key],
                "ML_PLATFORM_HOME": str(homes[key]),
                "ML_PLATFORM_SERVING_LOG_DIR": str(homes[key] / "logs" / f"bench_{key}_predictions"),
            },
            bodies,
        )
        for key, kind in (("entity", "sqlite"), ("entity_redis", "redis"))
        if kind in setup["materialize_seconds"]
    ]


def oip_contestants(setup: dict, work: Path, base_env: dict[str, str], mlserver: Path | None) -> list[Contestant]:
    """Ours on the Open Inference Protocol and on /invocations; MLServer on the same protocol when installed."""
    features, batch = setup["features"], setup["batch_features"]
    ours = [sys.executable, "-m", "ml_platform.serving", "--host", "127.0.0.1", "--port", "{port}", "--no-feast"]
    ours_env = {**base_env, "ML_PLATFORM_SERVING_LOG_DIR": str(work / "home" / "logs" / "bench_oip_predictions")}
    infer = f"/v2/models/{setup['model_name']}/infer"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, len(features)],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 8 * len(features)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary_headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    entries = [
        Contestant("v2", OIP_LABELS["v2"], ours, infer, infer_body([features], "FP64"), "/v2/health/ready", ours_env),
        Contestant(
            "v2_binary",
            OIP_LABELS["v2_binary"],
            ours,
            infer,
            header + struct.pack(f"<{len(features)}d", *features),
            "/v2/health/ready",
            ours_env,
            headers=binary_headers,
        ),
        Contestant(
            "v2_batch", OIP_LABELS["v2_batch"], ours, infer, infer_body(batch, "FP64"), "/v2/health/ready", ours_env
        ),
        Contestant(
            "invocations",
            OIP_LABELS["invocations"],
            ours,
            "/invocations",
            {"dataframe_split": {"columns": setup["columns"], "data": [features]}},
            "/ping",
            ours_env,
        ),
    ]
    if mlserver is None:
        return entries
    # the HTTP port from the environment: MLServer's settings.json would win over it
    command, shipped = (
        ["env", "MLSERVER_HTTP_PORT={port}", str(mlserver), "start", str(mlserver_repository(work, setup, debug))]
        for debug in (False, True)
    )
    env = {**base_env, "OMP_NUM_THREADS": "1"}
    path, ready = f"/v2/models/{MLSERVER_MODEL}/infer", f"/v2/models/{MLSERVER_MODEL}/ready"
    one_row = infer_body([features], "FP32")
    return entries + [
        # as MLServer starts by default: debug on, XGBoost's OpenMP threads on every core
        Contestant("mlserver_shipped", OIP_LABELS["mlserver_shipped"], shipped, path, one_row, ready, base_env),
        Contestant("mlserver", OIP_LABELS["mlserver"], command, path, one_row, ready, env),
        Contestant(
            "mlserver_fp64", OIP_LABELS["mlserver_fp64"], command, path, infer_body([features], "FP64"), ready, env
        ),
        Contestant(
            "mlserver_batch", OIP_LABELS["mlserver_batch"], command, path, infer_body(batch, "FP32"), ready, env
        ),
    ]


def infer_body(rows: list[list[float]], datatype: str) -> dict:
    """An Open Inference Protocol request: one [rows, 9] tensor, its data flat in row-major order."""
    data = [value for row in rows for value in row]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": data}]}


def mlserver_repository(work: Path, setup: dict, debug: bool) -> Path:
    """MLServer's model repository: its server settings and the champion's model file under MLSERVER_MODEL.

    ``debug`` is MLServer's own default (True: DEBUG logging and uvicorn's access log, a line per request);
    off, it logs as ours does.
    """
    root = work / ("mlserver_debug" if debug else "mlserver")
    (root / MLSERVER_MODEL).mkdir(parents=True, exist_ok=True)
    server = {"host": "127.0.0.1", "grpc_port": 0, "parallel_workers": 0, "metrics_endpoint": None, "debug": debug}
    (root / "settings.json").write_text(json.dumps(server))
    model = {
        "name": MLSERVER_MODEL,
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": setup["model_file"]},
    }
    (root / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps(model))
    return root


def ensure_mlserver(venv: Path) -> Path:
    """MLServer's own virtualenv, installed from PyPI on first use and reused after; its ``mlserver`` command.

    A marker written once the install finished says the virtualenv is complete; without it (an install
    cut short, other versions) the folder is made again.
    """
    marker, executable = venv / "installed.txt", venv / "bin" / "mlserver"
    wanted = "\n".join(MLSERVER_PACKAGES)
    if marker.is_file() and marker.read_text() == wanted and executable.is_file():
        return executable
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--quiet", *MLSERVER_PACKAGES],
    ]
    for step in steps:
        completed = subprocess.run(step, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"`{' '.join(step)}` failed (exit {completed.returncode}):\n{completed.stderr[-2000:]}")
    marker.write_text(wanted)
    return executable


def lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal: printable ASCII as it is, every other byte as a decimal escape."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}" for b in data) + '"'


def parse_answer(content: bytes) -> dict:
    """An answer's JSON; for a binary Open Inference Protocol answer, its JSON header with each output's
    ``data`` read from the bytes after it (FP64, the only datatype our outputs have)."""
    try:
        return json.loads(content)
    except ValueError:
        header, end = json.JSONDecoder().raw_decode(content.decode("latin-1"))
    offset = end
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        output["data"] = list(struct.unpack(f"<{size // 8}d", content[offset : offset + size]))
        offset += size
    return header


def answered_probability(key: str, answer: dict) -> float | None:
    key = key.removesuffix(BASELINE_SUFFIX)
    if key == "ours":
        return float(answer["probability"])
    if key in ("mlflow", "invocations"):
        return float(answer["predictions"][0])
    if key in OIP_LABELS:
        return float(answer["outputs"][0]["data"][0])
    return None


ALL_LABELS = {
    "ours": "ours: ml_platform.serving /predict",
    "mlflow": "mlflow models serve /invocations",
    "floor": "floor: bare FastAPI constant",
    **ENTITY_LABELS,
    **OIP_LABELS,
}
BASELINE_SUFFIX = "_base"


def baseline_contestants(chosen: list[Contestant], baseline: Path) -> list[Contestant]:
    """Our contestants once more, run from the source tree ``baseline`` (first on PYTHONPATH)."""
    copies = []
    for contestant in chosen:
        if "ml_platform.serving" not in contestant.command:
            continue
        path = os.pathsep.join(filter(None, (str(baseline), contestant.env.get("PYTHONPATH"))))
        copies.append(
            Contestant(
                **{
                    **contestant.__dict__,
                    "key": contestant.key + BASELINE_SUFFIX,
                    "label": "base: " + contestant.label.removeprefix("ours: "),
                    "env": {**contestant.env, "PYTHONPATH": path},
                }
            )
        )
    return copies


def median_figures(rounds: list[dict]) -> dict:
    """One contestant's rounds as one set of figures: each number the median over the rounds that did not
    fail (a failed round counts as failed), the answer of the first."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return rounds[0]
    merged = dict(good[0])
    for name, value in good[0].items():
        if isinstance(value, int) and not isinstance(value, bool):
            merged[name] = statistics.median_low(r[name] for r in good)  # a count: one that was seen
        elif isinstance(value, float):
            merged[name] = statistics.median(r[name] for r in good)
    merged["failed"] = any(r.get("failed") for r in rounds)
    merged["rounds"] = len(good)
    return merged


def _terminate(signum, frame):  # SIGTERM to the benchmark: unwind through the finally blocks
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="load per contestant (default 15)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    parser.add_argument(
        "--online-store",
        choices=["sqlite", "redis", "both"],
        default="sqlite",
        help="the online store(s) entity /predict reads from (default sqlite; redis needs redis-server on "
        f"127.0.0.1:6379, and uses and flushes its database {REDIS_DB})",
    )
    parser.add_argument(
        "--mlserver-venv",
        type=Path,
        default=MLSERVER_VENV,
        help="MLServer's virtualenv, installed there on first use (default: <state dir>/cache/bench/mlserver-1.7.1)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [key.strip() for key in text.split(",") if key.strip()],
        help=f"comma-separated contestants to run (default all): {', '.join(ALL_LABELS)}",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each contestant, interleaved; medians shown")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout of this repository: our contestants also run from it"
    )
    parser.add_argument("--child", choices=["prepare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    online_stores = ["sqlite", "redis"] if args.online_store == "both" else [args.online_store]

    if args.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(child_prepare(online_stores)))
        return 0

    if not WRK:
        print(
            "wrk, the load generator, is not installed; install it with `apt-get install wrk` (Debian/Ubuntu package "
            "`wrk`) and run again. There is no fallback: one generator for every contestant is the point.",
            file=sys.stderr,
        )
        return 2
    if args.seconds < 1 or args.connections < 1 or args.rounds < 1:
        parser.error("--seconds, --connections and --rounds must be at least 1")
    unknown = sorted(set(args.only or []) - set(ALL_LABELS))
    if unknown:
        parser.error(f"--only: unknown contestants {', '.join(unknown)}; known: {', '.join(ALL_LABELS)}")
    if args.baseline is not None and not (args.baseline / "ml_platform" / "serving").is_dir():
        parser.error(f"--baseline {args.baseline}: not a checkout of this repository (no ml_platform/serving)")
    selected = set(args.only or ALL_LABELS)

    signal.signal(signal.SIGTERM, _terminate)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ml_platform_bench_serving_"))
    home = work / "home"
    tracking_uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"  # Settings' default under home, set explicitly
    base_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ML_PLATFORM_HOME": str(home),
        "ML_PLATFORM_MLFLOW_URI": tracking_uri,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MPLCONFIGDIR": str(home / "cache" / "matplotlib"),
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": str(work / "tmp"),  # mlflow's model download and anything else temporary: cleaned up with work
    }
    (work / "tmp").mkdir()
    results: dict[str, dict] = {}
    if "redis" in online_stores:
        flush_bench_redis()
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", "prepare", "--online-store", args.online_store],
            env=base_env,
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
            raise SystemExit(f"preparation failed (exit {completed.returncode})")
        setup = json.loads(completed.stdout.strip().splitlines()[-1])
        print(
            f"serving benchmark: {setup['model_name']} version {setup['version']} (champion), {setup['trees']} trees, "
            f"fit on {setup['rows']:,} generated rows, registered in a temporary sqlite MLflow store "
            f"({setup['prepare_seconds']:.1f} s to prepare)\n"
            f"load: wrk -t {min(WRK_THREADS, args.connections)} -c {args.connections} -d {args.seconds}s, "
            f"POSTs of one row (unless a label says otherwise) on keep-alive connections, after a {WARMUP_SECONDS} s "
            "warm-up; one server at a time\n"
            f"machine: {os.cpu_count()} CPUs shared by the load generator ({WRK_THREADS} wrk threads) and the server "
            f"(one uvicorn worker each); load average {load_before:.1f} before\n",
            flush=True,
        )
        if load_before > 0.5:
            print(
                f"warning: load average {load_before:.1f} before the run: other work shares these {os.cpu_count()} "
                "CPUs, so every figure below is low and noisy\n",
                flush=True,
            )
        mlserver = None
        if any(key.startswith("mlserver") for key in selected):
            print(f"  MLServer's virtualenv ({' '.join(MLSERVER_PACKAGES)}) ...", end="", flush=True)
            try:
                mlserver = ensure_mlserver(args.mlserver_venv)
                print(f" {args.mlserver_venv}", flush=True)
            except (RuntimeError, OSError) as error:
                print(f" failed\n{error}", file=sys.stderr)
                for key in ("mlserver", "mlserver_fp64", "mlserver_batch", "mlserver_shipped"):
                    results[key] = {"error": f"not installed: {str(error).splitlines()[0]}", "failed": True}
        everyone = contestants(setup, work, base_env) + entity_contestants(setup, work, base_env)
        chosen = [c for c in everyone + oip_contestants(setup, work, base_env, mlserver) if c.key in selected]
        if args.baseline is not None:
            chosen += baseline_contestants(chosen, args.baseline.resolve())
        rounds: dict[str, list[dict]] = {}
        for round_number in range(1, args.rounds + 1):
            for contestant in chosen:
                counter = f" (round {round_number}/{args.rounds})" if args.rounds > 1 else ""
                print(f"  {contestant.label}{counter} ...", end="", flush=True)
                try:
                    figures = measure(contestant, work, args.seconds, args.connections)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    print(f" failed\n{error}", file=sys.stderr)
                    figures = {"error": str(error).splitlines()[0], "failed": True}
                rounds.setdefault(contestant.key, []).append(figures)
                done = " done" if "error" in figures else f" ready in {figures['ready_seconds']:.1f} s, done"
                rate = "" if "error" in figures else f" ({figures['requests_per_second']:,.0f} requests/s)"
                print(done + rate, flush=True)
                time.sleep(1)  # let the stopped server's sockets and CPU settle before the next one
        results.update({key: median_figures(figures) for key, figures in rounds.items()})
        base_labels = {c.key: c.label for c in chosen if c.key.endswith(BASELINE_SUFFIX)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if "redis" in online_stores:
            flush_bench_redis()

    labels = {key: label for key, label in ALL_LABELS.items() if key in selected}
    labels.update(base_labels)
    if args.rounds > 1:
        print(f"\nmedians over {args.rounds} interleaved rounds per contestant")
    print(f"\n{'contestant':<38}{'requests/s':>12}{'p50 ms':>9}{'p75 ms':>9}{'p90 ms':>9}{'p99 ms':>9}  errors")
    for key, label in labels.items():
        r = results.get(key, {"error": "not run", "failed": True})
        if "error" in r:
            print(f"{label:<38}{'-':>12}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  FAILED: {r['error']}")
            continue
        errors = f"{r['status']} non-2xx/3xx, {r['socket_errors']} socket"
        print(
            f"{label:<38}{r['requests_per_second']:>12,.0f}{r['p50_us'] / 1000:>9.2f}{r['p75_us'] / 1000:>9.2f}"
            f"{r['p90_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}  {errors}{' (FAILED)' if r['failed'] else ''}"
        )
    probabilities = {
        key: answered_probability(key, r["answer"])
        for key, r in results.items()
        if "answer" in r and key != "floor" and key.removesuffix(BASELINE_SUFFIX) not in ENTITY_LABELS
    }
    if probabilities:
        agree = ", ".join(f"{key} {p:.6f}" for key, p in probabilities.items())
        print(f"  the row's probability: in-process {setup['probability']:.6f}, {agree}")
        apart = {key: abs(p - setup["probability"]) for key, p in probabilities.items()}
        disagree = ", ".join(f"{key} by {gap:.2e}" for key, gap in apart.items() if not gap <= AGREEMENT)
        print(f"  answers within {AGREEMENT:g} of in-process: {'all' if not disagree else 'NOT ' + disagree}")
    for key in ("v2_batch", "v2_batch" + BASELINE_SUFFIX, "mlserver_batch"):
        if "requests_per_second" in results.get(key, {}):
            print(f"  {labels[key]}: {results[key]['requests_per_second'] * BATCH_ROWS:,.0f} rows/s")
    for key in base_labels:
        now, then = results.get(key.removesuffix(BASELINE_SUFFIX), {}), results[key]
        if "requests_per_second" in now and "requests_per_second" in then:
            print(
                f"  now against the baseline, {ALL_LABELS[key.removesuffix(BASELINE_SUFFIX)]}: "
                f"{ratio(now, then, 'requests_per_second'):.2f}x the requests/s, p99 {ratio(now, then, 'p99_us'):.2f}x"
            )
    entity_answers = {
        key: r["answer"]["probability"]
        for key, r in results.items()
        if "answer" in r and key.removesuffix(BASELINE_SUFFIX) in ENTITY_LABELS
    }
    if entity_answers:
        agree = ", ".join(f"{key} {p:.6f}" for key, p in entity_answers.items())
        print(f"  the first entity body's probability: in-process {setup['entity_probability']:.6f}, {agree}")
    print(
        "  each server a fresh process; requests/s over the measured run; latencies from wrk's histogram;\n"
        "  ours also writes its prediction log (parquet) as it serves; mlflow runs as `mlflow models serve`\n"
        "  starts it (uvicorn, one worker, access log on); the floor under ours' uvicorn settings (access log off)"
    )
    print(f"  load average after: {os.getloadavg()[0]:.1f} (other work on the box slows every contestant)\n")

    ok = {key: key in results and not results[key]["failed"] for key in [*ALL_LABELS, *base_labels]}
    ours, mlflow, floor = (results.get(key, {}) for key in ("ours", "mlflow", "floor"))
    throughput = ratio(ours, mlflow, "requests_per_second") if ok["ours"] and ok["mlflow"] else None
    p99 = ratio(ours, mlflow, "p99_us") if ok["ours"] and ok["mlflow"] else None
    share = ratio(ours, floor, "requests_per_second") if ok["ours"] and ok["floor"] else None
    if {"ours", "mlflow", "floor"} <= selected:
        print(
            f"ours vs mlflow: {fmt(throughput, '.1f', 'x')} the requests/s, p99 {fmt(p99, '.3f')} of mlflow's "
            f"(1/{fmt(None if not p99 else 1 / p99, '.1f')}); ours vs the floor: {fmt(share, '.0%')} of its requests/s"
        )
        print(
            f"targets: >= 10x mlflow's requests/s -> {fmt(throughput, '.1f', 'x')} ({verdict(throughput, 10, ok)}); "
            f"p99 <= 1/5 of mlflow's -> {fmt(p99, '.3f')} ({verdict(None if p99 is None else 1 / p99, 5, ok)}); "
            f">= 50% of the floor's requests/s -> {fmt(share, '.0%')} ({verdict(share, 0.5, ok, 'floor')})"
        )
    for key in ENTITY_LABELS:
        if key in results:
            print(entity_targets(key, results, ok))
    for line in oip_targets(results, ok):
        print(line)
    return 0


def oip_targets(results: dict[str, dict], ok: dict[str, bool]) -> list[str]:
    """Our OIP infer against MLServer's (one row: >= 5x requests/s, p99 <= 1/3; 100 rows: >= 2x rows/s),
    ours in binary beside it, and /invocations and entity /predict against /predict with the features (>= 50%
    of its requests/s each)."""

    def compare(key: str, other: str, figure: str) -> float | None:
        return ratio(results[key], results[other], figure) if ok.get(key) and ok.get(other) else None

    def judged(value: float | None, target: float, key: str, other: str, at_most: bool = False) -> str:
        if value is None:
            not_run = [name for name in (key, other) if name not in results]
            if not_run:
                return f"not run: {', '.join(not_run)}"
            failed = [name for name in (key, other) if not ok.get(name)]
            return f"not measured: {', '.join(failed)} failed"
        return "met" if (value <= target if at_most else value >= target) else "MISSED"

    lines = []
    for key in ("v2", "v2_binary"):
        throughput, p99 = compare(key, "mlserver", "requests_per_second"), compare(key, "mlserver", "p99_us")
        lines.append(
            f"targets for {OIP_LABELS[key]} vs {OIP_LABELS['mlserver']}: >= 5x its requests/s -> "
            f"{fmt(throughput, '.1f', 'x')} ({judged(throughput, 5, key, 'mlserver')}); p99 <= 1/3 of its p99 -> "
            f"{fmt(p99, '.3f')} ({judged(p99, 1 / 3, key, 'mlserver', at_most=True)})"
        )
    shipped = "mlserver_shipped"
    throughput, p99 = compare("v2", shipped, "requests_per_second"), compare("v2", shipped, "p99_us")
    lines.append(
        f"  the same for {OIP_LABELS['v2']} vs {OIP_LABELS[shipped]}: {fmt(throughput, '.1f', 'x')} its requests/s "
        f"({judged(throughput, 5, 'v2', shipped)}), p99 {fmt(p99, '.3f')} of its p99 "
        f"({judged(p99, 1 / 3, 'v2', shipped, at_most=True)})"
    )
    rows = compare("v2_batch", "mlserver_batch", "requests_per_second")  # the same rows per request
    lines.append(
        f"targets for {OIP_LABELS['v2_batch']} vs MLServer's: >= 2x its rows/s -> {fmt(rows, '.1f', 'x')} "
        f"({judged(rows, 2, 'v2_batch', 'mlserver_batch')})"
    )
    for key, label in (("invocations", OIP_LABELS["invocations"]), *ENTITY_LABELS.items()):
        if key == "invocations" or key in results:
            share = compare(key, "ours", "requests_per_second")
            lines.append(
                f"targets for {label}: >= 50% of /predict's requests/s (with the features) -> {fmt(share, '.0%')} "
                f"({judged(share, 0.5, key, 'ours')})"
            )
    return lines


def entity_targets(key: str, results: dict[str, dict], ok: dict[str, bool]) -> str:
    """entity /predict against mlflow's requests/s (>= 10x) and against ours' p99 with features (<= 2x)."""
    entity = results[key]
    if not ok[key]:
        return f"targets for {ENTITY_LABELS[key]}: MISSED: it failed"
    throughput = ratio(entity, results["mlflow"], "requests_per_second") if ok["mlflow"] else None
    p99 = ratio(entity, results["ours"], "p99_us") if ok["ours"] else None

    def missing(other: str) -> str:  # left out by --only, or run and failed
        return f"not run: {other}" if other not in results else f"not measured: {other} failed"

    throughput_verdict = missing("mlflow") if throughput is None else ("met" if throughput >= 10 else "MISSED")
    p99_verdict = missing("ours") if p99 is None else "met" if p99 <= 2 else "MISSED"
    return (
        f"targets for {ENTITY_LABELS[key]}: >= 10x mlflow's requests/s -> {fmt(throughput, '.1f', 'x')} "
        f"({throughput_verdict}); p99 <= 2x ours' with the features -> {fmt(p99, '.2f', 'x')} ({p99_verdict})"
    )


def ratio(a: dict, b: dict, key: str) -> float:
    return a[key] / b[key] if b[key] else float("inf")


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def verdict(value: float | None, target: float, ok: dict[str, bool], other: str = "mlflow") -> str:
    if not ok["ours"]:
        return "MISSED: ours failed"
    if value is None:
        return f"not measured: {other} failed"
    return "met" if value >= target else "MISSED"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every server stopped, temporary state removed", file=sys.stderr)
        sys.exit(130)
