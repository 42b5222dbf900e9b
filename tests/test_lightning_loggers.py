"""logger=csv|mlflow|wandb|many with the real libraries, offline and local (no mocks)."""

import warnings

import pandas as pd
import pytest

from tests.helpers import run

STAGES = {"fold0", "fold1", "final", "summary"}
FIGURES = {"roc.png", "ams_vs_fraction.png", "score_distribution.png"}


def quiet_run(folder, *overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the libraries' own deprecation notices
        return run(folder, "cv.folds=2", *overrides)


def test_csv_logger_writes_one_table_per_stage(tmp_path):
    quiet_run(tmp_path, "logger=csv")
    assert {p.name for p in (tmp_path / "csv").iterdir()} == STAGES
    table = pd.read_csv(tmp_path / "csv" / "fold0" / "metrics.csv")
    assert {"train/loss", "val/loss", "val/ams_max", "epoch"} <= set(table.columns)
    assert table["val/loss"].notna().sum() == 2  # one per epoch
    assert not (tmp_path / "tensorboard").exists()


def mlflow_runs(folder):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("amsaware")
    runs = client.search_runs([experiment.experiment_id])
    return client, {r.info.run_name: r for r in runs}


@pytest.mark.slow
def test_mlflow_gets_a_named_run_per_stage_in_the_run_folder(tmp_path):
    pytest.importorskip("mlflow")
    quiet_run(tmp_path, "logger=mlflow", "finetune=bce", "finetune.max_epochs=1")
    client, runs = mlflow_runs(tmp_path)
    assert set(runs) == STAGES | {"oof"}  # oof: the out-of-fold figures
    assert {r.data.tags["run_dir"] for r in runs.values()} == {str(tmp_path)}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    # The fine-tune continues its fold's run: 2 pretraining epochs + 1 fine-tune epoch.
    history = client.get_metric_history(runs["fold0"].info.run_id, "val/loss")
    assert len(history) == 3
    assert "oof/ams_max" in runs["summary"].data.metrics
    # The figures TensorBoard gets, as PNG artifacts of each fold's and the oof run.
    for stage, prefix in (("fold0", "val"), ("oof", "oof")):
        artifacts = client.list_artifacts(runs[stage].info.run_id, prefix)
        assert {a.path.rsplit("/", 1)[-1] for a in artifacts} == FIGURES


def wandb_runs(folder):
    return sorted((folder / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_wandb_offline_runs_are_distinct_and_named_per_stage(tmp_path):
    pytest.importorskip("wandb")
    for name in ("a", "b"):
        quiet_run(tmp_path / name, "logger=wandb")
    runs = wandb_runs(tmp_path / "a") + wandb_runs(tmp_path / "b")
    assert len(runs) == 2 * len(STAGES | {"oof"})  # oof: the out-of-fold figures
    ids = {path.name.rsplit("-", 1)[-1] for path in runs}
    assert len(ids) == len(runs)  # no run id reused across stages or run folders
    for stage in STAGES:
        holding = [p for p in wandb_runs(tmp_path / "a") if stage.encode() in _record(p)]
        assert holding, stage
    # The figures are images of the fold runs and the oof run.
    images = {p.name.split("_")[0] for p in (tmp_path / "a").rglob("media/images/*/*.png")}
    assert images >= {"roc", "ams"}, images


def _record(run_folder):
    (path,) = run_folder.glob("*.wandb")
    return path.read_bytes()


@pytest.mark.slow
def test_many_loggers_log_every_stage_to_each(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    quiet_run(tmp_path, "logger=many")
    assert {p.name for p in (tmp_path / "tensorboard").iterdir()} >= STAGES | {"oof"}
    assert {p.name for p in (tmp_path / "csv").iterdir()} == STAGES
    assert set(mlflow_runs(tmp_path)[1]) == STAGES | {"oof"}
    assert len(wandb_runs(tmp_path)) == len(STAGES | {"oof"})


def test_parallel_folds_with_two_loggers_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"cv\.parallel=true"):
        quiet_run(tmp_path, "logger=many", "cv.parallel=true")


def test_an_unknown_logger_class_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"logger.tensorboard._target_"):
        quiet_run(tmp_path, "logger.tensorboard._target_=builtins.dict")


def test_a_missing_logger_package_names_the_extra(monkeypatch):
    import sys

    from omegaconf import OmegaConf

    from amsaware.loggers import StageLoggers

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    section = OmegaConf.create({"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger"}})
    with pytest.raises(ModuleNotFoundError, match=r"logger\.wandb .*\[loggers\]"):
        StageLoggers(section)
