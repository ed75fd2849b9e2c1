"""The pre-warmed training process of ``LocalTrainingCompute``: started when a run that trains starts, handed
its Pipes bootstrap when training is due. It reports what a process started the plain way reports, a dead
one is replaced by a fresh process, and no run leaves one behind; the entrypoint's plain mode (the one the
Kubernetes pod uses) is unchanged."""

import io
import json
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import date

import dagster as dg
import psutil
import pytest

from ml_platform.data.synthetic import SyntheticConfig, generate_transactions
from ml_platform.features.engineering import stats_before
from ml_platform.training.dataset import assemble_training_set
from ml_platform.training.datasets import store_training_set
from ml_platform.training.job import TrainingJob
from ml_platform.training.pipes_entrypoint import WAIT_FOR_BOOTSTRAP, bootstrap_message, receive_bootstrap
from resources.training import (
    ENTRYPOINT,
    KubernetesTrainingCompute,
    LocalTrainingCompute,
    discard_training_ahead,
    start_training_ahead,
)

# Small, single-threaded trees: the same data and seed give the same model in any process.
PARAMS = {"n_estimators": 20, "max_depth": 3, "early_stopping_rounds": 5, "device": "cpu", "n_jobs": 1, "seed": 7}
JOB_VARIABLE = "ML_PLATFORM_TEST_PREWARM_JOB"  # the job of the multiprocess test's steps (they inherit it)
PREWARMED = "training in the process pre-warmed"
# What differs between two trainings of the same data: MLflow's ids, the timing and the Dagster run.
PER_RUN = {"mlflow_run_id", "model_uri", "train_seconds", "dagster_run_id"}


@pytest.fixture(scope="module")
def stored_training_set(tmp_path_factory):
    """One seeded training set (~2k rows over 3 days), stored as training_set does."""
    transactions = generate_transactions(
        SyntheticConfig(seed=5, n_customers=150, transactions_per_day=800, fraud_rate=0.05),
        date(2025, 6, 1),
        date(2025, 6, 4),
    )
    frame = assemble_training_set(transactions, stats_before(transactions))
    return store_training_set(frame, tmp_path_factory.mktemp("training_sets"))


def training_job(stored, store_dir, run_key: str = "run-1") -> TrainingJob:
    """A job on the shared training set, registering in an MLflow store of its own under ``store_dir``."""
    return TrainingJob(
        training_set_path=str(stored.path),
        training_set_digest=stored.digest,
        tracking_uri=f"sqlite:///{store_dir / 'mlflow.db'}",
        model_name="prewarm_test",
        experiment_name="prewarm_test",
        artifact_root=(store_dir / "artifacts").as_uri(),
        run_key=run_key,
        params=dict(PARAMS),
        dagster_run_id="dagster-run",
        code_version="test",
    )


def run_asset(asset, compute: LocalTrainingCompute | None = None, extra_assets=()):
    """Materialize ``asset`` (and ``extra_assets``) in process; the result, its run's log messages, and the
    materialization metadata of ``asset`` (plain values) when it materialized."""
    resources = {"training_compute": compute} if compute is not None else {}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([*extra_assets, asset], resources=resources, instance=instance, raise_on_error=False)
        messages = [record.user_message for record in instance.all_logs(result.run_id)]
    materialized = [
        event.event_specific_data.materialization
        for event in result.get_asset_materialization_events()
        if event.asset_key == asset.key
    ]
    if not materialized:
        return result, messages, None
    return result, messages, {key: getattr(value, "value", value) for key, value in materialized[0].metadata.items()}


def prewarmed_children() -> list[psutil.Process]:
    """This process's children waiting for (or running) a pre-warmed training job."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if WAIT_FOR_BOOTSTRAP in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_prewarmed_process_reports_what_a_plain_process_reports(stored_training_set, tmp_path):
    """The same job, once through Dagster's own PipesSubprocessClient starting the entrypoint the plain way (as
    the pod does: bootstrap in the environment) and once through the pre-warmed process: the same model and
    the same materialization, bar what differs per run."""
    plain_job = training_job(stored_training_set, tmp_path / "plain")
    warm_job = training_job(stored_training_set, tmp_path / "warm")

    @dg.asset(name="trained")
    def plain(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        command = [sys.executable, *ENTRYPOINT]
        client = dg.PipesSubprocessClient()
        return client.run(command=command, context=context, extras={"job": asdict(plain_job)}).get_materialize_result()

    @dg.asset(name="trained")
    def warm(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        return training_compute.train(context, warm_job)

    plain_result, plain_messages, plain_metadata = run_asset(plain)
    warm_result, warm_messages, warm_metadata = run_asset(warm, LocalTrainingCompute())
    assert plain_result.success and warm_result.success
    assert any(message.startswith(PREWARMED) for message in warm_messages)
    assert not any(message.startswith(PREWARMED) for message in plain_messages)
    assert warm_metadata["model_version"] == 1 and warm_metadata["train_rows"] > 1000
    assert warm_metadata["device"] == "cpu" and warm_metadata["reused_existing_version"] is False
    assert {k: v for k, v in warm_metadata.items() if k not in PER_RUN} == {
        k: v for k, v in plain_metadata.items() if k not in PER_RUN
    }
    # the training process's log lines reach the step's log either way
    assert sum(message.startswith("registered prewarm_test v1") for message in warm_messages) == 1


def test_a_dead_prewarmed_process_is_replaced_by_a_fresh_one(stored_training_set, tmp_path):
    job = training_job(stored_training_set, tmp_path)

    @dg.asset(name="trained")
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        (waiting,) = prewarmed_children()
        waiting.kill()
        # until it has exited, without reaping it: the resource's own handle on it reads its exit code
        os.waitid(os.P_PID, waiting.pid, os.WEXITED | os.WNOWAIT)
        return training_compute.train(context, job)

    result, messages, metadata = run_asset(trained, LocalTrainingCompute())
    assert result.success
    assert metadata["model_version"] == 1 and metadata["reused_existing_version"] is False
    (warning,) = [message for message in messages if "pre-warmed training process" in message]
    assert warning.endswith("had exited with code -9 before its job came; training in a fresh process")
    assert not any(message.startswith(PREWARMED) for message in messages)


def test_a_prewarmed_process_serves_one_training(stored_training_set, tmp_path):
    """A second training in the same run (as a retried step is) starts a fresh process."""
    first, second = (training_job(stored_training_set, tmp_path, run_key=key) for key in ("run-1", "run-2"))
    versions = []

    @dg.asset(name="trained")
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        versions.append(training_compute.train(context, first).metadata["model_version"].value)
        result = training_compute.train(context, second)
        versions.append(result.metadata["model_version"].value)
        return result

    result, messages, _ = run_asset(trained, LocalTrainingCompute())
    assert result.success and versions == [1, 2]
    assert sum(message.startswith(PREWARMED) for message in messages) == 1
    assert sum("already ran a job; starting a fresh one" in message for message in messages) == 1


def test_a_run_failing_before_training_leaves_no_process_behind(stored_training_set, tmp_path):
    job = training_job(stored_training_set, tmp_path)
    seen: list[psutil.Process] = []

    @dg.asset
    def upstream() -> None:
        seen.extend(prewarmed_children())  # started with the run, before any step
        raise dg.Failure("upstream failed on purpose")

    @dg.asset(name="trained", deps=[upstream])
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        return training_compute.train(context, job)

    result, _, metadata = run_asset(trained, LocalTrainingCompute(), extra_assets=[upstream])
    assert not result.success and metadata is None
    assert len(seen) == 1
    assert not seen[0].is_running()  # ended and reaped at the run's teardown
    assert prewarmed_children() == []


def test_a_process_started_ahead_is_the_one_the_next_training_run_takes(stored_training_set, tmp_path):
    """``start_training_ahead`` (runs.launch.launch_graph, before the run of the days): the next run that trains
    takes that process instead of starting one; a second call while it waits starts no other."""
    job = training_job(stored_training_set, tmp_path)
    compute = LocalTrainingCompute()
    assert start_training_ahead(compute) and start_training_ahead(compute)
    (ahead,) = prewarmed_children()
    seen: list[list[int]] = []

    @dg.asset(name="trained")
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        seen.append([child.pid for child in prewarmed_children()])
        return training_compute.train(context, job)

    try:
        result, messages, metadata = run_asset(trained, compute)
    finally:
        discard_training_ahead()
    assert result.success and metadata["model_version"] == 1
    assert seen == [[ahead.pid]]  # the run started none of its own
    assert sum(message.startswith(PREWARMED) and f"(pid {ahead.pid})" in message for message in messages) == 1
    assert prewarmed_children() == []


def test_a_process_started_ahead_that_no_run_takes_is_ended(tmp_path):
    assert start_training_ahead(LocalTrainingCompute())
    (ahead,) = prewarmed_children()
    discard_training_ahead()  # what launch_graph does after its runs, whether the training run came or not
    assert not ahead.is_running() and prewarmed_children() == []
    # prewarm off, or training elsewhere (a pod): nothing is started
    assert not start_training_ahead(LocalTrainingCompute(prewarm=False))
    assert not start_training_ahead(KubernetesTrainingCompute(namespace="ml", image="ml-platform:test"))
    assert prewarmed_children() == []


def test_a_run_without_training_starts_no_process(tmp_path):
    seen: list[list[psutil.Process]] = []

    @dg.asset
    def other() -> None:
        seen.append(prewarmed_children())

    @dg.asset(deps=[other])
    def trained(training_compute: LocalTrainingCompute) -> None:
        raise AssertionError("not selected")

    with dg.DagsterInstance.ephemeral() as instance:
        resources = {"training_compute": LocalTrainingCompute()}
        result = dg.materialize([other, trained], selection=[other], resources=resources, instance=instance)
    assert result.success and seen == [[]]


def test_prewarm_off_starts_the_process_when_training_is_due(stored_training_set, tmp_path):
    job = training_job(stored_training_set, tmp_path)
    seen: list[list[psutil.Process]] = []

    @dg.asset(name="trained")
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        seen.append(prewarmed_children())
        return training_compute.train(context, job)

    result, messages, metadata = run_asset(trained, LocalTrainingCompute(prewarm=False))
    assert result.success and metadata["model_version"] == 1
    assert seen == [[]] and not any("pre-warmed" in message for message in messages)


def multiprocess_training_job() -> dg.JobDefinition:
    """A one-asset job under the multiprocess executor (each step in a process of its own), training the job
    in ``JOB_VARIABLE``; reconstructed by module path in the step's process."""
    job = TrainingJob(**json.loads(os.environ[JOB_VARIABLE]))

    @dg.asset(name="trained")
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        return training_compute.train(context, job)

    return dg.Definitions(
        assets=[trained],
        resources={"training_compute": LocalTrainingCompute()},
        jobs=[dg.define_asset_job("train", executor_def=dg.multiprocess_executor)],
    ).resolve_job_def("train")


def test_under_the_multiprocess_executor_the_training_step_prewarms_its_process(
    stored_training_set, tmp_path, monkeypatch
):
    """Under the multiprocess executor the resource is set up in the training step's own process: the process
    is started there, at the step's start, and takes the job all the same."""
    monkeypatch.setenv(JOB_VARIABLE, json.dumps(asdict(training_job(stored_training_set, tmp_path))))
    with (
        dg.instance_for_test(temp_dir=str(tmp_path)) as instance,
        dg.execute_job(dg.reconstructable(multiprocess_training_job), instance=instance) as result,
    ):
        assert result.success
        (materialization,) = result.asset_materializations_for_node("trained")
        messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert materialization.metadata["model_version"].value == 1
    assert any(message.startswith(PREWARMED) for message in messages)


def test_the_bootstrap_message_gives_the_process_the_launchers_environment_and_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PREWARM_TEST_KEPT", "same")
    monkeypatch.setenv("PREWARM_TEST_CHANGED", "before")
    monkeypatch.setenv("PREWARM_TEST_REMOVED", "gone later")
    monkeypatch.delenv("PREWARM_TEST_ADDED", raising=False)
    monkeypatch.chdir(os.getcwd())  # restored afterwards
    started_with = dict(os.environ)
    launcher = {k: v for k, v in started_with.items() if k != "PREWARM_TEST_REMOVED"}
    launcher.update(PREWARM_TEST_CHANGED="after", PREWARM_TEST_ADDED="new")

    line = bootstrap_message(launcher, started_with, str(tmp_path))
    assert json.loads(line) == {
        "set": {"PREWARM_TEST_CHANGED": "after", "PREWARM_TEST_ADDED": "new"},
        "unset": ["PREWARM_TEST_REMOVED"],
        "cwd": str(tmp_path),
    }
    assert receive_bootstrap(io.StringIO(line.decode())) is True
    assert dict(os.environ) == launcher
    assert os.getcwd() == str(tmp_path)
    assert receive_bootstrap(io.StringIO("")) is False  # the launcher closed stdin: no job


def test_the_bootstrap_message_must_be_the_launchers():
    with pytest.raises(ValueError, match="the bootstrap message on stdin is not the launcher's"):
        receive_bootstrap(io.StringIO('{"set": {}}\n'))


def test_the_entrypoint_waiting_for_a_job_ends_quietly_when_none_comes():
    command = [sys.executable, *ENTRYPOINT, WAIT_FOR_BOOTSTRAP]
    completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert (completed.returncode, completed.stdout) == (0, ""), completed.stderr


def test_the_entrypoint_refuses_an_unknown_argument():
    command = [sys.executable, *ENTRYPOINT, "--prewarm"]
    completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert "usage: python -m ml_platform.training.pipes_entrypoint [--wait-for-bootstrap]; got ['--prewarm']" in (
        completed.stderr
    )


def test_an_interpreter_that_cannot_start_fails_the_training_step_not_the_run_start(stored_training_set, tmp_path):
    """Pre-warming a missing interpreter only warns; the training step then fails, naming it."""
    job = training_job(stored_training_set, tmp_path)
    missing = str(tmp_path / "no-such-python")
    ran: list[str] = []

    @dg.asset
    def upstream() -> None:
        ran.append("upstream")

    @dg.asset(name="trained", deps=[upstream])
    def trained(context: dg.AssetExecutionContext, training_compute: LocalTrainingCompute) -> dg.MaterializeResult:
        return training_compute.train(context, job)

    result, messages, metadata = run_asset(
        trained, LocalTrainingCompute(python_executable=missing), extra_assets=[upstream]
    )
    assert not result.success and metadata is None and ran == ["upstream"]
    assert any(
        message.startswith("could not pre-warm the training process") and missing in message for message in messages
    )
    (failure,) = result.get_step_failure_events()
    cause = failure.event_specific_data.error.cause  # under Dagster's "Error occurred while executing op"
    assert failure.step_key == "trained" and cause.cls_name == "FileNotFoundError" and missing in cause.message
