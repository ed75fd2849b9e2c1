"""The progress display (runs/progress.py): a line per finished step of a real Dagster run as it happens, in
order, with the elapsed seconds; plain text when the stream is not a terminal, the overwritten "running" line
only when it is."""

import io
import re
from types import SimpleNamespace

import dagster as dg
import pytest

from runs.progress import Progress, RunWatcher, current, using

LINE = re.compile(r"^\[\s*(\d+\.\d)s\] (.+)$")
DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-04", timezone="UTC")


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def daily_rows(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"days": len(context.partition_keys)})


@dg.asset(deps=[daily_rows], check_specs=[dg.AssetCheckSpec("not_empty", asset="summary")])
def summary():
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(check_name="not_empty", passed=True)


@dg.asset(deps=[summary])
def broken():
    raise ValueError("the input was bad\nsecond line of the error")


class Clock:
    """A clock that moves one second each time it is read: elapsed seconds are known in advance."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(scope="module")
def run_lines():
    """A run of three steps (a range of 3 days, an asset with a check, a failing asset) watched on a
    non-terminal stream."""
    stream = io.StringIO()
    progress = Progress(stream, clock=Clock())
    job = dg.Definitions(assets=[daily_rows, summary, broken]).resolve_implicit_global_asset_job_def()
    run_id = "3b2c1a00-0000-4000-8000-000000000001"
    with dg.DagsterInstance.ephemeral() as instance:
        progress.watch(instance, run_id, "tiny")
        tags = {"dagster/asset_partition_range_start": "2026-01-01", "dagster/asset_partition_range_end": "2026-01-03"}
        result = job.execute_in_process(instance=instance, run_id=run_id, tags=tags, raise_on_error=False)
    assert not result.success  # broken fails, as it should
    return stream.getvalue()


def test_a_line_per_finished_step_in_order_with_elapsed_seconds(run_lines):
    lines = run_lines.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), (
        f"lines without the [ N.Ns] prefix: {[ln for ln, m in zip(lines, parsed, strict=True) if not m]}"
    )
    texts = [m.group(2) for m in parsed]
    assert texts[0] == "tiny run 3b2c1a00 started"
    assert texts[1].startswith("daily_rows (3 days) materialized in ")
    assert texts[2] == "check summary:not_empty passed"
    assert texts[3].startswith("summary materialized in ")
    assert texts[4] == "broken FAILED: ValueError: the input was bad"
    assert "second line" not in run_lines  # one line per step, the error's first line only
    assert len(texts) == 5
    seconds = [float(m.group(1)) for m in parsed]
    assert seconds == sorted(seconds) and len(set(seconds)) == len(seconds)  # each read of the clock moves it


def test_plain_text_when_the_stream_is_not_a_terminal(run_lines):
    assert "\x1b" not in run_lines and "\r" not in run_lines


def test_a_terminal_sees_the_running_step_overwritten_by_the_next_line():
    stream = io.StringIO()
    progress = Progress(stream, interactive=True, clock=Clock())
    progress.running("customer_stats")
    progress.line("customer_stats (30 days) materialized in 4.1 s")
    assert stream.getvalue() == (
        "\r\x1b[K[   1.0s] customer_stats ...\r\x1b[K[   2.0s] customer_stats (30 days) materialized in 4.1 s\n"
    )


def test_stages_say_done_or_failed_with_their_seconds():
    stream = io.StringIO()
    progress = Progress(stream, clock=Clock())
    with progress.stage("traffic sent"):
        pass
    with pytest.raises(RuntimeError), progress.stage("monitoring"):
        raise RuntimeError("boom")
    assert stream.getvalue().splitlines() == [
        "[   3.0s] traffic sent done in 1.0 s",
        "[   6.0s] monitoring FAILED after 1.0 s",
    ]


def test_elapsed_counts_from_a_parent_s_start(monkeypatch):
    monkeypatch.setenv("ML_PLATFORM_PROGRESS_SINCE", "1000.5")
    import runs.progress as progress_module

    monkeypatch.setattr(progress_module, "_current", None)
    assert current().since == 1000.5
    monkeypatch.setattr(progress_module, "_current", None)
    monkeypatch.setenv("ML_PLATFORM_PROGRESS_SINCE", "yesterday")
    assert current().since > 1000.5  # a malformed value: from now, said on stderr


def test_using_makes_a_display_the_process_s_and_restores_the_one_before():
    before = current()
    mine = Progress(io.StringIO())
    with using(mine):
        assert current() is mine
    assert current() is before


@pytest.mark.xdist_group("graph")
def test_the_graph_s_range_run_says_each_check_once_for_all_its_days(bootstrap_result):
    """The session's bootstrap run (14 days in one run) replayed through a watcher, event by event: a check
    evaluated once per day is one line, a step's assets one line with their days."""
    stream = io.StringIO()
    watcher = RunWatcher(Progress(stream, clock=Clock()), "bootstrap")
    for event in bootstrap_result.all_events:
        watcher(SimpleNamespace(dagster_event=event, run_id=bootstrap_result.run_id))
    texts = [LINE.match(line).group(2) for line in stream.getvalue().splitlines()]
    schema = [text for text in texts if "validated_transactions:schema" in text]
    assert len(schema) == 1 and schema[0].startswith("check validated_transactions:schema passed"), schema
    assert any(text.startswith("raw_transactions (14 days) materialized in ") for text in texts), texts
    assert any(text.startswith("customer_stats (14 days) materialized in ") for text in texts), texts
    assert texts.index("check model_evaluation:quality_floor passed") < next(
        i for i, text in enumerate(texts) if text.startswith("champion_model materialized")
    )


def test_a_step_that_materialized_nothing_is_named_done():
    stream = io.StringIO()
    watcher = RunWatcher(Progress(stream, clock=Clock()), "rollback")
    assert watcher._finished("roll_back_champion", 1.25) == "roll_back_champion done in 1.2 s"
