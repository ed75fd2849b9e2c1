"""ModelServerClient against the real model server (uvicorn on 127.0.0.1): every method's answer compared
with the server's own figures and the offline predictions, and each error type with the message a caller
shows (nothing listening, 401 without the token, the server's 422 detail, a version that never comes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ml_platform.registry import Registry
from ml_platform.serving.client import (
    BadAnswer,
    ModelServerClient,
    ModelServerError,
    ServerUnreachable,
    StatusError,
    WaitTimedOut,
)
from tests.support.servers import make_config, serve

SCORING, ADMIN = "client-sc0ring", "client-adm1n"
FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]


@pytest.fixture(scope="module")
def guarded(settings, champion_version, tmp_path_factory):  # noqa: F811
    """A server that requires both tokens, without the feature store."""
    config = make_config(settings, tmp_path_factory.mktemp("client"), feast=None, auth_token=SCORING, admin_token=ADMIN)
    with serve(config) as running:
        yield running


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_probes_answer_what_the_server_serves(guarded, champion_version, settings):
    with ModelServerClient(guarded.url, token=SCORING, admin_token=ADMIN) as client:
        health = client.health()
        assert health["status"] == "ok" and health["model_name"] == settings.model_name
        assert health["model_version"] == champion_version
        assert client.ready() is True
        assert client.routing()["champion_version"] == champion_version
        client.predict(FEATURES)
        metrics = client.metrics()
    assert 'ml_platform_serving_requests_total{route="/predict",status_code="200",variant="champion"}' in metrics


def test_predict_one_row_and_a_batch_equal_the_offline_model(main_server, transactions, offline, champion_version):
    rows, features = transactions
    predict, threshold = offline
    expected = predict(features)
    vectors = features.to_numpy(dtype="float64").tolist()  # the new customer's stats are NaN: sent as null
    with ModelServerClient(main_server.url) as client:
        one = client.predict(vectors[-1])
        by_features = client.predict_batch(vectors)
        by_transaction = client.predict_batch(rows)
        first_transaction = client.predict(rows[0])
    assert one["probability"] == pytest.approx(expected[-1], abs=1e-9) and one["model_version"] == champion_version
    assert [p["probability"] for p in by_features] == pytest.approx(list(expected), abs=1e-9)
    assert [p["probability"] for p in by_transaction] == pytest.approx(list(expected), abs=1e-9)
    assert [p["is_fraud"] for p in by_transaction] == [bool(p >= threshold) for p in expected]
    assert first_transaction["probability"] == pytest.approx(expected[0], abs=1e-9)


def test_nothing_listening_is_unreachable_naming_the_cause(free_port):
    url = f"http://127.0.0.1:{free_port}"
    with ModelServerClient(url, timeout=2.0) as client, pytest.raises(ServerUnreachable) as error:
        client.health()
    assert str(error.value) == f"{url}/health did not answer: ConnectionRefusedError: [Errno 111] Connection refused"
    assert error.value.status_code is None and error.value.url == f"{url}/health"


def test_a_slow_answer_is_unreachable_after_the_timeout():
    """A listening socket that never answers: the read times out, named as such."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with ModelServerClient(url) as client, pytest.raises(ServerUnreachable, match="did not answer: .*timed out"):
            client.health(timeout=0.3)
        # at least the timeout; the upper bound only proves it did not hang (generous: a busy machine is slow)
        assert 0.3 <= time.monotonic() - started < 30.0


def test_without_the_token_the_401_and_the_servers_message(guarded):
    with ModelServerClient(guarded.url) as client, pytest.raises(StatusError) as error:
        client.predict(FEATURES)
    detail = (
        "authorization: missing; this route needs the scoring token (ML_PLATFORM_SERVING_TOKEN) as "
        "'Authorization: Bearer <token>'"
    )
    assert error.value.status_code == 401 and error.value.detail == detail
    assert str(error.value) == f"POST {guarded.url}/predict answered HTTP 401: {detail}"


def test_each_token_goes_to_its_routes(guarded, champion_version):
    """The scoring token opens scoring and not /admin; the admin token the reverse."""
    with ModelServerClient(guarded.url, token=SCORING, admin_token=SCORING) as scoring_only:
        assert scoring_only.predict(FEATURES)["model_version"] == champion_version
        with pytest.raises(StatusError) as error:
            scoring_only.routing()
    assert error.value.status_code == 403 and "the scoring token does not open /admin/*" in error.value.detail
    with ModelServerClient(guarded.url, token=ADMIN, admin_token=ADMIN) as admin_only:
        assert admin_only.routing()["champion_version"] == champion_version
        with pytest.raises(StatusError) as error:
            admin_only.predict(FEATURES)
    assert error.value.status_code == 403 and "the admin token opens /admin/* only" in error.value.detail


def test_a_422_surfaces_the_servers_detail(guarded):
    with ModelServerClient(guarded.url, token=SCORING) as client:
        with pytest.raises(StatusError) as error:
            client.predict([1.0, 2.0])
        assert error.value.status_code == 422
        assert error.value.detail.startswith("features: expected 9") and "got 2" in error.value.detail
        assert error.value.detail in str(error.value)
        with pytest.raises(StatusError) as error:
            client.predict_batch([FEATURES, {"features": FEATURES, "request_id": 7}])
        assert error.value.status_code == 422 and error.value.detail.startswith("instances[1].request_id")


def test_wait_for_version_returns_the_health_or_times_out_naming_the_version_seen(guarded, champion_version):
    with ModelServerClient(guarded.url, token=SCORING) as client:
        assert client.wait_for_version(champion_version, 5.0)["model_version"] == champion_version
        started = time.monotonic()
        with pytest.raises(WaitTimedOut) as error:
            client.wait_for_version(champion_version + 100, 1.0, interval=0.1)
    assert 1.0 <= time.monotonic() - started < 30.0  # waited its 1 s, then gave up (the bound: no hang)
    assert str(error.value) == (
        f"the model server at {guarded.url} still serves v{champion_version} after 1 s, not v{champion_version + 100}"
    )
    assert error.value.last_seen == champion_version


def test_wait_until_ready_returns_or_names_the_last_answer(guarded, free_port):
    with ModelServerClient(guarded.url, token=SCORING) as client:
        client.wait_until_ready(5.0)
    url = f"http://127.0.0.1:{free_port}"
    with ModelServerClient(url) as client, pytest.raises(WaitTimedOut) as error:
        client.wait_until_ready(0.5, interval=0.1)
    assert str(error.value) == (
        f"the model server at {url} was not ready after 0 s ({url}/v2/health/ready did not answer: "
        "ConnectionRefusedError: [Errno 111] Connection refused)"
    )


def test_a_server_without_a_champion_is_not_ready_and_says_why(settings, tmp_path):  # noqa: F811
    model = Registry.from_settings(settings, model_name=f"serving_client_{uuid.uuid4().hex[:6]}")
    model.client.create_registered_model(model.model_name)  # registered, no champion alias
    config = make_config(settings, tmp_path, model_name=model.model_name, feast=None, poll_seconds=0.05)
    with serve(config, wait_ready=False) as running, ModelServerClient(running.url) as client:
        assert client.ready() is False
        # Until its first look at the registry is over the server says "loading the champion"; then why not.
        deadline = time.monotonic() + 60.0  # generous: a busy machine starts the server slowly
        while True:
            with pytest.raises(StatusError) as error:
                client.health()
            if error.value.detail != "loading the champion" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        with pytest.raises(WaitTimedOut) as waited:
            client.wait_until_ready(0.5, interval=0.1)
    reason = error.value.detail
    assert error.value.status_code == 503 and model.model_name in reason and "champion" in reason
    assert f"/v2/health/ready answered HTTP 503: {reason})" in str(waited.value)


def test_wait_until_ready_stops_when_the_check_raises(free_port):
    """The check (a deployment's "did the process exit?") runs before every probe and ends the wait."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    checks = []

    def exited() -> None:
        checks.append(time.monotonic())
        if len(checks) == 3:
            raise RuntimeError(f"exited with code {process.returncode}")

    with ModelServerClient(f"http://127.0.0.1:{free_port}") as client, pytest.raises(RuntimeError, match="code 0"):
        client.wait_until_ready(30.0, interval=0.05, check=exited)
    assert len(checks) == 3


class _NotTheServer(BaseHTTPRequestHandler):
    """Something else on the port: answers 200 with HTML, and JSON of the wrong shape on /predict."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(b"<html>hello</html>", "text/html")

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(b"[1, 2]", "application/json")

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_answer_outside_the_protocol_is_a_bad_answer():
    other = ThreadingHTTPServer(("127.0.0.1", 0), _NotTheServer)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        with ModelServerClient(url) as client:
            with pytest.raises(BadAnswer) as error:
                client.health()
            assert error.value.status_code == 200
            assert str(error.value).startswith(f"GET {url}/health answered HTTP 200 with a body that is not JSON")
            assert "<html>hello</html>" in str(error.value)
            with pytest.raises(BadAnswer, match="JSON that is not an object: \\[1, 2\\]"):
                client.predict(FEATURES)
    finally:
        other.shutdown()
        other.server_close()


def test_every_error_is_a_model_server_error_and_a_bad_url_a_value_error():
    assert all(issubclass(kind, ModelServerError) for kind in (ServerUnreachable, StatusError, BadAnswer, WaitTimedOut))
    for url in ("127.0.0.1:8080", "ftp://host/", "", "http://"):
        with pytest.raises(ValueError, match="url: expected the model server's http\\(s\\) URL"):
            ModelServerClient(url)


def test_importing_the_client_loads_no_server_code():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ml_platform.serving.client; "
            "print(sorted(set(sys.modules) & {'fastapi', 'xgboost', 'pandas', 'numpy', 'uvicorn', 'mlflow'}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
