"""The late-label store (as-of reads, latest label wins, atomic files) and the synthetic source's labels."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ml_platform.cli import app
from ml_platform.monitoring.labels import (
    LABEL_COLUMNS,
    MAX_NAMED_PROBLEMS,
    LabelImport,
    LabelStore,
    LabelValidationError,
    delayed_labels,
    inbox_files,
    read_label_file,
    validate_labels,
)

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
runner = CliRunner()


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


# ---- labels from outside: rules, all or nothing, last wins, as_of ------------------------------------------
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


def test_rows_accept_ids_label_spellings_and_times():
    frame = validate_labels(
        [
            {"request_id": "r-1", "label": 1},  # no time: now
            {"transaction_id": "tx-2", "label": "Fraud ", "labelled_at": "2026-05-09T10:00:00+02:00"},
            {"transaction_id": 123, "label": False, "labelled_at": "2026-05-09"},  # an integer id, a naive day
            {"request_id": "r-4", "transaction_id": "r-4", "label": "legit", "labeled_at": "2026-05-10T12:04:00Z"},
            {"request_id": "", "transaction_id": "tx-5", "label": "TRUE", "labelled_at": None},
            {"request_id": "r-6", "label": 0.0, "labelled_at": ""},
        ],
        now=NOW,
    )
    assert frame["request_id"].tolist() == ["r-1", "tx-2", "123", "r-4", "tx-5", "r-6"]
    assert frame["label"].tolist() == [True, True, False, False, True, False]
    assert frame["labeled_at"].tolist() == [
        pd.Timestamp(NOW),
        pd.Timestamp("2026-05-09T08:00:00Z"),
        pd.Timestamp("2026-05-09T00:00:00Z"),
        pd.Timestamp("2026-05-10T12:04:00Z"),  # 4 minutes ahead: within the clock tolerance
        pd.Timestamp(NOW),
        pd.Timestamp(NOW),
    ]
    assert str(frame["labeled_at"].dt.tz) == "UTC"


def test_a_bad_batch_names_every_bad_row_and_writes_nothing(tmp_path):
    store = LabelStore(tmp_path)
    rows = [
        {"request_id": "ok-1", "label": 1},
        {"label": 1},
        {"request_id": "ok-3", "label": 2},
        {"request_id": "ok-4", "label": "maybe"},
        {"request_id": "ok-5", "label": 0, "labelled_at": "yesterday"},
        {"request_id": "ok-6", "label": 0, "labelled_at": "2026-05-10T12:06:00Z"},
        {"request_id": "a", "transaction_id": "b", "label": 0},
        {"request_id": "x" * 201, "label": 0},
        {"request_id": True, "label": 0},
        "not a row",
    ]
    with pytest.raises(LabelValidationError) as refused:
        store.import_labels(rows, now=NOW)
    error = refused.value
    assert [(p.index, p.column) for p in error.problems] == [
        (1, None),
        (2, "label"),
        (3, "label"),
        (4, "labelled_at"),
        (5, "labelled_at"),
        (6, None),
        (7, "request_id"),
        (8, "request_id"),
        (9, None),
    ]
    message = str(error)
    assert message.startswith("9 of 10 label row(s) refused, none written: row 2: no request_id or transaction_id")
    assert "row 3: label: expected 1/0, true/false or fraud/legit, got 2" in message
    assert "row 4: label: expected 1/0, true/false or fraud/legit, got 'maybe'" in message
    assert "row 5: labelled_at: expected an ISO 8601 time" in message
    assert "row 6: labelled_at: 2026-05-10T12:06:00+00:00 is in the future" in message
    assert "row 7: request_id 'a' and transaction_id 'b' differ" in message
    assert "row 8: request_id: expected at most 200 characters, got 201" in message
    assert "row 10: expected an object of named values, got 'not a row'" in message
    assert store.files() == []  # the good first row was not written either
    assert store.read(as_of=NOW).empty


def test_a_refusal_names_at_most_the_limit_and_counts_the_rest():
    rows = [{"request_id": f"r{i}", "label": 7} for i in range(MAX_NAMED_PROBLEMS + 5)]
    with pytest.raises(LabelValidationError) as refused:
        validate_labels(rows, now=NOW, source="inbox/chargebacks.csv")
    assert len(refused.value.problems) == MAX_NAMED_PROBLEMS
    assert refused.value.refused == MAX_NAMED_PROBLEMS + 5
    assert str(refused.value).startswith(f"inbox/chargebacks.csv: {MAX_NAMED_PROBLEMS + 5} of {MAX_NAMED_PROBLEMS + 5}")
    assert str(refused.value).endswith("; and 5 more")


def test_a_frame_without_the_columns_is_refused_naming_them():
    with pytest.raises(LabelValidationError, match=r"no request_id or transaction_id column; got \['id', 'y'\]"):
        validate_labels(pd.DataFrame({"id": ["a"], "y": [1]}), now=NOW)
    with pytest.raises(LabelValidationError, match=r"no label column"):
        validate_labels(pd.DataFrame({"request_id": ["a"]}), now=NOW)


def test_import_counts_new_changed_and_positives_and_the_latest_label_wins(tmp_path):
    store = LabelStore(tmp_path)
    first = store.import_labels(
        [
            {"request_id": "a", "label": 0, "labelled_at": "2026-05-01T10:00:00Z"},
            {"request_id": "b", "label": 1, "labelled_at": "2026-05-01T10:00:00Z"},
            {"request_id": "c", "label": 0, "labelled_at": "2026-05-01T10:00:00Z"},
        ],
        now=NOW,
    )
    assert first == LabelImport(rows=3, requests=3, new=3, changed=0, positives=1)
    second = store.import_labels(
        [
            {"request_id": "a", "label": 1, "labelled_at": "2026-05-08T09:00:00Z"},  # overturned: changed
            {"request_id": "b", "label": 0, "labelled_at": "2026-04-30T00:00:00Z"},  # older than b's: ignored
            {"request_id": "c", "label": 0, "labelled_at": "2026-05-09T00:00:00Z"},  # confirmed: not changed
            {"request_id": "d", "label": "fraud"},
            {"request_id": "d", "label": "legit"},  # same time, arrived later in the batch: wins
        ],
        now=NOW,
    )
    assert second == LabelImport(rows=5, requests=4, new=1, changed=1, positives=1)
    known = store.read(as_of=NOW)
    assert dict(zip(known["request_id"], known["label"], strict=True)) == {
        "a": True,
        "b": True,
        "c": False,
        "d": False,
    }
    assert len(known) == 4  # one row per request: nothing counted twice
    # as of a time before the review, the label then known
    earlier = store.read(as_of=datetime(2026, 5, 5, tzinfo=UTC))
    assert dict(zip(earlier["request_id"], earlier["label"], strict=True)) == {"a": False, "b": True, "c": False}
    only = store.read(as_of=NOW, request_ids=["a", "zz"])
    assert only["request_id"].tolist() == ["a"]


def test_a_batch_written_again_replaces_its_files(tmp_path):
    store = LabelStore(tmp_path)
    store.write(labels([("keep", True, T0)]))
    day = [{"request_id": "x", "label": 1, "labelled_at": "2026-05-01T00:00:00Z"}]
    day.append({"request_id": "y", "label": 0, "labelled_at": "2026-05-02T00:00:00Z"})  # another day folder
    assert store.import_labels(day, batch="inbox-2026-05-09", now=NOW).new == 2
    assert len(store.batch_files("inbox-2026-05-09")) == 2
    corrected = [{"request_id": "x", "label": 0, "labelled_at": "2026-05-01T00:00:00Z"}]
    again = store.import_labels(corrected, batch="inbox-2026-05-09", now=NOW)
    assert again == LabelImport(rows=1, requests=1, new=0, changed=1, positives=0, replaced_files=2)
    assert len(store.batch_files("inbox-2026-05-09")) == 1
    known = store.read(as_of=T0)  # y went with the replaced import; other writes are untouched
    assert dict(zip(known["request_id"], known["label"], strict=True)) == {"x": False, "keep": True}
    with pytest.raises(ValueError, match="batch: expected"):
        store.write(labels([("z", True, T0)]), batch="../escape")


def test_label_files_csv_and_parquet_and_the_days_inbox(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "2026-05-09").mkdir(parents=True)
    (inbox / "chargebacks-2026-05-09.csv").write_text(
        "transaction_id,label,labelled_at,note\ntx-1,1,2026-05-08T10:00:00Z,card stolen\n007,0,,\n"
    )
    pd.DataFrame({"request_id": ["r-9"], "label": [True]}).to_parquet(inbox / "2026-05-09" / "reviews.parquet")
    (inbox / "chargebacks-2026-05-10.csv").write_text("transaction_id,label\ntx-2,1\n")  # another day
    (inbox / "notes-2026-05-09.txt").write_text("not labels")
    files = inbox_files(inbox, "2026-05-09")
    assert [p.name for p in files] == ["chargebacks-2026-05-09.csv", "reviews.parquet"]
    csv = validate_labels(read_label_file(files[0]), now=NOW)
    assert csv["request_id"].tolist() == ["tx-1", "007"]  # read as text: the leading zero kept
    assert csv["labeled_at"].tolist() == [pd.Timestamp("2026-05-08T10:00:00Z"), pd.Timestamp(NOW)]
    store = LabelStore(tmp_path / "store")
    assert store.import_files(files, now=NOW) == LabelImport(rows=3, requests=3, new=3, changed=0, positives=2)
    with pytest.raises(ValueError, match=r"notes-2026-05-09.txt: expected a .csv or .parquet label file"):
        read_label_file(inbox / "notes-2026-05-09.txt")
    broken = inbox / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"broken.parquet: not a readable parquet file"):
        read_label_file(broken)


def test_files_of_one_import_are_all_or_nothing(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("request_id,label\na,1\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nb,1\nc,yes\n")
    store = LabelStore(tmp_path / "store")
    with pytest.raises(
        LabelValidationError, match=r"bad.csv: 1 of 2 label row\(s\) refused, none written: row 2: label"
    ):
        store.import_files([good, bad], now=NOW)
    assert store.files() == []


# ---- ml-platform labels import ----------------------------------------------------------------------------
def test_the_labels_import_command(tmp_path):
    home = tmp_path / "home"
    env = {"ML_PLATFORM_HOME": str(home)}
    good = tmp_path / "reviews.csv"
    good.write_text("request_id,label,labelled_at\nr-1,fraud,2026-05-01T00:00:00Z\nr-2,0,2026-05-01T00:00:00Z\n")
    result = runner.invoke(app, ["labels", "import", str(good)], env=env)
    assert result.exit_code == 0, result.output
    assert "2 label row(s) written" in result.output
    assert "2 request(s), 2 new, 0 changed, 1 positive (fraud)" in result.output

    overturned = tmp_path / "overturned.parquet"
    pd.DataFrame({"transaction_id": ["r-1"], "label": [False], "labelled_at": ["2026-05-03T00:00:00Z"]}).to_parquet(
        overturned
    )
    result = runner.invoke(app, ["labels", "import", str(overturned), "--json"], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert {k: answer[k] for k in ("rows", "requests", "new", "changed", "positives")} == {
        "rows": 1,
        "requests": 1,
        "new": 0,
        "changed": 1,
        "positives": 0,
    }
    store = LabelStore(answer["store"])
    assert store.root == home / "monitoring" / "labels"  # the store live_performance reads
    assert dict(zip(store.read()["request_id"], store.read()["label"], strict=True)) == {"r-1": False, "r-2": False}

    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nr-3,1\n,1\nr-5,perhaps\n")
    result = runner.invoke(app, ["labels", "import", str(bad)], env=env)
    assert result.exit_code == 2
    assert "2 of 3 label row(s) refused, none written: row 2: no request_id or transaction_id; row 3: label" in (
        result.stderr
    )
    result = runner.invoke(app, ["labels", "import", str(bad), "--json"], env=env)
    assert result.exit_code == 2
    assert json.loads(result.stdout)["refused"] == [
        {"row": 2, "column": None, "reason": "no request_id or transaction_id"},
        {"row": 3, "column": "label", "reason": "expected 1/0, true/false or fraud/legit, got 'perhaps'"},
    ]
    assert len(store.read()) == 2  # r-3 was not written either
    result = runner.invoke(app, ["labels", "import", str(tmp_path / "missing.csv")], env=env)
    assert result.exit_code == 2
    assert "missing.csv: no such file" in result.stderr
