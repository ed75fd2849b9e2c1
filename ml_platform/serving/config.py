"""How a model server is set up: one frozen object, from settings plus environment overrides."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ml_platform.features.store import FeatureRepo
from ml_platform.predictions.store import LogLocationError, is_object_store, log_location
from ml_platform.settings import Settings, SettingsError

MODES = ("split", "shadow")
# What a server answers with: the champion (with the challenger beside it for A/B and shadow), or the
# challenger alone (a canary Deployment on Kubernetes, sharing the Service with the champion's pods).
SERVE_ALIASES = ("champion", "challenger")
ENV_PREFIX = "ML_PLATFORM_SERVING_"
_FALSE = {"0", "false", "no", "off", ""}
_TRUE = {"1", "true", "yes", "on"}
# The bearer tokens and the variables they come from. A token is what RFC 6750 lets a bearer credential
# be (b64token: letters, digits, -._~+/ and trailing =), so a client can send it exactly as configured.
TOKEN_VARIABLES = {"auth_token": ENV_PREFIX + "TOKEN", "admin_token": ENV_PREFIX + "ADMIN_TOKEN"}
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class ServerConfig:
    """Everything one server process needs; build it with :meth:`from_settings`.

    - ``feast``: the feature repo to read customer stats from, or None (then a request must carry its
      9 features itself).
    - ``challenger_weight``: share of traffic the challenger answers in ``split`` mode. In ``shadow``
      mode the champion always answers and every request is also scored by the challenger (logged as
      ``challenger_shadow``, never returned); the weight is kept for when the mode goes back to split.
    - ``sticky``: route by a hash of ``customer_id`` when the request has one (a customer always sees
      the same variant, and raising the weight only moves customers from champion to challenger).
    - ``auth_token`` (``ML_PLATFORM_SERVING_TOKEN``): the scoring token. When set, every route except the
      health, readiness and metrics routes and ``/admin/*`` needs ``Authorization: Bearer <token>``.
    - ``admin_token`` (``ML_PLATFORM_SERVING_ADMIN_TOKEN``): the only token that opens ``/admin/*``
      (reading and changing the routing). Without one, changing the routing is refused (403) and reading
      it is a scoring route. The two tokens must differ; neither may be empty (an empty variable stops
      the server at start rather than silently serving without auth).
    - ``log_dir`` (``ML_PLATFORM_SERVING_LOG_DIR``): where the prediction log goes: a local folder (kept as a
      ``Path``) or an object-store URI such as ``s3://bucket/prefix`` (kept as the URI text); from settings,
      ``prediction_log_uri`` (``ML_PLATFORM_PREDICTION_LOG_URI``), else ``<home>/logs/predictions``.
    - ``journal_dir``: the local journal (write-ahead buffer) of an object-store log; from settings,
      ``prediction_journal_dir`` (``ML_PLATFORM_PREDICTION_JOURNAL_DIR``), else
      ``<home>/logs/prediction-journal``. A local log keeps its journal in ``<log_dir>/journal`` (None).
    - ``log_flush_rows`` / ``log_flush_seconds``: the prediction log writes a parquet file whenever this
      many rows are waiting or this much time has passed since the last write.
    - ``serve_alias``: ``champion`` (default) or ``challenger``; a server of the challenger alias loads
      only that version and labels its answers and log rows with variant ``challenger``.
    - ``model_version`` (``ML_PLATFORM_SERVING_MODEL_VERSION``): the registry version this server serves
      for its alias, pinned: alias moves are ignored, and a pinned champion server serves that version
      alone (no challenger beside it: A/B where versions are pinned is a canary Deployment, itself pinned).
      None (unset): the server follows the alias and swaps models when it moves. A pinned version that
      does not exist or is refused leaves the server not ready, saying why.
    - ``fast_path``: answer the common ``POST /predict`` (one row of valid ``features``) in the ASGI
      layer before FastAPI's routing (the same answer, ~2.5x cheaper); off sends every request through
      the route, for comparison or should the fast path ever be suspected.
    - ``opentelemetry``: let FastAPI's OpenTelemetry bridge trace requests when an OTel provider is
      configured (off by default: its per-request provider check costs ~6 us, and this server reports
      through ``/metrics`` and the prediction log).
    - ``labels_dir`` (``ML_PLATFORM_SERVING_LABELS_DIR``): the label store ``POST /feedback`` appends to: a
      local folder (kept as a ``Path``) or an object-store URI (kept as the URI text), so that every replica
      appends to the one store; from settings, monitoring's (``labels_uri``, ``ML_PLATFORM_LABELS_URI``, else
      ``<home>/monitoring/labels``: where ``live_performance`` reads labels). None: the server takes no
      feedback (503).
    """

    model_name: str
    tracking_uri: str
    artifact_root: str
    feast: FeatureRepo | None = None
    log_dir: Path | str = field(default_factory=lambda: Settings.from_env().prediction_log)
    journal_dir: Path | None = None
    challenger_weight: float = 0.0
    mode: str = "split"
    sticky: bool = True
    poll_seconds: float = 5.0
    auth_token: str | None = None
    admin_token: str | None = None
    max_body_bytes: int = 1_000_000
    max_batch_rows: int = 10_000
    log_flush_rows: int = 5_000
    log_flush_seconds: float = 2.0
    serve_alias: str = "champion"
    model_version: int | None = None
    fast_path: bool = True
    opentelemetry: bool = False
    labels_dir: Path | str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "log_dir", log_location(self.log_dir))
        except LogLocationError as error:
            raise SettingsError(f"log_dir: {error}") from error
        if self.journal_dir is not None:
            object.__setattr__(self, "journal_dir", Path(self.journal_dir))
        elif is_object_store(self.log_dir):
            object.__setattr__(self, "journal_dir", Settings.from_env().prediction_journal)
        if self.labels_dir is not None:
            try:
                object.__setattr__(self, "labels_dir", log_location(self.labels_dir, what="label store location"))
            except LogLocationError as error:
                raise SettingsError(f"labels_dir: {error}") from error
        problems = _token_problems(self.auth_token, self.admin_token)
        if not 0.0 <= float(self.challenger_weight) <= 1.0:
            problems.append(f"challenger_weight must be within [0, 1], got {self.challenger_weight}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.poll_seconds <= 0:
            problems.append(f"poll_seconds must be positive, got {self.poll_seconds}")
        if self.max_body_bytes < 1:
            problems.append(f"max_body_bytes must be at least 1, got {self.max_body_bytes}")
        if self.max_batch_rows < 1:
            problems.append(f"max_batch_rows must be at least 1, got {self.max_batch_rows}")
        if self.log_flush_rows < 1 or self.log_flush_seconds <= 0:
            problems.append("log_flush_rows must be at least 1 and log_flush_seconds positive")
        if self.serve_alias not in SERVE_ALIASES:
            problems.append(f"serve_alias must be one of {', '.join(SERVE_ALIASES)}, got {self.serve_alias!r}")
        if self.model_version is not None and (
            isinstance(self.model_version, bool) or not isinstance(self.model_version, int) or self.model_version < 1
        ):
            problems.append(
                f"model_version ({ENV_PREFIX}MODEL_VERSION) must be a registry version (a positive integer) or "
                f"unset, got {self.model_version!r}"
            )
        if problems:
            raise SettingsError("; ".join(problems))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerConfig:
        """Settings' model and stores, then ``ML_PLATFORM_SERVING_*`` variables, then ``overrides``.

        Variables: ``TOKEN``, ``ADMIN_TOKEN``, ``CHALLENGER_WEIGHT``, ``MODE``, ``STICKY``, ``POLL_SECONDS``,
        ``LOG_DIR``, ``MAX_BODY_BYTES``, ``MAX_BATCH_ROWS``, ``LOG_FLUSH_ROWS``, ``LOG_FLUSH_SECONDS``, ``ALIAS``,
        ``MODEL_VERSION``, ``FAST_PATH``, ``OPENTELEMETRY``, ``LABELS_DIR`` and ``FEAST`` (``off`` serves
        without the feature store), each prefixed with ``ML_PLATFORM_SERVING_``.
        """
        from ml_platform.monitoring.health import MonitoringPaths

        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "model_name": settings.model_name,
            "tracking_uri": settings.tracking_uri,
            "artifact_root": settings.mlflow_artifact_root,
            "feast": FeatureRepo.from_settings(settings),
            "log_dir": settings.prediction_log,
            "labels_dir": MonitoringPaths.from_settings(settings, env).labels_dir,
        }
        converters = {
            "auth_token": ("TOKEN", str),
            "admin_token": ("ADMIN_TOKEN", str),
            "challenger_weight": ("CHALLENGER_WEIGHT", float),
            "mode": ("MODE", str),
            "sticky": ("STICKY", _parse_bool),
            "poll_seconds": ("POLL_SECONDS", float),
            "log_dir": ("LOG_DIR", log_location),
            "max_body_bytes": ("MAX_BODY_BYTES", int),
            "max_batch_rows": ("MAX_BATCH_ROWS", int),
            "log_flush_rows": ("LOG_FLUSH_ROWS", int),
            "log_flush_seconds": ("LOG_FLUSH_SECONDS", float),
            "serve_alias": ("ALIAS", str),
            "model_version": ("MODEL_VERSION", _parse_version),
            "fast_path": ("FAST_PATH", _parse_bool),
            "opentelemetry": ("OPENTELEMETRY", _parse_bool),
            "labels_dir": ("LABELS_DIR", lambda raw: log_location(raw, what="label store location")),
        }
        for name, (suffix, convert) in converters.items():
            raw = env.get(ENV_PREFIX + suffix)
            if raw is None:
                continue
            try:
                values[name] = convert(raw)
            except ValueError as error:
                raise SettingsError(f"{ENV_PREFIX}{suffix}={raw!r} is not valid: {error}") from error
        feast_flag = env.get(ENV_PREFIX + "FEAST")
        if feast_flag is not None and _parse_bool(feast_flag) is False:
            values["feast"] = None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown ServerConfig fields: {', '.join(sorted(unknown))}")
        values.update(overrides)
        if values.get("journal_dir") is None and is_object_store(values["log_dir"]):  # type: ignore[arg-type]
            values["journal_dir"] = settings.prediction_journal
        return cls(**values)  # type: ignore[arg-type]

    def with_overrides(self, **overrides: object) -> ServerConfig:
        return replace(self, **overrides)


def _token_problems(auth_token: str | None, admin_token: str | None) -> list[str]:
    problems = []
    for name, value in (("auth_token", auth_token), ("admin_token", admin_token)):
        variable = TOKEN_VARIABLES[name]
        if value is None:
            continue
        if value == "":
            problems.append(
                f"{variable} ({name}) is set but empty; unset it to serve without that token, or set a token "
                "(e.g. openssl rand -hex 32)"
            )
        elif not _B64TOKEN.fullmatch(value):
            problems.append(
                f"{variable} ({name}) holds characters a bearer token cannot carry (whitespace, a trailing "
                "newline from a file?); use letters, digits and -._~+/ (= only as trailing padding)"
            )
    if auth_token and auth_token == admin_token:
        problems.append(
            f"{TOKEN_VARIABLES['admin_token']} must differ from {TOKEN_VARIABLES['auth_token']}: one token "
            "would open both scoring and /admin"
        )
    return problems


def _parse_version(raw: str) -> int:
    """A registry version: a positive integer written in decimal digits (no sign, no fraction)."""
    text = raw.strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError("expected a registry model version, a positive integer such as 3")
    return int(text)


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
