"""send_traffic over real HTTP on 127.0.0.1: batches in the /predict entity form (each instance checked
with the model server's own request schema), one keep-alive connection, answers counted per version,
failures counted and never raised. The whole loop against the real model server (Feast, MLflow) is
in the Dagster-layer scenario test."""

import json
import socket
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.monitoring.traffic import entity_instances, send_traffic
from ml_platform.serving.schemas import ApiError, TransactionRequest, validate


@pytest.fixture(scope="module")
def transactions():
    config = SyntheticConfig(seed=3, n_customers=50, transactions_per_day=300)
    return generate_transactions(config, date(2026, 11, 1), date(2026, 11, 2)).head(105)


class _PredictServer(BaseHTTPRequestHandler):
    """Answers /predict like the model server: champion v3, except every 4th row goes to challenger v4."""

    protocol_version = "HTTP/1.1"  # keep-alive
    fail_batches: set = set()
    batches: list = []
    connections: set = set()
    headers_seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.connections.add(self.client_address)
        self.headers_seen.append(self.headers.get("Authorization"))
        batch_number = len(self.batches)
        self.batches.append(body)
        status, answer = 200, None
        if self.path != "/predict" or set(body) != {"instances"}:
            status, answer = 404, {"error": f"unexpected {self.path} {sorted(body)}"}
        elif batch_number in self.fail_batches:
            status, answer = 503, {"error": "feature store not ready", "field": None}
        else:
            try:
                parsed = [
                    validate(TransactionRequest, item, ("instances", i)) for i, item in enumerate(body["instances"])
                ]
            except ApiError as error:
                status, answer = error.status_code, error.body()
            else:
                answer = {
                    "predictions": [
                        {"request_id": item.request_id, "probability": 0.1, "model_version": 4 if i % 4 == 3 else 3}
                        for i, item in enumerate(parsed)
                    ]
                }
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def predict_server():
    servers = []

    def start(fail_batches=()):
        handler = type(
            "Handler",
            (_PredictServer,),
            {"fail_batches": set(fail_batches), "batches": [], "connections": set(), "headers_seen": []},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_instances_are_the_servers_entity_requests(transactions):
    instances = entity_instances(transactions)
    first, row = instances[0], transactions.iloc[0]
    assert first == {
        "customer_id": int(row["customer_id"]),
        "amount": float(row["amount"]),
        "category": row["category"],
        "channel": row["channel"],
        "event_timestamp": row["event_timestamp"].isoformat(),
        "request_id": row["transaction_id"],
    }
    parsed = validate(TransactionRequest, first)
    assert parsed.event_timestamp == row["event_timestamp"].to_pydatetime()


def test_batches_over_one_keep_alive_connection(transactions, predict_server):
    url, handler = predict_server()
    result = send_traffic(url, transactions, batch_size=25, token="t0k")
    assert result.requests == 5 and result.rows == 105 and result.failed == 0 and result.answered == 105
    assert [len(b["instances"]) for b in handler.batches] == [25, 25, 25, 25, 5]
    sent_ids = [item["request_id"] for b in handler.batches for item in b["instances"]]
    assert sent_ids == transactions["transaction_id"].tolist()
    assert len(handler.connections) == 1  # one connection for all five requests
    assert set(handler.headers_seen) == {"Bearer t0k"}
    # every 4th row of each batch answered by v4: 6+6+6+6+1
    assert result.model_versions == {3: 80, 4: 25}
    assert result.seconds > 0 and result.errors == ()


def test_failed_batches_are_counted_not_raised(transactions, predict_server):
    url, handler = predict_server(fail_batches={1})
    result = send_traffic(url, transactions, batch_size=50)
    assert result.requests == 3 and result.failed == 50 and result.answered == 55
    assert sum(result.model_versions.values()) == 55
    assert result.errors == ('rows 50-99: HTTP 503: {"error": "feature store not ready", "field": null}',)


def test_server_down_counts_every_row_failed(transactions):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = send_traffic(f"http://127.0.0.1:{port}", transactions, batch_size=40, timeout=2.0)
    assert result.requests == 3 and result.failed == 105 and result.model_versions == {}
    assert "ConnectionRefusedError" in result.errors[0]


def test_arguments_are_validated(transactions):
    with pytest.raises(ValueError, match="batch_size: expected a whole number of at least 1, got 0"):
        send_traffic("http://127.0.0.1:1", transactions, batch_size=0)
    with pytest.raises(ValueError, match="url: expected the model server's http"):
        send_traffic("127.0.0.1:8080", transactions)
    with pytest.raises(ValueError, match=r"transactions: missing column\(s\) channel"):
        send_traffic("http://127.0.0.1:1", transactions.drop(columns=["channel"]))
