"""One typed settings object for the whole platform.

Two profiles, chosen by one switch (``ML_PLATFORM_PROFILE``):

- ``local`` (default, no setup): everything lives under one state directory (``.ml_platform/`` in the
  working directory, ``ML_PLATFORM_HOME`` to move it), so ``rm -rf`` of it is a clean slate: SQLite for
  Dagster and MLflow, SQLite for Feast's online store, training in a local subprocess, the model server
  as a local process.
- ``production``: the same asset code on real services. Dagster's instance on PostgreSQL (the template
  ``deploy/dagster/dagster.yaml``), MLflow on a PostgreSQL backend store with a local or object-store
  artifact root, Feast's online store on Redis, training in a (GPU) pod through ``PipesK8sClient``, steps
  as Kubernetes Jobs, the model server deployed to Kubernetes. Training and deployment may each be kept
  ``local`` (a machine with the databases but no cluster).

Settings come from ``ML_PLATFORM_*`` environment variables, optionally on top of a YAML file named by
``ML_PLATFORM_SETTINGS`` whose keys are the field names below (the environment wins). Secrets (database
and Redis passwords, the serving token, webhook URLs) come only from the environment, which on
Kubernetes is filled from a Secret: a settings file that carries one is refused, and every text this
module produces for people (``repr``, :func:`redact`) shows ``***`` in place of a password.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import yaml

from ml_platform.storage import write_text_atomic

PROFILES = ("local", "production")
BACKENDS = ("local", "kubernetes")  # where training runs
# Where the model is deployed: one local process, a set of local replicas behind haproxy, or Kubernetes.
DEPLOYMENT_TARGETS = ("local", "replicas", "kubernetes")
EXECUTORS = ("local", "kubernetes")  # Dagster's default executor, or one Kubernetes Job per step
# Where a model is deployed: the local server process, or a Kubernetes overlay (deploy/k8s/overlays/<name>).
DEPLOYMENT_ENVIRONMENTS = ("local", "staging", "prod")

# What this platform is about by default: a card-transaction fraud detector.
DEFAULT_MODEL_NAME = "fraud_detector"
DEFAULT_EXPERIMENT = "fraud_detector"
FEAST_PROJECT = "ml_platform"

# The local Dagster instance (SQLite storage is Dagster's default under DAGSTER_HOME). Run monitoring:
# the daemon of `dagster dev` looks at every in-progress run each poll_interval_seconds and fails a run
# that has not started within start_timeout_seconds, or whose process the run launcher reports dead.
# Dagster's default launcher reports nothing, so a run whose process died with the code server or the
# command that ran it (`dagster dev` stopped mid-run, `ml-platform run` killed) would stay STARTED
# forever; resources.run_launcher.LocalRunLauncher is the default launcher plus that report (the run's
# process id, on this machine). A dead run is failed, not resumed: neither launcher can resume one.
# The event log is Dagster's SQLite one, in Dagster's own place (history/runs under DAGSTER_HOME), with its
# connections kept open per shard (resources.event_log.LocalEventLogStorage: ~1 ms an event, not ~7).
LOCAL_INSTANCE_YAML = """\
telemetry:
  enabled: false
run_launcher:
  module: resources.run_launcher
  class: LocalRunLauncher
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 15
event_log_storage:
  module: resources.event_log
  class: LocalEventLogStorage
  config:
    base_dir: {event_log_dir}
"""

SETTINGS_FILE_ENV = "ML_PLATFORM_SETTINGS"
# Environment variables that hold secrets: read from the environment only, never from a settings file.
REDIS_PASSWORD_ENV = "ML_PLATFORM_REDIS_PASSWORD"

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGSTER_TEMPLATE = REPO_ROOT / "deploy" / "dagster" / "dagster.yaml"
WRITTEN_BY = "# Written by ml-platform"
# The PostgreSQL driver the platform ships (psycopg2-binary). SQLAlchemy 2.1 reads a bare postgresql://
# as psycopg 3, which is not installed, so bare URIs are pinned to psycopg2.
PG_DRIVER_SCHEME = "postgresql+psycopg2"
# Taint on GPU nodes of the managed Kubernetes offerings (GKE, EKS, AKS GPU pools): tolerated by default.
DEFAULT_GPU_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)


# The owners of every asset unless ML_PLATFORM_ASSET_OWNERS says otherwise.
DEFAULT_ASSET_OWNERS: tuple[str, ...] = ("team:ml-platform",)
# Dagster's owner forms (dagster._core.utils.is_valid_email, or a "team:" prefix and a name): the core does
# not import dagster, so the rule is repeated here; tests/dagster/test_catalog.py holds them equal.
_OWNER_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,7}\b")


class SettingsError(ValueError):
    """A setting has a value the platform cannot use."""


@dataclass(frozen=True)
class _Var:
    """One setting: its environment variable, how to parse it, and whether the file may set it."""

    env: str
    parse: Any = str
    secret: bool = False


@dataclass(frozen=True, repr=False)
class Settings:
    home: Path
    profile: str = "local"
    model_name: str = DEFAULT_MODEL_NAME
    experiment_name: str = DEFAULT_EXPERIMENT
    mlflow_tracking_uri: str = ""
    # Where MLflow stores model files: empty for <home>/mlflow/artifacts; a path or s3://, gs://, ... URI.
    mlflow_artifact_location: str = ""
    # The MLflow UI people open links in (https://mlflow.example.com): empty for the tracking server when
    # the tracking URI is one, else `make mlflow-ui`'s http://127.0.0.1:5000 locally, else no links (see mlflow_ui).
    mlflow_ui_url: str = ""
    feast_project: str = FEAST_PROJECT
    serving_port: int = 8080
    # Feast's online store on Redis (production): redis://host:port/db or Feast's "host:port,db=N" form.
    redis_url: str = ""
    redis_password: str = ""  # secret: environment only
    training_backend: str = "local"
    deployment_target: str = "local"
    # With deployment_target "replicas": how many model-server processes haproxy balances over (on
    # serving_port), each pinned to the deployed version and rolled one at a time.
    serving_replicas: int = 3
    # Their ports (as many as replicas; for a Prometheus that scrapes them by static config): empty for
    # free ports chosen at the set's first start and kept until it is stopped.
    serving_replica_ports: tuple[int, ...] = ()
    executor: str = "local"
    k8s_namespace: str = "ml-platform"
    # Image of step pods (empty: the image that loaded the code location) and of the training pod.
    k8s_image: str = ""
    training_image: str = ""
    training_gpus: int = 1
    training_node_selector: dict[str, str] = field(default_factory=dict)
    training_tolerations: tuple[dict[str, Any], ...] = DEFAULT_GPU_TOLERATIONS
    # Secret whose keys are environment variable names (envFrom in step pods, secretKeyRef in training).
    k8s_secret: str = "ml-platform-secrets"
    # ReadWriteMany claim mounted at ``home`` in step and training pods: asset data, Feast repo, artifacts.
    k8s_state_claim: str = "ml-platform-state"
    k8s_overlay: str = "prod"
    serving_url: str = ""  # empty: the overlay's in-cluster Service URL
    # Where the model server writes its prediction log and monitoring reads it: empty for the local
    # folder <home>/logs/predictions; a path, or an object-store URI (s3://bucket/prefix, gs://, abfs://).
    prediction_log_uri: str = ""
    # The server's local journal (write-ahead buffer) when the log is in an object store: empty for
    # <home>/logs/prediction-journal. A local log keeps its journal in <log>/journal.
    prediction_journal_dir: str = ""
    # Where labels (POST /feedback, imported label files) are stored and monitoring reads them: empty for
    # the local folder <home>/monitoring/labels; a path, or an object-store URI (s3://bucket/prefix, ...).
    labels_uri: str = ""
    # The deployment environment whose traffic monitoring judges (its failed accuracy or error-rate check
    # rolls that environment back); empty: the default one (see ``deployment_environment``).
    monitored_environment: str = ""
    # The variables holding the model server's bearer tokens: the scoring token and the admin token (the
    # only one that opens /admin/*). Secrets: their values come from the environment only.
    serving_token_env: str = "ML_PLATFORM_SERVING_TOKEN"
    serving_admin_token_env: str = "ML_PLATFORM_SERVING_ADMIN_TOKEN"
    # Prometheus' HTTP API (http://prometheus:9090): when set, serving metrics come from it, summed over every
    # replica it scrapes, instead of one scrape of the serving endpoint. Empty: scrape the endpoint.
    prometheus_url: str = ""
    # A Prometheus Pushgateway (http://pushgateway:9091): when set, the monitoring assets push the drift score
    # and the accuracy drop there as gauges, so Prometheus alerts on all four rules. Empty: no push.
    pushgateway_url: str = ""
    # Who owns the assets in Dagster's catalog: emails or ``team:<name>`` (Dagster's owner forms), comma-separated.
    asset_owners: tuple[str, ...] = DEFAULT_ASSET_OWNERS
    # The first day of the daily partitions (ISO date). Empty: the first day of the stored transactions, or
    # DEFAULT_PARTITIONS_START before any is stored (see assets.common.partitions_start).
    partitions_start: str = ""

    # ---- derived locations ---------------------------------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def data_dir(self) -> Path:
        """Where the asset IO manager keeps materialized tables (parquet) and small results (JSON)."""
        return self.home / "data"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_artifact_root(self) -> str:
        """A URI MLflow accepts: ``file://`` for a local directory, the object store's URI otherwise."""
        location = self.mlflow_artifact_location
        if not location:
            return (self.mlflow_dir / "artifacts").as_uri()
        if "://" in location:
            return location
        return Path(location).expanduser().resolve().as_uri()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_ui(self) -> str | None:
        """The MLflow UI base address of every link (ml_platform.mlflow_ui.mlflow_ui_base); None: not known."""
        from ml_platform.mlflow_ui import mlflow_ui_base

        return mlflow_ui_base(self.tracking_uri, self.profile, self.mlflow_ui_url)

    @property
    def public_tracking_uri(self) -> str:
        """The tracking URI as it may be shown or logged: any password replaced by ``***``."""
        return redact(self.tracking_uri)

    @property
    def redis_connection_string(self) -> str:
        """Feast's Redis ``connection_string`` (``host:port,db=N[,password=...]``), or "" without Redis."""
        if not self.redis_url:
            return ""
        return feast_redis_connection(self.redis_url, self.redis_password)

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def offline_features_dir(self) -> Path:
        return self.feast_dir / "offline"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def prediction_log(self) -> str | Path:
        """The prediction log's location: ``prediction_log_uri`` (a Path when local), else ``logs/predictions``."""
        from ml_platform.predictions.store import log_location

        return log_location(self.prediction_log_uri) if self.prediction_log_uri else self.logs_dir / "predictions"

    @property
    def labels_location(self) -> str | Path:
        """The label store's location: ``labels_uri`` (a Path when local), else ``monitoring/labels``."""
        from ml_platform.predictions.store import log_location

        default = self.home / "monitoring" / "labels"
        return log_location(self.labels_uri, what="label store location") if self.labels_uri else default

    @property
    def prediction_journal(self) -> Path:
        """The model server's journal folder for an object-store log (see ``prediction_journal_dir``)."""
        default = self.logs_dir / "prediction-journal"
        return Path(self.prediction_journal_dir) if self.prediction_journal_dir else default

    @property
    def cache_dir(self) -> Path:
        """Caches libraries would otherwise put under $HOME (matplotlib's font cache)."""
        return self.home / "cache"

    @property
    def deployment_environment(self) -> str:
        """Where a deploy goes unless told otherwise (a promotion's deploy, ``ml-platform deploy`` without
        ``--env``): ``local`` when the deployment target is on this machine (one process or a set of
        replicas), else the Kubernetes overlay."""
        return "local" if self.deployment_target in ("local", "replicas") else self.k8s_overlay

    @property
    def watched_environment(self) -> str:
        """The environment monitoring judges: ``monitored_environment``, else the default deployment one."""
        return self.monitored_environment or self.deployment_environment

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then the file named by ``ML_PLATFORM_SETTINGS`` (if any), then ``ML_PLATFORM_*``."""
        env = os.environ if environ is None else environ
        from_file = _read_settings_file(env.get(SETTINGS_FILE_ENV, ""))
        values: dict[str, Any] = {}
        for name, var in _VARS.items():
            if var.env in env:
                raw, source = env[var.env], var.env
            elif name in from_file:
                raw, source = from_file[name], f"{name} in {env[SETTINGS_FILE_ENV]}"
            else:
                continue
            values[name] = _parse(var, raw, source)
        home_raw = env.get("ML_PLATFORM_HOME") or from_file.get("home") or Path.cwd() / ".ml_platform"
        home = Path(home_raw).expanduser().resolve()
        profile = values.pop("profile", "local")
        if profile not in PROFILES:
            raise SettingsError(
                f"ML_PLATFORM_PROFILE={profile!r} is not a known profile; expected one of {', '.join(PROFILES)}"
            )
        if profile == "production":
            for name in ("training_backend", "deployment_target", "executor"):
                values.setdefault(name, "kubernetes")
        if "training_image" not in values:
            values["training_image"] = values.get("k8s_image") or env.get("DAGSTER_CURRENT_IMAGE", "")
        if "mlflow_tracking_uri" in values:
            values["mlflow_tracking_uri"] = normalize_tracking_uri(values["mlflow_tracking_uri"])
        settings = cls(home=home, profile=profile, **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming every variable whose value cannot work for this profile."""
        problems = []
        for name, allowed in (
            ("training_backend", BACKENDS),
            ("deployment_target", DEPLOYMENT_TARGETS),
            ("executor", EXECUTORS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{_VARS[name].env}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.serving_replicas < 1:
            problems.append(f"{_VARS['serving_replicas'].env}={self.serving_replicas}: expected 1 or more")
        ports = self.serving_replica_ports
        if ports and (
            len(ports) != self.serving_replicas or len(set(ports)) != len(ports) or self.serving_port in ports
        ):
            problems.append(
                f"{_VARS['serving_replica_ports'].env}={','.join(map(str, ports))}: expected "
                f"{self.serving_replicas} different ports (one per replica, {_VARS['serving_replicas'].env}), "
                f"none of them the balancer's {_VARS['serving_port'].env}={self.serving_port}"
            )
        if self.training_gpus < 0:
            problems.append(f"{_VARS['training_gpus'].env}={self.training_gpus}: expected 0 or more")
        for name, allowed in (
            ("k8s_overlay", DEPLOYMENT_ENVIRONMENTS[1:]),
            ("monitored_environment", DEPLOYMENT_ENVIRONMENTS),
        ):
            value = getattr(self, name)
            if value and value not in allowed:
                problems.append(f"{_VARS[name].env}={value!r}: expected one of {', '.join(allowed)}")
        if self.profile == "production":
            problems.extend(self._production_problems())
        if problems:
            raise SettingsError("; ".join(problems))

    def _production_problems(self) -> list[str]:
        problems = []
        uri_var = _VARS["mlflow_tracking_uri"].env
        scheme = urlsplit(self.mlflow_tracking_uri).scheme.split("+")[0] if self.mlflow_tracking_uri else ""
        if not self.mlflow_tracking_uri:
            problems.append(
                f"the production profile needs {uri_var}: MLflow's PostgreSQL backend store "
                "(postgresql://user@host:5432/mlflow; the password from the environment) or the URL of a "
                "tracking server in front of one (https://mlflow.example.com)"
            )
        elif scheme not in ("postgresql", "http", "https"):
            problems.append(
                f"{uri_var}={self.public_tracking_uri!r}: the production profile keeps MLflow on PostgreSQL "
                "(postgresql://...) or behind a tracking server (http(s)://...), not on one machine's disk"
            )
        if not self.redis_url:
            problems.append(
                f"the production profile needs {_VARS['redis_url'].env}: Feast's online store on Redis "
                "(redis://host:6379/0 or host:6379,db=0; the password in ML_PLATFORM_REDIS_PASSWORD)"
            )
        else:
            try:
                feast_redis_connection(self.redis_url, self.redis_password)
            except SettingsError as error:
                problems.append(str(error))
        if self.training_backend == "kubernetes" and not self.training_image:
            problems.append(
                f"training in Kubernetes needs {_VARS['training_image'].env} (or ML_PLATFORM_K8S_IMAGE): "
                "the image the training pod runs, built from deploy/docker/Dockerfile.user-code"
            )
        return problems

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "redis_password":
                value = "***" if value else ""
            elif isinstance(value, str):
                value = redact(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    # ---- the process ---------------------------------------------------------------------------
    def process_environment(self) -> dict[str, str]:
        """Variables that keep libraries offline and inside the state directory.

        MLflow and Dagster phone home unless told not to (MLflow's telemetry looks up its config host and
        writes ~/.config/mlflow; Dagster's is turned off in dagster.yaml, see :meth:`prepare`); Dagster
        writes under ~/.dagster and matplotlib under ~/.cache unless pointed elsewhere.
        """
        env = {
            "ML_PLATFORM_HOME": str(self.home),
            "DAGSTER_HOME": str(self.dagster_home),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "MPLCONFIGDIR": str(self.cache_dir / "matplotlib"),
            "MPLBACKEND": "Agg",
        }
        if self.profile == "production":
            env["DAGSTER_PG_PORT"] = "5432"  # the instance template's port when none is given (applied as a default)
        return env

    def apply_environment(self) -> None:
        """Export :meth:`process_environment` into this process (subprocesses inherit it)."""
        for key, value in self.process_environment().items():
            if key == "DAGSTER_HOME" and self.profile == "production" and os.environ.get(key):
                continue  # on the cluster the Helm chart's instance (DAGSTER_HOME it mounted) stays in force
            if key in ("ML_PLATFORM_HOME", "DAGSTER_HOME"):
                os.environ[key] = value
            else:
                os.environ.setdefault(key, value)

    def environment_for_pods(self) -> dict[str, str]:
        """The non-secret settings as ``ML_PLATFORM_*`` variables, for pods that must see the same settings.

        Secrets are not in it: pods get those from the Kubernetes Secret :attr:`k8s_secret`.
        """
        env = {"ML_PLATFORM_PROFILE": self.profile, "ML_PLATFORM_HOME": str(self.home)}
        for name, var in _VARS.items():
            if var.secret or name in ("profile", "mlflow_tracking_uri", "redis_url"):
                continue
            value = getattr(self, name)
            default = _DEFAULTS.get(name, {})  # the one field without a plain default is the empty selector
            if value == default or value == "":
                continue
            env[var.env] = _format(value)
        return env

    def prepare(self) -> None:
        """Create the state directory layout and the Dagster instance config. Idempotent.

        Local profile: a SQLite instance with telemetry off, and runs whose process died marked failed
        (:data:`LOCAL_INSTANCE_YAML`). Production: the PostgreSQL template
        ``deploy/dagster/dagster.yaml`` (connection from ``DAGSTER_PG_*``). A dagster.yaml written by hand
        (without the ml-platform header) is left as it is.
        """
        for directory in (
            self.home,
            self.dagster_home,
            self.data_dir,
            self.mlflow_dir,
            self.feast_dir,
            self.offline_features_dir,
            self.logs_dir,
            self.cache_dir / "matplotlib",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        dagster_yaml = self.dagster_home / "dagster.yaml"
        wanted = self.dagster_instance_yaml()
        if dagster_yaml.exists():
            current = dagster_yaml.read_text()
            if current == wanted or not current.startswith(WRITTEN_BY):
                return
        write_text_atomic(dagster_yaml, wanted)

    def dagster_instance_yaml(self) -> str:
        """The dagster.yaml :meth:`prepare` installs for this profile."""
        if self.profile == "production":
            if not DAGSTER_TEMPLATE.exists():
                raise SettingsError(f"the Dagster instance template {DAGSTER_TEMPLATE} is missing")
            return (
                f"{WRITTEN_BY} for the production profile from deploy/dagster/dagster.yaml.\n"
                + DAGSTER_TEMPLATE.read_text()
            )
        event_log_dir = json.dumps(str(self.dagster_home / "history" / "runs"))  # a YAML string: JSON's quoting
        return f"{WRITTEN_BY} for the local profile: SQLite storage under this directory.\n" + (
            LOCAL_INSTANCE_YAML.format(event_log_dir=event_log_dir)
        )


# ---- the variables ------------------------------------------------------------------------------------


def _port(value: str) -> int:
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("not a TCP port (1-65535)")
    return int(text)


def _ports(value: Any) -> tuple[int, ...]:
    """TCP ports as ``8081,8082`` or a JSON/YAML list; empty for none."""
    parsed = _structured(value) if not isinstance(value, int) else [value]
    if parsed is None:
        return ()
    items = str(parsed).split(",") if isinstance(parsed, str | int) else parsed
    if not isinstance(items, list | tuple):
        raise ValueError("expected ports separated by commas, e.g. 8081,8082,8083")
    return tuple(_port(str(item).strip()) for item in items)


def _http_url(value: Any) -> str:
    """An http(s) URL with a host, or "" (unset)."""
    text = str(value).strip()
    if text and (urlsplit(text).scheme not in ("http", "https") or not urlsplit(text).hostname):
        raise ValueError("expected an http(s) URL with a host, e.g. http://prometheus:9090")
    return text


def _log_uri(value: Any) -> str:
    """A prediction log location: "" (the default folder), a path, or an object-store URI."""
    text = str(value).strip()
    if text:
        from ml_platform.predictions.store import log_location

        log_location(text)  # LogLocationError (a ValueError) naming an unsupported scheme
    return text


def _labels_uri(value: Any) -> str:
    """A label store location: "" (the default folder), a path, or an object-store URI."""
    text = str(value).strip()
    if text:
        from ml_platform.predictions.store import log_location

        log_location(text, what="label store location")  # LogLocationError naming an unsupported scheme
    return text


def _owners(value: Any) -> tuple[str, ...]:
    """Asset owners as ``a@x.com,team:ml`` or a YAML/JSON list; each an email or ``team:<name>``."""
    text_list = isinstance(value, str) and not value.strip().startswith("[")
    items = value.split(",") if text_list else _structured(value) or []
    if not isinstance(items, list | tuple):
        raise ValueError("expected owners separated by commas, e.g. team:ml-platform,ana@example.com")
    owners = tuple(str(item).strip() for item in items if str(item).strip())
    if not owners:
        raise ValueError("expected at least one owner, e.g. team:ml-platform")
    bad = [
        owner
        for owner in owners
        if not (_OWNER_EMAIL.fullmatch(owner) or (owner.startswith("team:") and len(owner) > len("team:")))
    ]
    if bad:
        raise ValueError(
            f"{', '.join(map(repr, bad))}: an owner is an email address or a team name prefixed with 'team:'"
        )
    return owners


def _iso_day(value: Any) -> str:
    """A day as YYYY-MM-DD, or "" (unset)."""
    text = str(value).strip()
    if text:
        try:
            date.fromisoformat(text)
        except ValueError as error:
            raise ValueError("expected a day as YYYY-MM-DD, e.g. 2026-03-01") from error
        if len(text) != len("2026-03-01"):
            raise ValueError("expected a day as YYYY-MM-DD, e.g. 2026-03-01")
    return text


def _count(value: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError("expected a whole number")
    return int(text)


def _mapping(value: Any) -> dict[str, str]:
    parsed = _structured(value)
    if parsed is None:
        return {}
    if not isinstance(parsed, dict) or not all(isinstance(k, str) for k in parsed):
        raise ValueError('expected a mapping of labels, e.g. {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}')
    return {key: str(item) for key, item in parsed.items()}


def _tolerations(value: Any) -> tuple[dict[str, Any], ...]:
    parsed = _structured(value)
    if parsed is None:
        return ()
    if not isinstance(parsed, list) or not all(isinstance(item, dict) for item in parsed):
        raise ValueError('expected a list of tolerations, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists"}]')
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    for item in parsed:
        unknown = set(item) - allowed
        if unknown:
            raise ValueError(f"unknown toleration field(s) {', '.join(sorted(unknown))}; allowed: {sorted(allowed)}")
    return tuple(parsed)


def _structured(value: Any) -> Any:
    """A mapping/list given as YAML or JSON text (environment) or as YAML structure (settings file)."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return yaml.safe_load(value)  # JSON is YAML
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML/JSON: {error}") from error


_VARS: dict[str, _Var] = {
    "profile": _Var("ML_PLATFORM_PROFILE"),
    "model_name": _Var("ML_PLATFORM_MODEL_NAME"),
    "experiment_name": _Var("ML_PLATFORM_EXPERIMENT"),
    "mlflow_tracking_uri": _Var("ML_PLATFORM_MLFLOW_URI"),
    "mlflow_artifact_location": _Var("ML_PLATFORM_MLFLOW_ARTIFACT_ROOT"),
    "mlflow_ui_url": _Var("ML_PLATFORM_MLFLOW_UI_URL", _http_url),
    "serving_port": _Var("ML_PLATFORM_SERVING_PORT", _port),
    "redis_url": _Var("ML_PLATFORM_REDIS_URL"),
    "redis_password": _Var(REDIS_PASSWORD_ENV, secret=True),
    "training_backend": _Var("ML_PLATFORM_TRAINING_BACKEND"),
    "deployment_target": _Var("ML_PLATFORM_DEPLOYMENT_TARGET"),
    "serving_replicas": _Var("ML_PLATFORM_SERVING_REPLICAS", _count),
    "serving_replica_ports": _Var("ML_PLATFORM_SERVING_REPLICA_PORTS", _ports),
    "executor": _Var("ML_PLATFORM_EXECUTOR"),
    "k8s_namespace": _Var("ML_PLATFORM_K8S_NAMESPACE"),
    "k8s_image": _Var("ML_PLATFORM_K8S_IMAGE"),
    "training_image": _Var("ML_PLATFORM_TRAINING_IMAGE"),
    "training_gpus": _Var("ML_PLATFORM_TRAINING_GPUS", _count),
    "training_node_selector": _Var("ML_PLATFORM_TRAINING_NODE_SELECTOR", _mapping),
    "training_tolerations": _Var("ML_PLATFORM_TRAINING_TOLERATIONS", _tolerations),
    "k8s_secret": _Var("ML_PLATFORM_K8S_SECRET"),
    "k8s_state_claim": _Var("ML_PLATFORM_K8S_STATE_CLAIM"),
    "k8s_overlay": _Var("ML_PLATFORM_K8S_OVERLAY"),
    "serving_url": _Var("ML_PLATFORM_SERVING_URL"),
    "prediction_log_uri": _Var("ML_PLATFORM_PREDICTION_LOG_URI", _log_uri),
    "prediction_journal_dir": _Var("ML_PLATFORM_PREDICTION_JOURNAL_DIR"),
    "labels_uri": _Var("ML_PLATFORM_LABELS_URI", _labels_uri),
    "monitored_environment": _Var("ML_PLATFORM_MONITORED_ENVIRONMENT"),
    "serving_token_env": _Var("ML_PLATFORM_SERVING_TOKEN_ENV"),
    "serving_admin_token_env": _Var("ML_PLATFORM_SERVING_ADMIN_TOKEN_ENV"),
    "prometheus_url": _Var("ML_PLATFORM_PROMETHEUS_URL", _http_url),
    "pushgateway_url": _Var("ML_PLATFORM_PUSHGATEWAY_URL", _http_url),
    "asset_owners": _Var("ML_PLATFORM_ASSET_OWNERS", _owners),
    "partitions_start": _Var("ML_PLATFORM_PARTITIONS_START", _iso_day),
}
ENVIRONMENT_VARIABLES = {name: var.env for name, var in _VARS.items()}
_DEFAULTS = {item.name: item.default for item in fields(Settings) if item.default is not MISSING}


def _parse(var: _Var, raw: Any, source: str) -> Any:
    try:
        return var.parse(raw) if var.parse is not str else str(raw)
    except (ValueError, TypeError) as error:
        raise SettingsError(f"{source}={redact(str(raw))!r} is not valid: {error}") from error


def _format(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))
    return str(value)


def _read_settings_file(path: str) -> dict[str, Any]:
    """The settings file's keys (field names); secrets in it are refused, so none can be committed."""
    if not path:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise SettingsError(f"{SETTINGS_FILE_ENV}={path!r}: no such file")
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise SettingsError(f"{SETTINGS_FILE_ENV}={path!r} is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise SettingsError(f"{SETTINGS_FILE_ENV}={path!r} must map setting names to values")
    known = {"home", *_VARS}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in loaded.items():
        if name != "home" and _VARS[name].secret:
            raise SettingsError(
                f"{path}: {name} is a secret; set {_VARS[name].env} in the environment (a Kubernetes Secret), "
                "never in a file"
            )
        if isinstance(value, str) and redact(value) != value:
            raise SettingsError(
                f"{path}: {name} carries a password; put the whole value in {_VARS[name].env} in the environment "
                "(a Kubernetes Secret) or leave the password out of it (libpq reads PGPASSWORD)"
            )
    return loaded


# ---- URIs and secrets --------------------------------------------------------------------------------

_FEAST_PASSWORD = re.compile(r"(password=)[^,]*")


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URI and any Feast-style
    ``password=...`` parameter replaced by ``***``; everything else unchanged."""
    if not text:
        return text
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:
            return "***"
        if parts.password is not None:
            user = quote(unquote(parts.username or ""), safe="")
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            port = f":{parts.port}" if parts.port else ""
            text = urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    return _FEAST_PASSWORD.sub(r"\1***", text)


def without_password(uri: str) -> str:
    """``uri`` with its password removed (the user kept): for places that must not carry it, such as a
    pod spec; libpq then reads the password from ``PGPASSWORD``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}{port}"))


def normalize_tracking_uri(uri: str) -> str:
    """Pin a driver-less ``postgresql://`` (or ``postgres://``) URI to psycopg2, the driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return f"{PG_DRIVER_SCHEME}://{uri[len(prefix) :]}"
    return uri


def feast_redis_connection(url: str, password: str = "") -> str:
    """Feast's Redis ``connection_string`` from ``redis://[:password@]host:port/db`` (``rediss://`` for
    TLS) or from Feast's own ``host:port,db=N,...`` form; ``password`` (ML_PLATFORM_REDIS_PASSWORD) wins."""
    var = _VARS["redis_url"].env
    text = url.strip()
    if text.startswith(("redis://", "rediss://")):
        parts = urlsplit(text)
        if not parts.hostname:
            raise SettingsError(f"{var}={redact(url)!r}: no host in the URL")
        try:
            port = parts.port or 6379
        except ValueError as error:
            raise SettingsError(f"{var}={redact(url)!r}: {error}") from error
        db_text = parts.path.strip("/") or "0"
        if not db_text.isdigit():
            raise SettingsError(f"{var}={redact(url)!r}: the database after the port must be a number, got {db_text!r}")
        params = [f"{parts.hostname}:{port}", f"db={int(db_text)}"]
        if parts.username:
            params.append(f"username={unquote(parts.username)}")
        secret = password or (unquote(parts.password) if parts.password else "")
        if parts.scheme == "rediss":
            params.append("ssl=true")
    elif "://" in text:
        raise SettingsError(f"{var}={redact(url)!r}: expected redis://host:port/db, rediss://... or host:port,db=N")
    else:
        head, *rest = [piece.strip() for piece in text.split(",")]
        host, _, port_text = head.partition(":")
        if not host or not port_text.isdigit():
            raise SettingsError(f"{var}={redact(url)!r}: expected host:port first, e.g. redis:6379,db=0")
        params = [head]
        secret = password
        for piece in rest:
            if piece.startswith("password="):
                secret = password or piece.removeprefix("password=")
            elif piece:
                params.append(piece)
    if secret:
        if "," in secret:
            raise SettingsError(f"{REDIS_PASSWORD_ENV}: a Redis password with a comma cannot be passed to Feast")
        params.append(f"password={secret}")
    return ",".join(params)
