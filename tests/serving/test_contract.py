"""The served contract: schemathesis against the real server's /openapi.json.

Every operation of the served document gets generated requests (schemathesis' coverage phase, the
document's examples, and a bounded number of fuzzed cases, valid and invalid, from a fixed seed) and
every answer must be: no 5xx, a status the document lists for that operation, a content type it lists
for that status, a body that conforms to the schema it gives, and an invalid request refused with a 4xx.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis

from tests.support.servers import make_config, serve

SCORING_TOKEN = "contract-scoring-token"
ADMIN_TOKEN = "contract-admin-token"
SEED = 20260301
# Fuzzed cases per operation and generation mode (valid, invalid), on top of the coverage phase's cases.
EXAMPLES_PER_OPERATION = 30
OPERATIONS = {
    ("GET", "/health"),
    ("POST", "/predict"),
    ("GET", "/ping"),
    ("POST", "/invocations"),
    ("POST", "/feedback"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("GET", "/metrics"),
    ("GET", "/admin/routing"),
    ("PUT", "/admin/routing"),
}
REFUSALS = {400, 401, 403, 404, 405, 413, 415, 422}
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


@pytest.fixture(scope="module")
def contract_server(settings, champion_version, tmp_path_factory):
    """The session's champion with the feature store, both tokens, and limits small enough to reach."""
    config = make_config(
        settings,
        tmp_path_factory.mktemp("contract"),
        auth_token=SCORING_TOKEN,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=64_000,
        max_batch_rows=20,
    )
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def served_schema(contract_server):
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": EXAMPLES_PER_OPERATION, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "enabled": False,
                **{name: {"enabled": True} for name in CHECKS},
                # a refusal is any 4xx this server gives a request it will not take (413: too large)
                "negative_data_rejection": {"enabled": True, "expected-statuses": sorted(REFUSALS)},
            },
        }
    )
    return schemathesis.openapi.from_url(
        f"{contract_server.url}/openapi.json", config=config, headers=_auth(SCORING_TOKEN)
    )


schema = schemathesis.pytest.from_fixture("served_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32's pytest integration names each operation's subtest by rewriting the test item's
    ``_nodeid``, an attribute pytest 9.2 no longer has (its node id lives elsewhere): give it one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def answers() -> Counter:
    """(operation, status) -> how many answers of that status the operation's generated requests got."""
    return Counter()


@schema.parametrize()
def check_served_contract(case, contract_server, answers):
    """One generated request, sent with the token its route needs; its answer checked against the document."""
    token = ADMIN_TOKEN if case.path.startswith("/admin") else SCORING_TOKEN
    headers = {**(case.headers or {}), **_auth(token)}
    response = case.call(headers=headers)
    answers[(f"{case.method.upper()} {case.path}", response.status_code)] += 1
    case.validate_response(response, headers=headers)


def test_served_contract(request, answers):
    """Every operation's generated requests get answers the document allows, and they were not all refused:
    every scoring route answered 200 and several 4xx.

    The schemathesis run (one subtest per operation) is called from this test rather than collected as a
    test of its own, so the check of what it reached needs no other test to have run before it.
    """
    check_served_contract(request=request)
    assert answers, "the contract run sent no request"
    seen: dict[str, set[int]] = {}
    for (operation, status), _ in answers.items():
        seen.setdefault(operation, set()).add(status)
    assert all(status < 500 for statuses in seen.values() for status in statuses), seen
    for operation in (
        "POST /predict",
        "POST /invocations",
        "POST /v2/models/{name}/infer",
        "GET /v2/models/{name}",
        "PUT /admin/routing",
    ):
        assert 200 in seen[operation], (operation, seen[operation])
        assert len({status for status in seen[operation] if 400 <= status < 500}) >= 2, (operation, seen[operation])


def test_the_document_covers_every_route(contract_server):
    with contract_server.client(headers=_auth(SCORING_TOKEN)) as client:
        document = client.get("/openapi.json").json()
    paths = document["paths"]
    documented = {(method.upper(), path) for path, methods in paths.items() for method in methods}
    assert documented == OPERATIONS
    for path in ("/predict", "/invocations", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = paths[path]["post"]
        assert operation["requestBody"]["required"] is True
        assert {"400", "401", "403", "413", "422", "503"} <= set(operation["responses"]), path
        assert operation["security"] == [{"bearer": []}]
    assert set(paths["/invocations"]["post"]["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert set(paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    assert paths["/invocations"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MlflowError"
    }
    assert {"400", "401", "403", "413", "422"} <= set(paths["/admin/routing"]["put"]["responses"])
    assert "security" not in paths["/health"]["get"] and "401" not in paths["/health"]["get"]["responses"]
    schemas = document["components"]["schemas"]
    assert schemas["FeaturesRequest"]["properties"]["features"]["minItems"] == 9
    assert "HTTPValidationError" not in schemas


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
