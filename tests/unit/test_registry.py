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
    MODEL_DIGEST_TAG,
    PREVIOUS,
    ROLLBACK_REASON_TAG,
    ROLLED_BACK_AT_TAG,
    RUN_KEY_TAG,
    THRESHOLD_TAG,
    ChampionHistoryEntry,
    ModelRefused,
    Registry,
    RegistryError,
    rollback_target,
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
    # Both versions hold the same trained booster; as two different models here, so that the first stays
    # the rollback target of the second (the same model is never one: see the champion history below).
    for version in (1, 2):
        registry.client.set_model_version_tag(MODEL, str(version), MODEL_DIGEST_TAG, f"sha256-of-model-{version}")
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


# ---- champion history and rollback -------------------------------------------------------------


def versions_with_digests(mlflow_dir, model_name: str, digests: list[str | None]) -> Registry:
    """A model with versions 1..n whose model digests are ``digests`` (None: not recorded), no training."""
    registry = make_registry(mlflow_dir, model_name)
    registry.client.create_registered_model(model_name)
    for number, digest in enumerate(digests, start=1):
        files = mlflow_dir / model_name / f"v{number}"
        files.mkdir(parents=True)
        tags = {MODEL_DIGEST_TAG: digest} if digest is not None else None
        assert int(registry.client.create_model_version(model_name, files.as_uri(), tags=tags).version) == number
    return registry


def rows(registry: Registry) -> list[tuple]:
    return [
        (e.version, e.promoted_at, e.rolled_back_at, e.rollback_reason, e.model_digest)
        for e in registry.champion_history()
    ]


def test_rollback_skips_the_same_model_and_then_says_no_known_good_version_is_left(mlflow_dir):
    # v4 is a retrain that made v3's model again; v2 was never promoted.
    registry = versions_with_digests(mlflow_dir, "unit_history_same_model", ["d1", "d2", "d3", "d3"])
    assert registry.champion_history() == [] and registry.rollback_target() is None
    registry.promote(1, promoted_at="2024-01-01T00:00:00Z")
    third = registry.promote(3, promoted_at="2024-01-03T00:00:00Z")
    assert (third.champion, third.previous, third.changed) == (3, 1, True)
    again = registry.promote(3, promoted_at="2024-01-03T12:00:00Z")
    assert (again.champion, again.previous, again.changed) == (3, 1, False)
    fourth = registry.promote(4, promoted_at="2024-01-04T00:00:00Z")
    assert (fourth.champion, fourth.previous, fourth.changed) == (4, 1, True)  # not v3: the same model as v4
    assert registry.aliases() == {CHAMPION: 4, PREVIOUS: 1}

    back = registry.rollback(rolled_back_at="2024-01-05T00:00:00Z", reason="accuracy dropped")
    assert (back.champion, back.previous, back.changed) == (1, None, True)
    assert registry.aliases() == {CHAMPION: 1}  # v3 is the model just rolled back: no target is left
    assert rows(registry) == [
        (4, "2024-01-04T00:00:00Z", "2024-01-05T00:00:00Z", "accuracy dropped", "d3"),
        (3, "2024-01-03T00:00:00Z", None, None, "d3"),
        (1, "2024-01-01T00:00:00Z", None, None, "d1"),
    ]

    with pytest.raises(RegistryError) as refused:
        registry.rollback(rolled_back_at="2024-01-06T00:00:00Z", reason="again")
    assert str(refused.value) == (
        "cannot roll back unit_history_same_model: the champion is v1 and no known-good version remains to "
        "return to (every other version ever promoted was rolled back or is the same model)"
    )
    assert registry.aliases() == {CHAMPION: 1}
    assert ROLLED_BACK_AT_TAG not in registry.version_tags(1)


def test_each_rollback_goes_back_one_known_good_version(mlflow_dir):
    registry = versions_with_digests(mlflow_dir, "unit_history_steps", ["d1", "d2", "d3"])
    for version in (1, 2, 3):
        registry.promote(version, promoted_at=f"2024-02-0{version}T00:00:00+00:00")
    assert registry.aliases() == {CHAMPION: 3, PREVIOUS: 2}

    first = registry.rollback(rolled_back_at="2024-02-04T00:00:00+00:00", reason="error rate")
    assert (first.champion, first.previous) == (2, 1)
    assert registry.aliases() == {CHAMPION: 2, PREVIOUS: 1}
    second = registry.rollback(rolled_back_at="2024-02-05T00:00:00+00:00", reason="accuracy dropped")
    assert (second.champion, second.previous) == (1, None)
    assert registry.aliases() == {CHAMPION: 1}
    assert [(v, back, why) for v, _, back, why, _ in rows(registry)] == [
        (3, "2024-02-04T00:00:00+00:00", "error rate"),
        (2, "2024-02-05T00:00:00+00:00", "accuracy dropped"),
        (1, None, None),
    ]
    with pytest.raises(RegistryError, match="the champion is v1 and no known-good version remains"):
        registry.rollback(rolled_back_at="2024-02-06T00:00:00+00:00", reason="again")


def test_pinning_a_rolled_back_version_clears_its_rollback_and_unknown_digests_differ(mlflow_dir):
    # Versions registered before model digests were recorded: none is taken for the same model.
    registry = versions_with_digests(mlflow_dir, "unit_history_pin", [None, None, None])
    for version in (1, 2):
        registry.promote(version, promoted_at=f"2024-03-0{version}T00:00:00Z")
    registry.rollback(rolled_back_at="2024-03-03T00:00:00Z", reason="smoke failed")
    assert registry.aliases() == {CHAMPION: 1}
    assert registry.version_tags(2)[ROLLBACK_REASON_TAG] == "smoke failed"

    pinned = registry.pin(2, promoted_at="2024-03-04T00:00:00Z")
    assert (pinned.champion, pinned.previous, pinned.changed) == (2, 1, True)
    tags = registry.version_tags(2)
    assert ROLLED_BACK_AT_TAG not in tags and ROLLBACK_REASON_TAG not in tags
    assert rows(registry) == [
        (2, "2024-03-04T00:00:00Z", None, None, None),
        (1, "2024-03-01T00:00:00Z", None, None, None),
    ]

    # v3 (never promoted) pinned: v2 is the target again, and a rollback goes there.
    assert registry.pin(3, promoted_at="2024-03-05T00:00:00Z").previous == 2
    assert registry.rollback(rolled_back_at="2024-03-06T00:00:00Z", reason="manual").champion == 2
    assert registry.aliases() == {CHAMPION: 2, PREVIOUS: 1}
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="99"):
        registry.pin(99, promoted_at="2024-03-07T00:00:00Z")


def test_a_champion_set_by_hand_is_recorded_when_it_is_replaced(mlflow_dir):
    registry = versions_with_digests(mlflow_dir, "unit_history_by_hand", ["d1", "d2"])
    registry.set_alias(CHAMPION, 1)  # moved by hand, never promoted
    assert registry.champion_history() == [] and registry.rollback_target() is None
    promotion = registry.promote(2, promoted_at="2024-04-01T00:00:00Z")
    assert (promotion.champion, promotion.previous) == (2, 1)
    assert rows(registry) == [
        (2, "2024-04-01T00:00:00Z", None, None, "d2"),
        (1, "2024-04-01T00:00:00Z", None, None, "d1"),
    ]
    assert registry.rollback(rolled_back_at="2024-04-02T00:00:00Z", reason="manual").champion == 1


def entry(version: int, promoted_at: str, rolled_back_at: str | None = None, digest: str | None = None):
    return ChampionHistoryEntry(version, promoted_at, rolled_back_at, "reason" if rolled_back_at else None, digest)


def test_a_model_rolled_back_since_a_version_was_promoted_rules_that_version_out():
    history = [
        entry(1, "2024-01-01T00:00:00Z", digest="a"),
        entry(3, "2024-01-03T00:00:00Z", digest="b"),
        entry(4, "2024-01-04T00:00:00Z", "2024-01-05T00:00:00Z", digest="b"),
        entry(5, "2024-01-06T00:00:00Z", digest="e"),
    ]
    assert rollback_target(history, 5, "e") == 1  # v3 is v4's model, rolled back after v3 was promoted
    pinned_again = [entry(3, "2024-01-05T12:00:00Z", digest="b"), *history[:1], *history[2:]]
    assert rollback_target(pinned_again, 5, "e") == 3  # promoted (pinned) after that rollback: known-good
    assert rollback_target(history, 5, None) == 1
    assert rollback_target(history, None, None) == 5
    assert rollback_target(history, 1, "a") == 5
    assert rollback_target([entry(2, "2024-01-02"), entry(7, "yesterday")], 9, None) == 2  # unreadable: oldest
    assert rollback_target([entry(2, "2024-01-02", digest="x"), entry(6, "2024-01-01", "soon", "x")], 9, None) is None
    assert rollback_target([], 1, "a") is None


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


def test_a_retry_reuses_its_version_even_when_the_training_set_is_gone(training_set_path, tmp_path):
    """A retry that finds its run key's version returns it before it looks at the training set: the file's
    absence, which fails a first attempt, does not matter then. (A store of its own: the module's store
    holds the versions another test counts.)"""
    first = run_training_job(job_for(tmp_path, training_set_path, "job-3333"), log=lambda _: None)
    retry = run_training_job(job_for(tmp_path, tmp_path / "gone.parquet", "job-3333"), log=lambda _: None)
    assert retry["reused_existing_version"] is True
    assert (retry["model_version"], retry["mlflow_run_id"]) == (first["model_version"], first["mlflow_run_id"])


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


# ---- what a version was trained on -----------------------------------------------------------------------
DATA_MODEL = "unit_data_model"


def data_job(mlflow_dir, path, run_key, digest=""):
    return TrainingJob(
        training_set_path=str(path),
        training_set_digest=digest,
        tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        model_name=DATA_MODEL,
        experiment_name="unit_data",
        artifact_root=(mlflow_dir / "data_artifacts").as_uri(),
        run_key=run_key,
        params={"n_estimators": 20, "max_depth": 3, "device": "cpu", "n_jobs": 2},
    )


@pytest.fixture(scope="module")
def recorded(mlflow_dir, tmp_path_factory, training_set):
    """A version trained by the job on a stored training set, and a retry of its run on another one."""
    from ml_platform.training.datasets import store_training_set, training_sets_dir

    state = tmp_path_factory.mktemp("data_state")
    stored = store_training_set(training_set, training_sets_dir(state))
    other = store_training_set(training_set.iloc[: len(training_set) // 2], training_sets_dir(state))
    first = run_training_job(data_job(mlflow_dir, stored.path, "data-1111", stored.digest), log=lambda _: None)
    retry = run_training_job(data_job(mlflow_dir, other.path, "data-1111", other.digest), log=lambda _: None)
    return {"state": state, "stored": stored, "other": other, "first": first, "retry": retry}


def test_a_version_is_tagged_with_its_training_set_and_model_file(recorded, mlflow_dir, training_set):
    import hashlib

    from ml_platform.registry import TRAINING_DATA_END_TAG, TRAINING_SET_DIGEST_TAG, native_model_file

    stored, first = recorded["stored"], recorded["first"]
    registry = make_registry(mlflow_dir, DATA_MODEL)
    version = first["model_version"]
    tags = registry.model_version(version).tags
    assert tags[TRAINING_SET_DIGEST_TAG] == stored.digest == hashlib.sha256(stored.path.read_bytes()).hexdigest()
    assert tags[TRAINING_DATA_END_TAG] == training_set["event_timestamp"].max().isoformat() == stored.data_end
    model_file = native_model_file(registry._model_directory(version), "v1")
    assert tags[MODEL_DIGEST_TAG] == hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
    assert registry.training_set_digest(version) == stored.digest
    assert registry.training_data_end(version) == stored.data_end
    assert (first["training_set_digest"], first["training_data_end"]) == (stored.digest, stored.data_end)


def test_the_run_records_the_stored_training_set_as_its_dataset_input(recorded, mlflow_dir, training_set):
    stored = recorded["stored"]
    registry = make_registry(mlflow_dir, DATA_MODEL)
    run = registry.client.get_run(recorded["first"]["mlflow_run_id"])
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == "training_set"
    assert logged.dataset.digest == stored.digest[:32]
    assert (logged.dataset.source_type, json.loads(logged.dataset.source)) == ("local", {"uri": str(stored.path)})
    assert {tag.key: tag.value for tag in logged.tags} == {"mlflow.data.context": "training"}
    assert json.loads(logged.dataset.profile)["num_rows"] == len(training_set)
    columns = [column["name"] for column in json.loads(logged.dataset.schema)["mlflow_colspec"]]
    assert columns == [*MODEL_FEATURES, "is_fraud", "split", "event_timestamp"]


def test_a_reused_version_keeps_the_tags_it_was_registered_with(recorded, mlflow_dir):
    from ml_platform.registry import RUN_KEY_TAG, TRAINING_SET_DIGEST_TAG

    retry, stored = recorded["retry"], recorded["stored"]
    assert retry["reused_existing_version"] is True
    assert retry["model_version"] == recorded["first"]["model_version"]
    assert retry["training_set_digest"] == stored.digest != recorded["other"].digest
    registry = make_registry(mlflow_dir, DATA_MODEL)
    assert registry.model_version(retry["model_version"]).tags[TRAINING_SET_DIGEST_TAG] == stored.digest
    assert int(registry.version_for_run_key("data-1111").version) == retry["model_version"]  # one for the run
    assert (
        len(registry.client.search_model_versions(f"name='{DATA_MODEL}' and tags.`{RUN_KEY_TAG}` = 'data-1111'")) == 1
    )


def test_a_training_set_that_is_not_the_stored_content_is_refused(recorded, mlflow_dir, tmp_path):
    stored = recorded["stored"]
    changed = tmp_path / f"{stored.digest}.parquet"
    shutil.copyfile(stored.path, changed)
    with open(changed, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match=f"not the {stored.digest} it was stored as"):
        run_training_job(data_job(mlflow_dir, changed, "data-2222", stored.digest), log=lambda _: None)
    registry = make_registry(mlflow_dir, DATA_MODEL)
    assert registry.version_for_run_key("data-2222") is None  # nothing registered


def test_a_version_is_judged_against_its_own_training_set_or_says_why_not(
    recorded, mlflow_dir, trained_model, training_set, tmp_path
):
    from ml_platform.monitoring.health import reference_features, training_reference
    from ml_platform.storage import file_digest
    from ml_platform.training.datasets import training_sets_dir

    state, stored, other = recorded["state"], recorded["stored"], recorded["other"]
    registry = make_registry(mlflow_dir, DATA_MODEL)
    tagged = recorded["first"]["model_version"]
    current = state / "training_set.parquet"  # the current training set: the other, newer content
    shutil.copyfile(other.path, current)

    own = training_reference(registry, tagged, current)  # the store beside the current training set
    assert (own.model_version, own.digest, own.path, own.note) == (tagged, stored.digest, stored.path, None)
    features = reference_features(own.path)
    assert len(features) == int((training_set["split"] == "test").sum()) != len(reference_features(current))

    untagged = register(registry, trained_model, training_set, "data-untagged").version  # no version tags
    fallback = training_reference(registry, untagged, current, training_sets_dir(state))
    assert (fallback.digest, fallback.path) == (file_digest(current), current) and fallback.digest == other.digest
    assert fallback.note == (
        f"v{untagged} has no ml_platform.training_set_digest tag (registered before training sets were kept, "
        "or pinned from elsewhere): judged against the current training set"
    )
    elsewhere = training_reference(registry, tagged, current, tmp_path / "empty")
    assert elsewhere.path == current
    assert elsewhere.fallback_reason.startswith(f"v{tagged}'s own training set cannot be read: training set")
    assert training_reference(registry, None, current).fallback_reason == "no champion to judge"
    with pytest.raises(FileNotFoundError, match=f"materialize training_set first .*v{untagged} has no"):
        training_reference(registry, untagged, tmp_path / "missing.parquet")
