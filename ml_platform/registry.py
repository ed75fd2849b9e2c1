"""The MLflow tracking store and model registry: log, register, alias, promote.

Registry aliases (MLflow 3), not the deprecated stages:
- ``challenger``: the newest trained model, waiting for evaluation;
- ``champion``: the model that serves;
- ``previous``: the champion before the current one (what a rollback returns to).

A model version is registered at most once per pipeline run: the version carries the run's key as a
tag, and a retried run finds and reuses it instead of registering a second one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ml_platform.features.engineering import MODEL_FEATURES

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature

    from ml_platform.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
RUN_KEY_TAG = "ml_platform.run_key"
THRESHOLD_TAG = "ml_platform.threshold"
DEVICE_TAG = "ml_platform.device"
PROMOTED_AT_TAG = "ml_platform.promoted_at"
ROLLED_BACK_AT_TAG = "ml_platform.rolled_back_at"
ROLLBACK_REASON_TAG = "ml_platform.rollback_reason"


class RegistryError(RuntimeError):
    """The registry is not in the state an operation needs."""


class ModelRefused(RegistryError):
    """A registered version that is not a native XGBoost model of the model's features, so it is not loaded.

    Only a model file in XGBoost's own format (ubj or json) is ever read; anything else could hold code
    that loading would run (a pickled ``python_function`` model does).
    """


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    model_uri: str
    reused: bool  # True when a retry found the version its run had already registered


@dataclass(frozen=True)
class Promotion:
    champion: int
    previous: int | None
    changed: bool


class Registry:
    def __init__(self, tracking_uri: str, model_name: str, experiment_name: str, artifact_root: str) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.artifact_root = artifact_root

    @classmethod
    def from_settings(cls, settings: Settings, *, model_name: str | None = None) -> Registry:
        """The registry of the platform's settings (``model_name`` picks another model in the same store)."""
        return cls(
            settings.tracking_uri,
            model_name or settings.model_name,
            settings.experiment_name,
            settings.mlflow_artifact_root,
        )

    @cached_property
    def client(self):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @contextmanager
    def _fluent(self) -> Iterator[None]:
        """Point MLflow's process-wide (fluent API) URIs at this registry's store for the duration.

        ``log_model`` and ``register_model`` exist only as fluent calls, which read globals; another
        Registry in the same process must not redirect them, and they must not leak out of here
        (``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into the environment).
        """
        import mlflow

        saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved_tracking, saved_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved_tracking)
            mlflow.set_registry_uri(saved_registry)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def ensure_experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_root)

    # ---- registration --------------------------------------------------------------------------
    def version_for_run_key(self, run_key: str):
        if not self._model_exists():
            return None
        found = self.client.search_model_versions(f"name='{self.model_name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'")
        return max(found, key=lambda v: int(v.version)) if found else None

    def log_and_register(
        self,
        trained,
        *,
        params: dict[str, object],
        run_key: str,
        signature: ModelSignature,
        example: pd.DataFrame,
        run_tags: dict[str, str],
        figures: dict[str, object],
    ) -> RegisteredVersion:
        """Log a trained model with its params, metrics and figures, register it, alias it challenger.

        ``signature`` is MLflow's description of the model's inputs and output, made by the training code
        (the registry knows how to store a model, not how it predicts); ``example`` rows are logged with it.
        Idempotent per ``run_key``: if a version with that key exists, it is reused (and re-aliased).
        """
        existing = self.version_for_run_key(run_key)
        if existing is not None:
            self.set_alias(CHALLENGER, int(existing.version))
            return RegisteredVersion(
                self.model_name, int(existing.version), existing.run_id, existing.source, reused=True
            )

        import mlflow
        import mlflow.xgboost
        import xgboost as xgb

        experiment_id = self.ensure_experiment()
        with (
            self._fluent(),
            mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{run_key[:8]}", tags=run_tags) as run,
        ):
            mlflow.log_params({**params, "device_used": trained.device, "best_iteration": trained.best_iteration})
            mlflow.log_metrics(
                {
                    **{f"validation_{k}": float(v) for k, v in trained.validation_metrics.items()},
                    "train_seconds": trained.train_seconds,
                    "threshold": trained.threshold,
                }
            )
            for file_name, figure in figures.items():
                mlflow.log_figure(figure, file_name)
            info = mlflow.xgboost.log_model(
                trained.booster,
                name="model",
                signature=signature,
                input_example=example.head(3).astype("float64"),
                pip_requirements=[f"xgboost=={xgb.__version__}"],  # skips ~4 s of requirement inference
                model_format="ubj",
            )
            version = mlflow.register_model(
                info.model_uri,
                self.model_name,
                tags={
                    RUN_KEY_TAG: run_key,
                    THRESHOLD_TAG: repr(trained.threshold),
                    DEVICE_TAG: trained.device,
                },
            )
        self.set_alias(CHALLENGER, int(version.version))
        return RegisteredVersion(self.model_name, int(version.version), run.info.run_id, info.model_uri, False)

    # ---- reading -------------------------------------------------------------------------------
    def _model_exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException as error:
            # Only "no such model" means none; a store that cannot be reached must fail loudly, not look
            # like an empty registry (a run would otherwise carry on as if nothing were registered).
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def aliases(self) -> dict[str, int]:
        if not self._model_exists():
            return {}
        return {alias: int(v) for alias, v in self.client.get_registered_model(self.model_name).aliases.items()}

    def version_for_alias(self, alias: str) -> int | None:
        return self.aliases().get(alias)

    def set_alias(self, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def model_version(self, version: int):
        return self.client.get_model_version(self.model_name, str(version))

    def threshold(self, version: int) -> float:
        tags = self.model_version(version).tags
        if THRESHOLD_TAG not in tags:
            raise RegistryError(f"{self.model_name} version {version} has no {THRESHOLD_TAG} tag")
        return float(tags[THRESHOLD_TAG])

    def test_metrics(self, version: int) -> dict[str, float]:
        """What ``version`` scored on its test split when model_evaluation judged it (the run metrics
        ``test_*``, returned without the prefix): the baseline live performance is compared with.
        Empty when the version was never evaluated (e.g. pinned by hand)."""
        run_id = self.model_version(version).run_id
        if not run_id:
            return {}
        metrics = self.client.get_run(run_id).data.metrics
        return {key.removeprefix("test_"): float(value) for key, value in metrics.items() if key.startswith("test_")}

    def load_booster(self, version: int):
        """The model in XGBoost's own format, ready to predict on CPU; nothing in it is executed.

        Only the version's native XGBoost model file is read, and only after its MLmodel file says
        that is what the version is (:func:`native_model_file`). A version that is anything else (a
        pickled ``python_function`` model above all: unpickling it runs whatever it was made to run)
        raises :class:`ModelRefused`, which names the version and the reason.
        """
        import xgboost as xgb

        label = f"{self.model_name} version {version}"
        path = self._model_directory(version)
        booster = xgb.Booster()
        model_file = native_model_file(path, label)
        try:
            booster.load_model(model_file)
        except xgb.core.XGBoostError as error:  # the same file fails the same way every time
            raise ModelRefused(f"{label} has a model file XGBoost cannot read ({error}); refusing to load it") from None
        names = booster.feature_names
        if booster.num_features() != len(MODEL_FEATURES) or (names is not None and tuple(names) != MODEL_FEATURES):
            raise ModelRefused(
                f"{label} does not take the model's features: its booster has {booster.num_features()} features"
                f" named {names}; expected {list(MODEL_FEATURES)}; refusing to load it"
            )
        return booster

    def _model_directory(self, version: int) -> str:
        uri = self.client.get_model_version_download_uri(self.model_name, str(version))
        if uri.startswith("file://") or "://" not in uri:
            return _local_path(uri)
        # An object store: the model's files are fetched into a temporary directory (read, never run).
        import mlflow.artifacts

        return mlflow.artifacts.download_artifacts(artifact_uri=uri)

    # ---- promotion -----------------------------------------------------------------------------
    def promote(self, version: int, *, promoted_at: str) -> Promotion:
        """Make ``version`` the champion; the champion it replaces becomes ``previous``.

        Call only after every gate passed. Promoting the current champion again changes nothing.
        """
        current = self.version_for_alias(CHAMPION)
        if current == version:
            return Promotion(champion=version, previous=self.version_for_alias(PREVIOUS), changed=False)
        if current is not None:
            self.set_alias(PREVIOUS, current)
        self.client.set_model_version_tag(self.model_name, str(version), PROMOTED_AT_TAG, promoted_at)
        self.set_alias(CHAMPION, version)
        return Promotion(champion=version, previous=current, changed=True)

    def rollback(self, *, rolled_back_at: str, reason: str) -> Promotion:
        """Put the previous champion back: ``champion`` -> the ``previous`` version.

        The version taken out of service is tagged with when and why, and ``previous`` is cleared (a
        second rollback in a row has nothing to return to and says so, rather than flip-flopping).
        """
        aliases = self.aliases()
        current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if previous is None:
            raise RegistryError(
                f"cannot roll back {self.model_name}: no '{PREVIOUS}' version "
                f"(champion is {'v' + str(current) if current is not None else 'not set'})"
            )
        if current is not None:
            self.client.set_model_version_tag(self.model_name, str(current), ROLLED_BACK_AT_TAG, rolled_back_at)
            self.client.set_model_version_tag(self.model_name, str(current), ROLLBACK_REASON_TAG, reason)
        self.set_alias(CHAMPION, previous)
        self.client.delete_registered_model_alias(self.model_name, PREVIOUS)
        return Promotion(champion=previous, previous=None, changed=True)

    def pin(self, version: int, *, promoted_at: str) -> Promotion:
        """Make an explicit, existing version the champion (a manual deploy of ``--version N``)."""
        self.model_version(version)  # raises with MLflow's message naming the version if it does not exist
        return self.promote(version, promoted_at=promoted_at)


NATIVE_FORMATS = ("ubj", "json")
_COLUMN_TYPE = "double"


def native_model_file(path: str, label: str) -> str:
    """The native XGBoost model file of the MLflow model in directory ``path``, once its MLmodel says so.

    The MLmodel must have the ``xgboost`` flavor with a ``model_format`` of ubj or json naming a file of
    that format inside ``path`` that exists, and a signature whose inputs are exactly
    :data:`MODEL_FEATURES`, as double columns in that order. Anything else raises :class:`ModelRefused`
    naming ``label`` (the model and version) and the reason. Only YAML and JSON are parsed here.
    """
    import json

    import yaml

    def refuse(reason: str, why: str = "") -> ModelRefused:
        return ModelRefused(f"{label} {reason}; refusing to load it{why}")

    mlmodel_path = os.path.join(path, "MLmodel")
    try:
        with open(mlmodel_path, encoding="utf-8") as handle:
            mlmodel = yaml.safe_load(handle)
    except FileNotFoundError:
        raise refuse(f"has no MLmodel file at {mlmodel_path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise refuse(f"has an MLmodel file that cannot be read: {type(error).__name__}: {error}") from None
    if not isinstance(mlmodel, dict):
        raise refuse(f"has an MLmodel file that is not a mapping (got {type(mlmodel).__name__})")
    flavors = mlmodel.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise refuse("has an MLmodel file without flavors")
    flavor = flavors.get("xgboost")
    if not isinstance(flavor, dict):
        raise refuse(
            f"is not a native XGBoost model: its MLmodel has flavors {', '.join(map(str, flavors))} only",
            " (loading it could run code)",
        )
    model_format = flavor.get("model_format")
    if model_format not in NATIVE_FORMATS:
        raise refuse(
            f"is not in XGBoost's own format: its xgboost flavor has model_format {model_format!r};"
            f" expected one of {', '.join(NATIVE_FORMATS)}"
        )
    data = flavor.get("data")
    if not isinstance(data, str) or not data.endswith(f".{model_format}"):
        raise refuse(f"names no {model_format} model file: its xgboost flavor has data {data!r}")
    root = os.path.realpath(path)
    model_file = os.path.realpath(os.path.join(root, data))
    if not model_file.startswith(root + os.sep):
        raise refuse(f"names a model file outside its own directory: data {data!r}")
    if not os.path.isfile(model_file):
        raise refuse(f"has no model file {data!r} (its xgboost flavor names it) under {path}")
    signature = mlmodel.get("signature")
    inputs = signature.get("inputs") if isinstance(signature, dict) else None
    try:
        columns = json.loads(inputs) if isinstance(inputs, str) else None
    except ValueError:
        columns = None
    expected = [{"name": name, "type": _COLUMN_TYPE} for name in MODEL_FEATURES]
    found = (
        [{"name": column.get("name"), "type": column.get("type")} for column in columns]
        if isinstance(columns, list) and all(isinstance(column, dict) for column in columns)
        else None
    )
    if found != expected:
        raise refuse(
            f"does not take the model's features: its signature inputs are {inputs if inputs else 'missing'};"
            f" expected the {len(MODEL_FEATURES)} {_COLUMN_TYPE} columns {', '.join(MODEL_FEATURES)}, in that order"
        )
    return model_file


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri
