"""`ml-platform` as a user or a script meets it, on state directories of its own: a fresh process per command,
stdout and stderr pipes (not terminals), the exit status and the JSON objects checked.

Three homes, each made once: an empty one (the preconditions: what to run first), one with a day ingested and
no features yet, and one with a small graph over five fixed days (seeded data, gates open) whose champion is
served.
"""

import json
import os
import socket
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ml_platform.deploy.local import LocalProcessTarget
from tests.support.cli import run_cli

STATUS_KEYS = {"model", "tracking_uri", "window", "aliases", "history", "health", "healthy"}
RUN_KEYS = {"pipeline", "job", "start", "end", "run_id", "run_ids", "success", "assets", "failures", "note"}
DEPLOY_KEYS = {"success", "run_id", "environment", "version", "endpoint", "pinned", "smoke_passed", "smoke"}
ERROR_KEYS = {"message": str, "causes": list, "hint": str, "exit_code": int}
SMALL = {"n_customers": 300, "transactions_per_day": 400, "seed": 7}
DAYS = ("2026-03-10", "2026-03-14")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Home:
    """A state directory of its own and the environment of a process that uses it (the session's home,
    Dagster home and MLflow settings left out)."""

    path: Path
    port: int

    @classmethod
    def fresh(cls, factory, name: str) -> "Home":
        return cls(factory.mktemp(name), _free_port())

    def cli(self, *args: str, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_PLATFORM_", "DAGSTER_", "MLFLOW_"))}
        env.update(
            ML_PLATFORM_HOME=str(self.path),
            ML_PLATFORM_SERVING_PORT=str(self.port),
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            **(settings or {}),
        )
        env.pop("NO_COLOR", None)
        return run_cli(env, *args)

    def runs(self) -> int:
        """How many Dagster runs the home's instance holds."""
        database = self.path / "dagster" / "history" / "runs.db"
        if not database.exists():
            return 0
        with sqlite3.connect(database) as connection:
            return connection.execute("SELECT count(*) FROM runs").fetchone()[0]


def one_json_object(stdout: str) -> dict:
    """stdout is exactly one JSON object, on one line."""
    assert stdout.count("\n") == 1 and stdout.endswith("\n"), stdout
    document = json.loads(stdout)
    assert isinstance(document, dict)
    return document


def assert_error(error: dict, *, exit_code: int, says: str, hint: str) -> None:
    assert {key: type(error[key]) for key in error} == ERROR_KEYS
    assert error["exit_code"] == exit_code
    assert says in error["message"] and hint in error["hint"]
    assert all(isinstance(cause, str) for cause in error["causes"])


def assert_one_paragraph(stderr: str, *, says: str, hint: str) -> None:
    """The failure as a person reads it: `error: ...` first, `what to do: ...` last, nothing else around it,
    no stack trace, no escape codes."""
    lines = stderr.rstrip("\n").splitlines()
    assert lines[0].startswith("error: ") and says in lines[0], stderr
    assert lines[-1].startswith("what to do: ") and hint in lines[-1], stderr
    assert all(line.strip() for line in lines), stderr
    assert "Traceback" not in stderr and "Stack Trace" not in stderr
    assert "\x1b" not in stderr


# ---- an empty state directory ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    return Home.fresh(tmp_path_factory, "cli_empty")


def test_status_without_a_model_is_a_usage_error_in_both_forms(empty):
    text = empty.cli("status")
    assert (text.returncode, text.stdout) == (2, "")
    assert_one_paragraph(text.stderr, says="fraud_detector: no registered model yet", hint="`ml-platform demo`")

    as_json = empty.cli("status", "--json")
    assert as_json.returncode == 2
    document = one_json_object(as_json.stdout)
    assert set(document) == STATUS_KEYS | {"error"}
    assert all(document[key] is None for key in STATUS_KEYS)
    assert_error(document["error"], exit_code=2, says="no registered model yet", hint="`ml-platform demo`")


def test_rollback_deploy_and_training_say_what_to_run_first_and_launch_nothing(empty):
    rollback = empty.cli("rollback")
    assert (rollback.returncode, rollback.stdout) == (1, "")
    assert_one_paragraph(
        rollback.stderr,
        says="cannot roll back fraud_detector: the champion is not set",
        hint="`ml-platform deploy --version N`",
    )
    assert len(rollback.stderr.splitlines()) == 2

    deploy = empty.cli("deploy", "--json")
    assert deploy.returncode == 2
    document = one_json_object(deploy.stdout)
    assert set(document) == DEPLOY_KEYS | {"error"} and all(document[key] is None for key in DEPLOY_KEYS)
    assert_error(document["error"], exit_code=2, says="no champion yet", hint="--version N")

    for pipeline in ("training", "features"):
        run = empty.cli("run", "--pipeline", pipeline)
        assert (run.returncode, run.stdout) == (2, ""), run.stderr
        assert_one_paragraph(run.stderr, says="no transactions yet", hint="`ml-platform run --pipeline ingest")
    assert empty.runs() == 0


# ---- a day ingested, no features yet ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    home = Home.fresh(tmp_path_factory, "cli_ingested")
    params = home.path / "params.yaml"
    params.write_text(yaml.safe_dump({"raw_transactions": SMALL}))
    day = DAYS[1]
    return home, home.cli("run", "--pipeline", "ingest", "--start", day, "--end", day, "--params", str(params))


def test_training_before_any_features_names_the_command_that_makes_them(ingested):
    home, ingest = ingested
    assert ingest.returncode == 0, ingest.stderr
    assert "pipeline ingest: succeeded" in ingest.stdout
    assert "\x1b" not in ingest.stdout + ingest.stderr  # the run's progress and Dagster's log included
    before = home.runs()
    assert before == 1

    training = home.cli("run", "--pipeline", "training", "--json")
    assert training.returncode == 2
    document = one_json_object(training.stdout)
    assert set(document) == RUN_KEYS | {"error"}
    assert_error(document["error"], exit_code=2, says="no features yet", hint="`ml-platform run --pipeline features`")
    assert_one_paragraph(training.stderr, says="no features yet", hint="`ml-platform run --pipeline features`")
    assert home.runs() == before  # nothing was launched


def _ingest(home: Home, day: str, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    params = home.path / "params.yaml"
    params.write_text(yaml.safe_dump({"raw_transactions": SMALL}))
    return home.cli(
        "run", "--pipeline", "ingest", "--start", day, "--end", day, "--params", str(params), settings=settings
    )


def test_older_days_can_be_ingested_after_newer_ones_unless_the_setting_starts_later(tmp_path_factory):
    """The partitions start at the first stored day when ML_PLATFORM_PARTITIONS_START is not set: ingesting
    older history moves that start back. A start the user set is kept, and a day before it is refused up front."""
    home = Home.fresh(tmp_path_factory, "cli_older_days")
    assert _ingest(home, "2026-03-14").returncode == 0
    older = _ingest(home, "2026-03-12")
    assert older.returncode == 0, older.stderr
    stored = sorted(path.stem for path in (home.path / "data" / "raw_transactions").glob("*.parquet"))
    assert stored == ["2026-03-12", "2026-03-14"]

    refused = _ingest(home, "2026-03-11", {"ML_PLATFORM_PARTITIONS_START": "2026-03-12"})
    assert (refused.returncode, refused.stdout) == (2, "")
    assert_one_paragraph(
        refused.stderr,
        says="2026-03-11 is before the first daily partition, 2026-03-12",
        hint="set ML_PLATFORM_PARTITIONS_START=2026-03-11",
    )
    assert home.runs() == 2  # the refused day launched nothing


# ---- a small graph, its champion served ------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = Home.fresh(tmp_path_factory, "cli_served")
    params = home.path / "params.yaml"
    gates_open = {"min_accuracy": 0.0, "min_pr_auc": 0.0, "min_improvement": -1.0}
    params.write_text(yaml.safe_dump({"raw_transactions": SMALL, "model_evaluation": gates_open}))
    built = home.cli(
        "run", "--pipeline", "all", "--start", DAYS[0], "--end", DAYS[1], "--params", str(params), "--json"
    )
    deployed = home.cli("deploy", "--json") if built.returncode == 0 else None
    yield home, built, deployed
    LocalProcessTarget(home.path / "serving", port=home.port).stop()


def test_run_and_deploy_print_one_json_object_of_their_shape(served):
    _, built, deployed = served
    assert built.returncode == 0, built.stderr
    document = one_json_object(built.stdout)
    assert set(document) == RUN_KEYS | {"error"}
    assert document["error"] is None and document["success"] is True and document["failures"] == []
    assert (document["pipeline"], document["job"], document["start"], document["end"]) == ("all", "bootstrap", *DAYS)
    assert isinstance(document["run_id"], str) and document["note"] is None
    assert len(document["run_ids"]) == 2 and document["run_ids"][-1] == document["run_id"]  # days, then training
    assert document["assets"]["raw_transactions"]["days"] == 5
    assert document["assets"]["trained_model"]["model_version"] == 1
    assert document["assets"]["champion_model"]["champion_version"] == 1

    assert deployed.returncode == 0, deployed.stderr
    outcome = one_json_object(deployed.stdout)
    assert set(outcome) == DEPLOY_KEYS | {"error"} and outcome["error"] is None
    assert (outcome["success"], outcome["environment"], outcome["version"], outcome["smoke_passed"]) == (
        True,
        "local",
        1,
        True,
    )
    assert "\x1b" not in built.stderr + deployed.stderr


def test_status_exits_0_when_healthy_and_1_when_not(served):
    home, _, deployed = served
    assert deployed is not None and deployed.returncode == 0
    healthy = home.cli("status", "--json")
    assert healthy.returncode == 0, healthy.stderr
    document = one_json_object(healthy.stdout)
    assert set(document) == STATUS_KEYS | {"error"} and document["error"] is None
    assert document["healthy"] is True and document["health"]["status"] == "healthy"
    assert document["aliases"] == {"champion": 1, "challenger": 1, "previous": None}
    assert [entry["version"] for entry in document["history"]] == [1]
    assert document["health"]["alerts"] == [] and document["health"]["endpoint"].endswith(f":{home.port}")
    text = home.cli("status")
    assert text.returncode == 0 and "fraud_detector v1  [HEALTHY]" in text.stdout

    assert home.cli("stop-server").returncode == 0
    down = home.cli("status")
    assert down.returncode == 1, down.stderr
    assert "fraud_detector v1  [DOWN]" in down.stdout and "\x1b" not in down.stdout
    document = one_json_object(home.cli("status", "--json").stdout)
    assert (document["healthy"], document["health"]["status"]) == (False, "down")


def test_rollback_with_one_champion_only_says_so_in_one_paragraph(served):
    home, built, _ = served
    assert built.returncode == 0
    rollback = home.cli("rollback", "--json")
    assert rollback.returncode == 1
    document = one_json_object(rollback.stdout)
    assert_error(document["error"], exit_code=1, says="the champion is v1", hint="`ml-platform deploy --version N`")
    assert document["run_id"] is None  # checked before any run
