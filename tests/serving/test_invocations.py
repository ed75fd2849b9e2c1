"""/invocations and /ping answer as ``mlflow models serve`` does for the same model version."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ml_platform.features.engineering import MODEL_FEATURES


@pytest.fixture(scope="module")
def rows(transactions):
    _, features = transactions
    known = features.dropna().head(4).reset_index(drop=True)
    assert len(known) == 4
    return known


@pytest.fixture(scope="module")
def pyfunc_predictions(registry, settings, champion_version, rows):  # noqa: F811
    import mlflow.pyfunc

    with registry._fluent():
        model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{champion_version}")
    return np.asarray(model.predict(rows), dtype="float64")


def payloads(rows) -> dict[str, tuple[str, object]]:
    """Every format MLflow's scoring protocol accepts, with the same rows: (content type, body)."""
    return {
        "dataframe_split": ("application/json", {"dataframe_split": rows.to_dict(orient="split", index=False)}),
        "dataframe_records": ("application/json", {"dataframe_records": rows.to_dict(orient="records")}),
        "instances": ("application/json", {"instances": rows.to_dict(orient="records")}),
        "inputs": ("application/json", {"inputs": rows.to_dict(orient="list")}),
        "csv": ("text/csv", rows.to_csv(index=False)),
    }


def post(client: httpx.Client, content_type: str, body) -> httpx.Response:
    if isinstance(body, str):
        return client.post("/invocations", content=body, headers={"Content-Type": content_type})
    return client.post("/invocations", json=body)


def test_ping(main_server):
    with main_server.client() as client:
        answer = client.get("/ping")
    assert answer.status_code == 200
    assert answer.text == "\n"


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "instances", "inputs", "csv"])
def test_invocations_equal_pyfunc(main_server, rows, pyfunc_predictions, form):
    content_type, body = payloads(rows)[form]
    with main_server.client() as client:
        answer = post(client, content_type, body)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert list(answer.json()) == ["predictions"]
    np.testing.assert_allclose(predictions, pyfunc_predictions, rtol=0, atol=1e-12)


def test_invocations_errors_are_mlflows(main_server, rows):
    with main_server.client() as client:
        legacy = client.post("/invocations", json={"columns": list(MODEL_FEATURES), "data": [[0.0] * 9]})
        missing = client.post(
            "/invocations", json={"dataframe_records": [{k: 1.0 for k in MODEL_FEATURES if k != "amount"}]}
        )
        bad_type = client.post("/invocations", content="x", headers={"Content-Type": "application/xml"})
    assert legacy.status_code == 400 and legacy.json()["error_code"] == "BAD_REQUEST"
    assert "scoring protocol has changed" in legacy.json()["message"]
    assert missing.status_code == 400 and "amount" in missing.json()["message"]
    assert bad_type.status_code == 415


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_serve(settings, champion_version, tmp_path_factory):  # noqa: F811
    """A real ``mlflow models serve`` of the champion version (STACK_NOTES trap 11: uvicorn on PATH, local env)."""
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        **settings.process_environment(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_REGISTRY_URI": settings.tracking_uri,
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    log = tmp_path_factory.mktemp("mlflow_serve") / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                os.path.join(bin_dir, "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{settings.model_name}/{champion_version}",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(20)


def test_same_answers_as_mlflow_models_serve(main_server, mlflow_serve, rows):
    cases = dict(payloads(rows))
    cases["inputs_without_names"] = ("application/json", {"inputs": rows.to_numpy().tolist()})  # 400 in both
    cases["legacy"] = ("application/json", {"columns": list(MODEL_FEATURES), "data": rows.to_numpy().tolist()})
    with main_server.client() as ours, httpx.Client(base_url=mlflow_serve, timeout=30) as theirs:
        assert ours.get("/ping").text == theirs.get("/ping").text
        for form, (content_type, body) in cases.items():
            mine, reference = post(ours, content_type, body), post(theirs, content_type, body)
            assert mine.status_code == reference.status_code, form
            if reference.status_code == 200:
                assert mine.json() == reference.json(), form
            else:
                assert mine.json()["error_code"] == reference.json()["error_code"], form
