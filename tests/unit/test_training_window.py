"""The training window (the newest stored days a training set is built from) and the MLflow schema of a
training set, which must be the one MLflow infers, made without reading every value in Python."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from ml_platform.training.dataset import (
    DEFAULT_WINDOW_DAYS,
    SPLIT_COLUMN,
    TrainingWindow,
    read_window,
    trailing_window,
)
from ml_platform.training.datasets import dataset_schema, mlflow_training_dataset, store_training_set

STORED = ["2026-01-03", "2026-01-01", "2026-01-05", "2026-01-02"]  # unordered, 2026-01-04 never ingested


def test_the_window_is_the_stored_days_of_the_last_calendar_days_oldest_first():
    window = trailing_window(STORED, 3)
    assert window.days == ("2026-01-03", "2026-01-05")  # 01-03 .. 01-05; 01-04 was never ingested
    assert (window.first_day, window.last_day) == ("2026-01-03", "2026-01-05")
    assert trailing_window(STORED, 2).days == ("2026-01-05",)
    assert trailing_window(STORED, 1).days == ("2026-01-05",)


def test_a_window_longer_than_the_history_holds_every_stored_day():
    assert trailing_window(STORED, 30).days == ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05")
    assert trailing_window(STORED + STORED).days == trailing_window(STORED, 5).days  # a day counts once
    assert len(trailing_window(STORED, 5).days) == 4
    assert DEFAULT_WINDOW_DAYS == 90


def test_no_stored_day_gives_an_empty_window():
    window = trailing_window([], 5)
    assert window == TrainingWindow(())
    assert (window.first_day, window.last_day) == (None, None)


@pytest.mark.parametrize("window_days", [0, -3, 2.5, True, "7"])
def test_a_window_below_one_day_or_not_whole_is_refused(window_days):
    with pytest.raises(ValueError, match=rf"window_days must be a whole number of days >= 1, got {window_days!r}"):
        trailing_window(STORED, window_days)


def test_a_stored_day_that_is_not_a_date_is_refused():
    with pytest.raises(ValueError, match=r"stored days must be dates \(YYYY-MM-DD\), got 'rejected'"):
        trailing_window([*STORED, "rejected"], 3)


def day_frame(day: str, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"transaction_id": [f"{day}-{i}" for i in range(rows)], "amount": np.arange(rows, dtype="float64")}
    )


def test_read_window_reads_the_days_of_the_window_in_order(tmp_path):
    for day, rows in (("2026-01-01", 3), ("2026-01-02", 0), ("2026-01-03", 2)):
        day_frame(day, rows).to_parquet(tmp_path / f"{day}.parquet", index=False)
    frame = read_window(
        trailing_window(["2026-01-01", "2026-01-02", "2026-01-03"], 2), lambda d: tmp_path / f"{d}.parquet"
    )
    assert frame["transaction_id"].tolist() == ["2026-01-03-0", "2026-01-03-1"]
    assert list(frame.index) == [0, 1]
    every = read_window(trailing_window(["2026-01-01", "2026-01-03"], 5), lambda d: tmp_path / f"{d}.parquet")
    assert every["transaction_id"].tolist() == [
        "2026-01-01-0",
        "2026-01-01-1",
        "2026-01-01-2",
        "2026-01-03-0",
        "2026-01-03-1",
    ]


def test_read_window_names_a_missing_day_and_an_empty_window(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"day 2026-01-09 of the training window has no stored file .*2026-01-09"
    ):
        read_window(TrainingWindow(("2026-01-09",)), lambda d: tmp_path / f"{d}.parquet")
    with pytest.raises(FileNotFoundError, match="the training window holds no stored day"):
        read_window(TrainingWindow(()), lambda d: tmp_path / f"{d}.parquet")


def mlflow_inferred(frame: pd.DataFrame):
    import mlflow.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.data.from_pandas(frame).schema


def test_the_schema_is_the_one_mlflow_infers_for_a_training_set(training_set):
    assert dataset_schema(training_set).to_json() == mlflow_inferred(training_set).to_json()
    read_back = training_set.drop(columns=["transaction_id", "customer_id"])
    schema = json.loads(dataset_schema(read_back).to_json())
    assert schema == json.loads(mlflow_inferred(read_back).to_json())
    by_name = {column["name"]: column for column in schema}
    assert by_name[SPLIT_COLUMN] == {"type": "string", "name": SPLIT_COLUMN, "required": True}
    assert by_name["is_fraud"]["type"] == "long"
    assert by_name["event_timestamp"]["type"] == "datetime"
    # a customer's first day has no history: those columns hold missing values, so they are not required
    assert (
        {name for name, column in by_name.items() if not column["required"]}
        == {name for name in read_back.columns if read_back[name].isna().any()}
        != set()
    )


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([1.0, np.nan, 3.0]),
        pd.Series([1, 2, 3], dtype="int32"),
        pd.Series(["a", None, "b"], dtype=object),
        pd.Series(["a", "b", "a"], dtype=object),
        pd.Series([1, "b", 2.5], dtype=object),
        pd.Series([b"x", b"y", b"x"], dtype=object),
        pd.Series([True, False, True]),
        pd.Series(pd.to_datetime(["2026-01-01", None, "2026-01-03"], utc=True)),
        pd.Series([[1, 2], [3], [4, 5]], dtype=object),
        pd.Series([1.5, 2.5, None], dtype="float32"),
    ],
    ids=["float-nan", "int32", "str-none", "str", "mixed", "bytes", "bool", "datetime-nat", "lists", "float32-none"],
)
def test_the_schema_agrees_with_mlflow_on_every_kind_of_column(column):
    frame = pd.DataFrame({"column": column, "other": [0.5, 1.5, 2.5]})
    expected = mlflow_inferred(frame)
    if expected is None:  # a column MLflow cannot describe (mixed types): no schema either way
        assert dataset_schema(frame) is None
        return
    assert dataset_schema(frame).to_json() == expected.to_json()
    assert dataset_schema(frame.head(0)).to_json() == mlflow_inferred(frame.head(0)).to_json()


def test_mixed_types_are_what_mlflow_cannot_describe():
    frame = pd.DataFrame({"column": pd.Series([1, "b", 2.5], dtype=object)})
    assert mlflow_inferred(frame) is None and dataset_schema(frame) is None


def test_the_logged_dataset_carries_that_schema(training_set, tmp_path):
    stored = store_training_set(training_set, tmp_path)
    dataset = mlflow_training_dataset(training_set, stored.path, stored.digest)
    logged = json.loads(dataset.to_dict()["schema"])["mlflow_colspec"]
    assert logged == json.loads(mlflow_inferred(training_set).to_json())
