"""data=opendata data.limit=N: the CERN file's first N events, and only a positive N."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from amsaware.data.formats import read_cern
from amsaware.data.sources import opendata
from amsaware.experiment import load_dataset

REPO = Path(__file__).resolve().parents[1]


def assert_same_events(table, reference, rows: slice) -> None:
    np.testing.assert_array_equal(table.event_id, reference.event_id[rows])
    np.testing.assert_array_equal(table.features, reference.features[rows])
    np.testing.assert_array_equal(table.label, reference.label[rows])
    np.testing.assert_array_equal(table.weight, reference.weight[rows])
    np.testing.assert_array_equal(table.kaggle_set, reference.kaggle_set[rows])


def test_limit_keeps_the_first_events_of_the_file(real_sample):
    everything = read_cern(real_sample)

    limited = opendata(real_sample, download=False, limit=100)

    assert limited.test is None  # the sample's events are all of KaggleSet t
    assert_same_events(limited.train, everything, slice(0, 100))


def test_limit_beyond_the_file_reads_all_of_it(real_sample):
    dataset = opendata(real_sample, download=False, limit=50_000)

    assert len(dataset.train) == 12_000


def test_limit_applies_before_the_split_into_kaggle_sets(real_sample, tmp_path):
    """The first N rows of the file, whatever their set: a leaderboard row past N is not read."""
    frame = pd.read_csv(real_sample, dtype=str, nrows=120)
    frame.loc[60:89, "KaggleSet"] = "b"
    frame.loc[90:, "KaggleSet"] = "v"
    path = tmp_path / "mixed.csv.gz"
    frame.to_csv(path, index=False)
    everything = read_cern(path)

    only_training = opendata(path, download=False, limit=60)
    with_public = opendata(path, download=False, limit=75)

    assert only_training.test is None
    assert_same_events(only_training.train, everything, slice(0, 60))
    assert_same_events(with_public.train, everything, slice(0, 60))
    assert_same_events(with_public.test, everything, slice(60, 75))


@pytest.mark.parametrize("limit", [0, -5, 1.5, "12000", True])
def test_a_limit_that_is_not_a_positive_integer_is_refused_before_any_download(tmp_path, limit):
    absent = tmp_path / "not-downloaded.csv.gz"

    with pytest.raises(ValueError, match=r"data\.limit must be a positive integer") as err:
        opendata(absent, download=True, url="http://127.0.0.1:9/never", limit=limit)

    assert repr(limit) in str(err.value)
    assert not absent.exists()


def compose_train(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_data_limit_is_a_key_of_the_opendata_config(real_sample):
    cfg = compose_train(["data=opendata", f"data.path={real_sample}", "data.limit=250"])

    dataset = load_dataset(cfg)

    assert len(dataset.train) == 250
    assert dataset.train.event_id[0] == 100_000 and dataset.train.event_id[-1] == 100_249


def test_a_bad_data_limit_on_the_command_line_names_the_key(tmp_path):
    cfg = compose_train(
        ["data=opendata", f"data.path={tmp_path / 'absent.csv.gz'}", "data.limit=twelve"]
    )

    with pytest.raises(Exception, match=r"data\.limit must be a positive integer.*'twelve'"):
        load_dataset(cfg)
