"""Bearer auth of the model server over real HTTP: a scoring token for the scoring routes, an admin token
for /admin/*, every combination of the two, and the status and message each request gets."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack

import pytest

from tests.support.servers import make_config, serve

SCORING = "sc0ring-token_v1"
ADMIN = "adm1n.token~v1"
FEATURES = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
SCORING_VARIABLE, ADMIN_VARIABLE = "ML_PLATFORM_SERVING_TOKEN", "ML_PLATFORM_SERVING_ADMIN_TOKEN"

# The servers, by which tokens they were given (scoring, admin).
TOKENS = {
    "no tokens": (None, None),
    "scoring only": (SCORING, None),
    "admin only": (None, ADMIN),
    "both": (SCORING, ADMIN),
}


@pytest.fixture(scope="module")
def servers(settings, champion_version, tmp_path_factory):
    with ExitStack() as stack:
        running = {}
        for name, (scoring, admin) in TOKENS.items():
            config = make_config(
                settings, tmp_path_factory.mktemp("auth"), feast=None, auth_token=scoring, admin_token=admin
            )
            running[name] = stack.enter_context(serve(config))
        yield running


def bearer(token: str, scheme: str = "Bearer", separator: str = " ") -> dict[str, str]:
    return {"Authorization": f"{scheme}{separator}{token}"}


def send(running, method: str, path: str, headers: dict[str, str] | None = None):
    body = {"features": FEATURES} if path == "/predict" else {"challenger_weight": 0.0}
    with running.client() as client:
        return client.request(method, path, json=body if method in ("POST", "PUT") else None, headers=headers)


PREDICT, READ, WRITE = ("POST", "/predict"), ("GET", "/admin/routing"), ("PUT", "/admin/routing")
HOW = "as 'Authorization: Bearer <token>'"
MISSING_SCORING = f"authorization: missing; this route needs the scoring token ({SCORING_VARIABLE}) {HOW}"
MISSING_ADMIN = f"authorization: missing; this route needs the admin token ({ADMIN_VARIABLE}) {HOW}"
WRONG_SCORING = f"authorization: wrong bearer token; this route needs the scoring token ({SCORING_VARIABLE}) {HOW}"
WRONG_ADMIN = f"authorization: wrong bearer token; this route needs the admin token ({ADMIN_VARIABLE}) {HOW}"
ADMIN_OFF = (
    f"authorization: PUT /admin/routing is switched off: this server has no admin token; set {ADMIN_VARIABLE} "
    "and send it as 'Authorization: Bearer <admin token>'"
)
ADMIN_ON_SCORING = (
    f"authorization: the admin token opens /admin/* only; scoring routes need the scoring token ({SCORING_VARIABLE})"
)
SCORING_ON_ADMIN = f"authorization: the scoring token does not open /admin/*; send the admin token ({ADMIN_VARIABLE})"

CASES = [
    # (server, (method, path), headers, status, error message (None: answered))
    ("no tokens", PREDICT, None, 200, None),
    ("no tokens", PREDICT, bearer("anything"), 200, None),
    ("no tokens", READ, None, 200, None),
    ("no tokens", WRITE, None, 403, ADMIN_OFF),
    ("no tokens", WRITE, bearer("anything"), 403, ADMIN_OFF),
    ("scoring only", PREDICT, None, 401, MISSING_SCORING),
    ("scoring only", PREDICT, bearer(SCORING), 200, None),
    ("scoring only", PREDICT, bearer(SCORING, "bearer"), 200, None),
    ("scoring only", PREDICT, bearer(SCORING, "BEARER"), 200, None),
    ("scoring only", PREDICT, bearer(SCORING, "bEaReR", "   "), 200, None),  # 1*SP between scheme and token
    ("scoring only", PREDICT, bearer("sc0ring-token_v2"), 401, WRONG_SCORING),
    ("scoring only", PREDICT, bearer(SCORING[:-1]), 401, WRONG_SCORING),
    ("scoring only", PREDICT, bearer(SCORING, "Token"), 401, None),
    ("scoring only", PREDICT, {"Authorization": SCORING}, 401, None),
    ("scoring only", READ, None, 401, MISSING_SCORING),
    ("scoring only", READ, bearer(SCORING), 200, None),  # no admin token: reading the routing is a scoring route
    ("scoring only", WRITE, bearer(SCORING), 403, ADMIN_OFF),
    ("scoring only", WRITE, None, 403, ADMIN_OFF),
    ("admin only", PREDICT, None, 200, None),
    ("admin only", READ, None, 401, MISSING_ADMIN),
    ("admin only", READ, bearer(ADMIN, "bearer"), 200, None),
    ("admin only", WRITE, bearer(ADMIN), 200, None),
    ("admin only", WRITE, bearer("adm1n.token~v2"), 401, WRONG_ADMIN),
    ("both", PREDICT, None, 401, MISSING_SCORING),
    ("both", PREDICT, bearer(SCORING), 200, None),
    ("both", PREDICT, bearer(ADMIN), 403, ADMIN_ON_SCORING),
    ("both", PREDICT, bearer("nope"), 401, WRONG_SCORING),
    ("both", READ, None, 401, MISSING_ADMIN),
    ("both", READ, bearer(SCORING), 403, SCORING_ON_ADMIN),
    ("both", READ, bearer(ADMIN), 200, None),
    ("both", READ, bearer(ADMIN, "BEARER", "  "), 200, None),
    ("both", WRITE, None, 401, MISSING_ADMIN),
    ("both", WRITE, bearer(SCORING), 403, SCORING_ON_ADMIN),
    ("both", WRITE, bearer("nope"), 401, WRONG_ADMIN),
    ("both", WRITE, bearer(ADMIN), 200, None),
]


@pytest.mark.parametrize(("server", "route", "headers", "status", "message"), CASES)
def test_each_token_opens_its_own_routes(servers, server, route, headers, status, message):
    answer = send(servers[server], *route, headers=headers)
    assert answer.status_code == status, answer.text
    if status == 200:
        assert ("probability" in answer.json()) if route == PREDICT else (answer.json()["mode"] == "split")
        return
    assert answer.json()["field"] == "authorization"
    if message is not None:
        assert answer.json()["error"] == message
    if status == 401:
        challenge = 'Bearer error="invalid_token"' if "wrong" in answer.json()["error"] else "Bearer"
        assert answer.headers["www-authenticate"] == challenge
    else:
        assert "www-authenticate" not in answer.headers


def test_other_schemes_and_a_bare_token_are_named(servers):
    basic = send(servers["scoring only"], *PREDICT, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    bare = send(servers["scoring only"], *PREDICT, headers={"Authorization": SCORING})
    empty = send(servers["scoring only"], *PREDICT, headers={"Authorization": "Bearer"})
    assert basic.json()["error"].startswith("authorization: scheme 'Basic' is not accepted; this route needs")
    assert bare.json()["error"].startswith(f"authorization: scheme '{SCORING}' is not accepted")
    assert empty.status_code == 401
    assert empty.json()["error"].startswith("authorization: no token after 'Bearer'")
    assert empty.headers["www-authenticate"] == 'Bearer error="invalid_request"'


def test_probes_and_metrics_stay_open_on_every_server(servers):
    for name, running in servers.items():
        with running.client() as client:
            for path in ("/health", "/ping", "/v2/health/live", "/v2/health/ready", "/metrics"):
                assert client.get(path).status_code == 200, (name, path)


def test_only_an_admin_token_changes_the_routing(servers):
    running = servers["both"]
    refused = send(running, "PUT", "/admin/routing", headers=bearer(SCORING))
    with running.client(headers=bearer(ADMIN)) as client:
        unchanged = client.get("/admin/routing").json()
        changed = client.put("/admin/routing", json={"challenger_weight": 0.4, "mode": "shadow"}).json()
        seen = client.get("/admin/routing").json()
        client.put("/admin/routing", json={"challenger_weight": 0.0, "mode": "split"})
    assert refused.status_code == 403
    assert (unchanged["challenger_weight"], unchanged["mode"]) == (0.0, "split")
    assert (changed["challenger_weight"], changed["mode"]) == (0.4, "shadow")
    assert seen == changed
    assert running.server.routing_state()["challenger_weight"] == 0.0
    # a switched-off admin changes nothing either
    off = servers["scoring only"]
    send(off, "PUT", "/admin/routing", headers=bearer(SCORING))
    assert off.server.routing_state()["challenger_weight"] == 0.0


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        (SCORING_VARIABLE, "", f"{SCORING_VARIABLE} (auth_token) is set but empty"),
        (ADMIN_VARIABLE, "", f"{ADMIN_VARIABLE} (admin_token) is set but empty"),
        (SCORING_VARIABLE, "two words", f"{SCORING_VARIABLE} (auth_token) holds characters a bearer token cannot"),
    ],
)
def test_a_bad_token_stops_the_server_at_start(tmp_path, variable, value, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_PLATFORM_SERVING_")}
    env.update({"ML_PLATFORM_HOME": str(tmp_path), variable: value})
    completed = subprocess.run(
        [sys.executable, "-m", "ml_platform.serving", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0
    assert f"SettingsError: {words}" in completed.stderr, completed.stderr[-2000:]
