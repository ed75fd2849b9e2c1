"""The first look (`ml-platform bootstrap`, what `make dev` runs before the UI): on an empty state directory it
leaves a champion, evaluated checks and the monitoring group materialized in the Dagster instance the UI
reads, with a progress line per step on stderr; on a state that is not empty it launches nothing.

It runs as `make dev` runs it: `ml-platform init`, then `ml-platform bootstrap`, in fresh processes on a state
directory of this module's own (the session's home already holds the graph world), with a model server
port of its own.
"""

import os
import re
import socket
import subprocess

import dagster as dg
import pytest

from tests.support.cli import run_cli

LINE = re.compile(r"^\[\s*(\d+\.\d)s\] (.+)$")
MONITORING_ASSETS = ("drift_report", "prediction_drift", "live_performance", "serving_metrics", "feature_skew")
CHECKS = (
    ("validated_transactions", "schema"),
    ("validated_transactions", "unique_ids"),
    ("model_evaluation", "quality_floor"),
    ("model_evaluation", "beats_champion"),
    ("model_deployment", "smoke"),
    ("drift_report", "drift_score"),
    ("live_performance", "accuracy_drop"),
    ("serving_metrics", "error_rate"),
    ("serving_metrics", "latency_p99"),
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_cli(env, *args)


@pytest.fixture(scope="module")
def first_look(tmp_path_factory):
    """`init` and `bootstrap` on an empty state directory, then `bootstrap` again; the instance read after
    each (run ids) and the first call's output."""
    home = tmp_path_factory.mktemp("first_look_home")
    port = _free_port()
    env = {
        **os.environ,
        "ML_PLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ML_PLATFORM_SERVING_PORT": str(port),
        "PYTHONWARNINGS": "ignore",
    }
    init = _cli(env, "init")
    assert init.returncode == 0, init.stderr[-3000:]
    first = _cli(env, "bootstrap")
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr[-5000:]}"
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    runs_after_first = {run.run_id for run in instance.get_runs()}
    second = _cli(env, "bootstrap")
    runs_after_second = {run.run_id for run in instance.get_runs()}
    yield {
        "instance": instance,
        "first": first,
        "second": second,
        "runs_after_first": runs_after_first,
        "runs_after_second": runs_after_second,
        "port": port,
    }
    instance.dispose()


def test_an_empty_state_gets_a_champion(first_look):
    instance = first_look["instance"]
    runs = instance.get_runs()
    assert sorted(run.job_name for run in runs) == ["bootstrap", "bootstrap", "deploy", "monitor"]  # days, training
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    champion = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    metadata = {k: getattr(v, "value", v) for k, v in champion.asset_materialization.metadata.items()}
    assert metadata["champion_version"] == 1
    assert "champion v1" in first_look["first"].stdout


def test_the_checks_are_evaluated_and_passed(first_look):
    instance = first_look["instance"]
    verdicts = {}
    for asset, check in CHECKS:
        record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey(asset), check))
        assert record is not None, f"{asset}:{check} was never evaluated"
        verdicts[f"{asset}:{check}"] = record.evaluation.passed
    assert verdicts == {name: True for name in verdicts}
    assert re.search(r"checks: (\d+) of \1 passed", first_look["first"].stdout), first_look["first"].stdout


def test_the_monitoring_group_shows_the_day_of_traffic(first_look):
    instance = first_look["instance"]
    for asset in MONITORING_ASSETS:
        assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
    health = instance.get_latest_materialization_event(dg.AssetKey("model_health")).asset_materialization
    metadata = {k: getattr(v, "value", v) for k, v in health.metadata.items()}
    assert metadata["model_version"] == 1
    assert metadata["predictions"] >= 2_000  # the day of traffic (and the smoke check's own predictions)


def test_the_model_server_is_stopped_afterwards(first_look):
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", first_look["port"])) != 0, "the first look left its server running"
    assert "model server was stopped" in first_look["first"].stdout


def test_progress_is_a_plain_line_per_step_in_order_on_stderr(first_look):
    lines = [line for line in first_look["first"].stderr.splitlines() if line.startswith("[")]
    assert "\x1b" not in first_look["first"].stderr and "\r" not in first_look["first"].stderr
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, match in zip(lines, parsed, strict=True) if not match]
    seconds = [float(match.group(1)) for match in parsed]
    assert seconds == sorted(seconds)
    texts = [match.group(2) for match in parsed]

    def first_index(prefix: str) -> int:
        found = [i for i, text in enumerate(texts) if text.startswith(prefix)]
        assert found, f"no progress line starts with {prefix!r}: {texts}"
        return found[0]

    order = [
        "bootstrap run ",
        "raw_transactions (20 days) materialized in ",
        "check model_evaluation:quality_floor passed",
        "champion_model materialized in ",
        "deploy run ",
        "check model_deployment:smoke passed",
        "2,000 of ",
        "monitor run ",
        "check drift_report:drift_score passed",
        "model_health materialized in ",
    ]
    assert [first_index(prefix) for prefix in order] == sorted(first_index(prefix) for prefix in order)
    assert first_look["first"].stdout.startswith("first look: ")  # stdout holds the summary, not the progress


def test_a_state_that_is_not_empty_is_left_as_it_is(first_look):
    second = first_look["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert first_look["runs_after_second"] == first_look["runs_after_first"]
    assert "nothing to do" in second.stdout and "4 runs in the Dagster instance and champion v1" in second.stdout
    assert not [line for line in second.stderr.splitlines() if line.startswith("[")]
