"""Online serving benchmark: our model server against ``mlflow models serve`` on the same registered version.

Three contestants, one at a time (never two servers at once), each a subprocess bound to 127.0.0.1 on a
free port, waited on until ready, checked with one request, warmed up, then loaded and stopped:
- ours: ``python -m ml_platform.serving --no-feast``, POST /predict {"features": [9 numbers]};
- mlflow: ``mlflow models serve -m models:/<name>/<version> --env-manager local``, POST /invocations
  {"dataframe_split": {...}} with the same row (MLflow's own defaults: one uvicorn worker, access log on);
- floor: a bare FastAPI app whose POST /predict returns a constant, under the uvicorn settings ours uses
  (``uvicorn.run`` defaults: one worker, loop and HTTP parser auto (uvloop, httptools), access log off).

One model serves both: trained with ``ml_platform.training.train.fit`` on a small generated training set
(customer stats from ``pandas.merge_asof``, as the unit tests build it, no Feast), registered through
``Registry.log_and_register`` and promoted to champion in a temporary ML_PLATFORM_HOME (sqlite MLflow store).

The same load generator for all: wrk, 2 threads, 8 keep-alive connections, single-row requests, for
--seconds each. Printed: requests/s, p50, p99, errors. Targets (printed, never asserted): ours >= 10x
mlflow's requests/s with p99 <= 1/5 of mlflow's; ours >= half the floor's requests/s.

    python bench/serving.py                   # 15 s per contestant, 8 connections
    python bench/serving.py --seconds 30 --connections 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
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


# ---- preparation (a process of its own: the parent imports nothing heavy) ------------------------
def child_prepare() -> dict:
    """Train a small model, register it and make it champion in ML_PLATFORM_HOME; return what the load needs."""
    from datetime import UTC, date, datetime

    from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
    from ml_platform.features.engineering import MODEL_FEATURES, stats_before
    from ml_platform.registry import CHAMPION, Registry
    from ml_platform.settings import Settings
    from ml_platform.training.dataset import assemble_training_set, split_xy
    from ml_platform.training.train import TrainingParams, fit, params_dict, predict_probability

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

    registry = Registry(
        settings.tracking_uri, settings.model_name, settings.experiment_name, settings.mlflow_artifact_root
    )
    registered = registry.log_and_register(
        trained, params=params_dict(params), run_key="bench-serving", example=x_valid.head(5), run_tags={}, figures={}
    )
    registry.promote(registered.version, promoted_at=datetime.now(UTC).isoformat())
    assert registry.version_for_alias(CHAMPION) == registered.version

    row = x_valid.dropna().iloc[[0]].astype("float64")  # a real row with customer history: no missing values
    return {
        "model_name": settings.model_name,
        "version": registered.version,
        "tracking_uri": settings.tracking_uri,
        "rows": len(training_set),
        "trees": trained.best_iteration + 1,
        "columns": list(MODEL_FEATURES),
        "features": [float(v) for v in row.iloc[0]],
        "probability": float(predict_probability(trained.booster, row)[0]),
        "prepare_seconds": time.perf_counter() - started,
    }


# ---- servers -----------------------------------------------------------------------------------
@dataclass
class Contestant:
    key: str
    label: str
    command: list[str]
    path: str  # the POST route loaded
    body: dict
    ready_path: str | None  # GET route that answers 200 once ready; None: poll the POST route itself
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
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
    script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(contestant.body))))  # a Lua string literal
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in contestant.command]
    server = Server(Contestant(**{**contestant.__dict__, "command": command}), port, work)
    try:
        ready = server.wait_ready()
        status, answer = http(server.url + contestant.path, contestant.body)
        if status != 200:
            raise RuntimeError(f"{contestant.key}: POST {contestant.path} answered {status}: {answer[:500]!r}")
        run_wrk(server.url + contestant.path, script, WARMUP_SECONDS, connections)
        figures = run_wrk(server.url + contestant.path, script, seconds, connections)
        figures["ready_seconds"] = ready
        figures["answer"] = json.loads(answer)
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


def answered_probability(key: str, answer: dict) -> float | None:
    if key == "ours":
        return float(answer["probability"])
    if key == "mlflow":
        return float(answer["predictions"][0])
    return None


def _terminate(signum, frame):  # SIGTERM to the benchmark: unwind through the finally blocks
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="load per contestant (default 15)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    parser.add_argument("--child", choices=["prepare"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(child_prepare()))
        return 0

    if not WRK:
        print(
            "wrk, the load generator, is not installed; install it with `apt-get install wrk` (Debian/Ubuntu package "
            "`wrk`) and run again. There is no fallback: one generator for every contestant is the point.",
            file=sys.stderr,
        )
        return 2
    if args.seconds < 1 or args.connections < 1:
        parser.error("--seconds and --connections must be at least 1")

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
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", "prepare"],
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
            f"single-row POSTs on keep-alive connections, after a {WARMUP_SECONDS} s warm-up; one server at a time\n"
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
        for contestant in contestants(setup, work, base_env):
            print(f"  {contestant.label} ...", end="", flush=True)
            try:
                figures = measure(contestant, work, args.seconds, args.connections)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f" failed\n{error}", file=sys.stderr)
                figures = {"error": str(error).splitlines()[0], "failed": True}
            results[contestant.key] = figures
            print(" done" if "error" in figures else f" ready in {figures['ready_seconds']:.1f} s, done", flush=True)
            time.sleep(1)  # let the stopped server's sockets and CPU settle before the next one
    finally:
        shutil.rmtree(work, ignore_errors=True)

    labels = {
        "ours": "ours: ml_platform.serving /predict",
        "mlflow": "mlflow models serve /invocations",
        "floor": "floor: bare FastAPI constant",
    }
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
        key: answered_probability(key, r["answer"]) for key, r in results.items() if "answer" in r and key != "floor"
    }
    if probabilities:
        agree = ", ".join(f"{key} {p:.6f}" for key, p in probabilities.items())
        print(f"  the row's probability: in-process {setup['probability']:.6f}, {agree}")
    print(
        "  each server a fresh process; requests/s over the measured run; latencies from wrk's histogram;\n"
        "  ours also writes its prediction log (parquet) as it serves; mlflow runs as `mlflow models serve`\n"
        "  starts it (uvicorn, one worker, access log on); the floor under ours' uvicorn settings (access log off)"
    )
    print(f"  load average after: {os.getloadavg()[0]:.1f} (other work on the box slows every contestant)\n")

    ok = {key: key in results and not results[key]["failed"] for key in labels}
    ours, mlflow, floor = (results.get(key, {}) for key in labels)
    throughput = ratio(ours, mlflow, "requests_per_second") if ok["ours"] and ok["mlflow"] else None
    p99 = ratio(ours, mlflow, "p99_us") if ok["ours"] and ok["mlflow"] else None
    share = ratio(ours, floor, "requests_per_second") if ok["ours"] and ok["floor"] else None
    print(
        f"ours vs mlflow: {fmt(throughput, '.1f', 'x')} the requests/s, p99 {fmt(p99, '.3f')} of mlflow's "
        f"(1/{fmt(None if not p99 else 1 / p99, '.1f')}); ours vs the floor: {fmt(share, '.0%')} of its requests/s"
    )
    print(
        f"targets: >= 10x mlflow's requests/s -> {fmt(throughput, '.1f', 'x')} ({verdict(throughput, 10, ok)}); "
        f"p99 <= 1/5 of mlflow's -> {fmt(p99, '.3f')} ({verdict(None if p99 is None else 1 / p99, 5, ok)}); "
        f">= 50% of the floor's requests/s -> {fmt(share, '.0%')} ({verdict(share, 0.5, ok, 'floor')})"
    )
    return 0


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
