"""Triton's own HTTP client (``tritonclient.http``) against the model server, as a KServe/Triton user runs it.

With its defaults (inputs in binary, outputs asked for in binary), with JSON both ways, FP64 and FP32,
one [N, 9] tensor or 9 named tensors: its answers are /predict's probabilities for the same rows, bit
for bit, and the rows it sent are the rows logged.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import read_prediction_log


@pytest.fixture(scope="module")
def client(main_server):
    connection = triton.InferenceServerClient(main_server.url.removeprefix("http://"), network_timeout=30.0)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def feature_rows():
    """Rows over plausible ranges with missing values (NaN), and one row with every value missing."""
    rng = np.random.default_rng(21)
    scale = np.array([400.0, 24.0, 7.0, 90.0, 60.0, 150.0, 8_000.0, 30.0, 5.0])
    matrix = np.abs(rng.normal(size=(40, len(MODEL_FEATURES)))) * scale
    matrix[rng.random(matrix.shape) < 0.15] = np.nan
    matrix[0] = np.nan
    return matrix


def predict_route(main_server, matrix: np.ndarray) -> np.ndarray:
    """What ``POST /predict`` answers for these rows (null for a missing value)."""
    instances = [{"features": [None if np.isnan(v) else float(v) for v in row]} for row in matrix]
    with main_server.client() as http:
        answer = http.post("/predict", json={"instances": instances})
    assert answer.status_code == 200, answer.text
    return np.array([p["probability"] for p in answer.json()["predictions"]])


def one_input(matrix: np.ndarray, datatype: str = "FP64", binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(matrix.shape), datatype)
    tensor.set_data_from_numpy(matrix.astype("float32" if datatype == "FP32" else "float64"), binary_data=binary)
    return tensor


def test_health_and_metadata(client, settings, champion_version):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(settings.model_name)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(settings.model_name)
    assert metadata["inputs"][0]["shape"] == [-1, 9] and metadata["outputs"][0]["name"] == "probability"
    assert str(champion_version) in metadata["versions"]


def test_defaults_binary_both_ways_equal_predict(client, main_server, settings, feature_rows):
    result = client.infer(settings.model_name, [one_input(feature_rows)])  # no outputs named: binary asked for
    output = result.get_output("probability")
    assert "data" not in output and output["parameters"]["binary_data_size"] == 8 * len(feature_rows)
    assert output["datatype"] == "FP64" and output["shape"] == [len(feature_rows)]
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, feature_rows))
    assert result.get_response()["model_name"] == settings.model_name


def test_json_both_ways_equal_predict(client, main_server, settings, feature_rows):
    complete = feature_rows[~np.isnan(feature_rows).any(axis=1)]  # the client writes NaN as a JSON NaN literal
    assert len(complete) >= 5
    result = client.infer(
        settings.model_name,
        [one_input(complete, binary=False)],
        outputs=[triton.InferRequestedOutput("probability", binary_data=False)],
        request_id="tc-json",
    )
    output = result.get_output("probability")
    assert "parameters" not in output and len(output["data"]) == len(complete)
    assert result.get_response()["id"] == "tc-json"
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, complete))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_inputs_equal_predict_on_the_float32_values(client, main_server, settings, feature_rows, binary):
    rows = feature_rows if binary else feature_rows[~np.isnan(feature_rows).any(axis=1)]
    result = client.infer(settings.model_name, [one_input(rows, "FP32", binary=binary)])
    widened = rows.astype("float32").astype("float64")
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, widened))
    # XGBoost compares float32 values: the float64 rows themselves score the same
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, rows))


def test_json_inputs_binary_output_and_a_version(client, main_server, settings, champion_version, feature_rows):
    complete = feature_rows[~np.isnan(feature_rows).any(axis=1)][:3]
    result = client.infer(
        settings.model_name,
        [one_input(complete, binary=False)],
        model_version=str(champion_version),
        outputs=[triton.InferRequestedOutput("probability", binary_data=True)],
    )
    assert result.get_output("probability")["parameters"]["binary_data_size"] == 24
    assert result.get_response()["model_version"] == str(champion_version)
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, complete))


def test_one_tensor_per_feature(client, main_server, settings, feature_rows):
    columns = []
    for index, name in enumerate(MODEL_FEATURES):
        column = triton.InferInput(name, [len(feature_rows)], "FP64")
        column.set_data_from_numpy(np.ascontiguousarray(feature_rows[:, index]))
        columns.append(column)
    result = client.infer(settings.model_name, columns[::-1])  # any order: tensors go by name
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, feature_rows))


def test_a_large_batch_is_scored_whole(client, main_server, settings):
    rng = np.random.default_rng(5)
    matrix = np.abs(rng.normal(size=(2_000, len(MODEL_FEATURES)))) * 100
    result = client.infer(settings.model_name, [one_input(matrix)])
    np.testing.assert_array_equal(result.as_numpy("probability"), predict_route(main_server, matrix))


def test_errors_reach_the_client_with_their_field(client, settings, feature_rows):
    strings = triton.InferInput("input-0", [1, 9], "BYTES")
    strings.set_data_from_numpy(np.array([[b"1"] * 9], dtype=np.object_))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(settings.model_name, [strings])
    assert refused.value.status() == "422" and refused.value.message().startswith("inputs[0].datatype: BYTES")

    with pytest.raises(InferenceServerException) as wrong_shape:
        client.infer(settings.model_name, [one_input(feature_rows[:2, :8])])
    assert wrong_shape.value.status() == "422" and wrong_shape.value.message().startswith("inputs[0].shape: ")

    with pytest.raises(InferenceServerException) as nan_in_json:
        client.infer(settings.model_name, [one_input(feature_rows[:1], binary=False)])
    assert nan_in_json.value.status() == "422" and "finite" in nan_in_json.value.message()

    with pytest.raises(InferenceServerException) as classification:
        client.infer(
            settings.model_name,
            [one_input(feature_rows[1:2])],
            outputs=[triton.InferRequestedOutput("probability", class_count=2)],
        )
    assert classification.value.status() == "422"
    assert classification.value.message().startswith("outputs[0].parameters.classification: ")


def test_the_rows_sent_are_the_rows_logged(client, main_server, settings, feature_rows):
    request_id = f"tc-log-{uuid.uuid4().hex[:8]}"
    sent = feature_rows[:5]
    result = client.infer(settings.model_name, [one_input(sent)], request_id=request_id)
    single = client.infer(settings.model_name, [one_input(sent[1:2])], request_id=f"{request_id}-one")
    main_server.flush_log()
    log = read_prediction_log(main_server.config.log_dir)
    ids = [f"{request_id}/{index}" for index in range(len(sent))]
    logged = log[log["request_id"].isin(ids)].set_index("request_id").loc[ids]
    np.testing.assert_array_equal(logged[list(MODEL_FEATURES)].to_numpy(), sent)  # NaN where missing
    np.testing.assert_array_equal(logged["probability"].to_numpy(), result.as_numpy("probability"))
    assert set(logged["variant"]) == {"champion"}
    one = log[log["request_id"] == f"{request_id}-one"]
    assert len(one) == 1 and one["probability"].tolist() == single.as_numpy("probability").tolist()
