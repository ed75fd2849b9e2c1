"""Single-request latency of /predict with features, over HTTP with keep-alive (a loose bound; prints p50)."""

from __future__ import annotations

import statistics
import time

FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]


def test_predict_latency(main_server, transactions):
    rows, _ = transactions
    with main_server.client() as client:
        for _ in range(50):  # warm up
            client.post("/predict", json={"features": FEATURES})
        features_ms, customer_ms, server_ms = [], [], []
        for _ in range(300):
            started = time.perf_counter()
            body = client.post("/predict", json={"features": FEATURES}).json()
            features_ms.append((time.perf_counter() - started) * 1000)
            server_ms.append(body["latency_ms"])
        for _ in range(100):
            started = time.perf_counter()
            client.post("/predict", json=rows[0])
            customer_ms.append((time.perf_counter() - started) * 1000)
    p50 = statistics.median(features_ms)
    print(
        f"\n/predict p50 round trip: features {p50:.2f} ms (server-side {statistics.median(server_ms):.3f} ms),"
        f" customer_id via Feast {statistics.median(customer_ms):.2f} ms"
    )
    assert p50 < 50
