""".github/workflows/ml-pipeline.yml: the CI/CD for ML calls the project's own make targets and CLI.

Checked offline: the jobs and their `needs` form test/validate -> train -> deploy-staging ->
deploy-production; every `make X` it runs is a target of the Makefile (and `make -n X` accepts it);
every `ml-platform <command> --options` it runs parses with the real CLI (the typer app's click
commands); the test job has PostgreSQL and Redis with health checks; training and deploys run on main
only, production behind a protected environment; secrets only from `${{ secrets.X }}`, never literal and
never interpolated into a script.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ml-pipeline.yml"
SECRET_EXPRESSION = re.compile(r"^\$\{\{ secrets\.[A-Z][A-Z0-9_]* \}\}$")
SECRET_LIKE_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KUBECONFIG|_KEY$|_URI$|_URL$|USERNAME|_HOST$", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^\s/:@$]*:[^\s/@]+@")
REDIRECTION = re.compile(r"^[0-9]*(>>?|<)")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean True
    return workflow.get("on", workflow.get(True))


def run_scripts(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


def commands_in(script: str, program: str) -> list[list[str]]:
    """Each invocation of ``program`` in a shell script: its arguments, up to the end of the command."""
    found = []
    for line in script.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part, comments=True)
            for index, word in enumerate(words):
                if word == program or word.endswith(f"/{program}"):
                    arguments = words[index + 1 :]
                    redirect = next((i for i, w in enumerate(arguments) if REDIRECTION.match(w)), len(arguments))
                    found.append(arguments[:redirect])  # `> file`, `2>&1` are the shell's, not the command's
                    break
    return found


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets - {".PHONY", ".DEFAULT_GOAL"}


def all_make_calls(workflow: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [
        (name, args)
        for name, job in workflow["jobs"].items()
        for script in run_scripts(job)
        for args in commands_in(script, "make")
    ]


def all_cli_calls(workflow: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [
        (name, args)
        for name, job in workflow["jobs"].items()
        for script in run_scripts(job)
        for args in commands_in(script, "ml-platform")
    ]


# A job output passed on through the environment (the safe way: never interpolated into a script), as the
# CLI receives it at run time: a registry version such as this one.
JOB_OUTPUT = re.compile(r"^\$\{\{ needs\.[a-z-]+\.outputs\.version \}\}$")
SAMPLE_VERSION = "7"


def with_job_outputs(workflow: dict[str, Any], job: str, args: list[str]) -> list[str]:
    """``args`` with each ``$NAME`` that the job's environment fills from another job's version output
    replaced by a sample version."""
    env = workflow["jobs"][job].get("env", {})
    resolved = []
    for arg in args:
        name = arg[1:] if arg.startswith("$") else None
        resolved.append(SAMPLE_VERSION if name and JOB_OUTPUT.match(str(env.get(name, ""))) else arg)
    return resolved


# ---- shape ---------------------------------------------------------------------------------------------


def test_runs_on_push_and_pull_request(workflow):
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on
    assert workflow["permissions"] == {"contents": "read"}


def test_jobs_form_the_pipeline_test_validate_train_staging_production(workflow):
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "validate", "train", "deploy-staging", "deploy-production"}

    def needs(name: str) -> set[str]:
        value = jobs[name].get("needs", [])
        return {value} if isinstance(value, str) else set(value)

    assert needs("test") == set() and needs("validate") == set()
    assert needs("train") == {"test", "validate"}
    assert needs("deploy-staging") == {"train"}
    assert needs("deploy-production") == {"deploy-staging"}
    # every job reaches back to both checks: nothing deploys without tests and validation
    for name in ("train", "deploy-staging", "deploy-production"):
        ancestors, frontier = set(), needs(name)
        while frontier:
            ancestors |= frontier
            frontier = set().union(*(needs(n) for n in frontier)) - ancestors
        assert {"test", "validate"} <= ancestors, name


def test_training_and_deploys_run_on_main_only_and_production_waits_for_approval(workflow):
    jobs = workflow["jobs"]
    assert "if" not in jobs["test"] and "if" not in jobs["validate"]
    condition = jobs["train"]["if"]
    assert "github.ref == 'refs/heads/main'" in condition and "github.event_name == 'push'" in condition
    # the deploys need train, so they are skipped whenever it is
    assert jobs["deploy-staging"]["environment"]["name"] == "staging"
    assert jobs["deploy-production"]["environment"]["name"] == "production"
    assert "required reviewers" in WORKFLOW.read_text().lower()


def test_test_job_has_postgresql_and_redis_with_health_checks(workflow):
    services = workflow["jobs"]["test"]["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["postgres"]["ports"] == ["5432:5432"]
    assert "--health-cmd" in services["postgres"]["options"] and "pg_isready" in services["postgres"]["options"]
    assert services["redis"]["image"] == "redis:7"
    assert services["redis"]["ports"] == ["6379:6379"]
    assert "--health-cmd" in services["redis"]["options"] and "redis-cli ping" in services["redis"]["options"]


# ---- the project's own make targets and CLI --------------------------------------------------------------


def test_the_parsers_find_commands_in_scripts():
    script = "make lint\nmake smoke-k8s K8S_ENV=prod && .venv/bin/ml-platform deploy --env prod  # done\n"
    assert commands_in(script, "make") == [["lint"], ["smoke-k8s", "K8S_ENV=prod"]]
    assert commands_in(script, "ml-platform") == [["deploy", "--env", "prod"]]
    assert commands_in('ml-platform deploy --json > "$RUNNER_TEMP/out" 2>&1', "ml-platform") == [["deploy", "--json"]]
    assert {"install", "test", "lint", "validate", "images"} <= makefile_targets()
    assert "SHELL" not in makefile_targets() and "ML_PLATFORM_VERSION" not in makefile_targets()


def test_each_job_calls_what_it_is_for(workflow):
    calls = all_make_calls(workflow)
    targets = {name: [args[0] for n, args in calls if n == name] for name in workflow["jobs"]}
    assert targets["test"] == ["lint", "test"]
    assert {"validate", "validate-helm", "images"} <= set(targets["validate"])
    assert targets["deploy-staging"][-1] == "smoke-k8s"
    assert targets["deploy-production"][-1] == "smoke-k8s"
    cli = {name: [args[0] for n, args in all_cli_calls(workflow) if n == name] for name in workflow["jobs"]}
    assert cli["train"][0] == "run"
    assert cli["deploy-staging"] == ["deploy"] and cli["deploy-production"] == ["deploy"]
    # the smoke test comes after the deploy, in each environment
    for name, environment in (("deploy-staging", "staging"), ("deploy-production", "prod")):
        scripts = run_scripts(workflow["jobs"][name])
        deploy_at = next(i for i, s in enumerate(scripts) if "ml-platform deploy" in s)
        smoke_at = next(i for i, s in enumerate(scripts) if "make smoke-k8s" in s)
        assert deploy_at < smoke_at
        assert f"--env {environment}" in scripts[deploy_at] and f"K8S_ENV={environment}" in scripts[smoke_at]


def test_every_make_target_used_exists(workflow):
    targets = makefile_targets()
    calls = all_make_calls(workflow)
    assert calls
    for job, args in calls:
        goals = [a for a in args if "=" not in a and not a.startswith("-")]
        assert goals, f"{job}: make without a target"
        for goal in goals:
            assert goal in targets, f"{job}: make {goal} is not a Makefile target"
        # make itself accepts the goals and variables as written (dry run: nothing is executed)
        dry_run = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=False)
        assert dry_run.returncode == 0, f"{job}: make -n {' '.join(args)}: {dry_run.stderr}"


def parse_cli_call(args: list[str]) -> dict[str, Any] | None:
    """The parameters of ``ml-platform <args>`` as the real CLI parses them (nothing runs); None for an
    unknown command. Unknown options or bad values raise the CLI's own usage errors."""
    import typer

    from runs.cli import app

    group = typer.main.get_command(app)
    context = group.make_context("ml-platform", list(args))
    command = group.get_command(context, args[0])
    if command is None:
        return None
    return command.make_context(args[0], list(args[1:]), parent=context).params


def test_every_cli_call_parses_with_the_real_cli(workflow):
    from runs.cli import ENVIRONMENTS, PIPELINES

    calls = all_cli_calls(workflow)
    assert calls
    for job, args in calls:
        params = parse_cli_call(with_job_outputs(workflow, job, args))
        assert params is not None, f"{job}: ml-platform {args[0]} is not a command of the CLI"
        if "env" in params:
            assert params["env"] in ENVIRONMENTS
        if params.get("pipeline"):
            assert params["pipeline"] in PIPELINES
        if params.get("params"):
            assert (REPO / params["params"]).is_file()


def test_cli_check_is_not_vacuous():
    assert parse_cli_call(["no-such-command", "--url", "http://x"]) is None
    assert parse_cli_call(["deploy", "--env", "prod"])["env"] == "prod"
    with pytest.raises(Exception, match="No such option: --enviroment"):
        parse_cli_call(["deploy", "--enviroment", "prod"])
    with pytest.raises(Exception, match="valid integer"):
        parse_cli_call(["deploy", "--version", "three"])


# ---- secrets ------------------------------------------------------------------------------------------------


def env_blocks(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    blocks = [("workflow", workflow.get("env", {}))]
    for name, job in workflow["jobs"].items():
        blocks.append((name, job.get("env", {})))
        for service_name, service in job.get("services", {}).items():
            blocks.append((f"{name}/{service_name}", service.get("env", {})))
        for step in job.get("steps", []):
            blocks.append((f"{name}/{step.get('name', step.get('run', step.get('uses')))}", step.get("env", {})))
    return blocks


def test_secrets_come_only_from_the_secrets_context(workflow):
    text = WORKFLOW.read_text()
    assert not CREDENTIALS_IN_URL.search(text)
    checked = 0
    for where, env in env_blocks(workflow):
        for key, value in env.items():
            if SECRET_LIKE_NAME.search(key):
                assert SECRET_EXPRESSION.match(str(value)), f"{where}: {key} must be ${{{{ secrets.X }}}}"
                checked += 1
    assert checked >= 10
    # never interpolated into a script (it would be part of the command line and of any `set -x`)
    for job in workflow["jobs"].values():
        for script in run_scripts(job):
            assert "secrets." not in script
    # the password-less service database is trust auth on a throwaway runner, not a credential
    assert workflow["jobs"]["test"]["services"]["postgres"]["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}


def test_secret_check_is_not_vacuous(workflow):
    leaked = yaml.safe_load(WORKFLOW.read_text())
    leaked["jobs"]["train"]["env"]["DAGSTER_PG_PASSWORD"] = "hunter2"
    with pytest.raises(AssertionError):
        for where, env in env_blocks(leaked):
            for key, value in env.items():
                if SECRET_LIKE_NAME.search(key):
                    assert SECRET_EXPRESSION.match(str(value)), where


def test_training_runs_against_the_production_profile(workflow):
    train = workflow["jobs"]["train"]
    runs = [args for job, args in all_cli_calls(workflow) if job == "train" and args[0] == "run"]
    # a fresh runner first ingests the training window and builds its features, then trains
    assert [parse_cli_call(args)["pipeline"] for args in runs] == ["ingest", "features", "training"]
    assert runs[-1] == ["run", "--pipeline", "training", "--params", "deploy/params/training.yaml"]
    ingest = parse_cli_call(runs[0])
    assert ingest["start"] and ingest["end"]
    for name in ("train", "deploy-staging", "deploy-production"):
        env = workflow["jobs"][name]["env"]
        assert env["ML_PLATFORM_PROFILE"] == "production"
        # the runner trains (if at all) in a local subprocess: no training image or GPU pod needed there
        assert env["ML_PLATFORM_TRAINING_BACKEND"] == "local"
        assert env["ML_PLATFORM_MLFLOW_URI"] == "${{ secrets.ML_PLATFORM_MLFLOW_URI }}"
    # the training pipeline ends with model_deployment: on the runner, never straight to a cluster
    assert train["env"]["ML_PLATFORM_DEPLOYMENT_TARGET"] == "local"
    # training and the deploys are runs recorded in the Dagster instance (the deploys' smoke checks are what
    # the cluster's rollback sensor watches)
    for name in ("train", "deploy-staging", "deploy-production"):
        assert workflow["jobs"][name]["env"]["DAGSTER_PG_PASSWORD"] == "${{ secrets.DAGSTER_PG_PASSWORD }}"


def test_production_gets_exactly_the_version_staging_got(workflow):
    staging, production = workflow["jobs"]["deploy-staging"], workflow["jobs"]["deploy-production"]
    [step] = [s for s in staging["steps"] if "ml-platform deploy" in s.get("run", "")]
    assert staging["outputs"]["version"] == f"${{{{ steps.{step['id']}.outputs.version }}}}"
    [staging_call] = commands_in(step["run"], "ml-platform")
    assert parse_cli_call(staging_call)["as_json"] is True and parse_cli_call(staging_call)["version"] is None
    assert "version=$(jq -er '.version' \"$RUNNER_TEMP/deploy.json\")" in step["run"]
    assert 'echo "version=$version" >> "$GITHUB_OUTPUT"' in step["run"]

    [production_call] = [args for job, args in all_cli_calls(workflow) if job == "deploy-production"]
    variable = production_call[production_call.index("--version") + 1]
    assert variable.startswith("$")  # read from the environment at run time, never from the alias
    assert production["env"][variable[1:]] == "${{ needs.deploy-staging.outputs.version }}"
    params = parse_cli_call(with_job_outputs(workflow, "deploy-production", production_call))
    assert (params["env"], params["version"]) == ("prod", int(SAMPLE_VERSION))
    # the deploy's smoke check reaches each environment's server with its token
    for job, secret in ((staging, "STAGING"), (production, "PRODUCTION")):
        assert job["env"]["ML_PLATFORM_SERVING_URL"] == f"${{{{ secrets.{secret}_SERVING_URL }}}}"
        [deploy] = [s for s in job["steps"] if "ml-platform deploy" in s.get("run", "")]
        assert deploy["env"]["ML_PLATFORM_SERVING_TOKEN"] == f"${{{{ secrets.{secret}_SERVING_TOKEN }}}}"
