"""Settings and events that cannot be meant are refused before any training, by key or row."""

import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from amsaware import experiment
from amsaware.checks import ConfigError, check_config
from amsaware.data.formats import DataFormatError, check_trainable, read_cern, read_kaggle_train
from amsaware.data.sources import opendata
from amsaware.data.synthetic import make_dataset
from tests.conftest import REPO
from tests.helpers import kaggle_frame


def compose_train(tmp_path, *overrides, smoke=True):
    sizes = ["experiment=smoke"] if smoke else []
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *sizes, *overrides])


@pytest.fixture
def no_training(monkeypatch):
    """The run must stop before its first fold: training raises if it is ever reached."""

    def trained(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "cross_validate", trained)
    monkeypatch.setattr(experiment, "final_fit", trained)


PROBES = {
    "no epochs": (["trainer.max_epochs=0"], r"trainer\.max_epochs is 0; expected an integer >= 1"),
    "endless": (["trainer.max_epochs=-1"], r"trainer\.max_epochs is -1"),
    "one fold": (["cv.folds=1"], r"cv\.folds is 1; expected an integer >= 2"),
    "no folds": (["cv.folds=0"], r"cv\.folds is 0; expected an integer >= 2"),
    "half a fold": (["cv.folds=2.5"], r"cv\.folds is 2\.5; expected an integer"),
    "negative lr": (["optimizer.lr=-1"], r"optimizer\.lr is -1; expected a finite learning rate"),
    "zero lr": (["optimizer.lr=0"], r"optimizer\.lr is 0"),
    "negative seed, kaggle": (
        ["seed=-1", "data=kaggle", "~data.n_train", "~data.n_test"],
        r"seed is -1; expected an integer",
    ),
    "negative seed, synthetic": (["seed=-1"], r"seed is -1"),
    "seed too large": (["seed=4294967295"], r"seed is 4294967295"),
    "seed too large for the repeats": (
        ["seed=4294966000", "cv.repeats=3"],
        r"seed is 4294966000; expected an integer from 0 to 4294965293",
    ),
    "misspelt cv key": (["+cv.fold=5"], r"unknown key cv\.fold; cv has folds, parallel"),
    "misspelt cut key": (["+cut.smooth=0.1"], r"unknown key cut\.smooth"),
    "misspelt top-level key": (["+final_fitt=false"], r"unknown top-level key \['final_fitt'\]"),
    "cut of the wrong type": (["cut.min_fraction=low"], r"cut\.min_fraction is 'low'"),
    "overwrite not a bool": (["overwrite=yes"], r"overwrite is 'yes'; expected true or false"),
}


@pytest.mark.parametrize("overrides, message", PROBES.values(), ids=PROBES.keys())
def test_impossible_settings_are_refused_before_training(tmp_path, no_training, overrides, message):
    cfg = compose_train(tmp_path, *overrides)
    with pytest.raises(ConfigError, match=message):
        experiment.run_experiment(cfg)
    assert not list(tmp_path.iterdir())  # not even the run folder's lock


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["cv.folds=2", "cv.parallel=true", "optimizer.lr=1e-4", "seed=0"],
        ["cv.repeats=2", "finetune=ams", "overwrite=true", "threads=1"],
        ["data=opendata", "data.limit=12000"],
        ["data=opendata", "loss=ams", "trainer.max_epochs=1"],
        ["data=samples", "ensemble=both"],
    ],
)
def test_the_shipped_configs_pass(tmp_path, overrides):
    check_config(compose_train(tmp_path, *overrides))


@pytest.mark.slow  # train.py's start; the PROBES above refuse the same key in-process
def test_a_typo_exits_before_hydra_writes_anything(tmp_path):
    """Through train.py: the message names the key and the run folder is never created."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "+cv.fold=5"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "train.py: error: unknown key cv.fold" in done.stderr  # one line, no traceback
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()


# --- events ----------------------------------------------------------------------------------


def kaggle_training(path, n=3000, seed=3):
    return kaggle_frame(make_dataset(n, 0, seed=seed).train, with_labels=True)


def test_one_event_outweighing_its_class_is_named_by_file_and_row(tmp_path, no_training):
    frame = kaggle_training(tmp_path)
    row = int(np.flatnonzero(frame.Label == "b")[5])
    frame.loc[row, "Weight"] = 1e300  # a typo that turned AMS 1.55 into 58.6
    path = tmp_path / "training.csv"
    frame.to_csv(path, index=False)
    message = rf"training\.csv: row {row + 1} \(line {row + 2}, EventId \d+\)"
    with pytest.raises(DataFormatError, match=message + r": weight 1e\+300 is 100\.0% of"):
        check_trainable(read_kaggle_train(path), 3)
    # and through the run: refused before the first fold
    data = ["data=kaggle", f"data.train_path={path}", "data.test_path=null"]
    cfg = compose_train(tmp_path, *data, smoke=False)
    with pytest.raises(DataFormatError, match="more than half of its class's weight"):
        experiment.run_experiment(cfg)


def test_a_weight_a_million_times_the_median_is_refused(tmp_path):
    frame = kaggle_training(tmp_path)
    signal = np.flatnonzero(frame.Label == "s")
    median = frame.Weight[signal].median()
    frame.loc[signal[[3, 8]], "Weight"] = 3e6 * median  # two: neither carries half
    frame.to_csv(tmp_path / "training.csv", index=False)
    table = read_kaggle_train(tmp_path / "training.csv")
    with pytest.raises(DataFormatError, match=rf"row {signal[3] + 1} .*3e\+06 times the median"):
        check_trainable(table, 3)


def test_a_feature_beyond_float32_scaling_is_refused_and_an_outlier_warned(tmp_path):
    frame = kaggle_training(tmp_path)
    frame.loc[17, "PRI_met"] = 1e30  # made every other event's PRI_met constant
    frame.to_csv(tmp_path / "huge.csv", index=False)
    with pytest.raises(DataFormatError, match=r"column 'PRI_met', row 18 \(line 19.*1e\+30"):
        check_trainable(read_kaggle_train(tmp_path / "huge.csv"), 3)
    frame.loc[17, "PRI_met"] = 1e12
    frame.to_csv(tmp_path / "outlier.csv", index=False)
    with pytest.warns(UserWarning, match=r"column 'PRI_met', row 18 .*interquartile ranges"):
        check_trainable(read_kaggle_train(tmp_path / "outlier.csv"), 3)


def test_real_and_synthetic_events_pass_the_event_checks(recwarn):
    for generator in ("copula", "physics"):
        check_trainable(make_dataset(20_000, 0, generator, seed=1).train, 3)
    assert not [w for w in recwarn if "interquartile" in str(w.message)]


def test_the_real_sample_passes_the_event_checks(real_sample, recwarn):
    check_trainable(opendata(real_sample, download=False).train, 3)
    assert not [w for w in recwarn if "interquartile" in str(w.message)]


def cern_file(path, sets):
    frame = kaggle_training(path, n=len(sets))
    frame["KaggleSet"] = sets
    frame["KaggleWeight"] = frame.Weight
    frame.to_csv(path, index=False)
    return frame


def test_cern_rows_keep_their_file_row_through_the_training_subset(tmp_path):
    sets = np.where(np.arange(3000) % 2 == 0, "b", "t")
    frame = cern_file(tmp_path / "cern.csv", sets)
    train = opendata(tmp_path / "cern.csv", download=False).train
    np.testing.assert_array_equal(train.row, np.flatnonzero(sets == "t"))
    np.testing.assert_array_equal(train.event_id, frame.EventId[sets == "t"])
    assert len(read_cern(tmp_path / "cern.csv").row) == 3000


def test_a_cern_file_without_training_rows_says_so(tmp_path):
    cern_file(tmp_path / "cern.csv", np.where(np.arange(300) % 2 == 0, "b", "v"))
    with pytest.raises(DataFormatError, match=r"cern\.csv: column 'KaggleSet': no 't'"):
        opendata(tmp_path / "cern.csv", download=False)


def test_a_directory_as_the_cern_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match=rf"data\.path={tmp_path} is a directory"):
        opendata(tmp_path)
