"""The MLflow tracking store and model registry: log, register, alias, promote.

Registry aliases (MLflow 3), not the deprecated stages:
- ``challenger``: the newest trained model, waiting for evaluation;
- ``champion``: the model that serves;
- ``previous``: the rollback target, the last different known-good champion (see ``rollback_target``);
  absent when there is none.

Every promotion and rollback is recorded in the version's tags (when it was promoted, when and why it
was rolled back), so the champion history is read back from the versions themselves.

A model version is registered at most once per pipeline run: the version carries the run's key as a
tag, and a retried run finds and reuses it instead of registering a second one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
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
# What a version was trained on, set when it is registered: the content digest (sha256) of its
# immutable training set, and the event time of the newest transaction in it (ISO 8601, UTC).
TRAINING_SET_DIGEST_TAG = "ml_platform.training_set_digest"
TRAINING_DATA_END_TAG = "ml_platform.training_data_end"
# The sha256 of the version's model file: two versions with the same digest are the same model.
MODEL_DIGEST_TAG = "ml_platform.model_digest"
# Where a version came from, set when it is registered (also on its MLflow run): the code version that
# trained it (a git commit, "+dirty" when the working tree had changes, or what the image declared), the
# Dagster run that trained it, and the raw daily partitions (UTC days) of its training set: first, last
# and how many. Their row counts, day by day, are in the run's artifact LINEAGE_ARTIFACT (a tag value
# holds at most 5000 characters; a year of days does not fit).
CODE_VERSION_TAG = "ml_platform.code_version"
DAGSTER_RUN_ID_TAG = "ml_platform.dagster_run_id"
PARTITIONS_FIRST_DAY_TAG = "ml_platform.partitions_first_day"
PARTITIONS_LAST_DAY_TAG = "ml_platform.partitions_last_day"
PARTITION_COUNT_TAG = "ml_platform.partition_count"
LINEAGE_ARTIFACT = "lineage.json"


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
    previous: int | None  # the rollback target from the new champion (the ``previous`` alias), if any
    changed: bool


@dataclass(frozen=True)
class ChampionHistoryEntry:
    """One version that was promoted, as its tags record it (the times are ISO 8601 as written)."""

    version: int
    promoted_at: str
    rolled_back_at: str | None
    rollback_reason: str | None
    model_digest: str | None  # None on versions registered before model digests were recorded


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
        version_tags: dict[str, str] | None = None,
        training_data: object | None = None,
        documents: dict[str, dict] | None = None,
    ) -> RegisteredVersion:
        """Log a trained model with its params, metrics and figures, register it, alias it challenger.

        ``signature`` is MLflow's description of the model's inputs and output, made by the training code
        (the registry knows how to store a model, not how it predicts); ``example`` rows are logged with it.
        ``version_tags`` are set on the new version when it is registered (with the sha256 of its model
        file as :data:`MODEL_DIGEST_TAG`), and ``training_data``, an MLflow dataset, is logged as the run's
        input with context ``training``. ``documents`` are logged as JSON artifacts of the run, by file name.
        Idempotent per ``run_key``: if a version with that key exists, it is reused (and re-aliased) as it
        is, tags included.
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
            if training_data is not None:
                mlflow.log_input(training_data, context="training")
            for file_name, document in (documents or {}).items():
                mlflow.log_dict(document, file_name)
            info = mlflow.xgboost.log_model(
                trained.booster,
                name="model",
                signature=signature,
                input_example=example.head(3).astype("float64"),
                pip_requirements=[f"xgboost=={xgb.__version__}"],  # skips ~4 s of requirement inference
                model_format="ubj",
            )
            model_digest = _logged_model_digest(info, f"{self.model_name} run {run.info.run_id}")
            version = mlflow.register_model(
                info.model_uri,
                self.model_name,
                tags={
                    **(version_tags or {}),
                    RUN_KEY_TAG: run_key,
                    THRESHOLD_TAG: repr(trained.threshold),
                    DEVICE_TAG: trained.device,
                    MODEL_DIGEST_TAG: model_digest,
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

    def version_tags(self, version: int) -> dict[str, str]:
        """The tags of one version (MLflow's message naming the version when it does not exist)."""
        return dict(self.model_version(version).tags)

    def tags_by_version(self) -> dict[int, dict[str, str]]:
        """Every registered version's tags, by version (empty when the model is not registered yet)."""
        if not self._model_exists():
            return {}
        found = self.client.search_model_versions(f"name='{self.model_name}'")
        return {int(v.version): dict(v.tags) for v in found}

    def threshold(self, version: int) -> float:
        tags = self.model_version(version).tags
        if THRESHOLD_TAG not in tags:
            raise RegistryError(f"{self.model_name} version {version} has no {THRESHOLD_TAG} tag")
        return float(tags[THRESHOLD_TAG])

    def training_set_digest(self, version: int) -> str | None:
        """The content digest (sha256) of the training set ``version`` was trained on, from its tag; None
        for a version registered without it (before training sets were kept, or pinned from elsewhere)."""
        return self.model_version(version).tags.get(TRAINING_SET_DIGEST_TAG) or None

    def training_data_end(self, version: int) -> str | None:
        """The event time (ISO 8601, UTC) of the newest transaction ``version`` was trained on, or None."""
        return self.model_version(version).tags.get(TRAINING_DATA_END_TAG) or None

    def run_document(self, version: int, file_name: str) -> object | None:
        """The JSON artifact ``file_name`` of the run that made ``version``, parsed (JSON only, nothing
        in it is run); None when the version has no run or its run has no such artifact. A file that is
        not JSON raises ValueError naming it."""
        import json
        import tempfile

        from mlflow.exceptions import MlflowException

        run_id = self.model_version(version).run_id
        if not run_id:
            return None
        if file_name not in {entry.path for entry in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as scratch, _no_progress_bar():
            try:
                local = self.client.download_artifacts(run_id, file_name, scratch)
            except MlflowException as error:
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
            try:
                with open(local, encoding="utf-8") as handle:
                    return json.load(handle)
            except (UnicodeDecodeError, ValueError) as error:
                raise ValueError(f"{file_name} of {self.model_name} version {version} is not JSON: {error}") from None

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
    def champion_history(self) -> list[ChampionHistoryEntry]:
        """Every version that was ever promoted, newest promotion first, with when and why it was rolled
        back and its model digest where those are recorded."""
        if not self._model_exists():
            return []
        entries = [
            ChampionHistoryEntry(
                version=int(found.version),
                promoted_at=found.tags[PROMOTED_AT_TAG],
                rolled_back_at=found.tags.get(ROLLED_BACK_AT_TAG) or None,
                rollback_reason=found.tags.get(ROLLBACK_REASON_TAG) or None,
                model_digest=found.tags.get(MODEL_DIGEST_TAG) or None,
            )
            for found in self._all_versions()
            if found.tags.get(PROMOTED_AT_TAG)
        ]
        return sorted(entries, key=_recency, reverse=True)

    def _all_versions(self) -> Iterator:
        page_token = None
        while True:
            page = self.client.search_model_versions(f"name='{self.model_name}'", page_token=page_token)
            yield from page
            page_token = page.token
            if not page_token:
                return

    def rollback_target(self) -> int | None:
        """Where a rollback would put the champion now: see :func:`rollback_target`."""
        return self._target_from(self.version_for_alias(CHAMPION), self.champion_history())

    def _target_from(self, champion: int | None, history: Sequence[ChampionHistoryEntry]) -> int | None:
        if champion is None:
            return rollback_target(history, None, None)
        recorded = next((entry for entry in history if entry.version == champion), None)
        digest = recorded.model_digest if recorded else self.version_tags(champion).get(MODEL_DIGEST_TAG) or None
        return rollback_target(history, champion, digest)

    def _point_previous_at_target(self, champion: int) -> int | None:
        """Set ``previous`` to the rollback target from ``champion``, or remove it when there is none."""
        target = self._target_from(champion, self.champion_history())
        if target is not None:
            self.set_alias(PREVIOUS, target)
        elif self.version_for_alias(PREVIOUS) is not None:
            self.client.delete_registered_model_alias(self.model_name, PREVIOUS)
        return target

    def promote(self, version: int, *, promoted_at: str) -> Promotion:
        """Make ``version`` the champion and record when on it; ``previous`` moves to the rollback target
        from the new champion (or is removed when there is none).

        Call only after every gate passed. Promoting the current champion again changes nothing. A
        champion whose promotion was never recorded (its alias was moved by hand) is recorded as promoted
        at ``promoted_at``, the last moment it is known to have served, so it can be returned to.
        """
        current = self.version_for_alias(CHAMPION)
        if current == version:
            return Promotion(champion=version, previous=self.version_for_alias(PREVIOUS), changed=False)
        if current is not None and not self.version_tags(current).get(PROMOTED_AT_TAG):
            self.client.set_model_version_tag(self.model_name, str(current), PROMOTED_AT_TAG, promoted_at)
        self.client.set_model_version_tag(self.model_name, str(version), PROMOTED_AT_TAG, promoted_at)
        previous = self._point_previous_at_target(version)
        self.set_alias(CHAMPION, version)
        return Promotion(champion=version, previous=previous, changed=True)

    def rollback(self, *, rolled_back_at: str, reason: str) -> Promotion:
        """Put the last different known-good version back as champion (:func:`rollback_target`).

        The version taken out of service is tagged with when and why, so neither it nor another version of
        the same model is a target again, and ``previous`` moves to the next target: each call goes back
        one known-good version. When none is left, :class:`RegistryError` says so and nothing changes.
        """
        champion = self.version_for_alias(CHAMPION)
        target = self._target_from(champion, self.champion_history())
        if target is None:
            raise RegistryError(
                f"cannot roll back {self.model_name}: the champion is "
                f"{'v' + str(champion) if champion is not None else 'not set'} and no known-good version "
                "remains to return to (every other version ever promoted was rolled back or is the same model)"
            )
        if champion is not None:
            self.client.set_model_version_tag(self.model_name, str(champion), ROLLED_BACK_AT_TAG, rolled_back_at)
            self.client.set_model_version_tag(self.model_name, str(champion), ROLLBACK_REASON_TAG, reason)
        previous = self._point_previous_at_target(target)
        self.set_alias(CHAMPION, target)
        return Promotion(champion=target, previous=previous, changed=True)

    def pin(self, version: int, *, promoted_at: str) -> Promotion:
        """Make an explicit, existing version the champion (a manual deploy of ``--version N``).

        A person's choice overrides an earlier rollback of that version: its rolled-back tags are cleared
        before it is promoted, so it counts as known-good again.
        """
        tags = self.version_tags(version)  # raises with MLflow's message naming the version if it does not exist
        for tag in (ROLLED_BACK_AT_TAG, ROLLBACK_REASON_TAG):
            if tag in tags:
                self.client.delete_model_version_tag(self.model_name, str(version), tag)
        return self.promote(version, promoted_at=promoted_at)


def rollback_target(
    history: Sequence[ChampionHistoryEntry], champion: int | None, champion_digest: str | None
) -> int | None:
    """The last different known-good version: the most recently promoted version of ``history`` that is not
    ``champion``, is not the same model (when both model digests are known, they differ), and is known-good:
    neither it nor another version of the same model was rolled back since it was promoted. None if none is.

    A time that cannot be read counts against a version: a promotion as the oldest, a rollback as the newest.
    """
    for entry in sorted(history, key=_recency, reverse=True):
        if entry.version == champion or entry.rolled_back_at is not None:
            continue
        if champion_digest is not None and entry.model_digest == champion_digest:
            continue
        promoted = _moment(entry.promoted_at, unreadable=datetime.min)
        if entry.model_digest is not None and any(
            other.model_digest == entry.model_digest
            and other.rolled_back_at is not None
            and _moment(other.rolled_back_at, unreadable=datetime.max) >= promoted
            for other in history
        ):
            continue
        return entry.version
    return None


def _moment(text: str, *, unreadable: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = unreadable
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _recency(entry: ChampionHistoryEntry) -> tuple[datetime, int]:
    return _moment(entry.promoted_at, unreadable=datetime.min), entry.version


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


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on the terminal unless told not to (a command's output, --json
    above all, must be the output alone); told only for the duration."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri


def _logged_model_digest(info, label: str) -> str:
    """The sha256 of the native XGBoost model file of a model just logged (``info``: MLflow's ModelInfo),
    read where it was stored: in place for a local artifact store, else from a temporary download."""
    import tempfile

    from ml_platform.storage import file_digest

    location = info.artifact_path or ""
    if location.startswith("file://") or (location and "://" not in location):
        return file_digest(native_model_file(_local_path(location), label))
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as scratch:
        directory = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=scratch)
        return file_digest(native_model_file(directory, label))
