"""Deployment through the graph: the champion served by a real local server process, the smoke check,
rollbacks that go back one known-good champion at a time, and batch predictions for a day."""

import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ml_platform.deploy.local import LocalProcessTarget
from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.registry import CHAMPION, PREVIOUS, ROLLED_BACK_AT_TAG
from ml_platform.serving.client import ModelServerClient, StatusError
from ml_platform.training.train import predict_probability
from runs.cli import app
from runs.launch import launch
from tests.support.runs import PAST_THE_GATE, check_results, materializations

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
runner = CliRunner()


@pytest.fixture(scope="module")
def local_target(settings):
    target = LocalProcessTarget(settings.home / "serving", port=settings.serving_port)
    yield target
    target.stop()


def serving_version(target) -> int | None:
    health = target.health()
    return health and health.get("model_version")


SCORING_TOKEN, ADMIN_TOKEN = "deploy-sc0ring", "deploy-adm1n"


def bearer(url: str, token: str | None) -> ModelServerClient:
    """A client that sends ``token`` to every route, scoring and admin alike."""
    return ModelServerClient(url, token=token, admin_token=token)


def refused(call) -> int:
    """The error status the server answered ``call`` with."""
    with pytest.raises(StatusError) as error:
        call()
    return error.value.status_code


def test_deploy_serves_the_champion_and_passes_the_smoke_check(
    bootstrap_result, defs, registry, local_target, monkeypatch
):
    # The job-started server takes both tokens from the environment and requires them.
    local_target.stop()  # a server an earlier run started has other tokens (none)
    monkeypatch.setenv("ML_PLATFORM_SERVING_TOKEN", SCORING_TOKEN)
    monkeypatch.setenv("ML_PLATFORM_SERVING_ADMIN_TOKEN", ADMIN_TOKEN)
    result = launch("deploy", defs=defs)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert check_results(result)[("model_deployment", "smoke")] is True
    champion = registry.version_for_alias(CHAMPION)
    deployed = materializations(result, "model_deployment")[0]
    assert deployed["model_version"] == champion
    # no config: the default environment (the local profile's: the process, following the alias)
    assert (deployed["environment"], deployed["pinned"], deployed["promoted_from"]) == ("local", False, None)
    assert serving_version(local_target) == champion
    smoke = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
    assert smoke.metadata["difference"].value <= 1e-6
    assert smoke.metadata["predict_without_token_status"].value == 401
    assert smoke.metadata["admin_routing_status"].value == 200
    assert smoke.metadata["environment"].value == "local"

    url, features = f"http://127.0.0.1:{local_target.port}", [50.0] * 9
    with bearer(url, None) as anonymous, bearer(url, SCORING_TOKEN) as scoring, bearer(url, ADMIN_TOKEN) as admin:
        assert refused(lambda: anonymous.predict(features)) == 401
        assert refused(lambda: admin.predict(features)) == 403
        assert scoring.predict(features)["model_version"] == champion
        assert refused(scoring.routing) == 403
        assert admin.routing()["champion_version"] == champion
    local_target.stop()  # the next tests talk to a server without tokens


@pytest.fixture
def champion_restored(registry):
    """The session's champion put back after the test (as a person's choice: ``pin`` clears its rollback
    tags), so the modules after it judge and serve the model the bootstrap trained, not what is left here."""
    champion = registry.version_for_alias(CHAMPION)
    yield champion
    registry.pin(champion, promoted_at=datetime.now(UTC).isoformat())


def test_each_rollback_goes_back_one_known_good_version_and_serves_it(
    bootstrap_result, defs, registry, local_target, champion_restored
):
    # Two champions to roll back from, different models (different trees), promoted whatever the gate says.
    promoted = []
    for depth in (5, 4):
        retrained = launch("retrain", {**PAST_THE_GATE, "trained_model": {"max_depth": depth}}, defs=defs)
        assert retrained.success
        promoted.append(registry.version_for_alias(CHAMPION))
    older, newer = promoted
    assert older != newer and registry.version_for_alias(PREVIOUS) == older
    assert launch("deploy", defs=defs).success
    assert serving_version(local_target) == newer

    outcome = runner.invoke(app, ["rollback", "--reason", "accuracy dropped"], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    assert f"serving v{older} (was v{newer})" in outcome.output
    assert registry.version_for_alias(CHAMPION) == older
    tags = registry.model_version(newer).tags
    assert ROLLED_BACK_AT_TAG in tags and tags["ml_platform.rollback_reason"] == "accuracy dropped"
    history = registry.champion_history()
    assert [(e.version, e.rollback_reason) for e in history[:2]] == [(newer, "accuracy dropped"), (older, None)]
    assert serving_version(local_target) == older
    with ModelServerClient(f"http://127.0.0.1:{local_target.port}") as client:
        answer = client.predict([50.0] * 9)
    assert answer["model_version"] == older

    # Each further rollback goes to 'previous', one known-good version further back, until none is left.
    for step in range(len(history)):
        target, current = registry.version_for_alias(PREVIOUS), registry.version_for_alias(CHAMPION)
        if target is None:
            break
        assert target not in (newer, older)
        back = runner.invoke(app, ["rollback", "--reason", f"step {step}"], catch_exceptions=False)
        assert back.exit_code == 0, back.output
        assert f"serving v{target} (was v{current})" in back.output
        assert registry.version_for_alias(CHAMPION) == serving_version(local_target) == target
        further = registry.version_for_alias(PREVIOUS)
        assert (f"would go to v{further}" if further else "no known-good version is left") in back.output
    last = registry.version_for_alias(CHAMPION)
    assert registry.version_for_alias(PREVIOUS) is None
    again = runner.invoke(app, ["rollback"])
    assert again.exit_code == 1
    assert f"the champion is v{last} and no known-good version remains" in again.output
    assert registry.version_for_alias(CHAMPION) == last


def test_batch_predictions_score_every_transaction_of_the_day(bootstrap_result, defs, registry, settings):
    day = date(2026, 3, 10)
    result = launch("predict_batch", tags={"dagster/partition": day.isoformat()}, defs=defs)
    assert result.success
    scored = pd.read_parquet(settings.data_dir / "batch_predictions" / f"{day}.parquet")
    transactions = pd.read_parquet(settings.data_dir / "validated_transactions" / f"{day}.parquet")
    assert len(scored) == len(transactions) == materializations(result, "batch_predictions")[0]["dagster/row_count"]
    assert scored["transaction_id"].tolist() == transactions["transaction_id"].tolist()
    champion = registry.version_for_alias(CHAMPION)
    assert set(scored["model_version"]) == {champion}
    assert scored["scored_at"].nunique() == 1

    # The same transactions' features in the training set (same point-in-time join) give the same scores.
    training = pd.read_parquet(settings.data_dir / "training_set.parquet")
    expected = training.set_index("transaction_id").loc[scored["transaction_id"]]
    offline = predict_probability(registry.load_booster(champion), expected[list(MODEL_FEATURES)])
    np.testing.assert_allclose(scored["probability"].to_numpy(), offline, rtol=1e-6)
    threshold = registry.threshold(champion)
    assert (scored["is_fraud"].to_numpy() == (offline >= threshold)).all()


def test_deploy_cli_pins_a_version_and_rejects_bad_input(bootstrap_result, registry, local_target, tmp_path):
    empty_kubeconfig = tmp_path / "kubeconfig"
    empty_kubeconfig.write_text("")
    bad_env = runner.invoke(app, ["deploy", "--env", "qa"])
    assert bad_env.exit_code == 2 and "unknown environment 'qa'" in bad_env.output
    bad_model = runner.invoke(app, ["deploy", "--model", "churn", "--version", "1"])
    assert bad_model.exit_code == 2 and "not 'churn'" in bad_model.output
    champion = registry.version_for_alias(CHAMPION)
    # prod goes through the deploy job too: the run fails at the rollout (no cluster), nothing is promoted
    no_cluster = runner.invoke(
        app, ["deploy", "--env", "prod"], env={"KUBECONFIG": str(empty_kubeconfig), "KUBERNETES_SERVICE_HOST": ""}
    )
    assert no_cluster.exit_code == 1, no_cluster.output
    assert "deploy to prod: FAILED" in no_cluster.output
    assert f"deploying {registry.model_name} v{champion} to prod failed" in no_cluster.output
    assert "no usable Kubernetes configuration" in no_cluster.output
    assert "environment  prod" in no_cluster.output and "smoke        not run" in no_cluster.output
    missing = runner.invoke(app, ["deploy", "--version", "999"])
    assert missing.exit_code == 2 and "v999 cannot be deployed" in missing.output
    assert registry.version_for_alias(CHAMPION) == champion

    target_version = 1
    outcome = runner.invoke(
        app, ["deploy", "--model", registry.model_name, "--env", "local", "--version", str(target_version)]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "deploy to local: succeeded" in outcome.output
    assert f"version      v{target_version} (follows the champion alias)" in outcome.output
    assert "smoke        passed:" in outcome.output
    assert registry.version_for_alias(CHAMPION) == target_version
    assert serving_version(local_target) == target_version

    # for CI: the deployed version, machine-readably, on stdout alone
    as_json = runner.invoke(app, ["deploy", "--env", "local", "--json"])
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.stdout)
    assert (printed["environment"], printed["version"], printed["smoke_passed"]) == ("local", target_version, True)
    assert printed["success"] is True and printed["pinned"] is False

    stopped = runner.invoke(app, ["stop-server"])
    assert stopped.exit_code == 0 and "model server stopped" in stopped.output
    assert local_target.server() is None


def test_the_deploy_job_takes_the_environment_and_version_from_its_config(
    bootstrap_result, defs, registry, local_target
):
    champion = registry.version_for_alias(CHAMPION)
    registered = {int(v.version) for v in registry.client.search_model_versions(f"name='{registry.model_name}'")}
    if registered == {champion}:  # nothing else registered yet (the module's tests run in any order): one more
        launch("retrain", {"trained_model": {"n_estimators": 2, "early_stopping_rounds": 0}}, defs=defs)
        registered = {int(v.version) for v in registry.client.search_model_versions(f"name='{registry.model_name}'")}
    other = max(registered - {champion})
    try:
        result = launch(
            "deploy",
            {"model_deployment": {"environment": "local", "version": other}},
            tags={"ml_platform/environment": "local"},
            defs=defs,
        )
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        [deployed] = materializations(result, "model_deployment")
        assert (deployed["environment"], deployed["model_version"], deployed["promoted_from"]) == (
            "local",
            other,
            champion,
        )
        assert deployed["pinned"] is False
        assert check_results(result)[("model_deployment", "smoke")] is True
        smoke = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
        assert (smoke.metadata["environment"].value, smoke.metadata["expected_version"].value) == ("local", other)
        assert result.dagster_run.tags["ml_platform/environment"] == "local"
        # a version other than the champion became the champion, so a rollback can undo it
        assert (registry.version_for_alias(CHAMPION), registry.version_for_alias(PREVIOUS)) == (other, champion)
        assert serving_version(local_target) == other

        unknown = launch("deploy", {"model_deployment": {"environment": "qa"}}, defs=defs)
        assert not unknown.success
        [failure] = [e for e in unknown.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "config environment: unknown deployment environment 'qa'" in failure.event_specific_data.error.message
        assert registry.version_for_alias(CHAMPION) == other  # refused before anything changed
    finally:
        registry.pin(champion, promoted_at=datetime.now(UTC).isoformat())


def test_kubernetes_deployment_renders_its_overlay_and_says_when_no_cluster_is_reachable(tmp_path, monkeypatch):
    from ml_platform.deploy.kubernetes import KubernetesTarget, KubernetesUnavailable
    from resources.deployment import KubernetesDeployment

    target = KubernetesDeployment(overlay="staging")
    objects = KubernetesTarget.render(target.overlay_dir())
    assert {o["metadata"]["namespace"] for o in objects} == {"ml-platform-staging"}
    assert target.endpoint() == "http://fraud-detector.ml-platform-staging.svc.cluster.local"
    assert target.pins() is True
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    monkeypatch.setenv("KUBECONFIG", str(empty))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesUnavailable, match="no usable Kubernetes configuration"):
        target.deploy("fraud_detector", 1)
