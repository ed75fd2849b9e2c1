"""The late-label store (as-of reads, latest label wins, atomic files) and the synthetic source's labels."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.monitoring.labels import LABEL_COLUMNS, LabelStore, delayed_labels

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def labels(rows: list[tuple[str, bool, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(LABEL_COLUMNS))


def test_read_as_of_and_latest_label_wins(tmp_path):
    store = LabelStore(tmp_path / "labels")
    assert store.write(labels([("a", False, T0), ("b", True, T0), ("c", False, T0 + timedelta(hours=1))])) == 3
    # a review overturns "a" two days later (another day folder)
    assert store.write(labels([("a", True, T0 + timedelta(days=2))])) == 1

    now = store.read()
    assert now["request_id"].tolist() == ["b", "c", "a"]  # ordered by labeled_at
    assert dict(zip(now["request_id"], now["label"], strict=True)) == {"a": True, "b": True, "c": False}
    assert now["label"].dtype == bool
    assert str(now["labeled_at"].dt.tz) == "UTC"

    before_review = store.read(as_of=T0 + timedelta(days=1))
    assert dict(zip(before_review["request_id"], before_review["label"], strict=True)) == {
        "a": False,
        "b": True,
        "c": False,
    }
    at_t0 = store.read(as_of=T0)  # inclusive: labeled_at <= as_of
    assert sorted(at_t0["request_id"]) == ["a", "b"]
    assert store.read(as_of=T0 - timedelta(seconds=1)).empty


def test_a_tie_on_labeled_at_goes_to_the_label_written_last(tmp_path):
    store = LabelStore(tmp_path)
    store.write(labels([("x", False, T0)]))
    store.write(labels([("x", True, T0)]))
    assert store.read()["label"].tolist() == [True]


def test_files_by_day_of_labeled_at_and_atomic(tmp_path):
    store = LabelStore(tmp_path)
    store.write(
        pd.DataFrame(
            {
                "request_id": ["p", "q", "r"],
                "label": [1, 0, 1],  # 0/1 accepted
                "labeled_at": ["2026-11-20T23:59:59Z", "2026-11-21T00:00:00Z", "2026-11-21T08:00:00+02:00"],
            }
        )
    )
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["date=2026-11-20", "date=2026-11-21"]
    assert [len(list((tmp_path / f).glob("part-*.parquet"))) for f in folders] == [1, 1]
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind
    # a half-written file of a writer that died is never read
    (tmp_path / "date=2026-11-21" / ".part-123.parquet.tmp-99").write_bytes(b"partial")
    read = store.read()
    assert read["request_id"].tolist() == ["p", "q", "r"]  # r's 08:00+02:00 is 06:00Z
    assert read["label"].tolist() == [True, False, True]
    assert read["labeled_at"].iloc[2] == pd.Timestamp("2026-11-21T06:00:00Z")


def test_validation_names_the_column(tmp_path):
    store = LabelStore(tmp_path)
    with pytest.raises(ValueError, match=r"labels: missing column\(s\) labeled_at"):
        store.write(pd.DataFrame({"request_id": ["a"], "label": [True]}))
    with pytest.raises(ValueError, match=r"labels.label: expected true/false or 0/1, got 2"):
        store.write(labels([("a", 2, T0)]))
    with pytest.raises(ValueError, match=r"labels.request_id: 1 row\(s\) have no request id"):
        store.write(labels([(None, True, T0)]))
    with pytest.raises(ValueError, match=r"labels.labeled_at: 1 row\(s\) have no time"):
        store.write(labels([("a", True, None)]))
    assert not list(tmp_path.iterdir())
    assert store.write(labels([])) == 0
    assert store.read().columns.tolist() == list(LABEL_COLUMNS)


def transactions(n: int = 1_000) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame(
        {"transaction_id": [f"t-{i}" for i in range(n)], "is_fraud": (rng.random(n) < 0.05).astype("int64")}
    )


def test_delayed_labels_truth_and_time():
    sent = transactions(200)
    result = delayed_labels(sent, sent_at=T0, delay=timedelta(days=3))
    assert list(result.columns) == list(LABEL_COLUMNS)
    assert result["request_id"].tolist() == sent["transaction_id"].tolist()
    assert (result["label"].to_numpy() == sent["is_fraud"].astype(bool).to_numpy()).all()
    assert (result["labeled_at"] == pd.Timestamp(T0 + timedelta(days=3))).all()


def test_flip_fraction_flips_an_exact_count_reproducibly():
    sent = transactions(1_000)
    truth = sent["is_fraud"].astype(bool).to_numpy()
    flipped = delayed_labels(sent, sent_at=T0, delay=timedelta(0), flip_fraction=0.1, seed=7)
    changed = flipped["label"].to_numpy() != truth
    assert changed.sum() == 100
    again = delayed_labels(sent, sent_at=T0, delay=timedelta(0), flip_fraction=0.1, seed=7)
    assert (again["label"] == flipped["label"]).all()
    other = delayed_labels(sent, sent_at=T0, delay=timedelta(0), flip_fraction=0.1, seed=8)
    assert (other["label"].to_numpy() != truth).sum() == 100
    assert not (other["label"] == flipped["label"]).all()
    assert (delayed_labels(sent, sent_at=T0, delay=timedelta(0), flip_fraction=1.0)["label"].to_numpy() != truth).all()


def test_delayed_labels_validation():
    sent = transactions(10)
    with pytest.raises(ValueError, match=r"flip_fraction: expected a number in \[0, 1\], got 1.5"):
        delayed_labels(sent, sent_at=T0, delay=timedelta(0), flip_fraction=1.5)
    with pytest.raises(ValueError, match="delay: expected a non-negative timedelta"):
        delayed_labels(sent, sent_at=T0, delay=timedelta(seconds=-1))
    with pytest.raises(ValueError, match=r"transactions: missing column\(s\) is_fraud"):
        delayed_labels(sent.drop(columns=["is_fraud"]), sent_at=T0, delay=timedelta(0))
