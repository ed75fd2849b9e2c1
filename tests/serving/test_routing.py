"""Champion/challenger routing: proportions, stickiness, shadow mode, weights changed at run time."""

from __future__ import annotations

import random

import pytest

from ml_platform.predictions import read_prediction_log
from tests.support.servers import make_config, serve

FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
ADMIN = {"Authorization": "Bearer routing-admin"}  # /admin/* needs the server's admin token


@pytest.fixture(scope="module")
def ab_server(settings, ab_model, tmp_path_factory):
    config = make_config(
        settings,
        tmp_path_factory.mktemp("ab"),
        model_name=ab_model.model_name,
        feast=None,
        challenger_weight=0.3,
        admin_token="routing-admin",
    )
    with serve(config) as running:
        yield running


def set_routing(client, **routing) -> dict:
    answer = client.put("/admin/routing", json=routing, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_split_proportions_over_2000_requests(ab_server):
    rng = random.Random(11)
    with ab_server.client() as client:
        state = set_routing(client, challenger_weight=0.3, mode="split", sticky=True)
        assert (state["champion_version"], state["challenger_version"]) == (1, 2)
        variants = []
        for _ in range(2_000):
            body = client.post("/predict", json={"features": FEATURES, "customer_id": rng.randrange(10**9)}).json()
            variants.append((body["variant"], body["model_version"]))
    challenger_share = sum(v == ("challenger", 2) for v in variants) / len(variants)
    assert sum(v == ("champion", 1) for v in variants) + sum(v == ("challenger", 2) for v in variants) == 2_000
    assert abs(challenger_share - 0.3) <= 0.05, challenger_share


def test_sticky_customers_keep_their_variant(ab_server):
    with ab_server.client() as client:
        set_routing(client, challenger_weight=0.5, mode="split", sticky=True)
        seen = {}
        for customer_id in range(40):
            for _ in range(5):
                body = client.post("/predict", json={"features": FEATURES, "customer_id": customer_id}).json()
                seen.setdefault(customer_id, set()).add(body["variant"])
        batch = client.post(
            "/predict", json={"instances": [{"features": FEATURES, "customer_id": c} for c in range(40)]}
        ).json()
    assert all(len(variants) == 1 for variants in seen.values())
    assert {next(iter(v)) for v in seen.values()} == {"champion", "challenger"}
    assert [p["variant"] for p in batch["predictions"]] == [next(iter(seen[c])) for c in range(40)]


def test_not_sticky_and_no_customer_route_at_random(ab_server):
    with ab_server.client() as client:
        set_routing(client, challenger_weight=0.5, mode="split", sticky=False)
        variants = {
            client.post("/predict", json={"features": FEATURES, "customer_id": 7}).json()["variant"] for _ in range(60)
        }
        set_routing(client, sticky=True)
        anonymous = {client.post("/predict", json={"features": FEATURES}).json()["variant"] for _ in range(60)}
    assert variants == {"champion", "challenger"}
    assert anonymous == {"champion", "challenger"}


def test_weight_changes_without_restart(ab_server):
    with ab_server.client() as client:
        set_routing(client, challenger_weight=1.0, mode="split")
        all_challenger = {
            client.post("/predict", json={"features": FEATURES, "customer_id": c}).json()["variant"] for c in range(30)
        }
        set_routing(client, challenger_weight=0.0)
        all_champion = {
            client.post("/predict", json={"features": FEATURES, "customer_id": c}).json()["variant"] for c in range(30)
        }
        state = client.get("/admin/routing", headers=ADMIN).json()
    assert all_challenger == {"challenger"}
    assert all_champion == {"champion"}
    assert state["challenger_weight"] == 0.0 and state["mode"] == "split"


def test_shadow_answers_champion_and_logs_challenger(ab_server):
    with ab_server.client() as client:
        set_routing(client, challenger_weight=0.5, mode="shadow")
        answers = [
            client.post("/predict", json={"features": FEATURES, "customer_id": c, "request_id": f"shadow-{c}"}).json()
            for c in range(50)
        ]
        set_routing(client, mode="split")
    assert {(a["variant"], a["model_version"]) for a in answers} == {("champion", 1)}
    ab_server.flush_log()
    log = read_prediction_log(ab_server.config.log_dir)
    shadow = log[log["request_id"].str.startswith("shadow-")]
    assert len(shadow) == 100
    assert sorted(shadow["variant"].unique()) == ["challenger_shadow", "champion"]
    shadow_rows = shadow[shadow["variant"] == "challenger_shadow"]
    assert set(shadow_rows["model_version"]) == {2}
    assert sorted(shadow_rows["request_id"]) == sorted(a["request_id"] for a in answers)


def test_a_canary_server_answers_with_the_challenger_alone(settings, ab_model, tmp_path_factory):
    """ML_PLATFORM_SERVING_ALIAS=challenger (the Kubernetes canary Deployment): only the challenger serves."""
    config = make_config(
        settings,
        tmp_path_factory.mktemp("canary"),
        model_name=ab_model.model_name,
        feast=None,
        serve_alias="challenger",
    )
    with serve(config) as running, running.client() as client:
        answers = [client.post("/predict", json={"features": FEATURES}).json() for _ in range(20)]
        health = client.get("/health").json()
    assert {(a["variant"], a["model_version"]) for a in answers} == {("challenger", 2)}
    assert health["model_version"] == 2 and health["challenger_version"] is None
