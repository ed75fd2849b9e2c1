"""/invocations and /ping answer as ``mlflow models serve`` does for the same model version.

- Every input form, CSV, and the bodies MLflow refuses get the same status as a real
  ``mlflow models serve`` of the same version, and the same bytes when it answers; where MLflow
  answers 500, this server answers 400 naming the problem.
- Answered rows are logged under the X-Request-Id they came with.
- The fast path (the ASGI layer) and the route answer the same bytes for the same bodies, and a
  100-row request reaches XGBoost as one matrix.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import read_prediction_log
from ml_platform.serving.models import InplacePredictor
from ml_platform.serving.protocol import mlflow as mlflow_protocol
from ml_platform.serving.protocol.mlflow_parser import ScoringError, parse_invocation
from ml_platform.serving.schemas import ApiError
from tests.support.servers import free_port, make_config, serve

F = list(MODEL_FEATURES)
JSON_TYPE = "application/json"


@pytest.fixture(scope="module")
def rows(transactions):
    _, features = transactions
    known = features.dropna().head(4).reset_index(drop=True)
    assert len(known) == 4
    return known


@pytest.fixture(scope="module")
def served(settings, champion_version, tmp_path_factory):
    """The session's model, champion only, as deployed but without the feature store (the scoring
    protocol carries every feature)."""
    config = make_config(settings, tmp_path_factory.mktemp("invocations"), feast=None)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def pyfunc_predictions(registry, settings, champion_version, rows):
    """MLflow's own answers for the rows: the registered version loaded as MLflow loads it (a test's
    reference, on a version the session itself trained)."""
    import mlflow.pyfunc

    with registry._fluent():
        model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{champion_version}")
    return np.asarray(model.predict(rows), dtype="float64")


def payloads(rows) -> dict[str, tuple[str, object]]:
    """Every format MLflow's scoring protocol accepts, with the same rows: (content type, body)."""
    return {
        "dataframe_split": (JSON_TYPE, {"dataframe_split": rows.to_dict(orient="split", index=False)}),
        "dataframe_records": (JSON_TYPE, {"dataframe_records": rows.to_dict(orient="records")}),
        "instances": (JSON_TYPE, {"instances": rows.to_dict(orient="records")}),
        "inputs": (JSON_TYPE, {"inputs": rows.to_dict(orient="list")}),
        "csv": ("text/csv", rows.to_csv(index=False)),
    }


def as_bytes(body) -> bytes:
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode()


def post(client: httpx.Client, content_type: str | None, body, **headers) -> httpx.Response:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post("/invocations", content=as_bytes(body), headers=headers)


def test_ping(served):
    with served.client() as client:
        answer = client.get("/ping")
    assert answer.status_code == 200
    assert answer.text == "\n"


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "instances", "inputs", "csv"])
def test_invocations_equal_pyfunc(served, rows, pyfunc_predictions, form):
    content_type, body = payloads(rows)[form]
    with served.client() as client:
        answer = post(client, content_type, body)
    assert answer.status_code == 200, answer.text
    assert list(answer.json()) == ["predictions"]
    np.testing.assert_array_equal(answer.json()["predictions"], pyfunc_predictions)  # bit for bit
    assert len(set(pyfunc_predictions)) > 1  # different rows, different answers: the order is checked too


def test_invocations_errors_are_mlflows(served, rows):
    with served.client() as client:
        legacy = client.post("/invocations", json={"columns": F, "data": [[0.0] * 9]})
        missing = client.post("/invocations", json={"dataframe_records": [{k: 1.0 for k in F if k != "amount"}]})
        bad_type = client.post("/invocations", content="x", headers={"Content-Type": "application/xml"})
        weird = client.post("/invocations", json={"dataframe_split": {"columns": [{}], "data": []}})
        yes = {**dict.fromkeys(F, 1.0), "is_online": "yes"}
        string = client.post("/invocations", json={"dataframe_records": [yes]})
    assert legacy.status_code == 400 and legacy.json()["error_code"] == "BAD_REQUEST"
    assert "scoring protocol has changed" in legacy.json()["message"]
    assert missing.status_code == 400 and missing.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": f"dataframe_records: missing column 'amount'; the model needs {', '.join(F)}",
    }
    assert bad_type.status_code == 415 and bad_type.headers["content-type"].startswith("text/plain")
    assert "content-type" in bad_type.text and "'application/xml'" in bad_type.text
    assert weird.status_code == 400
    assert weird.json()["message"] == "dataframe_split.columns[0]: expected a column name; got an object"
    assert string.status_code == 400
    assert string.json()["message"] == ("dataframe_records[0].is_online: expected a number; got the string 'yes'")


# ---- the parser alone ----------------------------------------------------------------------------
def csv_text(records: list[dict]) -> str:
    lines = [",".join("" if value is None else repr(value) for value in record.values()) for record in records]
    return "\n".join([",".join(F), *lines]) + "\n"


def test_every_form_reads_into_the_same_matrix():
    matrix = np.arange(18, dtype="float64").reshape(2, 9) / 4
    matrix[1, 3] = np.nan
    records = [dict(zip(F, row, strict=True)) for row in matrix.tolist()]
    for record in records:
        for key, value in record.items():
            record[key] = None if np.isnan(value) else value
    bodies = {
        JSON_TYPE: [
            {"dataframe_split": {"columns": F, "data": [list(r.values()) for r in records]}},
            {"dataframe_split": {"columns": ["x", *F[::-1]], "data": [["s", *map(r.get, F[::-1])] for r in records]}},
            {"dataframe_records": records},
            {"dataframe_records": [records[0], {k: v for k, v in records[1].items() if k != F[3]}]},
            {"instances": records},
            {"instances": {k: [r[k] for r in records] for k in F}},
            {"inputs": {k: [r[k] for r in records] for k in F}},
            {"inputs": records, "params": {"ignored": True}},
        ],
        "text/csv": [csv_text(records)],
    }
    for content_type, forms in bodies.items():
        for body in forms:
            parsed = parse_invocation(as_bytes(body), content_type)
            assert parsed.dtype == np.float64 and parsed.flags.c_contiguous
            np.testing.assert_array_equal(parsed, matrix, err_msg=str(body)[:200])


BAD, INVALID = "BAD_REQUEST", "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code", "message"),
    [
        (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [[1.0] * 8]}}, 400, BAD,
         "dataframe_split.data[0]: expected a list of 9 values (one per column); got 8 values"),
        (JSON_TYPE, {"dataframe_split": {"columns": F[::-1], "data": [[1.0] * 8 + ["x"]]}}, 400, BAD,
         "dataframe_split.data[0][8] (amount): expected a number; got the string 'x'"),
        (JSON_TYPE, {"dataframe_split": {"columns": [*F, "amount"], "data": []}}, 400, INVALID,
         "dataframe_split.columns[9]: column 'amount' appears twice (first at 0)"),
        (JSON_TYPE, {"dataframe_split": {"data": [[1.0] * 9]}}, 400, INVALID,
         f"dataframe_split.columns: missing; name the columns (the model's are {', '.join(F)})"),
        (JSON_TYPE, {"dataframe_records": [dict.fromkeys(F, 1.0), {**dict.fromkeys(F, 1.0), "lifetime_value": {}}]},
         400, BAD, "dataframe_records[1].lifetime_value: expected a number; got an object"),
        (JSON_TYPE, {"dataframe_records": [{k: "x" for k in F[1:]}]}, 400, BAD,  # the values are read first
         "dataframe_records[0].hour_of_day: expected a number; got the string 'x'"),
        (JSON_TYPE, {"instances": [dict.fromkeys(F, 1.0), dict.fromkeys(F[1:], 1.0)]}, 400, BAD,
         "instances[1]: has other columns than instances[0] ('amount');"
         " every row of instances must have the same columns"),
        (JSON_TYPE, {"instances": [{**dict.fromkeys(F, 1.0), "x": 1}, dict.fromkeys(F, 1.0)]}, 400, INVALID,
         "instances[1]: has other columns than instances[0] ('x'); every row of instances must have the same columns"),
        (JSON_TYPE, {"inputs": {**dict.fromkeys(F, [1.0]), "amount": [1.0, 2.0]}}, 400, INVALID,
         "inputs.hour_of_day: 1 value(s), but inputs.amount has 2; every column needs one per row"),
        (JSON_TYPE, {"inputs": {**dict.fromkeys(F, [1.0]), "amount": [[1.0]]}}, 400, INVALID,
         "inputs.amount: expected numbers; got a list (nested lists are not this model's input)"),
        (JSON_TYPE, {"inputs": {**dict.fromkeys(F, 1.0), "is_online": [3.5e38]}}, 400, BAD,
         "inputs: row 0, column 'is_online': 3.5e+38 is infinite or outside the model's float32 range"
         " (about +-3.4e38)"),
        (JSON_TYPE, {"dataframe_records": [{**dict.fromkeys(F, 1.0), "amount": 2**1100}]}, 400, BAD,
         f"dataframe_records[0].amount: {str(2**1100)[:57]}... is too large for a number"),
        (JSON_TYPE, {"instances": []}, 400, INVALID,
         "instances: expected a list of objects (rows) or an object of columns; got an empty list"),
        (JSON_TYPE, {"inputs": "abc"}, 400, BAD,
         "inputs: expected a list of objects (rows) or an object of columns; got the string 'abc'"),
        (JSON_TYPE, {"messages": []}, 400, INVALID,
         "messages: MLflow's unified LLM format (messages, prompt, input) is not this model's input; send one of"
         " dataframe_split, dataframe_records, instances, inputs"),
        (JSON_TYPE, [1], 400, BAD,
         "body: expected a JSON object with exactly one of dataframe_split, dataframe_records, instances, inputs;"
         " got a list whose first item is the number 1"),
        ("text/csv", ",".join(F) + "\n1,2,3,x,5,6,7,8,9\n", 400, BAD,
         "text/csv: column 'category_code': expected numbers: could not convert string to float: 'x'"),
        ("text/csv", ",".join(F[:-1]) + "\n1,2,3,4,5,6,7,8\n", 400, INVALID,
         f"text/csv header: missing column 'amount_to_avg_ratio'; the model needs {', '.join(F)}"),
        ("application/json; charset=latin-1", {}, 415, BAD,
         "content-type: only the utf-8 charset is read; got 'latin-1'"),
        (None, {}, 415, BAD,
         "content-type: missing; this server reads application/json and text/csv (send a Content-Type header)"),
    ],
)  # fmt: skip
def test_the_parser_names_the_field_at_fault(content_type, body, status, code, message):
    with pytest.raises(ScoringError) as caught:
        parse_invocation(as_bytes(body), content_type)
    assert isinstance(caught.value, ApiError)
    assert (caught.value.status_code, caught.value.error_code, caught.value.message) == (status, code, message)


# ---- against a real `mlflow models serve` --------------------------------------------------------
def comparison_cases(rows) -> dict[str, tuple[str | None, bytes]]:
    """(content type, body) per case: every form, values of every kind, and bodies MLflow refuses."""
    first = rows.iloc[0].tolist()
    record = dict(zip(F, first, strict=True))
    without_amount = {k: v for k, v in record.items() if k != "amount"}
    header = ",".join(F)
    csv_row = ",".join(map(repr, first))
    cases: dict[str, tuple[str | None, object]] = dict(payloads(rows))
    cases.update(
        {
            "split_one_row": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [first]}}),
            "split_with_index": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [first], "index": [7]}}),
            "split_reordered_columns": (JSON_TYPE, {"dataframe_split": {"columns": F[::-1], "data": [first[::-1]]}}),
            "split_no_rows": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": []}}),
            "integers": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [[round(v) for v in first]]}}),
            "booleans": (JSON_TYPE, {"dataframe_records": [{**record, "is_online": True}]}),
            "null_value": (JSON_TYPE, {"dataframe_records": [{**record, "amount": None}]}),
            "null_in_inputs": (JSON_TYPE, {"inputs": {**{k: [v] for k, v in record.items()}, "amount": [None]}}),
            "nan_literal": (JSON_TYPE, json.dumps({"dataframe_records": [{**record, "amount": math.nan}]})),
            "numeric_string": (JSON_TYPE, {"dataframe_records": [{**record, "amount": "12.5"}]}),
            "string_value": (JSON_TYPE, {"dataframe_records": [{**record, "amount": "abc"}]}),
            "string_in_instances": (JSON_TYPE, {"instances": [{**record, "category_code": "abc"}]}),
            "nested_value": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [[[1.0], *first[1:]]]}}),
            "missing_column": (JSON_TYPE, {"dataframe_records": [without_amount]}),
            "missing_column_split": (JSON_TYPE, {"dataframe_split": {"columns": F[1:], "data": [first[1:]]}}),
            "missing_column_inputs": (JSON_TYPE, {"inputs": {k: [v] for k, v in without_amount.items()}}),
            "extra_column": (JSON_TYPE, {"dataframe_records": [{**record, "note": "anything", "x": [1, {}]}]}),
            "extra_column_split": (JSON_TYPE, {"dataframe_split": {"columns": [*F, "x"], "data": [[*first, "s"]]}}),
            "duplicate_column": (JSON_TYPE, {"dataframe_split": {"columns": [*F, "amount"], "data": [[*first, 1.0]]}}),
            "records_absent_in_one": (JSON_TYPE, {"dataframe_records": [record, without_amount]}),
            "instances_absent_in_one": (JSON_TYPE, {"instances": [record, without_amount]}),
            "instances_columns": (JSON_TYPE, {"instances": {k: [v] for k, v in record.items()}}),
            "inputs_records": (JSON_TYPE, {"inputs": [record, record]}),
            "inputs_scalars": (JSON_TYPE, {"inputs": record}),
            "inputs_broadcast": (JSON_TYPE, {"inputs": {**record, "amount": [1.0, 2.0]}}),
            "inputs_unequal": (JSON_TYPE, {"inputs": {**{k: [v] for k, v in record.items()}, "amount": [1.0, 2.0]}}),
            "inputs_without_names": (JSON_TYPE, {"inputs": rows.to_numpy().tolist()}),
            "with_params": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [first]}, "params": {"a": 1}}),
            "float32_overflow": (JSON_TYPE, {"dataframe_records": [{**record, "amount": 1e39}]}),
            "infinity_string": (JSON_TYPE, {"dataframe_records": [{**record, "amount": "inf"}]}),
            "huge_integer": (JSON_TYPE, {"dataframe_records": [{**record, "amount": 2**1100}]}),
            "hundred_rows": (JSON_TYPE, {"dataframe_records": rows.to_dict(orient="records") * 25}),
            "columns_of_objects": (JSON_TYPE, {"dataframe_split": {"columns": [{}], "data": []}}),
            "two_formats": (JSON_TYPE, {"dataframe_split": {"columns": F, "data": [first]}, "inputs": [first]}),
            "legacy": (JSON_TYPE, {"columns": F, "data": rows.to_numpy().tolist()}),
            "a_list": (JSON_TYPE, [record]),
            "llm_messages": (JSON_TYPE, {"messages": [{"role": "user", "content": "hi"}]}),
            "not_json": (JSON_TYPE, b"{not json"),
            "not_utf8": (JSON_TYPE, b'{"inputs": "\xff"}'),
            "empty_body": (JSON_TYPE, b""),
            "charset_utf8": ("application/json; charset=utf-8", {"dataframe_records": [record]}),
            "charset_latin1": ("application/json; charset=latin-1", {"dataframe_records": [record]}),
            "unknown_parameter": ("application/json; format=pandas-split", {"dataframe_records": [record]}),
            "wrong_content_type": ("application/xml", b"<rows/>"),
            "no_content_type": (None, {"dataframe_records": [record]}),
            "csv_one_row": ("text/csv", f"{header}\n{csv_row}\n"),
            "csv_empty_field": ("text/csv", f"{header}\n,{csv_row.split(',', 1)[1]}\n"),
            "csv_missing_column": ("text/csv", f"{','.join(F[1:])}\n{csv_row.split(',', 1)[1]}\n"),
            "csv_extra_column": ("text/csv", f"{header},note\n{csv_row},hello\n"),
            "csv_string_value": ("text/csv", f"{header}\nabc,{csv_row.split(',', 1)[1]}\n"),
            "csv_header_only": ("text/csv", f"{header}\n"),
            "csv_empty": ("text/csv", ""),
        }
    )
    return {name: (content_type, as_bytes(body)) for name, (content_type, body) in cases.items()}


# Where MLflow answers 200 from what pandas makes of a malformed body, this server answers 400 naming it.
DELIBERATE_DIFFERENCES = {
    "ragged_rows": {"dataframe_split": {"columns": F, "data": [[1.0] * 9, [1.0] * 8]}},
    "index_longer_than_data": {"dataframe_split": {"columns": F, "data": [[1.0] * 9], "index": [0, 1]}},
    "data_as_columns": {"dataframe_split": {"columns": F, "data": {k: [1.0] for k in F}}},
    "empty_list_as_value": {"instances": [{**dict.fromkeys(F, 1.0), "amount": []}]},
    "llm_input_key": {"input": [1], **dict.fromkeys(F, 1.0)},
}


@pytest.fixture(scope="module")
def mlflow_serve(settings, champion_version, tmp_path_factory):
    """A real ``mlflow models serve`` of the champion version (uvicorn on PATH, the local environment)."""
    port = free_port()
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


def reference_client(url: str) -> httpx.Client:
    """A client of ``mlflow models serve``: a connection per request (after a 500 it drops the connection)."""
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def test_same_answers_as_mlflow_models_serve(served, mlflow_serve, rows):
    cases = comparison_cases(rows)
    statuses = {}
    with served.client() as ours, reference_client(mlflow_serve) as theirs:
        assert ours.get("/ping").text == theirs.get("/ping").text
        for name, (content_type, body) in cases.items():
            mine, reference = post(ours, content_type, body), post(theirs, content_type, body)
            statuses[name] = reference.status_code
            if reference.status_code == 200:
                assert mine.status_code == 200, (name, mine.text)
                assert mine.content == reference.content, name  # the same bytes
                assert mine.headers["content-type"] == reference.headers["content-type"], name
            elif reference.status_code < 500:
                assert mine.status_code == reference.status_code, (name, mine.text, reference.text[:300])
                if reference.headers["content-type"] == JSON_TYPE:
                    assert mine.json()["error_code"] == reference.json()["error_code"], name
                    assert mine.json()["message"], name
            else:  # MLflow fails on it; this server says what is wrong
                assert 400 <= mine.status_code < 500, (name, mine.status_code, mine.text)
    # the cases cover answers and each kind of refusal, as MLflow itself judged them
    answered = {name for name, status in statuses.items() if status == 200}
    assert {"dataframe_split", "dataframe_records", "instances", "inputs", "csv", "hundred_rows"} <= answered
    assert {"null_value", "nan_literal", "integers", "booleans", "numeric_string", "extra_column"} <= answered
    assert {"csv_extra_column", "csv_empty_field", "inputs_broadcast", "records_absent_in_one"} <= answered
    assert statuses["string_value"] == statuses["missing_column"] == statuses["csv_string_value"] == 400
    assert statuses["not_json"] == statuses["float32_overflow"] == 400
    assert statuses["wrong_content_type"] == statuses["charset_latin1"] == 415
    assert statuses["columns_of_objects"] == 500  # MLflow's TypeError; 400 here


def test_deliberate_differences_from_mlflow_models_serve(served, mlflow_serve):
    with served.client() as ours, reference_client(mlflow_serve) as theirs:
        for name, body in DELIBERATE_DIFFERENCES.items():
            mine, reference = post(ours, JSON_TYPE, body), post(theirs, JSON_TYPE, body)
            assert reference.status_code == 200, (name, reference.text[:300])
            assert mine.status_code == 400, (name, mine.text)
            assert mine.json()["error_code"] in (BAD, INVALID)


# ---- logging -------------------------------------------------------------------------------------
def test_answered_rows_are_logged_under_the_request_id(served, rows):
    records = rows.to_dict(orient="records")
    csv_body = rows.head(1).to_csv(index=False)
    with served.client() as client:
        batch = post(client, JSON_TYPE, {"dataframe_records": records}, **{"X-Request-Id": "inv-log-batch"})
        single = post(client, "text/csv", csv_body, **{"X-Request-Id": "inv-log-one"})
        refused = post(client, JSON_TYPE, {"dataframe_records": [{"amount": 1.0}]}, **{"X-Request-Id": "inv-log-bad"})
        too_long = post(client, JSON_TYPE, {"dataframe_records": records}, **{"X-Request-Id": "x" * 201})
        control = post(client, JSON_TYPE, {"dataframe_records": records}, **{"X-Request-Id": "inv\tlog"})
        longest = post(client, JSON_TYPE, {"dataframe_records": records[:1]}, **{"X-Request-Id": "y" * 200})
    assert batch.status_code == single.status_code == longest.status_code == 200
    assert refused.status_code == 400
    for answer in (too_long, control):
        assert answer.status_code == 422
        assert answer.json()["error_code"] == "BAD_REQUEST"
        assert answer.json()["message"].startswith("x-request-id: expected 1 to 200 printable characters")
    served.flush_log()
    log = read_prediction_log(served.config.log_dir)
    logged = log[log["request_id"].str.startswith("inv-log-")].sort_values("request_id").reset_index(drop=True)
    assert logged["request_id"].tolist() == [f"inv-log-batch/{i}" for i in range(4)] + ["inv-log-one"]
    np.testing.assert_array_equal(logged["probability"], [*batch.json()["predictions"], *single.json()["predictions"]])
    csv_row = pd.read_csv(io.StringIO(csv_body))[F].to_numpy()  # as pandas (and MLflow) read the CSV
    np.testing.assert_array_equal(logged[F].to_numpy(), np.vstack([rows.to_numpy(), csv_row]))
    assert set(logged["variant"]) == {"champion"}
    assert set(logged["model_version"]) == {served.server.deployment.champion.version}
    assert (log["request_id"] == "y" * 200).sum() == 1


# ---- the fast path -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(settings, champion_version, tmp_path_factory):
    """The session's model as ``served``, but every request through the FastAPI route."""
    config = make_config(settings, tmp_path_factory.mktemp("slow_invocations"), fast_path=False, feast=None)
    with serve(config) as running:
        yield running


def fast_bodies(rows) -> dict[str, bytes]:
    first = rows.iloc[0].tolist()
    record = dict(zip(F, first, strict=True))
    many = rows.to_dict(orient="records") * 25
    return {
        name: as_bytes(body)
        for name, body in {
            "split": {"dataframe_split": {"columns": F, "data": [first]}},
            "records": {"dataframe_records": [record]},
            "instances": {"instances": [record]},
            "instances_columns": {"instances": {k: [v] for k, v in record.items()}},
            "inputs": {"inputs": {k: [v] for k, v in record.items()}},
            "inputs_records": {"inputs": [record]},
            "null": {"dataframe_records": [{**record, "amount": None}]},
            "nan": json.dumps({"dataframe_split": {"columns": F, "data": [[float("nan"), *first[1:]]]}}),
            "all_missing": {"dataframe_split": {"columns": F, "data": [[None] * 9]}},
            "integers": {"dataframe_split": {"columns": F, "data": [[round(v) for v in first]]}},
            "big_integer": {"dataframe_records": [{**record, "amount": 2**60 + 1}]},
            "booleans_and_strings": {"dataframe_records": [{**record, "is_online": False, "amount": " 12.5 "}]},
            "no_rows": {"dataframe_split": {"columns": F, "data": []}},
            "hundred_rows_records": {"dataframe_records": many},
            "hundred_rows_split": {"dataframe_split": {"columns": F, "data": [list(r.values()) for r in many]}},
            "hundred_rows_inputs": {"inputs": {k: [r[k] for r in many] for k in F}},
        }.items()
    }


def bad_bodies(rows) -> dict[str, tuple[str, bytes]]:
    record = dict(zip(F, rows.iloc[0].tolist(), strict=True))
    return {
        "missing": (JSON_TYPE, as_bytes({"dataframe_records": [{k: 1.0 for k in F if k != "amount"}]})),
        "string": (JSON_TYPE, as_bytes({"dataframe_records": [{**record, "amount": "abc"}]})),
        "overflow": (JSON_TYPE, as_bytes({"inputs": {**record, "amount": 1e39}})),
        "weird_columns": (JSON_TYPE, as_bytes({"dataframe_split": {"columns": [{}], "data": []}})),
        "not_json": (JSON_TYPE, b"{nope"),
        "legacy": (JSON_TYPE, as_bytes({"columns": F, "data": [[1.0] * 9]})),
        "charset": ("application/json; charset=latin-1", as_bytes({"dataframe_records": [record]})),
        "too_many_rows": (JSON_TYPE, as_bytes({"dataframe_records": [record] * (mlflow_protocol.FAST_MAX_ROWS + 1)})),
    }


def test_fast_path_answers_what_the_route_answers(served, slow_server, rows):
    handler = mlflow_protocol.fast_routes(served.server)["/invocations"]
    scope = {"headers": [(b"content-type", b"application/json"), (b"x-request-id", b"fast-direct")]}
    with served.client() as fast, slow_server.client() as slow:
        for name, body in fast_bodies(rows).items():
            taken = handler(body, time.perf_counter(), scope)
            if inspect.isawaitable(taken):  # one row: scored in the next loop turn with that turn's rows
                taken = asyncio.run(taken)
            assert taken is not None, name  # the fast path takes it
            answers = [post(client, JSON_TYPE, body) for client in (fast, slow)]
            assert [a.status_code for a in answers] == [200, 200], (name, [a.text for a in answers])
            assert answers[0].content == answers[1].content == taken.content, name
            assert answers[0].headers["content-type"] == answers[1].headers["content-type"] == JSON_TYPE
        for name, (content_type, body) in bad_bodies(rows).items():
            assert handler(body, time.perf_counter(), {"headers": [(b"content-type", content_type.encode())]}) is None
            answers = [post(client, content_type, body) for client in (fast, slow)]
            assert answers[0].status_code == answers[1].status_code, name
            assert answers[0].content == answers[1].content, name
            expected = 200 if name == "too_many_rows" else 415 if name == "charset" else 400
            assert answers[0].status_code == expected, (name, answers[0].text)


def test_fast_path_and_route_log_the_same_rows(served, slow_server, rows):
    body = as_bytes({"dataframe_records": rows.to_dict(orient="records")})
    with served.client() as fast, slow_server.client() as slow:
        assert post(fast, JSON_TYPE, body, **{"X-Request-Id": "inv-same-fast"}).status_code == 200
        assert post(slow, JSON_TYPE, body, **{"X-Request-Id": "inv-same-slow"}).status_code == 200
    served.flush_log()
    slow_server.flush_log()
    fast_log = read_prediction_log(served.config.log_dir)
    slow_log = read_prediction_log(slow_server.config.log_dir)
    fast_rows = fast_log[fast_log["request_id"].str.startswith("inv-same-fast")].reset_index(drop=True)
    slow_rows = slow_log[slow_log["request_id"].str.startswith("inv-same-slow")].reset_index(drop=True)
    assert len(fast_rows) == len(slow_rows) == len(rows)
    same = [c for c in fast_rows.columns if c not in ("time", "request_id", "latency_ms")]
    assert fast_rows[same].equals(slow_rows[same])


class CountingPredictor(InplacePredictor):
    """The champion's predictor, recording the shape of every matrix it is given."""

    def __init__(self, booster) -> None:
        super().__init__(booster)
        self.shapes: list[tuple[int, ...]] = []
        self.single_rows = 0

    def predict(self, features):
        self.shapes.append(np.shape(features))
        return super().predict(features)

    def predict_row(self, values):
        self.single_rows += 1
        return super().predict_row(values)


@pytest.mark.parametrize("which", ["fast", "route"])
def test_a_hundred_rows_reach_xgboost_as_one_matrix(served, slow_server, rows, which):
    running = served if which == "fast" else slow_server
    champion = running.server.deployment.champion
    original = champion.predictor
    counting = CountingPredictor(champion.booster)
    many = rows.to_dict(orient="records") * 25
    try:
        object.__setattr__(champion, "predictor", counting)
        with running.client() as client:
            answer = post(client, JSON_TYPE, {"dataframe_records": many})
    finally:
        object.__setattr__(champion, "predictor", original)
    assert answer.status_code == 200
    assert counting.shapes == [(100, 9)] and counting.single_rows == 0
    expected = original.predict(rows.to_numpy("float64")).tolist() * 25
    np.testing.assert_array_equal(answer.json()["predictions"], expected)
