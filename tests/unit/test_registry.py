"""The MLflow registry on a real sqlite store: idempotent registration per run key, aliases and
promotion, and the model coming back intact; plus the training job that uses it."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    RUN_KEY_TAG,
    THRESHOLD_TAG,
    ModelRefused,
    Registry,
    RegistryError,
)
from ml_platform.storage import write_table
from ml_platform.training.dataset import split_xy
from ml_platform.training.job import TrainingJob, run_training_job
from ml_platform.training.train import model_signature

MODEL = "unit_fraud_detector"
EXPERIMENT = "unit_fraud_detector"


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


def make_registry(directory, model_name=MODEL):
    return Registry(f"sqlite:///{directory / 'mlflow.db'}", model_name, EXPERIMENT, (directory / "artifacts").as_uri())


def register(registry, trained, training_set, run_key):
    x_valid, _ = split_xy(training_set, "validation")
    return registry.log_and_register(
        trained,
        params={"n_estimators": 40},
        run_key=run_key,
        signature=model_signature(trained.booster, x_valid.head(5)),
        example=x_valid.head(5),
        run_tags={"origin": "unit-test"},
        figures={},
    )


@pytest.fixture(scope="module")
def scenario(mlflow_dir, trained_model, training_set):
    """Register, retry, register again, then promote twice; snapshots of the registry along the way."""
    registry = make_registry(mlflow_dir)
    seen = {"aliases_before": registry.aliases()}
    seen["first"] = register(registry, trained_model, training_set, "run-aaaa")
    seen["retry"] = register(registry, trained_model, training_set, "run-aaaa")
    seen["versions_after_retry"] = sorted(
        int(v.version) for v in registry.client.search_model_versions(f"name='{MODEL}'")
    )
    seen["aliases_after_retry"] = registry.aliases()
    seen["second"] = register(registry, trained_model, training_set, "run-bbbb")
    seen["aliases_after_second"] = registry.aliases()
    seen["promote_1"] = registry.promote(1, promoted_at="2024-01-01T00:00:00Z")
    seen["aliases_after_promote_1"] = registry.aliases()
    seen["promote_2"] = registry.promote(2, promoted_at="2024-01-02T00:00:00Z")
    seen["aliases_after_promote_2"] = registry.aliases()
    seen["promote_2_again"] = registry.promote(2, promoted_at="2024-01-03T00:00:00Z")
    seen["aliases_at_end"] = registry.aliases()
    return registry, seen


def test_a_retry_with_the_same_run_key_reuses_the_version(scenario):
    _, seen = scenario
    assert seen["aliases_before"] == {}
    assert (seen["first"].version, seen["first"].reused) == (1, False)
    assert (seen["retry"].version, seen["retry"].reused) == (1, True)
    assert seen["retry"].run_id == seen["first"].run_id
    assert seen["versions_after_retry"] == [1]
    assert seen["aliases_after_retry"] == {CHALLENGER: 1}


def test_a_new_run_key_registers_a_new_version_and_moves_challenger(scenario):
    registry, seen = scenario
    assert (seen["second"].version, seen["second"].reused) == (2, False)
    assert seen["second"].run_id != seen["first"].run_id
    assert seen["aliases_after_second"] == {CHALLENGER: 2}
    assert registry.model_version(2).tags[RUN_KEY_TAG] == "run-bbbb"
    assert int(registry.version_for_run_key("run-aaaa").version) == 1
    assert registry.version_for_run_key("run-zzzz") is None


def test_promotion_moves_champion_and_previous(scenario):
    registry, seen = scenario
    assert (seen["promote_1"].champion, seen["promote_1"].previous, seen["promote_1"].changed) == (1, None, True)
    assert seen["aliases_after_promote_1"] == {CHALLENGER: 2, CHAMPION: 1}
    assert (seen["promote_2"].champion, seen["promote_2"].previous, seen["promote_2"].changed) == (2, 1, True)
    assert seen["aliases_after_promote_2"] == {CHALLENGER: 2, CHAMPION: 2, PREVIOUS: 1}
    assert registry.model_version(2).tags["ml_platform.promoted_at"] == "2024-01-02T00:00:00Z"


def test_promoting_the_champion_again_changes_nothing(scenario):
    registry, seen = scenario
    again = seen["promote_2_again"]
    assert (again.champion, again.previous, again.changed) == (2, 1, False)
    assert seen["aliases_at_end"] == {CHALLENGER: 2, CHAMPION: 2, PREVIOUS: 1}
    assert registry.model_version(2).tags["ml_platform.promoted_at"] == "2024-01-02T00:00:00Z"  # not rewritten


def test_threshold_tag_round_trips_exactly(scenario, trained_model):
    registry, _ = scenario
    assert registry.model_version(1).tags[THRESHOLD_TAG] == repr(trained_model.threshold)
    assert registry.threshold(1) == trained_model.threshold
    assert registry.threshold(2) == trained_model.threshold


def test_loaded_booster_predicts_like_the_trained_one(scenario, trained_model, training_set):
    registry, _ = scenario
    x_test, _ = split_xy(training_set, "test")
    expected = trained_model.booster.inplace_predict(x_test.to_numpy(dtype="float64"))
    for version in (1, 2):
        booster = registry.load_booster(version)
        assert booster.num_boosted_rounds() == trained_model.best_iteration + 1
        np.testing.assert_allclose(booster.inplace_predict(x_test.to_numpy(dtype="float64")), expected, rtol=1e-6)


def test_logged_run_holds_params_metrics_and_tags(scenario, trained_model):
    registry, seen = scenario
    run = registry.client.get_run(seen["first"].run_id)
    assert run.data.params["n_estimators"] == "40"
    assert run.data.params["device_used"] == "cpu"
    assert run.data.params["best_iteration"] == str(trained_model.best_iteration)
    assert run.data.metrics["threshold"] == pytest.approx(trained_model.threshold)
    assert run.data.metrics["validation_pr_auc"] == pytest.approx(trained_model.validation_metrics["pr_auc"])
    assert run.data.tags["origin"] == "unit-test"


# ---- the training job --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_set_path(tmp_path_factory, training_set):
    path = tmp_path_factory.mktemp("job") / "training_set.parquet"
    write_table(training_set, path)
    return path


def job_for(mlflow_dir, path, run_key):
    return TrainingJob(
        training_set_path=str(path),
        tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        model_name="unit_job_model",
        experiment_name="unit_job",
        artifact_root=(mlflow_dir / "job_artifacts").as_uri(),
        run_key=run_key,
        params={"n_estimators": 30, "max_depth": 3, "device": "cpu", "n_jobs": 2},
    )


def test_training_job_registers_once_per_run_key(mlflow_dir, training_set_path, training_set):
    logged = []
    first = run_training_job(job_for(mlflow_dir, training_set_path, "job-1111"), log=logged.append)
    assert first["model_name"] == "unit_job_model"
    assert first["model_version"] == 1
    assert first["reused_existing_version"] is False
    assert (first["device"], first["requested_device"]) == ("cpu", "cpu")
    assert first["train_rows"] == int((training_set["split"] == "train").sum())
    assert first["validation_rows"] == int((training_set["split"] == "validation").sum())
    assert 0.0 < first["threshold"] < 1.0
    assert any("registered unit_job_model v1" in line for line in logged)

    again = run_training_job(job_for(mlflow_dir, training_set_path, "job-1111"), log=logged.append)
    assert again["reused_existing_version"] is True
    assert again["model_version"] == 1
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    assert again["device"] == "cpu"

    registry = make_registry(mlflow_dir, "unit_job_model")
    assert [int(v.version) for v in registry.client.search_model_versions("name='unit_job_model'")] == [1]
    assert registry.aliases() == {CHALLENGER: 1}
    assert registry.threshold(1) == first["threshold"]


def test_training_job_without_a_training_set_raises(mlflow_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_training_job(job_for(mlflow_dir, tmp_path / "missing.parquet", "job-2222"), log=lambda _: None)


# ---- two registries in one process -------------------------------------------------------------


def test_two_registries_with_different_stores_stay_apart(mlflow_dir, tmp_path, trained_model, training_set):
    import os

    import mlflow

    uri_before = mlflow.get_tracking_uri()
    first = make_registry(mlflow_dir, "unit_two_stores")
    second = make_registry(tmp_path, "unit_two_stores")
    assert register(first, trained_model, training_set, "two-a").version == 1
    assert register(second, trained_model, training_set, "two-b").version == 1
    again = register(first, trained_model, training_set, "two-c")  # back to the first store
    assert again.version == 2
    assert sorted(int(v.version) for v in first.client.search_model_versions("name='unit_two_stores'")) == [1, 2]
    assert [int(v.version) for v in second.client.search_model_versions("name='unit_two_stores'")] == [1]
    # Registering leaves MLflow's process-wide state as it found it.
    assert mlflow.get_tracking_uri() == uri_before
    assert "MLFLOW_TRACKING_URI" not in os.environ


# ---- loading only native XGBoost models --------------------------------------------------------

REFUSED_MODEL = "unit_refused_versions"
FEATURE_LIST = ", ".join(MODEL_FEATURES)


@pytest.fixture(scope="module")
def model_files(scenario):
    """The directory of a version that loads: what log_and_register wrote (MLmodel, model.ubj, ...)."""
    registry, _ = scenario
    return Path(registry._model_directory(1))


def version_from(registry: Registry, directory: Path) -> int:
    """A new version of REFUSED_MODEL whose files are ``directory``."""
    if not Registry(registry.tracking_uri, REFUSED_MODEL, EXPERIMENT, registry.artifact_root)._model_exists():
        registry.client.create_registered_model(REFUSED_MODEL)
    return int(registry.client.create_model_version(REFUSED_MODEL, directory.as_uri()).version)


def edited_copy(model_files: Path, destination: Path, edit) -> Path:
    shutil.copytree(model_files, destination)
    mlmodel = yaml.safe_load((destination / "MLmodel").read_text())
    edited = edit(mlmodel)
    (destination / "MLmodel").write_text(edited if isinstance(edited, str) else yaml.safe_dump(mlmodel))
    return destination


def _signature(columns) -> Callable[[dict], None]:
    def edit(mlmodel: dict) -> None:
        mlmodel["signature"]["inputs"] = json.dumps(columns)

    return edit


def _without_xgboost(mlmodel: dict) -> None:
    del mlmodel["flavors"]["xgboost"]


def _xgboost(**fields) -> Callable[[dict], None]:
    def edit(mlmodel: dict) -> None:
        mlmodel["flavors"]["xgboost"].update(fields)

    return edit


DOUBLES = [{"type": "double", "name": name, "required": True} for name in MODEL_FEATURES]
REFUSALS = {
    "pyfunc_only": (
        _without_xgboost,
        "is not a native XGBoost model: its MLmodel has flavors python_function only; refusing to load it"
        " (loading it could run code)",
    ),
    "no_flavors": (lambda m: m.pop("flavors"), "has an MLmodel file without flavors; refusing to load it"),
    "pickle_format": (
        _xgboost(model_format="deprecated"),
        "is not in XGBoost's own format: its xgboost flavor has model_format 'deprecated'; expected one of ubj,"
        " json; refusing to load it",
    ),
    "data_not_of_format": (
        _xgboost(data="python_model.pkl"),
        "names no ubj model file: its xgboost flavor has data 'python_model.pkl'; refusing to load it",
    ),
    "data_outside": (
        _xgboost(data="../model.ubj"),
        "names a model file outside its own directory: data '../model.ubj'; refusing to load it",
    ),
    "data_missing": (_xgboost(data="other.ubj"), "has no model file 'other.ubj' (its xgboost flavor names it) under"),
    "not_a_mapping": (lambda m: "- just\n- a list\n", "has an MLmodel file that is not a mapping (got list)"),
    "no_signature": (
        lambda m: m.pop("signature"),
        f"does not take the model's features: its signature inputs are missing; expected the 9 double columns"
        f" {FEATURE_LIST}, in that order; refusing to load it",
    ),
    "eight_features": (_signature(DOUBLES[:8]), "does not take the model's features: its signature inputs are"),
    "reordered": (_signature(DOUBLES[::-1]), "does not take the model's features: its signature inputs are"),
    "float_columns": (
        _signature([{**column, "type": "float"} for column in DOUBLES]),
        "does not take the model's features: its signature inputs are",
    ),
    "tensor": (
        _signature([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 9]}}]),
        "does not take the model's features: its signature inputs are",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_load_booster_refuses_what_is_not_a_native_model_of_the_features(scenario, model_files, tmp_path, case):
    registry, _ = scenario
    edit, reason = REFUSALS[case]
    version = version_from(registry, edited_copy(model_files, tmp_path / case, edit))
    refusing = Registry(registry.tracking_uri, REFUSED_MODEL, EXPERIMENT, registry.artifact_root)
    with pytest.raises(ModelRefused) as refused:
        refusing.load_booster(version)
    message = str(refused.value)
    assert isinstance(refused.value, RegistryError)
    assert message.startswith(f"{REFUSED_MODEL} version {version} {reason}"), message
    assert message.endswith("; refusing to load it") or message.endswith("(loading it could run code)")


def test_an_mlmodel_is_read_as_data_only(scenario, model_files, tmp_path):
    """A YAML tag that would construct a Python object (running a command) is refused, not run."""
    registry, _ = scenario
    marker = tmp_path / "marker"
    evil = f"!!python/object/apply:os.system ['touch {marker}']\n"
    version = version_from(registry, edited_copy(model_files, tmp_path / "evil", lambda m: evil))
    refusing = Registry(registry.tracking_uri, REFUSED_MODEL, EXPERIMENT, registry.artifact_root)
    with pytest.raises(ModelRefused, match="has an MLmodel file that cannot be read: ConstructorError"):
        refusing.load_booster(version)
    assert not marker.exists()

    shutil.rmtree(tmp_path / "evil")
    shutil.copytree(model_files, tmp_path / "evil")
    (tmp_path / "evil" / "MLmodel").unlink()
    with pytest.raises(ModelRefused, match=f"version {version} has no MLmodel file at "):
        refusing.load_booster(version)


def test_a_json_model_loads_a_garbled_or_renamed_one_not(scenario, model_files, trained_model, training_set, tmp_path):
    registry, _ = scenario
    refusing = Registry(registry.tracking_uri, REFUSED_MODEL, EXPERIMENT, registry.artifact_root)
    x_test, _ = split_xy(training_set, "test")
    expected = trained_model.booster.inplace_predict(x_test.to_numpy(dtype="float64"))

    as_json = edited_copy(model_files, tmp_path / "json", _xgboost(data="model.json", model_format="json"))
    booster = registry.load_booster(1)
    booster.save_model(as_json / "model.json")
    (as_json / "model.ubj").unlink()
    loaded = refusing.load_booster(version_from(registry, as_json))
    np.testing.assert_allclose(loaded.inplace_predict(x_test.to_numpy(dtype="float64")), expected, rtol=1e-6)

    garbled = edited_copy(model_files, tmp_path / "garbled", lambda m: None)
    (garbled / "model.ubj").write_bytes(b"not a model")
    version = version_from(registry, garbled)
    with pytest.raises(ModelRefused, match=f"version {version} has a model file XGBoost cannot read"):
        refusing.load_booster(version)

    renamed = edited_copy(model_files, tmp_path / "renamed", lambda m: None)
    booster.feature_names = [f"f{i}" for i in range(len(MODEL_FEATURES))]
    booster.save_model(renamed / "model.ubj")
    version = version_from(registry, renamed)
    with pytest.raises(ModelRefused, match=r"its booster has 9 features named \['f0', 'f1'"):
        refusing.load_booster(version)
