"""The `ml-platform` command as a user runs it (in process, against the session's state directory)."""

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
    assert status.exit_code == 0
    assert f"champion   v{registry.version_for_alias(CHAMPION)}" in status.output
    lines = status.output.splitlines()
    header = lines.index("champion history (newest promotion first)")
    newest = registry.champion_history()[0]
    assert lines[header + 2].split()[:3] == [f"v{newest.version}", *newest.promoted_at[:19].split("T")]
