"""The command line's output as such: every command's help at 80 columns, no escape codes where the output is
not a terminal (Feast's colours included), usage errors under --json, and the demo's model-server port."""

import io
import json
import re
from contextlib import redirect_stdout
from datetime import datetime

import pytest
import typer
from typer.testing import CliRunner

from ml_platform.cli import _plain_streams
from runs.cli import app

runner = CliRunner()


def every_command():
    """(the words that name it, the command) for each command, the labels group's included."""
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        children = getattr(command, "commands", None)
        if children:
            yield from (([name, child_name], child) for child_name, child in children.items())
        else:
            yield [name], command


COMMANDS = list(every_command())


def test_the_walk_finds_every_command():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"demo", "run", "status", "deploy", "rollback", "drift", "serve", "labels import"} <= names


@pytest.mark.parametrize(("words", "command"), COMMANDS, ids=[" ".join(words) for words, _ in COMMANDS])
def test_help_fits_80_columns_with_every_option_name_whole(words, command):
    result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert "\x1b" not in result.stdout and "…" not in result.stdout
    for param in command.params:
        for name in [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]:
            if name.startswith("-"):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.stdout), (name, result.stdout)


def test_the_app_help_names_the_global_verbose_option_and_the_exit_statuses():
    result = runner.invoke(app, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    assert "-v, --verbose" in result.stdout and "2 a usage error" in result.stdout
    for words in (["status"], ["run"], ["deploy"], ["rollback"], ["drift"]):
        assert "Exit status: 0" in runner.invoke(app, [*words, "--help"], terminal_width=80).stdout


def test_feast_colours_are_stripped_from_a_stream_that_is_not_a_terminal():
    from feast.feature_store import _print_materialization_log  # what FeatureStore.materialize prints

    start, end = datetime(2026, 3, 1), datetime(2026, 3, 2)
    raw = io.StringIO()
    with redirect_stdout(raw):
        _print_materialization_log(start, end, 1, "sqlite")
    assert "\x1b[" in raw.getvalue()  # Feast writes colour codes whatever the stream

    plain = io.StringIO()
    with redirect_stdout(plain), _plain_streams():
        _print_materialization_log(start, end, 1, "sqlite")
    assert "Materializing 1 feature views from 2026-03-01" in plain.getvalue()
    assert "\x1b" not in plain.getvalue()


def test_a_usage_error_under_json_is_one_object_with_exit_status_2():
    result = runner.invoke(app, ["status", "--json", "--windw", "7d"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert set(document) == {"model", "tracking_uri", "window", "aliases", "history", "health", "healthy", "error"}
    assert document["error"]["exit_code"] == 2 and "--windw" in document["error"]["message"]
    text = runner.invoke(app, ["status", "--windw", "7d"])
    assert text.exit_code == 2 and text.stdout == "" and "No such option: --windw" in text.stderr


def test_the_demo_serves_on_the_port_it_is_given(settings):
    from runs.cli import _serving_on

    assert _serving_on(settings, 18_555).resources["deployment"].endpoint() == "http://127.0.0.1:18555"
    default = _serving_on(settings, None).resources["deployment"].endpoint()
    assert default == f"http://127.0.0.1:{settings.serving_port}"
