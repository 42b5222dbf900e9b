"""End to end through the real train.py: every artifact and metric name of DESIGN.md."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

METRIC_NAMES = [
    "auroc",
    "auroc_weighted",
    "accuracy",
    "ams@0.5",
    "ams@15%",
    "ams_max",
    "ams_max_threshold",
]
TINY = [
    "experiment=smoke",
    "data.n_train=1500",
    "data.n_test=1100",
    "trainer.log_every_n_steps=1",
]


def train(run_dir, *overrides, tiny=True):
    sizes = TINY if tiny else []
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *sizes, *overrides]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ams_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "ams"
    done = train(run_dir, "loss=ams")
    return run_dir, done


def test_run_folder_holds_every_artifact(ams_run):
    run_dir, _ = ams_run
    for name in ["metrics.json", "oof_predictions.csv", "test_predictions.csv", "submission.csv"]:
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / ".hydra" / "config.yaml").exists()
    for stage in ["fold0", "fold1", "fold2", "final"]:
        assert list((run_dir / "tensorboard" / stage).glob("events.out.tfevents.*")), stage
        assert (run_dir / "checkpoints" / stage / "last.ckpt").exists(), stage
    assert not list(run_dir.rglob("*.tmp"))


def test_metrics_json_follows_the_contract(ams_run):
    metrics = json.loads((ams_run[0] / "metrics.json").read_text())
    folds = metrics["cv"]["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    for name in METRIC_NAMES:
        assert all(f"val/{name}" in f for f in folds)
        assert f"val/{name}" in metrics["cv"]["mean"] and f"val/{name}" in metrics["cv"]["std"]
        assert f"oof/{name}" in metrics["cv"]["oof"]
        assert f"test/{name}" in metrics["test"]
    assert 0.05 <= metrics["cut"]["fraction"] <= 0.5
    assert 0.0 <= metrics["cut"]["threshold"] <= 1.0
    for name in ["test/ams", "test/ams_public", "test/ams_private"]:
        assert metrics["test"][name] >= 0.0


def test_predictions_and_submission_follow_the_contract(ams_run):
    run_dir, _ = ams_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    assert list(oof.columns) == ["EventId", "fold", "label", "weight", "score", "logit"]
    assert len(oof) == 1500 and oof.EventId.is_unique
    assert set(oof.fold) == {0, 1, 2} and oof.score.between(0, 1).all()
    test = pd.read_csv(run_dir / "test_predictions.csv")
    assert list(test.columns) == ["EventId", "score", "logit"] and len(test) == 1100
    submission = pd.read_csv(run_dir / "submission.csv")
    assert list(submission.columns) == ["EventId", "RankOrder", "Class"]
    assert sorted(submission.RankOrder) == list(range(1, 1101))
    n_signal = (submission.Class == "s").sum()
    assert n_signal == pytest.approx(metrics["cut"]["fraction"] * 1100, abs=1)
    signal_ranks = submission.loc[submission.Class == "s", "RankOrder"]
    assert signal_ranks.min() == 1100 - n_signal + 1


def test_tensorboard_has_train_loss_and_every_val_metric_per_epoch(ams_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ams_run[0] / "tensorboard" / "fold0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", *(f"val/{name}" for name in METRIC_NAMES)} <= tags
    assert len(events.Scalars("val/loss")) == 2
    assert len(events.Scalars("val/ams_max")) == 2  # one per epoch
    # The x axis is the epoch, so folds and the final fit align.
    assert [e.step for e in events.Scalars("val/ams_max")] == [0, 1]
    final = EventAccumulator(str(ams_run[0] / "tensorboard" / "final"))
    final.Reload()
    assert [e.step for e in final.Scalars("train/loss")] == [0, 1]


def test_same_command_gives_the_same_metrics(ams_run, tmp_path):
    run_dir, _ = ams_run
    train(tmp_path / "again", "loss=ams")
    first = json.loads((run_dir / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    first.pop("run"), second.pop("run")
    assert first == second


def test_lightning_lines_are_not_printed_twice(ams_run):
    _, done = ams_run
    output = done.stdout + done.stderr
    assert "Tip:" not in output
    assert output.count("fold0 [1/3]: training on") == 1


def test_bad_config_key_fails_with_a_clear_error(tmp_path):
    command = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={tmp_path}",
        *TINY,
        "cut.min_fraction=0.9",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "cut.min_fraction" in done.stderr


def test_missing_kaggle_file_is_named(tmp_path):
    command = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={tmp_path}",
        "data=kaggle",
        f"data.train_path={tmp_path}/nope.csv",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "nope.csv" in done.stderr


def write_kaggle_files(folder, n_train=1500, n_test=900):
    """Kaggle-format copies of synthetic events: training.csv.gz and a plain test.csv."""
    from amsaware.data.schema import FEATURES
    from amsaware.data.synthetic import make_dataset

    dataset = make_dataset(n_train, n_test, seed=3)

    def frame(table):
        features = pd.DataFrame(table.features, columns=list(FEATURES)).fillna(-999.0)
        features["PRI_jet_num"] = features["PRI_jet_num"].astype(int)
        return pd.concat([pd.DataFrame({"EventId": table.event_id}), features], axis=1)

    train = frame(dataset.train)
    train["Weight"] = dataset.train.weight
    train["Label"] = pd.Series(dataset.train.label).map({1: "s", 0: "b"})
    train.to_csv(folder / "training.csv.gz", index=False)
    frame(dataset.test).to_csv(folder / "test.csv", index=False)
    return dataset


def test_kaggle_files_train_and_write_a_submission(tmp_path):
    dataset = write_kaggle_files(tmp_path)
    run_dir = tmp_path / "run"
    train(
        run_dir,
        "loss=ams",
        "data=kaggle",
        f"data.train_path={tmp_path}/training.csv.gz",
        f"data.test_path={tmp_path}/test.csv",
        "trainer.max_epochs=2",
        tiny=False,
    )
    submission = pd.read_csv(run_dir / "submission.csv")
    assert submission.EventId.tolist() == dataset.test.event_id.tolist()
    assert set(submission.Class) == {"s", "b"}
    assert "test" not in json.loads((run_dir / "metrics.json").read_text())  # no test labels


def test_opendata_file_with_only_training_rows_says_it_has_no_test(real_sample, tmp_path):
    run_dir = tmp_path / "run"
    done = train(
        run_dir,
        "data=opendata",
        f"data.path={real_sample}",
        "loss=ams",
        "trainer.max_epochs=1",
        tiny=False,
    )
    assert "no test events to score" in done.stderr + done.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test" not in metrics and metrics["run"]["n_train"] == 12_000
    assert not (run_dir / "submission.csv").exists()


def test_bce_model_on_the_real_sample_reaches_the_papers_auc(real_sample, tmp_path):
    """The paper's BCE configuration, 3 folds x 10 epochs on 12k real events."""
    run_dir = tmp_path / "run"
    train(run_dir, "data=opendata", f"data.path={real_sample}", "final_fit=false", tiny=False)
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
