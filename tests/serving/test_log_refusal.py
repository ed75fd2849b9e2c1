"""An answer whose row the prediction log refused is never sent: every protocol answers 503 and says why.

The log refuses rows once it is closed (the server shutting down) or when the disk refuses the journal
write; closing the logger of a server of this test's own is the reproducible way to get there.
"""

from __future__ import annotations

import pytest

from ml_platform.features.engineering import MODEL_FEATURES
from tests.support.bodies import GOOD
from tests.support.servers import make_config, serve

REFUSED = "prediction log: closed: the server is shutting down"


@pytest.fixture(scope="module")
def refusing(settings, champion_version, tmp_path_factory):
    with serve(make_config(settings, tmp_path_factory.mktemp("refusing"))) as running:
        with running.client() as client:  # it answers before its log closes ...
            assert client.post("/predict", json={"features": GOOD}).status_code == 200
        running.server.logger.close()  # ... and not once it has
        yield running


def test_predict_and_its_fast_path_answer_503(refusing):
    with refusing.client() as client:
        one = client.post("/predict", json={"features": GOOD})  # the fast path's shape
        batch = client.post("/predict", json={"instances": [{"features": GOOD}, {"features": GOOD}]})
    for answer in (one, batch):
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": REFUSED, "field": None}


def test_open_inference_protocol_answers_503(refusing, settings):
    request = {"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": GOOD}]}
    with refusing.client() as client:
        answer = client.post(f"/v2/models/{settings.model_name}/infer", json=request)
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"error": REFUSED, "field": None}


def test_invocations_answers_503_in_mlflows_error_format(refusing):
    record = dict(zip(MODEL_FEATURES, GOOD, strict=True))
    with refusing.client() as client:
        answer = client.post("/invocations", json={"dataframe_records": [record]})
    assert answer.status_code == 503, answer.text
    assert answer.json()["message"] == REFUSED and answer.json()["error_code"]


def test_the_refusals_are_counted_as_503s(refusing):
    """The refused requests show in the server's request metrics with their status."""
    with refusing.client() as client:
        client.post("/predict", json={"features": GOOD})
        metrics = client.get("/metrics").text
    served_503 = [line for line in metrics.splitlines() if 'status_code="503"' in line and not line.startswith("#")]
    assert served_503, "the 503 answers are not in /metrics"
