"""Where training runs: the same entrypoint as a local subprocess here, a GPU pod in production.

Both run ``python -m ml_platform.training.pipes_entrypoint`` through Dagster Pipes, so the asset code
does not change when training moves to Kubernetes: only this resource does.

Where the GPU is asked for:

- ``KubernetesTrainingCompute`` (production default): the training pod it starts carries the
  ``nvidia.com/gpu`` limit, node selector and tolerations. The ``trained_model`` step pod only waits for
  it, so it asks for no GPU (two GPUs held for one training would leave one idle).
- ``LocalTrainingCompute`` under the Kubernetes step executor: training runs inside the step pod, so
  that pod asks for the GPU through the ``dagster-k8s/config`` tag of ``trained_model``
  (:func:`training_step_tags`).
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import IO, Any, cast

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # what the plain client raises; not exported
from pydantic import Field, PrivateAttr

from ml_platform.settings import Settings, normalize_tracking_uri, redact, without_password
from ml_platform.training.job import TrainingJob
from ml_platform.training.pipes_entrypoint import WAIT_FOR_BOOTSTRAP, bootstrap_message

ENTRYPOINT = ["-m", "ml_platform.training.pipes_entrypoint"]
POD_PYTHON = "python"  # the interpreter on PATH in the training image
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
STATE_VOLUME = "ml-platform-state"
# Secret keys (environment variable names) the training pod reads, when the Secret has them: libpq's
# password for MLflow's PostgreSQL store (the Pipes context carries the tracking URI without it), and a
# tracking server's or object store's credentials.
TRAINING_SECRET_ENV = (
    "PGPASSWORD",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_CONNECTION_STRING",
)


class TrainingCompute(dg.ConfigurableResource, ABC):
    @abstractmethod
    def train(self, context: dg.AssetExecutionContext, job: TrainingJob) -> dg.MaterializeResult:
        """Run the training job and return the asset materialization it reported."""


def _external_error(context: dg.AssetExecutionContext) -> str | None:
    """What the training process raised, as Dagster Pipes reported it ("closed with exception"), or None.

    Pipes itself fails the step with "External execution process failed with code 1" (or the pod's
    phase); the cause (an unreachable database, a missing file) is in this engine event of the step.
    """
    step_key = context.get_step_execution_context().step.key
    kinds = {dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED}
    for record in reversed(context.instance.all_logs(context.run.run_id, of_type=kinds)):
        event = record.dagster_event
        if event is None or event.step_key != step_key:
            continue
        if event.event_type != dg.DagsterEventType.ENGINE_EVENT:
            return None  # reached this attempt's start: an earlier attempt's error is not this one's cause
        data = event.engine_event_data
        if data is not None and data.error is not None:
            return data.error.message.strip()
    return None


def _run_reporting_cause(context: dg.AssetExecutionContext, where: str, launch) -> dg.MaterializeResult:
    """``launch()``, with a failure of the training process re-raised as a ``dg.Failure`` that says why."""
    try:
        return launch()
    except Exception as error:
        cause = _external_error(context)
        if cause is None:
            raise
        raise dg.Failure(
            description=f"training failed in {where}: {redact(cause)}",
            metadata={"pipes_error": f"{type(error).__name__}: {error}"},
        ) from error


def _connectable(job: TrainingJob) -> TrainingJob:
    """The job with a driver-less ``postgresql://`` tracking URI pinned to psycopg2 (the driver we ship)."""
    return replace(job, tracking_uri=normalize_tracking_uri(job.tracking_uri))


class PrewarmedTrainingProcess:
    """A training process started before its job: it imports what training uses (XGBoost, MLflow and its SQL
    stores, matplotlib; ``pipes_entrypoint --wait-for-bootstrap``) while the run's earlier steps compute,
    then waits on its stdin for the Pipes bootstrap of the one job it serves (:meth:`hand_over`).

    Its environment is this process's when it starts; :meth:`hand_over` sends what changed since, so the
    job sees the environment a process started at that moment would see. A library that reads a variable
    on import has read it at the start, though: the run's environment is set before the run starts.
    """

    def __init__(self, command: Sequence[str]) -> None:
        self.command = [*command, WAIT_FOR_BOOTSTRAP]
        self.environment = dict(os.environ)
        self.process = subprocess.Popen(self.command, env=self.environment, stdin=subprocess.PIPE)
        self.started = time.monotonic()
        self.handed_over = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def hand_over(self, environment: Mapping[str, str], cwd: str, log) -> subprocess.Popen | None:
        """Give this process its job: ``environment`` (with the Pipes bootstrap variables) and the working
        directory, on its stdin. None, logged, when it cannot take the job (it has exited: a warning; it
        already took one, as a retried step finds it: info): the caller starts a fresh process instead."""
        if self.handed_over:
            log.info(f"the pre-warmed training process (pid {self.pid}) already ran a job; starting a fresh one")
            return None
        self.handed_over = True
        code = self.process.poll()
        if code is None:
            stdin = cast(IO[bytes], self.process.stdin)  # a pipe: started with stdin=PIPE
            try:
                stdin.write(bootstrap_message(environment, self.environment, cwd))
                stdin.close()
            except OSError as error:  # BrokenPipeError: it exited in the meantime
                code = self.process.poll()
                log.warning(
                    f"the pre-warmed training process (pid {self.pid}) did not take its job ({error}; exit code "
                    f"{code}); training in a fresh process"
                )
                self.discard()
                return None
            log.info(f"training in the process pre-warmed {time.monotonic() - self.started:.1f} s ago (pid {self.pid})")
            return self.process
        log.warning(
            f"the pre-warmed training process (pid {self.pid}) had exited with code {code} before its job "
            "came; training in a fresh process"
        )
        return None

    def discard(self) -> None:
        """End the process if it is still running (its job never came, or the run is being torn down while
        it trains), and reap it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):  # a broken pipe: the process is gone already
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PrewarmedPipesSubprocessClient(dg.PipesSubprocessClient):
    """``dg.PipesSubprocessClient`` that hands the Pipes session to a :class:`PrewarmedTrainingProcess` when it
    can take it, and otherwise starts ``command`` as the plain client does.

    The session is Dagster's own (``open_pipes_session`` with the plain client's context injector and message
    reader: a temporary file each), and so are the failure on a non-zero exit and the forwarding of an
    interruption: the step's logs, its materialization and its errors are those of the plain client. Only
    where the process comes from differs.
    """

    def __init__(self, prewarmed: PrewarmedTrainingProcess | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prewarmed = prewarmed

    def run(  # ty: ignore[invalid-method-override]
        self,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        extras: dict[str, Any] | None = None,
        command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        with dg.open_pipes_session(
            context=context,
            context_injector=self.context_injector,
            message_reader=self.message_reader,
            extras=extras,
        ) as pipes_session:
            environment = {**os.environ, **self.env, **(env or {}), **pipes_session.get_bootstrap_env_vars()}
            workdir = cwd or self.cwd
            process = None
            if self.prewarmed is not None:
                process = self.prewarmed.hand_over(environment, os.path.abspath(workdir or os.getcwd()), context.log)
            if process is None:
                stdio = None if self.forward_stdio else subprocess.PIPE
                process = subprocess.Popen(command, cwd=workdir, env=environment, stdout=stdio, stderr=stdio)
            try:
                process.wait()
                if process.returncode != 0:
                    raise DagsterPipesExecutionError(
                        f"External execution process failed with code {process.returncode}"
                    )
            except dg.DagsterExecutionInterruptedError:
                if self.forward_termination:
                    context.log.info("[pipes] execution interrupted, sending SIGINT to subprocess.")
                    process.send_signal(signal.SIGINT)
                    process.wait(timeout=self.termination_timeout_seconds)
                raise
        return dg.PipesClientCompletedInvocation(pipes_session)


# Training processes started ahead of the run that will train, by a caller that knows such a run comes next in
# this process: runs.launch.launch_graph starts one before the day-partitioned run of the whole graph, whose
# steps (pandas, mostly one core) leave the other core idle for its imports, where a process started with the
# training run would import while the training set's join (DuckDB, both cores) computes. Keyed by command.
_STARTED_AHEAD: dict[tuple[str, ...], PrewarmedTrainingProcess] = {}
_STARTED_AHEAD_LOCK = threading.Lock()


def start_training_ahead(compute: object) -> bool:
    """Start ``compute``'s pre-warmed training process now, for the next run in this process that trains (it
    takes the process when it starts). Only for a :class:`LocalTrainingCompute` with ``prewarm``; True when a
    process was started or one is waiting already. :func:`discard_training_ahead` ends one no run took."""
    if not isinstance(compute, LocalTrainingCompute) or not compute.prewarm:
        return False
    command = tuple(compute.command())
    with _STARTED_AHEAD_LOCK:
        if command not in _STARTED_AHEAD:
            try:
                _STARTED_AHEAD[command] = PrewarmedTrainingProcess(command)
            except OSError:  # the run that trains starts its own, and reports why it cannot
                return False
    return True


def discard_training_ahead() -> None:
    """End every process :func:`start_training_ahead` started that no run has taken."""
    with _STARTED_AHEAD_LOCK:
        waiting = list(_STARTED_AHEAD.values())
        _STARTED_AHEAD.clear()
    for process in waiting:
        process.discard()


def _take_started_ahead(command: Sequence[str]) -> PrewarmedTrainingProcess | None:
    """The process started ahead for ``command``, if one is waiting and still alive."""
    with _STARTED_AHEAD_LOCK:
        process = _STARTED_AHEAD.pop(tuple(command), None)
    if process is not None and process.process.poll() is not None:
        process.discard()  # it exited: the run starts a fresh one
        return None
    return process


class LocalTrainingCompute(TrainingCompute):
    """A Pipes subprocess on this machine; uses the local GPU when XGBoost can see one.

    With ``prewarm`` (the default) the process is started when a run that will train initializes this
    resource (at the run's start in process; at the training step's start under the multiprocess
    executor), so its interpreter and imports are paid while the steps before training compute; it
    serves that one training and is ended when the run ends without it. A process that is gone by then
    is replaced by a fresh one, as ``prewarm=False`` always starts one. A process started earlier still,
    by :func:`start_training_ahead` in this process, is taken instead of starting one.
    """

    python_executable: str = ""  # empty: the interpreter running Dagster
    prewarm: bool = Field(
        default=True,
        description="Start the training process when the run starts (it imports what training uses while the "
        "steps before it compute) and hand it its job when training is due; false: start it then.",
    )
    _prewarmed: PrewarmedTrainingProcess | None = PrivateAttr(default=None)

    def command(self) -> list[str]:
        return [self.python_executable or sys.executable, *ENTRYPOINT]

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if not self.prewarm:
            return
        self._prewarmed = _take_started_ahead(self.command())
        if self._prewarmed is not None:
            return
        try:
            self._prewarmed = PrewarmedTrainingProcess(self.command())
        except OSError as error:  # e.g. python_executable missing: training, when due, fails with the cause
            if context.log is not None:
                context.log.warning(
                    f"could not pre-warm the training process ({error}); it starts when training is due"
                )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        prewarmed, self._prewarmed = self._prewarmed, None
        if prewarmed is not None:
            prewarmed.discard()

    def train(self, context: dg.AssetExecutionContext, job: TrainingJob) -> dg.MaterializeResult:
        client = PrewarmedPipesSubprocessClient(self._prewarmed)
        extras = {"job": asdict(_connectable(job))}
        return _run_reporting_cause(
            context,
            "the training subprocess",
            lambda: client.run(command=self.command(), context=context, extras=extras).get_materialize_result(),
        )


class KubernetesTrainingCompute(TrainingCompute):
    """A pod per training through ``dagster_k8s.PipesK8sClient``, running the same entrypoint.

    The pod asks for ``gpus`` × ``nvidia.com/gpu`` on nodes matching ``node_selector`` (tolerating
    ``tolerations``), mounts the state volume claim at ``state_mount_path`` (the training set is read
    and, with a local artifact root, the model written there) and reads secrets from the Kubernetes
    Secret ``secret_name`` by ``secretKeyRef``: no secret value is ever part of the pod spec.
    """

    namespace: str
    image: str
    gpus: int = 1
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    cpu: str = "2"
    memory: str = "8Gi"
    secret_name: str = "ml-platform-secrets"
    state_claim: str = "ml-platform-state"
    state_mount_path: str = ""
    env: dict[str, str] = {}
    kubeconfig_file: str | None = None
    load_incluster_config: bool | None = None  # None: in-cluster when there, else the kubeconfig
    poll_interval_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "KubernetesTrainingCompute":
        values: dict[str, Any] = {
            "namespace": settings.k8s_namespace,
            "image": settings.training_image,
            "gpus": settings.training_gpus,
            "node_selector": dict(settings.training_node_selector),
            "tolerations": [dict(t) for t in settings.training_tolerations],
            "secret_name": settings.k8s_secret,
            "state_claim": settings.k8s_state_claim,
            "state_mount_path": str(settings.home),
            # The pod's own settings: scratch and caches on the state volume, the local profile's checks
            # (the job it runs carries every connection it needs).
            "env": {"ML_PLATFORM_HOME": str(settings.home)},
        }
        values.update(overrides)
        return cls(**values)

    # ---- what is submitted ---------------------------------------------------------------------
    def command(self) -> list[str]:
        return [POD_PYTHON, *ENTRYPOINT]

    def job_for_pod(self, job: TrainingJob) -> TrainingJob:
        """The job as it travels in the pod's Pipes context (a plain environment variable of the pod):
        without the database password, which the pod reads as ``PGPASSWORD`` from the Secret."""
        return replace(job, tracking_uri=without_password(normalize_tracking_uri(job.tracking_uri)))

    def pod_meta(self) -> dict[str, Any]:
        return {
            "labels": {"app.kubernetes.io/part-of": "ml-platform", "app.kubernetes.io/component": "training"},
        }

    def pod_spec(self) -> dict[str, Any]:
        """``base_pod_spec`` for PipesK8sClient: resources, placement, secrets, the state volume."""
        limits: dict[str, str] = {"memory": self.memory}
        if self.gpus > 0:
            limits[GPU_RESOURCE] = str(self.gpus)
        container: dict[str, Any] = {
            "resources": {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits},
            "env": [
                {"name": name, "valueFrom": {"secretKeyRef": {"name": self.secret_name, "key": name, "optional": True}}}
                for name in TRAINING_SECRET_ENV
            ],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
        spec: dict[str, Any] = {
            "containers": [container],
            # the image's own non-root user (deploy/docker/Dockerfile.user-code: uid 10001)
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        }
        if self.state_claim:
            container["volumeMounts"] = [{"name": STATE_VOLUME, "mountPath": self.state_mount_path}]
            spec["volumes"] = [{"name": STATE_VOLUME, "persistentVolumeClaim": {"claimName": self.state_claim}}]
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]
        return spec

    def pod_body(self, job: TrainingJob, pod_name: str = "ml-platform-training") -> dict[str, Any]:
        """The pod :meth:`train` would submit for ``job``, as a Kubernetes object (for review and tests).

        Built by dagster-k8s' own ``build_pod_body`` from the same parts :meth:`train` hands to
        ``PipesK8sClient.run``. Only the Pipes context variable differs: a real run's also carries the
        run's ids; this one carries the job alone.
        """
        import kubernetes
        from dagster_k8s.pipes import build_pod_body
        from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, encode_env_var

        context_env = {
            DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_env_var({"extras": {"job": asdict(self.job_for_pod(job))}})
        }
        pod = build_pod_body(
            pod_name=pod_name,
            image=self.image,
            command=self.command(),
            env_vars={**context_env, **self.env},
            base_pod_meta=self.pod_meta(),
            base_pod_spec=self.pod_spec(),
        )
        body = kubernetes.client.ApiClient().sanitize_for_serialization(pod)
        return {"apiVersion": "v1", "kind": "Pod", **body}

    # ---- running -------------------------------------------------------------------------------
    def train(self, context: dg.AssetExecutionContext, job: TrainingJob) -> dg.MaterializeResult:
        from dagster_k8s import PipesK8sClient

        client = PipesK8sClient(
            load_incluster_config=self.load_incluster_config,
            kubeconfig_file=self.kubeconfig_file,
            poll_interval=self.poll_interval_s,
        )
        return _run_reporting_cause(
            context,
            f"the training pod (namespace {self.namespace})",
            lambda: client.run(
                context=context,
                extras={"job": asdict(self.job_for_pod(job))},
                image=self.image,
                command=self.command(),
                namespace=self.namespace,
                env=dict(self.env),
                base_pod_meta=self.pod_meta(),
                base_pod_spec=self.pod_spec(),
            ).get_materialize_result(),
        )


def training_step_tags(settings: Settings) -> dict[str, Any]:
    """Op tags of the ``trained_model`` step: under the Kubernetes executor with training in the step
    itself (``training_backend: local``), its pod asks for the GPU; otherwise no tag at all (the GPU,
    if any, is the training pod's; see the module docstring). Built once, when the assets are imported."""
    if settings.executor != "kubernetes" or settings.training_backend != "local" or settings.training_gpus < 1:
        return {}
    pod_spec: dict[str, Any] = {}
    if settings.training_node_selector:
        pod_spec["node_selector"] = dict(settings.training_node_selector)
    if settings.training_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.training_tolerations]
    config: dict[str, Any] = {
        "container_config": {"resources": {"limits": {GPU_RESOURCE: str(settings.training_gpus)}}},
    }
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {K8S_CONFIG_TAG: config}
