"""End to end: train.py once as a user runs it, then the session's in-process runs (the same
config composed) for its logs, reproducibility, data sources and refusals. The run folder's
contract on a finished run is in test_run_folder.py."""

import json

import numpy as np
import pandas as pd
import pytest
from hydra.errors import InstantiationException

from amsaware.data.formats import DataFormatError
from amsaware.experiment import run_experiment
from tests.helpers import METRIC_NAMES, compose_run, kaggle_frame, run, train


@pytest.fixture(scope="module")
def train_py_run(tmp_path_factory):
    """`python train.py` itself, with helpers.TINY sizes: Hydra's run folder and console.

    Without TensorBoard, whose figures would take most of its time; ams_run, the same run
    in-process, has it.
    """
    run_dir = tmp_path_factory.mktemp("runs") / "ams"
    done = train(run_dir, "loss=ams", "~logger")
    return run_dir, done


def test_train_py_writes_a_whole_run_folder(train_py_run):
    run_dir, _ = train_py_run
    for name in ["metrics.json", "oof_predictions.csv", "test_predictions.csv", "submission.csv"]:
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / ".hydra" / "config.yaml").exists()  # written by Hydra itself
    for stage in ["fold0", "fold1", "fold2", "final"]:
        assert (run_dir / "checkpoints" / stage / "last.ckpt").exists(), stage
    assert not list(run_dir.rglob("*.tmp"))


def test_tensorboard_has_train_loss_and_every_val_metric_per_epoch(ams_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ams_run / "tensorboard" / "fold0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", *(f"val/{name}" for name in METRIC_NAMES)} <= tags
    assert len(events.Scalars("val/loss")) == 2
    assert len(events.Scalars("val/ams_max")) == 2  # one per epoch
    # The x axis is the epoch, so folds and the final fit align.
    assert [e.step for e in events.Scalars("val/ams_max")] == [0, 1]
    final = EventAccumulator(str(ams_run / "tensorboard" / "final"))
    final.Reload()
    assert [e.step for e in final.Scalars("train/loss")] == [0, 1]


def test_same_command_gives_the_same_metrics(bce_run, tmp_path):
    # Exact by construction: the same config, seeds, threads and machine run the same operations.
    second = run(tmp_path / "again", "~logger")
    first = json.loads((bce_run / "metrics.json").read_text())
    first.pop("run"), second.pop("run")
    assert first == second


def test_lightning_lines_are_not_printed_twice(train_py_run):
    _, done = train_py_run
    output = done.stdout + done.stderr
    assert "Tip:" not in output
    assert output.count("fold0 [1/3]: training on") == 1


def test_bad_config_key_fails_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"cut\.min_fraction"):
        run_experiment(compose_run(tmp_path, "cut.min_fraction=0.9"))


def test_missing_kaggle_file_is_named(tmp_path):
    cfg = compose_run(tmp_path, "data=kaggle", f"data.train_path={tmp_path}/nope.csv", tiny=False)
    # Hydra's instantiate wraps the source's DataFormatError, message and all.
    with pytest.raises(
        (DataFormatError, InstantiationException), match=r"nope\.csv: file not found"
    ):
        run_experiment(cfg)


def write_kaggle_files(folder, n_train=1500, n_test=900):
    """Kaggle-format copies of synthetic events: training.csv.gz and a plain test.csv."""
    from amsaware.data.synthetic import make_dataset

    dataset = make_dataset(n_train, n_test, seed=3)
    kaggle_frame(dataset.train, with_labels=True).to_csv(folder / "training.csv.gz", index=False)
    kaggle_frame(dataset.test).to_csv(folder / "test.csv", index=False)
    return dataset


def test_kaggle_files_train_and_write_a_submission(tmp_path):
    dataset = write_kaggle_files(tmp_path)
    run_dir = tmp_path / "run"
    run(
        run_dir,
        "loss=ams",
        "data=kaggle",
        f"data.train_path={tmp_path}/training.csv.gz",
        f"data.test_path={tmp_path}/test.csv",
        "trainer.max_epochs=2",
        "~logger",
        tiny=False,
    )
    submission = pd.read_csv(run_dir / "submission.csv")
    assert submission.EventId.tolist() == dataset.test.event_id.tolist()
    assert set(submission.Class) == {"s", "b"}
    assert "test" not in json.loads((run_dir / "metrics.json").read_text())  # no test labels


def test_opendata_file_with_only_training_rows_says_it_has_no_test(real_sample, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run(
        run_dir,
        "data=opendata",
        f"data.path={real_sample}",
        "loss=ams",
        "trainer.max_epochs=1",
        "~logger",
        tiny=False,
    )
    assert "no test events to score" in caplog.text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test" not in metrics and metrics["run"]["n_train"] == 12_000
    assert not (run_dir / "submission.csv").exists()


@pytest.mark.slow
def test_bce_model_on_the_real_sample_reaches_the_papers_auc(real_sample, tmp_path):
    """The paper's BCE configuration, 3 folds x 10 epochs on 12k real events."""
    run_dir = tmp_path / "run"
    run(run_dir, "data=opendata", f"data.path={real_sample}", "final_fit=false", tiny=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["cv"]["oof"]["oof/auroc"] > 0.85


def test_a_run_without_a_final_fit_generates_no_test_events():
    from omegaconf import OmegaConf

    from amsaware.experiment import load_dataset

    source = {"_target_": "amsaware.data.sources.synthetic", "n_train": 600, "n_test": 550}
    cfg = OmegaConf.create({"final_fit": False, "data": {**source, "seed": 1, "batch_size": 64}})
    trial = load_dataset(cfg)
    assert trial.test is None
    cfg.final_fit = True
    full = load_dataset(cfg)
    assert len(full.test) == 550
    np.testing.assert_array_equal(trial.train.features, full.train.features)
