"""The readers accept the three formats and reject each kind of bad input with one clear error."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amsaware.data import formats
from amsaware.data.formats import (
    DataFormatError,
    check_trainable,
    read_cern,
    read_kaggle_test,
    read_kaggle_train,
)
from amsaware.data.schema import FEATURES, NEEDS_ONE_JET, NEEDS_TWO_JETS, EventTable

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/atlas-higgs-sample.csv.gz"

READERS = {"train": read_kaggle_train, "test": read_kaggle_test, "cern": read_cern}


def valid_frame(kind: str = "cern", n: int = 8, seed: int = 0) -> pd.DataFrame:
    """A small, valid frame in the column layout of `kind` ("train", "test" or "cern")."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"EventId": np.arange(100_000, 100_000 + n)})
    for name in FEATURES:
        df[name] = rng.normal(50.0, 10.0, n).round(3)
    jets = np.arange(n) % 4
    df["PRI_jet_num"] = jets
    df.loc[jets < 1, list(NEEDS_ONE_JET)] = -999.0
    df.loc[jets < 2, list(NEEDS_TWO_JETS)] = -999.0
    df.loc[0, "DER_mass_MMC"] = -999.0
    if kind == "test":
        return df
    df["Weight"] = rng.uniform(0.001, 5.0, n)
    df["Label"] = np.where(np.arange(n) % 2 == 0, "s", "b")
    if kind == "cern":
        df["KaggleSet"] = "t"
        df["KaggleWeight"] = df["Weight"] * 3.0
    return df


def write(df: pd.DataFrame, path: Path) -> Path:
    """Write `df` as the challenge files are written: CSV, gzipped where the name ends in .gz."""
    df.to_csv(path, index=False, compression="gzip" if path.suffix == ".gz" else None)
    return path


def with_cell(df: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    """A copy of `df` with one cell replaced by any value (the column becomes object dtype)."""
    df = df.copy()
    df[column] = df[column].astype(object)
    df.loc[row, column] = value
    return df


def assert_names(err: pytest.ExceptionInfo, path: Path, column: str | None, row: int) -> str:
    """The message names the file, the column and the data row (with its line number)."""
    message = str(err.value)
    assert str(path) in message
    if column is not None:
        assert repr(column) in message
    assert f"row {row} (line {row + 1})" in message
    return message


# --- valid input ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize("kind", ["train", "test", "cern"])
def test_reads_plain_and_gzip(tmp_path, kind, suffix):
    df = valid_frame(kind)
    path = write(df, tmp_path / f"{kind}{suffix}")

    table = READERS[kind](path)

    assert isinstance(table, EventTable)
    assert len(table) == len(df)
    assert table.source == str(path)
    assert table.feature_names == FEATURES
    assert table.event_id.dtype == np.int64
    np.testing.assert_array_equal(table.event_id, df["EventId"])
    assert table.features.dtype == np.float32
    assert table.features.shape == (len(df), len(FEATURES))
    expected = df[list(FEATURES)].to_numpy(dtype=np.float32)
    expected[expected == -999.0] = np.nan
    np.testing.assert_array_equal(table.features, expected)
    if kind == "test":
        assert table.label is None and table.weight is None and not table.labelled
    else:
        assert table.label.dtype == np.int8
        np.testing.assert_array_equal(table.label, (df["Label"] == "s").astype(np.int8))
        assert table.weight.dtype == np.float64
    if kind == "cern":
        np.testing.assert_array_equal(table.weight, df["KaggleWeight"])
        assert table.kaggle_set.dtype == np.dtype("<U1")
        assert set(table.kaggle_set) == {"t"}
    else:
        assert table.kaggle_set is None


def test_missing_marker_becomes_nan(tmp_path):
    table = read_kaggle_train(write(valid_frame("train"), tmp_path / "train.csv"))

    jets = table.features[:, FEATURES.index("PRI_jet_num")]
    two_jet_columns = [FEATURES.index(c) for c in NEEDS_TWO_JETS]
    assert np.isnan(table.features[jets < 2][:, two_jet_columns]).all()
    assert not np.isnan(table.features[jets == 3]).any()
    assert np.isnan(table.features[0, FEATURES.index("DER_mass_MMC")])
    assert not (table.features == -999.0).any()


def test_gzip_is_detected_by_content_not_suffix(tmp_path):
    path = tmp_path / "training.dat"
    path.write_bytes(gzip.compress(valid_frame("train").to_csv(index=False).encode()))

    assert len(read_kaggle_train(path)) == 8


def test_columns_may_come_in_any_order(tmp_path):
    df = valid_frame("cern")
    path = write(df[df.columns[::-1]], tmp_path / "reversed.csv")

    table = read_cern(path)

    np.testing.assert_array_equal(table.event_id, df["EventId"])
    assert table.features[1, 0] == np.float32(df.loc[1, FEATURES[0]])


def test_cern_weight_column_is_selectable(tmp_path):
    df = valid_frame("cern")
    path = write(df, tmp_path / "cern.csv")

    np.testing.assert_array_equal(read_cern(path, weight_column="Weight").weight, df["Weight"])
    with pytest.raises(ValueError, match="weight_column"):
        read_cern(path, weight_column="Label")


def test_shared_real_sample_reads():
    if not SHARED_SAMPLE.exists():
        pytest.skip(f"shared sample absent: {SHARED_SAMPLE}")

    table = read_cern(SHARED_SAMPLE)

    assert len(table) == 12_000
    assert set(table.kaggle_set) == {"t"}
    assert table.event_id[0] == 100_000 and table.event_id[-1] == 111_999
    assert set(np.unique(table.label)) == {0, 1}
    assert np.isnan(table.features).any()
    check_trainable(table, n_folds=3)


# --- bad input -----------------------------------------------------------------------------


def test_file_not_found(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataFormatError, match="file not found") as err:
        read_kaggle_train(path)
    assert str(path) in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataFormatError, match="empty") as err:
        read_cern(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_header_only(tmp_path, suffix):
    path = write(valid_frame("train").iloc[:0], tmp_path / f"header{suffix}")
    with pytest.raises(DataFormatError, match="no data rows") as err:
        read_kaggle_train(path)
    assert str(path) in str(err.value)


def test_missing_and_extra_columns_are_listed(tmp_path):
    df = valid_frame("train").drop(columns=["DER_pt_h", "Weight"]).assign(Extra=1.0)
    path = write(df, tmp_path / "train.csv")
    with pytest.raises(DataFormatError) as err:
        read_kaggle_train(path)
    message = str(err.value)
    assert str(path) in message
    assert "missing columns ['DER_pt_h', 'Weight']" in message
    assert "unexpected columns ['Extra']" in message
    assert "Kaggle training file" in message


def test_repeated_column(tmp_path):
    path = tmp_path / "train.csv"
    text = valid_frame("train").to_csv(index=False)
    header, rest = text.split("\n", 1)
    path.write_text(header + ",Label\n" + rest.replace("\n", ",s\n"))
    with pytest.raises(DataFormatError, match=r"repeated columns \['Label'\]"):
        read_kaggle_train(path)


def test_wrong_format_says_which_reader_fits(tmp_path):
    path = write(valid_frame("cern"), tmp_path / "cern.csv")
    with pytest.raises(DataFormatError) as err:
        read_kaggle_train(path)
    message = str(err.value)
    assert "unexpected columns ['KaggleSet', 'KaggleWeight']" in message
    assert "looks like a CERN Open Data file" in message and "read_cern" in message


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("DER_mass_vis", "abc", "non-numeric value 'abc'"),
        ("PRI_tau_pt", "nan", "non-numeric value 'nan'"),
        ("EventId", "12x", "non-numeric value '12x'"),
        ("EventId", "1.5", "non-numeric value '1.5'"),
        ("EventId", "", "empty value"),
        ("Weight", "heavy", "non-numeric value 'heavy'"),
        ("KaggleWeight", "NA", "non-numeric value 'NA'"),
    ],
)
def test_non_numeric_value(tmp_path, suffix, column, value, problem):
    path = write(with_cell(valid_frame("cern"), 5, column, value), tmp_path / f"cern{suffix}")
    with pytest.raises(DataFormatError, match=re.escape(problem)) as err:
        read_cern(path)
    assert_names(err, path, column, row=6)


def test_non_numeric_value_located_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_CHUNK_ROWS", 4)
    df = with_cell(valid_frame("cern", n=20), 13, "PRI_met", "oops")
    path = write(df, tmp_path / "cern.csv")
    with pytest.raises(DataFormatError, match="non-numeric value 'oops'") as err:
        read_cern(path)
    assert_names(err, path, "PRI_met", row=14)


def test_first_offending_row_wins(tmp_path):
    df = with_cell(valid_frame("cern"), 6, "DER_mass_MMC", "late")
    df = with_cell(df, 2, "PRI_met", "early")
    path = write(df, tmp_path / "cern.csv")
    with pytest.raises(DataFormatError, match="'early'") as err:
        read_cern(path)
    assert_names(err, path, "PRI_met", row=3)


@pytest.mark.parametrize(("value", "problem"), [("", "empty or NaN"), ("inf", "infinite")])
def test_feature_must_be_finite(tmp_path, value, problem):
    path = write(with_cell(valid_frame("test"), 3, "DER_pt_tot", value), tmp_path / "test.csv")
    with pytest.raises(DataFormatError, match=problem) as err:
        read_kaggle_test(path)
    assert_names(err, path, "DER_pt_tot", row=4)


@pytest.mark.parametrize("value", ["x", "S", "1", ""])
def test_label_must_be_s_or_b(tmp_path, value):
    path = write(with_cell(valid_frame("train"), 2, "Label", value), tmp_path / "train.csv")
    with pytest.raises(DataFormatError, match="'s' \\(signal\\) or 'b'") as err:
        read_kaggle_train(path)
    assert_names(err, path, "Label", row=3)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "empty or NaN weight"), ("inf", "infinite weight"), ("-0.5", "negative weight -0.5")],
)
@pytest.mark.parametrize(("kind", "column"), [("train", "Weight"), ("cern", "KaggleWeight")])
def test_weight_must_be_finite_and_non_negative(tmp_path, kind, column, value, problem):
    path = write(with_cell(valid_frame(kind), 4, column, value), tmp_path / f"{kind}.csv")
    with pytest.raises(DataFormatError, match=problem) as err:
        READERS[kind](path)
    assert_names(err, path, column, row=5)


def test_duplicate_event_ids_name_both_rows(tmp_path):
    df = valid_frame("train")
    df.loc[6, "EventId"] = df.loc[1, "EventId"]
    path = write(df, tmp_path / "train.csv")
    with pytest.raises(DataFormatError) as err:
        read_kaggle_train(path)
    message = str(err.value)
    assert str(path) in message and "'EventId'" in message
    assert "rows 2 (line 3) and 7 (line 8) both have EventId 100001" in message


@pytest.mark.parametrize("value", ["4", "1.5", "-1", "-999.0"])
def test_jet_num_must_be_integer_0_to_3(tmp_path, value):
    path = write(with_cell(valid_frame("test"), 1, "PRI_jet_num", value), tmp_path / "test.csv")
    with pytest.raises(DataFormatError, match=r"an integer in 0\.\.3") as err:
        read_kaggle_test(path)
    assert_names(err, path, "PRI_jet_num", row=2)


def test_unknown_kaggle_set(tmp_path):
    path = write(with_cell(valid_frame("cern"), 7, "KaggleSet", "x"), tmp_path / "cern.csv")
    with pytest.raises(DataFormatError, match=r"value 'x'.*one of t/b/v/u") as err:
        read_cern(path)
    assert_names(err, path, "KaggleSet", row=8)


@pytest.mark.parametrize("row", [1, 5])
def test_row_with_too_many_fields(tmp_path, row):
    lines = valid_frame("train").to_csv(index=False).splitlines(keepends=True)
    lines[row] = lines[row].replace("\n", ",7\n")
    path = tmp_path / "train.csv"
    path.write_text("".join(lines))
    with pytest.raises(DataFormatError, match=r"more fields|has 34 fields; expected 33") as err:
        read_kaggle_train(path)
    assert_names(err, path, None, row=row)


def test_blank_line_is_reported_where_it_is(tmp_path):
    lines = valid_frame("train").to_csv(index=False).splitlines(keepends=True)
    path = tmp_path / "train.csv"
    path.write_text("".join([*lines[:4], "\n", *lines[4:]]))
    with pytest.raises(DataFormatError, match="blank") as err:
        read_kaggle_train(path)
    assert_names(err, path, None, row=4)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(valid_frame("cern", n=2000).to_csv(index=False).encode())
    path = tmp_path / "cern.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="truncated or corrupt") as err:
        read_cern(path)
    assert str(path) in str(err.value)


def test_non_utf8_bytes_are_located(tmp_path):
    lines = valid_frame("train").to_csv(index=False).encode().splitlines(keepends=True)
    lines[3] = lines[3].replace(b",s\n", b",\xe9\n").replace(b",b\n", b",\xe9\n")
    path = tmp_path / "train.csv"
    path.write_bytes(b"".join(lines))
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        read_kaggle_train(path)
    assert_names(err, path, "Label", row=3)


def test_binary_file_is_not_a_csv(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(DataFormatError, match="not a text CSV"):
        read_kaggle_test(path)


# --- trainability --------------------------------------------------------------------------


def test_check_trainable_accepts_enough_of_each_class(tmp_path):
    table = read_kaggle_train(write(valid_frame("train", n=6), tmp_path / "train.csv"))
    check_trainable(table, n_folds=3)


@pytest.mark.parametrize("label", ["s", "b"])
def test_check_trainable_rejects_an_absent_class(tmp_path, label):
    path = write(valid_frame("train").assign(Label=label), tmp_path / "train.csv")
    table = read_kaggle_train(path)
    with pytest.raises(DataFormatError, match=r"no .* events") as err:
        check_trainable(table, n_folds=3)
    assert str(path) in str(err.value)


def test_check_trainable_needs_n_folds_of_each_class(tmp_path):
    df = valid_frame("train", n=6)
    df["Label"] = ["s", "s", "b", "b", "b", "b"]
    path = write(df, tmp_path / "train.csv")
    table = read_kaggle_train(path)
    check_trainable(table, n_folds=2)
    with pytest.raises(DataFormatError, match=r"only 2 signal .* 3-fold") as err:
        check_trainable(table, n_folds=3)
    assert str(path) in str(err.value)


def test_check_trainable_needs_positive_class_weight(tmp_path):
    df = valid_frame("train")
    df.loc[df["Label"] == "b", "Weight"] = 0.0
    table = read_kaggle_train(write(df, tmp_path / "train.csv"))
    with pytest.raises(DataFormatError, match="sum to 0"):
        check_trainable(table, n_folds=3)


def test_check_trainable_rejects_unlabelled(tmp_path):
    path = write(valid_frame("test"), tmp_path / "test.csv")
    with pytest.raises(DataFormatError, match="no Label/Weight") as err:
        check_trainable(read_kaggle_test(path), n_folds=3)
    assert str(path) in str(err.value)
