"""Batch scoring parquet -> parquet: the same scores as the in-memory path, any batch size, an atomic
output, and memory that does not grow with the number of rows."""

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.serving.batch import MAX_WORKERS, BatchResult, _feature_table, default_workers, predict_parquet
from ml_platform.training.train import predict_probability

REPO = Path(__file__).resolve().parents[2]
IDS = ["transaction_id", "customer_id", "event_timestamp"]
SCORED_AT = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def source(tmp_path_factory, training_set):
    """The unit training set (ids, features, label, split) as a parquet file, as pandas writes it."""
    path = tmp_path_factory.mktemp("batch_source") / "features.parquet"
    training_set.to_parquet(path, index=False)
    return path


def score(source, destination, booster, **kwargs):
    kwargs = {"model_version": 7, "threshold": 0.3, "scored_at": SCORED_AT, **kwargs}
    return predict_parquet(source, destination, booster, **kwargs)


def test_scores_match_the_in_memory_prediction(tmp_path, source, training_set, trained_model):
    destination = tmp_path / "out" / "scores.parquet"
    result = score(source, destination, trained_model.booster)

    assert isinstance(result, BatchResult)
    assert result.rows == len(training_set)
    assert result.destination == destination
    assert result.model_version == 7
    assert result.seconds > 0 and result.rows_per_second > 0
    table = pq.read_table(destination)
    assert table.schema.names == [*IDS, "probability", "is_fraud", "model_version", "scored_at"]
    assert table.schema.field("probability").type == pa.float64()
    assert table.schema.field("is_fraud").type == pa.bool_()
    assert table.schema.field("model_version").type == pa.int32()
    assert table.schema.field("scored_at").type == pa.timestamp("us", tz="UTC")

    scores = table.to_pandas()
    expected = predict_probability(trained_model.booster, training_set[list(MODEL_FEATURES)])
    assert_allclose(scores["probability"].to_numpy(), expected, rtol=1e-12, atol=0)
    assert 0 < scores["is_fraud"].sum() < len(scores)  # the threshold splits the rows: the check below bites
    assert (scores["is_fraud"].to_numpy() == (expected >= 0.3)).all()
    assert (scores["model_version"] == 7).all()
    assert scores["scored_at"].nunique() == 1
    assert scores["scored_at"].iloc[0] == pd.Timestamp(SCORED_AT)
    for column in IDS:  # ids preserved, in the source's order
        assert scores[column].tolist() == training_set[column].tolist()


def test_many_small_batches_give_the_same_file_as_one_batch(tmp_path, source, trained_model):
    one = score(source, tmp_path / "one.parquet", trained_model.booster, batch_rows=1_000_000)
    many = score(source, tmp_path / "many.parquet", trained_model.booster, batch_rows=257)

    assert one.rows == many.rows
    assert pq.ParquetFile(tmp_path / "one.parquet").metadata.num_row_groups == 1
    assert pq.ParquetFile(tmp_path / "many.parquet").metadata.num_row_groups == -(-many.rows // 257)
    assert pq.read_table(tmp_path / "many.parquet").equals(pq.read_table(tmp_path / "one.parquet"))


def test_id_columns_absent_from_the_source_are_skipped(tmp_path, training_set, trained_model):
    source = tmp_path / "features_only.parquet"
    training_set[["transaction_id", *MODEL_FEATURES]].to_parquet(source, index=False)
    score(source, tmp_path / "scores.parquet", trained_model.booster)
    assert pq.read_schema(tmp_path / "scores.parquet").names[:2] == ["transaction_id", "probability"]


def test_integer_and_null_features_are_scored_like_nan(tmp_path, training_set, trained_model):
    """Features stored as integers or with nulls are cast to float64; a null is a missing value (NaN)."""
    frame = training_set[[*IDS, *MODEL_FEATURES]].head(500).copy()
    frame["total_purchases"] = frame["total_purchases"].astype("int64")
    frame.loc[frame.index[::7], "avg_order_value"] = np.nan
    table = pa.Table.from_pandas(frame, preserve_index=False)
    ratio = table.column("amount_to_avg_ratio").to_numpy(zero_copy_only=False)
    null_ratio = pa.array(ratio, mask=np.arange(len(ratio)) % 5 == 0)  # real nulls, not NaN
    table = table.set_column(table.schema.get_field_index("amount_to_avg_ratio"), "amount_to_avg_ratio", null_ratio)
    pq.write_table(table, tmp_path / "mixed.parquet")

    score(tmp_path / "mixed.parquet", tmp_path / "scores.parquet", trained_model.booster, batch_rows=64)

    expected_frame = frame[list(MODEL_FEATURES)].astype("float64")
    expected_frame.loc[expected_frame.index[::5], "amount_to_avg_ratio"] = np.nan
    expected = predict_probability(trained_model.booster, expected_frame)
    got = pq.read_table(tmp_path / "scores.parquet").column("probability").to_numpy()
    assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_scored_at_defaults_to_now_and_a_naive_one_is_utc(tmp_path, source, trained_model):
    before = datetime.now(UTC)
    score(source, tmp_path / "now.parquet", trained_model.booster, scored_at=None, batch_rows=500)
    after = datetime.now(UTC)
    stamps = pq.read_table(tmp_path / "now.parquet").column("scored_at").unique().to_pylist()
    assert len(stamps) == 1 and before - timedelta(microseconds=1) <= stamps[0] <= after

    score(source, tmp_path / "naive.parquet", trained_model.booster, scored_at=SCORED_AT.replace(tzinfo=None))
    assert pq.read_table(tmp_path / "naive.parquet").column("scored_at").unique().to_pylist() == [SCORED_AT]


def test_a_missing_feature_raises_and_writes_nothing(tmp_path, training_set, trained_model):
    source = tmp_path / "incomplete.parquet"
    training_set.drop(columns=["days_since_last_order"]).to_parquet(source, index=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    with pytest.raises(ValueError, match="days_since_last_order"):
        score(source, out_dir / "scores.parquet", trained_model.booster)
    assert os.listdir(out_dir) == []  # neither the destination nor a temporary file


class FailsOnThirdBatch:
    """A booster whose third prediction fails; ``copy`` gives itself, so the count spans every worker."""

    def __init__(self, booster):
        self.booster, self.calls, self.lock = booster, 0, threading.Lock()

    def copy(self):
        return self

    def set_param(self, params):
        pass

    def inplace_predict(self, features):
        with self.lock:
            self.calls += 1
            calls = self.calls
        if calls == 3:
            raise RuntimeError("scoring failed")
        return self.booster.inplace_predict(features)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_failure_midway_leaves_the_old_destination_and_no_temporary_file(tmp_path, source, trained_model, workers):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    destination = out_dir / "scores.parquet"
    destination.write_bytes(b"yesterday's scores")
    failing = FailsOnThirdBatch(trained_model.booster)

    # In a thread with a deadline: a worker waiting for its turn to write must not wait forever.
    outcome = {}
    run = lambda: outcome.update(error=_raised(score, source, destination, failing, batch_rows=100, workers=workers))  # noqa: E731
    runner = threading.Thread(target=run)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the other workers did not stop after one failed"
    assert isinstance(outcome["error"], RuntimeError) and str(outcome["error"]) == "scoring failed"
    assert os.listdir(out_dir) == ["scores.parquet"]
    assert destination.read_bytes() == b"yesterday's scores"
    if workers == 1:
        assert failing.calls == 3  # stopped at the failure
    assert failing.calls < -(-len(pq.read_table(source, columns=["transaction_id"])) // 100)  # not every batch


def _raised(function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return error
    return None


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_any_number_of_workers_gives_the_same_file_as_one(tmp_path, source, trained_model, workers):
    """Batches are scored out of order by several workers but written in the order they were read."""
    one = score(source, tmp_path / "one.parquet", trained_model.booster, batch_rows=97, workers=1)
    several = score(source, tmp_path / "several.parquet", trained_model.booster, batch_rows=97, workers=workers)

    assert several.rows == one.rows
    assert pq.read_table(tmp_path / "several.parquet").equals(pq.read_table(tmp_path / "one.parquet"))


def test_the_callers_booster_keeps_its_thread_setting(tmp_path, source, trained_model):
    booster = trained_model.booster.copy()
    booster.set_param({"nthread": 3})
    score(source, tmp_path / "scores.parquet", booster, batch_rows=500, workers=2)
    assert json.loads(booster.save_config())["learner"]["generic_param"]["nthread"] == "3"


def test_bad_worker_counts_are_refused_before_anything_is_written(tmp_path, source, trained_model):
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        score(source, tmp_path / "scores.parquet", trained_model.booster, workers=0)
    assert not (tmp_path / "scores.parquet").exists()
    assert 1 <= default_workers() <= MAX_WORKERS


def test_a_column_that_starts_inside_its_buffer_is_scored_from_its_own_first_row(trained_model, training_set):
    """XGBoost's Arrow path reads a column's buffer by address, ignoring an Arrow offset; 3.2 copies each
    column first (so the offset is 0 by then). Should a release stop copying, a slice would be misread."""
    table = pa.Table.from_pandas(training_set[list(MODEL_FEATURES)].head(300), preserve_index=False)
    nulls = pa.array(table.column("amount").to_numpy(), mask=np.arange(300) % 3 == 0)
    table = table.set_column(table.schema.get_field_index("amount"), "amount", nulls)
    sliced = table.slice(37, 200).to_batches()[0]
    assert sliced.column("amount").offset == 37

    got = trained_model.booster.inplace_predict(_feature_table(sliced))

    expected = trained_model.booster.inplace_predict(
        np.stack([sliced.column(name).to_numpy(zero_copy_only=False) for name in MODEL_FEATURES], axis=1)
    )
    assert np.isnan(sliced.column("amount").to_numpy(zero_copy_only=False)).any()  # the nulls are in the slice
    np.testing.assert_array_equal(got, expected)


# ---- bounded memory ------------------------------------------------------------------------------

# Runs in a fresh process: scores one file and reports the peaks its scoring reached.
# Two views, since neither sees everything:
# - tracemalloc sees Python objects and numpy buffers (the feature matrices, probabilities), but not
#   pyarrow's buffers (they come from Arrow's own pool: mimalloc/jemalloc), nor XGBoost's C++ heap;
# - Arrow's default pool's max_memory() sees pyarrow's buffers: decoded batches, the reader's column
#   chunks, the writer's pages. In a fresh process it is the peak of this one run.
# Peak RSS (ru_maxrss) sees everything but is useless at this size: the peak reached while importing
# xgboost and pyarrow is higher than anything scoring 200k rows adds (bench/batch.py reports it at 1M).
MEMORY_CHILD = """
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa, xgboost as xgb
from ml_platform.serving.batch import predict_parquet
booster = xgb.Booster()
booster.load_model(sys.argv[2])
tracemalloc.start()
result = predict_parquet(Path(sys.argv[1]), Path(sys.argv[1] + ".scores"), booster, model_version=1,
                         threshold=0.5, batch_rows=int(sys.argv[3]))
_, python_peak = tracemalloc.get_traced_memory()
arrow_peak = pa.default_memory_pool().max_memory()
print(json.dumps({"rows": result.rows, "python_peak": python_peak, "arrow_peak": arrow_peak}))
"""


def write_random_features(path: Path, rows: int) -> None:
    """Random features in one row group (what pandas writes below ~1M rows: the hard case, since a
    reader that loads a whole row group grows with the file), with 64 KiB pages.

    Even a streaming reader holds each column's dictionary page (up to 1 MiB by default) for as long as
    it reads that column chunk, so its memory rises with the file until the dictionary is full and is
    flat after that. Measured on one float column with default pages and the scorer's reader settings:
    1.1 MB at 50k rows, 2.4 MB at 200k and at 1M. With 64 KiB pages both files here are past that
    plateau, so what the test compares is the scorer, not the dictionary.
    """
    rng = np.random.default_rng(rows)
    columns = {
        "transaction_id": pa.array(np.char.add("tx-", np.arange(rows).astype(str))),
        "customer_id": pa.array(rng.integers(0, 20_000, rows)),
        "event_timestamp": pa.array(np.datetime64("2024-03-01", "us") + np.arange(rows) * 1_000_000).cast(
            pa.timestamp("us", tz="UTC")
        ),
    }
    columns |= {name: pa.array(rng.gamma(2.0, 20.0, rows)) for name in MODEL_FEATURES}
    pq.write_table(
        pa.table(columns), path, row_group_size=rows, data_page_size=1 << 16, dictionary_pagesize_limit=1 << 16
    )


def test_memory_does_not_grow_with_the_number_of_rows(tmp_path, trained_model):
    model = tmp_path / "model.ubj"
    trained_model.booster.save_model(model)
    sizes = {"small": 50_000, "large": 200_000}
    for name, rows in sizes.items():
        write_random_features(tmp_path / f"{name}.parquet", rows)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    children = {  # both at once: the two peaks are per process
        name: subprocess.Popen(
            [sys.executable, "-c", MEMORY_CHILD, str(tmp_path / f"{name}.parquet"), str(model), "16384"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in sizes
    }
    peaks = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        peaks[name] = json.loads(out.strip().splitlines()[-1])
        assert peaks[name]["rows"] == sizes[name]

    report = {key: (peaks["small"][key], peaks["large"][key]) for key in ("python_peak", "arrow_peak")}
    # 4x the rows; a reader or writer holding the whole file would show ~4x here.
    assert peaks["large"]["python_peak"] <= 1.5 * peaks["small"]["python_peak"], report
    assert peaks["large"]["arrow_peak"] <= 1.5 * peaks["small"]["arrow_peak"], report
