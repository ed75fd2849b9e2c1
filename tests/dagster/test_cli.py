"""The `ml-platform` command as a user runs it (in process, against the session's state directory)."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ml_platform.registry import CHAMPION
from runs.cli import app
from tests.support.runs import PAST_THE_GATE

pytestmark = pytest.mark.xdist_group("graph")  # the session's one graph world: see tests/conftest.py
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_run_training_with_the_example_params_file(bootstrap_result, registry, tmp_path):
    # The example's values, but past the beats_champion gate: the example's trees are the defaults, so on the
    # session's days they may make the champion's model again, which the gate rightly keeps out.
    params = yaml.safe_load((REPO / "deploy/params/training.yaml").read_text())
    assert params["model_evaluation"]["min_improvement"] == 0.005
    params["model_evaluation"].update(PAST_THE_GATE["model_evaluation"])
    (tmp_path / "training.yaml").write_text(yaml.safe_dump(params))
    result = invoke("run", "--pipeline", "training", "--params", str(tmp_path / "training.yaml"))
    assert result.exit_code == 0, result.output
    assert "pipeline training: succeeded" in result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("trained_model"))
    assert f"model_version={registry.version_for_alias('challenger')}" in line
    assert "device=cpu" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("trained_modle:\n  n_estimators: 5\n", "names trained_modle, not assets of this pipeline"),
        ("trained_model: 5\n", "'trained_model' must be a mapping"),
        ("trained_model: {n_estimators: [1, 2\n", "is not valid YAML"),
        ("trained_model:\n  n_trees: 5\n", "n_trees"),
    ],
)
def test_run_rejects_bad_params_with_a_clear_message(tmp_path, content, expected, bootstrap_result):
    params = tmp_path / "params.yaml"
    params.write_text(content)
    result = runner.invoke(app, ["run", "--pipeline", "training", "--params", str(params)])
    assert result.exit_code == 2
    assert expected in result.output


def test_run_rejects_unknown_pipeline_and_missing_file(tmp_path):
    result = runner.invoke(app, ["run", "--pipeline", "trainig"])
    assert result.exit_code == 2
    assert "unknown pipeline 'trainig'" in result.output
    result = runner.invoke(app, ["run", "--pipeline", "training", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_run_rejects_a_range_ending_today(tmp_path):
    result = runner.invoke(app, ["run", "--pipeline", "ingest", "--start", "2026-01-01", "--end", "2999-01-01"])
    assert result.exit_code == 2
    assert "not a complete day yet" in result.output


def test_materialize_features_and_status(bootstrap_result, registry):
    result = invoke("materialize-features", "--feature-view", "customer_stats")
    assert result.exit_code == 0, result.output
    assert "online_features" in result.output
    bad = runner.invoke(app, ["materialize-features", "--feature-view", "merchant_stats"])
    assert bad.exit_code == 2
    assert "unknown feature view 'merchant_stats'" in bad.output

    status = invoke("status")
    healthy = json.loads(invoke("status", "--json").stdout)["healthy"]
    assert status.exit_code == (0 if healthy else 1), status.output  # the exit status says the health
    assert f"champion   v{registry.version_for_alias(CHAMPION)}" in status.output
    lines = status.output.splitlines()
    header = lines.index("champion history (newest promotion first)")
    newest = registry.champion_history()[0]
    assert lines[header + 2].split()[:3] == [f"v{newest.version}", *newest.promoted_at[:19].split("T")]


BAD_SPLIT = "training_set:\n  train_fraction: 2.0\n"  # fails the run at its first step, with a ValueError


def test_a_failed_run_is_one_paragraph_down_to_the_users_own_error(bootstrap_result, tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text(BAD_SPLIT)
    result = runner.invoke(app, ["run", "--pipeline", "training", "--params", str(params)])
    assert result.exit_code == 1
    assert result.stdout == ""
    paragraph = [line for line in result.stderr.splitlines() if not line.startswith("[")]  # progress lines
    assert paragraph[0].startswith("error: pipeline training: FAILED (run ")
    assert paragraph[1] == (
        "step training_set failed: training_set: ValueError: split fractions must be positive and sum to 1, "
        "got (2.0, 0.15, 0.15)"
    )
    assert paragraph[2].startswith("what to do: `ml-platform --verbose ...` shows the stack traces")
    assert len(paragraph) == 3
    assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr
    assert "\x1b" not in result.output

    verbose = runner.invoke(app, ["--verbose", "run", "--pipeline", "training", "--params", str(params)])
    assert verbose.exit_code == 1
    assert "Stack Trace:" in verbose.stderr and "raise ValueError(" in verbose.stderr  # the run's log
    assert "ValueError: split fractions must be positive" in verbose.stderr.splitlines()[-2]


def test_a_failed_run_under_json_is_one_object_with_its_failures(bootstrap_result, tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text(BAD_SPLIT)
    result = runner.invoke(app, ["run", "--pipeline", "training", "--params", str(params), "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)  # the whole of stdout: one object
    assert set(document) == {
        "pipeline", "job", "start", "end", "run_id", "run_ids", "success", "assets", "failures", "note", "error"
    }  # fmt: skip
    assert (document["pipeline"], document["job"], document["success"]) == ("training", "retrain", False)
    assert isinstance(document["run_id"], str) and document["assets"] == {}
    assert document["run_ids"] == [document["run_id"]]
    assert document["failures"] == [
        "step training_set failed: training_set: ValueError: split fractions must be positive and sum to 1, "
        "got (2.0, 0.15, 0.15)"
    ]
    error = document["error"]
    assert error["exit_code"] == 1 and error["causes"] == document["failures"]
    assert error["message"] == f"pipeline training: FAILED (run {document['run_id']})"
    assert isinstance(error["hint"], str)


def test_a_bad_params_file_is_a_usage_error_with_its_cause(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("trained_model: {n_estimators: [1, 2\n")
    result = runner.invoke(app, ["run", "--pipeline", "training", "--params", str(params), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert "is not valid YAML" in error["message"] and error["exit_code"] == 2
    assert "Traceback" not in result.stderr
    verbose = runner.invoke(app, ["--verbose", "run", "--pipeline", "training", "--params", str(params)])
    assert verbose.exit_code == 2 and "Traceback (most recent call last)" in verbose.stderr
    assert "yaml.parser.ParserError" in verbose.stderr or "ParserError" in verbose.stderr
