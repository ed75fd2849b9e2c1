"""One typed settings object for the whole platform.

Everything local lives under one state directory (``.ml_platform/`` in the working directory by
default, ``ML_PLATFORM_HOME`` to move it), so ``rm -rf`` of it is a clean slate and nothing is
written elsewhere. Paths and URIs are derived from it; each may be overridden by its own variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("local",)

# What this platform is about by default: a card-transaction fraud detector.
DEFAULT_MODEL_NAME = "fraud_detector"
DEFAULT_EXPERIMENT = "fraud_detector"
FEAST_PROJECT = "ml_platform"


class SettingsError(ValueError):
    """A setting has a value the platform cannot use."""


@dataclass(frozen=True)
class Settings:
    home: Path
    profile: str = "local"
    model_name: str = DEFAULT_MODEL_NAME
    experiment_name: str = DEFAULT_EXPERIMENT
    mlflow_tracking_uri: str = ""
    feast_project: str = FEAST_PROJECT
    serving_port: int = 8080

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
        return (self.mlflow_dir / "artifacts").as_uri()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

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
    def cache_dir(self) -> Path:
        """Caches libraries would otherwise put under $HOME (matplotlib's font cache)."""
        return self.home / "cache"

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("ML_PLATFORM_HOME") or Path.cwd() / ".ml_platform").expanduser().resolve()
        profile = env.get("ML_PLATFORM_PROFILE", "local")
        if profile not in PROFILES:
            raise SettingsError(
                f"ML_PLATFORM_PROFILE={profile!r} is not a known profile; expected one of {', '.join(PROFILES)}"
            )
        return cls(
            home=home,
            profile=profile,
            model_name=env.get("ML_PLATFORM_MODEL_NAME", DEFAULT_MODEL_NAME),
            experiment_name=env.get("ML_PLATFORM_EXPERIMENT", DEFAULT_EXPERIMENT),
            mlflow_tracking_uri=env.get("ML_PLATFORM_MLFLOW_URI", ""),
            serving_port=_port(env.get("ML_PLATFORM_SERVING_PORT", "8080")),
        )

    def process_environment(self) -> dict[str, str]:
        """Variables that keep libraries offline and inside the state directory.

        MLflow and Dagster phone home unless told not to; Dagster writes under ~/.dagster and matplotlib
        under ~/.cache unless pointed elsewhere (see STACK_NOTES, traps 5 and 12).
        """
        return {
            "ML_PLATFORM_HOME": str(self.home),
            "DAGSTER_HOME": str(self.dagster_home),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "MPLCONFIGDIR": str(self.cache_dir / "matplotlib"),
            "MPLBACKEND": "Agg",
        }

    def apply_environment(self) -> None:
        """Export :meth:`process_environment` into this process (subprocesses inherit it)."""
        for key, value in self.process_environment().items():
            if key in ("ML_PLATFORM_HOME", "DAGSTER_HOME"):
                os.environ[key] = value
            else:
                os.environ.setdefault(key, value)

    def prepare(self) -> None:
        """Create the state directory layout and the Dagster instance config (telemetry off). Idempotent."""
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
        if not dagster_yaml.exists():
            write_text_atomic(
                dagster_yaml,
                "# Written by ml-platform for the local profile: SQLite storage under this directory.\n"
                "telemetry:\n  enabled: false\n"
                "run_monitoring:\n  enabled: true\n",
            )


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingsError(f"ML_PLATFORM_SERVING_PORT={value!r} is not a TCP port (1-65535)")
    return int(value)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def get_settings() -> Settings:
    return Settings.from_env()
