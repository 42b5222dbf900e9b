"""RunFolder in process: every writer's file reads back, every refusal names its file, and no
write leaves a half-written file behind (docs/run-folder.md)."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from amsaware.data.preprocessing import FittedPreprocessing
from amsaware.run_folder import (
    Cut,
    FoldScores,
    RunFolder,
    RunFolderError,
    SavePreprocessing,
    atomic_path,
    events_digest,
    fold_stage,
    read_json,
    scorers_of,
    submission_frame,
    write_json,
)
from tests.helpers import METRIC_NAMES, N_TEST, N_TRAIN

CONFIG = """\
seed: 1
model:
  _target_: amsaware.model.MLP
  n_layers: 2
  hidden_size: ${width}
  dropout: 0.0
width: 8
data:
  _target_: amsaware.data.sources.synthetic
  n_train: 100
  n_test: 0
  seed: 3
cv:
  folds: 3
  repeats: 2
ensemble: both
final_fit: true
loss:
  _target_: amsaware.losses.BCELoss
"""


def stats(n: int = 3) -> FittedPreprocessing:
    names = tuple(f"f{k}" for k in range(n))
    return FittedPreprocessing(names, np.arange(n, dtype=float), np.ones(n), np.full(n, 2.0))


def cut(**thresholds) -> Cut:
    return Cut(0.2, 0.7, 3.1, 3.0, 0.85, **thresholds)


@pytest.fixture
def run(tmp_path) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    (run.path / ".hydra").mkdir(parents=True)
    run.config_path.write_text(CONFIG)
    return run


def finished(run: RunFolder, stages=("fold0", "final")) -> RunFolder:
    """The run with a checkpoint and preprocessing per stage and its metrics.json."""
    for stage in stages:
        run.write_checkpoint(stage, nn.Linear(3, 1))
        run.write_preprocessing(stage, stats())
    run.write_metrics(
        {"cut": cut(threshold_final=0.9).to_dict(), "data": {"s_tot": 2.0, "b_tot": 5.0}}
    )
    return run


# --- names ---------------------------------------------------------------------------------


def test_the_layout_is_the_contracts(run):
    p = run.path
    assert run.metrics_path == p / "metrics.json"
    assert run.oof_path == p / "oof_predictions.csv"
    assert run.checkpoint_path("fold2") == p / "checkpoints/fold2/last.ckpt"
    assert run.preprocessing_path("final") == p / "checkpoints/final/preprocessing.json"
    assert run.test_predictions_path() == p / "test_predictions.csv"
    assert run.test_predictions_path(primary=False) == p / "test_predictions_folds.csv"
    assert run.submission_path(primary=False) == p / "submission_folds.csv"
    assert run.pretrain.path == p / "pretrain"
    assert run.onnx_path("final") == p / "model.onnx"
    assert run.onnx_path("folds") == p / "model_folds.onnx"
    assert fold_stage(4) == "fold4"
    assert scorers_of("both") == ("final", "folds") and scorers_of("folds") == ("folds",)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        scorers_of("median")


# --- atomic writes -------------------------------------------------------------------------


def test_a_written_file_gets_the_permissions_of_a_new_file(tmp_path):
    path = write_json({"a": 1.0}, tmp_path / "metrics.json")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_writer_interrupted_midway_keeps_the_previous_file(run, monkeypatch):
    run.write_oof_predictions(*[np.arange(3)] * 5)
    before = run.oof_path.read_bytes()

    def fail(self, path, **kwargs):
        Path(path).write_text("EventId,fo")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail)
    with pytest.raises(KeyboardInterrupt):
        run.write_oof_predictions(*[np.arange(4)] * 5)
    assert run.oof_path.read_bytes() == before
    assert sorted(p.name for p in run.path.iterdir()) == [".hydra", "oof_predictions.csv"]


def test_a_directory_as_the_destination_is_named(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path}: is a directory"):
        write_json({"a": 1.0}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"{blocker}/metrics\.json: cannot write it"):
        write_json({"a": 1.0}, blocker / "metrics.json")


def test_only_the_main_process_writes(run, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    run.write_metrics({"cut": cut().to_dict()})
    run.write_checkpoint("final", nn.Linear(3, 1))
    run.write_oof_predictions(*[np.arange(3)] * 5)
    assert sorted(p.name for p in run.path.iterdir()) == [".hydra"]


# --- round trips ---------------------------------------------------------------------------


def test_metrics_and_cut_round_trip(run):
    written = cut(threshold_final=0.91, threshold_logit_final=2.3, threshold_folds=0.8)
    metrics = {"cut": written.to_dict(), "cv": {"oof": {"oof/auroc": 0.8}}}
    run.write_metrics(metrics)
    assert run.metrics() == metrics  # no stage files yet: nothing recorded
    assert run.cut() == written
    assert "threshold_logit_folds" not in metrics["cut"]  # absent, not null
    assert run.totals() == (691.988607712, 410999.847322)  # before totals were recorded


def test_totals_round_trip(run):
    run.write_metrics({"cut": cut().to_dict(), "data": {"s_tot": 2.5, "b_tot": 7.0}})
    assert run.totals() == (2.5, 7.0)


def test_predictions_and_submission_round_trip(run):
    ids = np.array([5, 1, 3])
    score = np.array([0.2, 0.9, 0.5])
    logit = np.log(score / (1 - score))
    run.write_oof_predictions(
        ids, np.array([0, 1, 2]), np.array([0, 1, 1]), np.ones(3), score, logit
    )
    oof = run.oof_predictions()
    assert list(oof.columns) == ["EventId", "fold", "label", "weight", "score", "logit"]
    assert oof.EventId.tolist() == [1, 3, 5]  # EventId order
    np.testing.assert_allclose(oof.score, [0.9, 0.5, 0.2], rtol=1e-15)
    for primary in (True, False):
        run.write_test_predictions(ids, score, logit, primary)
        frame = run.test_predictions(primary)
        assert frame.EventId.tolist() == [5, 1, 3]  # as written
        np.testing.assert_allclose(frame.logit, logit, rtol=1e-15)
        selected = np.array([False, True, True])
        run.write_submission(ids, logit, selected, primary)
        pd.testing.assert_frame_equal(
            run.submission(primary), submission_frame(ids, logit, selected)
        )


def test_stage_files_round_trip_and_are_recorded(run):
    net = nn.Linear(3, 1)
    run.write_checkpoint("fold0", net)
    run.write_preprocessing("fold0", stats())
    run.write_metrics({"cut": cut().to_dict()})
    recorded = read_json(run.metrics_path)["stages"]["fold0"]
    assert recorded["checkpoint"]["path"] == "checkpoints/fold0/last.ckpt"
    assert recorded["preprocessing"]["path"] == "checkpoints/fold0/preprocessing.json"
    weights = run.checkpoint("fold0")
    assert set(weights) == {"weight", "bias"}
    torch.testing.assert_close(weights["weight"], net.weight.detach(), rtol=0, atol=0)
    assert run.preprocessing("fold0").to_dict() == stats().to_dict()
    assert run.has_checkpoint("fold0") and not run.has_checkpoint("final")


def test_the_config_reads_as_checked_plain_values(run):
    cfg = run.config()
    assert cfg.model.architecture == "amsaware.model.MLP"
    assert cfg.model.options == {"n_layers": 2, "hidden_size": 8, "dropout": 0.0}
    assert (cfg.folds, cfg.repeats, cfg.ensemble, cfg.final_fit) == (3, 2, "both", True)
    assert cfg.fold_stages == [f"fold{k}" for k in range(6)]
    assert cfg.default_scorer == "final"
    assert run.loss_name() == "BCELoss"


def test_the_preprocessing_callback_writes_through_the_run_folder(run, small_table):
    from types import SimpleNamespace

    from amsaware.data.datamodule import HiggsDataModule

    datamodule = HiggsDataModule(small_table, 64, 0)
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True)
    SavePreprocessing(run.stage_dir("fold1")).on_fit_start(trainer, None)
    saved = run.preprocessing("fold1")
    assert saved.to_dict() == datamodule.fitted_preprocessing.to_dict()
    with pytest.raises(TypeError, match="needs a HiggsDataModule"):
        SavePreprocessing(run.stage_dir("fold2")).on_fit_start(
            SimpleNamespace(datamodule=object(), is_global_zero=True), None
        )


# --- the cut -------------------------------------------------------------------------------


def test_the_cut_selects_on_each_scorers_scale():
    scores = np.array([0.95, 0.9, 0.8, 0.6, 0.1])
    logits = np.log(scores / (1 - scores))
    c = cut(threshold_final=0.9, threshold_folds=0.75)
    assert c.select(scores, "final", "threshold").tolist() == [1, 1, 0, 0, 0]
    assert c.select(scores, "folds", "threshold").tolist() == [1, 1, 1, 0, 0]
    assert c.select(scores, "final", "fraction", logits).tolist() == [1, 0, 0, 0, 0]
    # Without a folds threshold the fold ensemble uses the out-of-fold one (0.7 / logit 0.85).
    assert cut().thresholds("folds") == (0.7, 0.85)
    assert cut().select(scores, "folds", "threshold", logits).tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(RunFolderError, match="final model has no score threshold"):
        cut().select(scores, "final", "threshold")
    with pytest.raises(ValueError, match="cut must be one of"):
        c.select(scores, "final", "median")


def test_a_scorers_threshold_is_its_lowest_selected_test_score():
    scores = np.array([0.3, 0.9, 0.6])
    c = cut().with_test_selection("folds", scores, np.array([False, True, True]), None)
    assert c.thresholds("folds") == (0.6, 0.85)
    assert cut().with_test_selection("final", scores, np.zeros(3, bool), None) == cut()


# --- refusals, each naming the file ---------------------------------------------------------


def test_a_missing_folder_and_missing_files_are_named(run, tmp_path):
    with pytest.raises(RunFolderError, match="nowhere: no such run folder"):
        RunFolder(tmp_path / "nowhere").metrics()
    with pytest.raises(RunFolderError, match=r"no metrics\.json; the run did not finish"):
        run.metrics()
    with pytest.raises(RunFolderError, match=rf"{run.oof_path} is missing"):
        run.oof_predictions()
    with pytest.raises(RunFolderError, match=r"no submission_folds\.csv"):
        run.submission(primary=False)
    run.config_path.unlink()
    with pytest.raises(RunFolderError, match=r"no \.hydra/config\.yaml; not a run folder"):
        run.config()
    with pytest.raises(RunFolderError, match=r"no checkpoints/fold0/last\.ckpt"):
        run.checkpoint("fold0")
    with pytest.raises(RunFolderError, match=r"no checkpoints/fold0/preprocessing\.json"):
        run.preprocessing("fold0")


@pytest.mark.parametrize("text", ['{"cut": ', "\xff\xfe", "[1, 2]"])
def test_corrupt_metrics_json_is_named_as_corrupt(run, text):
    run.metrics_path.write_bytes(text.encode("latin-1"))
    with pytest.raises(RunFolderError, match=rf"{run.metrics_path}: corrupt"):
        run.metrics()


@pytest.mark.parametrize(
    "key, value",
    [
        ("fraction", 0.0),
        ("fraction", 1.5),
        ("threshold", "high"),
        ("threshold_final", float("nan")),
        ("threshold_folds", -0.1),
        ("threshold_logit_final", float("inf")),
        ("threshold", True),
    ],
)
def test_a_cut_out_of_range_is_refused_by_key(run, key, value):
    run.write_metrics({"cut": cut().to_dict() | {key: value}})
    with pytest.raises(RunFolderError, match=rf"metrics\.json: cut\.{key} is .*expected"):
        run.cut()


def test_a_metrics_json_without_a_cut_is_refused(run):
    run.write_metrics({"cv": {}})
    with pytest.raises(RunFolderError, match=r"metrics\.json: corrupt, no cut\.fraction"):
        run.metrics()


def test_damaged_totals_are_refused(run):
    run.write_metrics({"cut": cut().to_dict(), "data": {"s_tot": -1.0, "b_tot": 5.0}})
    with pytest.raises(RunFolderError, match=r"metrics\.json: data\.s_tot is -1\.0"):
        run.totals()


@pytest.mark.parametrize(
    "content, message",
    [
        ("EventId,fold,label,weight\n1,0,1,1.0\n", "has columns"),
        ("EventId,fold,label,weight,score\n1,0,1,1.0,nan\n", "'score' is not a finite number"),
        ('"unclosed\n', "corrupt, not a CSV"),
    ],
)
def test_damaged_predictions_are_named(run, content, message):
    run.oof_path.write_text(content)
    with pytest.raises(RunFolderError, match=rf"{run.oof_path}.*{message}"):
        run.oof_predictions()


def test_a_damaged_submission_is_named(run):
    run.submission_path().write_text("EventId,RankOrder,Class\n1,1,s\n2,1,b\n")
    with pytest.raises(RunFolderError, match=r"submission\.csv: RankOrder is not a permutation"):
        run.submission()


def test_a_corrupt_checkpoint_is_named_without_torchs_advice(run):
    run.checkpoint_path("final").parent.mkdir(parents=True)
    run.checkpoint_path("final").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(RunFolderError, match=r"final/last\.ckpt: corrupt or not a checkpoint") as e:
        run.checkpoint("final")
    assert "weights_only" not in str(e.value)
    torch.save({"state_dict": {"net.w": "code"}}, run.checkpoint_path("final"))
    with pytest.raises(RunFolderError, match=r"last\.ckpt: corrupt, no state_dict of tensors"):
        run.checkpoint("final")


def test_a_checkpoint_holding_code_is_refused_and_never_run(run, tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    run.checkpoint_path("final").parent.mkdir(parents=True)
    run.checkpoint_path("final").write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(RunFolderError, match="corrupt or not a checkpoint"):
        run.checkpoint("final")
    assert not marker.exists()


def test_a_second_checkpoint_beside_the_first_is_refused(run):
    finished(run)
    (run.stage_dir("final") / "last-v1.ckpt").write_bytes(b"")
    with pytest.raises(RunFolderError, match=r"holds \['last-v1\.ckpt'\] beside last\.ckpt"):
        run.checkpoint("final")


def test_damaged_preprocessing_is_named(run):
    finished(run)
    path = run.preprocessing_path("final")
    data = json.loads(path.read_text())
    data["features"][1]["scale"] = 0.0
    path.write_text(json.dumps(data))
    with pytest.raises(RunFolderError, match=r"final/preprocessing\.json: feature 'f1'"):
        run.preprocessing("final")
    path.write_text("{")
    with pytest.raises(RunFolderError, match=r"final/preprocessing\.json: corrupt, not valid JSON"):
        run.preprocessing("final")


def test_a_file_changed_after_the_run_is_refused(run):
    finished(run)
    run.write_checkpoint("final", nn.Linear(3, 1))  # other weights, same shapes
    with pytest.raises(RunFolderError, match=r"final/last\.ckpt: not the file the run's metrics"):
        run.checkpoint("final")
    run.write_preprocessing("fold0", stats(4))
    with pytest.raises(RunFolderError, match=r"fold0/preprocessing\.json: not the file the run"):
        run.preprocessing("fold0")


def test_the_tools_load_the_recorded_files_and_no_others(run):
    finished(run)
    metrics = read_json(run.metrics_path)
    # A stage metrics.json does not record is not loaded, even where its files lie.
    run.write_checkpoint("fold1", nn.Linear(3, 1))
    assert not run.has_checkpoint("fold1")
    with pytest.raises(RunFolderError, match=r"no checkpoints/fold1/last\.ckpt"):
        run.checkpoint("fold1")
    # A record pointing outside checkpoints/ is refused.
    metrics["stages"]["final"]["checkpoint"]["path"] = "../../elsewhere/last.ckpt"
    run.metrics_path.write_text(json.dumps(metrics))
    with pytest.raises(RunFolderError, match=r"stages\.final\.checkpoint: path .* not a file"):
        run.checkpoint("final")


def test_a_finished_folder_without_the_record_is_refused_not_loaded_unchecked(run):
    # Issue 25: loading by the fixed names turned the sha256 check off, unnoticed.
    finished(run)
    metrics = read_json(run.metrics_path)
    del metrics["stages"]
    run.metrics_path.write_text(json.dumps(metrics))
    with pytest.raises(RunFolderError, match=r"metrics\.json: records no stages .*train the run"):
        run.checkpoint("final")
    with pytest.raises(RunFolderError, match=r"records no stages .*fold0/"):
        run.preprocessing("fold0")


# --- a finished fold's scores, for resume ---------------------------------------------------


def test_fold_scores_round_trip_with_their_dtypes(run):
    scores = FoldScores(
        np.array([4, 0, 2]),
        np.array([0.5, -1.0, 3.0], dtype=np.float32),
        events_digest(np.arange(3)),
        np.array([1.0, 2.0], dtype=np.float32),
        np.array([0.1, 0.2, 0.3], dtype=np.float32),
    )
    assert run.fold_scores("fold0") is None  # not finished
    run.write_fold_scores("fold0", scores)
    back = run.fold_scores("fold0")
    assert back.events == scores.events
    for name in ("val_index", "val_logits", "test_logits", "pretrain_logits"):
        assert getattr(back, name).dtype == getattr(scores, name).dtype, name
        np.testing.assert_array_equal(getattr(back, name), getattr(scores, name))
    run.write_fold_scores("fold1", FoldScores(np.array([1]), np.array([0.0]), "x"))
    assert run.fold_scores("fold1").test_logits is None
    assert run.fold_scores("fold1").metrics == {}


def test_fold_scores_keep_the_metrics_that_need_the_network(run):
    """val/sigma_mu scores shifted events with the fold's network: a resumed run reads it back
    instead of losing it (NaN, a fold too small for the fit's bins, survives)."""
    metrics = {"val/sigma_mu": 0.41, "val/sigma_mu_stat": float("nan")}
    run.write_fold_scores("fold0", FoldScores(np.array([1]), np.array([0.0]), "x", metrics=metrics))
    back = run.fold_scores("fold0").metrics
    assert back["val/sigma_mu"] == pytest.approx(0.41) and np.isnan(back["val/sigma_mu_stat"])


@pytest.mark.parametrize("record", ['{"sigma_mu": 1.0}', '{"val/x": "1"}', "[1]", "{"])
def test_fold_scores_with_a_malformed_metrics_record_are_named(run, record):
    path = run.fold_scores_path("fold2")
    path.parent.mkdir(parents=True)
    arrays = {"val_index": np.array([0]), "val_logits": np.array([0.0]), "events": np.array("x")}
    arrays |= {"files": np.array("{}"), "metrics": np.array(record)}
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(RunFolderError, match=r"'metrics' is not a record"):
        run.fold_scores("fold2")


@pytest.mark.parametrize(
    "arrays",
    [
        {"val_index": np.array([0, 1]), "val_logits": np.array([0.0]), "events": np.array("x")},
        {"val_index": np.array([0]), "val_logits": np.array([np.nan]), "events": np.array("x")},
        {"val_index": np.array([0]), "events": np.array("x")},
        {"val_index": np.array([0]), "val_logits": np.array(["a"]), "events": np.array("x")},
    ],
)
def test_damaged_fold_scores_are_named(run, arrays):
    path = run.fold_scores_path("fold2")
    path.parent.mkdir(parents=True)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(RunFolderError, match=r"fold2/fold_scores\.npz: corrupt"):
        run.fold_scores("fold2")


def test_fold_scores_holding_objects_are_refused_unread(run):
    path = run.fold_scores_path("fold0")
    path.parent.mkdir(parents=True)
    with path.open("wb") as handle:
        np.savez(handle, val_index=np.array([object()], dtype=object))
    with pytest.raises(RunFolderError, match=r"fold_scores\.npz: corrupt, not a fold's scores"):
        run.fold_scores("fold0")


def test_clearing_a_stage_removes_its_checkpoint_and_logger_folders_only(run):
    finished(run, stages=("fold0", "fold1"))
    for logger in ("tensorboard", "csv"):
        (run.path / logger / "fold1").mkdir(parents=True)
        (run.path / logger / "fold1" / "events").write_text("half")
    run.clear_stage("fold1")
    assert not run.stage_dir("fold1").exists()
    assert not (run.path / "tensorboard" / "fold1").exists()
    assert not (run.path / "csv" / "fold1").exists()
    assert run.checkpoint_path("fold0").is_file() and run.metrics_path.is_file()
    run.clear_stage("fold7")  # nothing there: nothing to do


# --- the contract on a finished run: the session's ams_run (helpers.TINY, loss=ams) ---------


def test_a_finished_run_holds_every_artifact(ams_run):
    for name in ["metrics.json", "oof_predictions.csv", "test_predictions.csv", "submission.csv"]:
        assert (ams_run / name).stat().st_size > 0, name
    assert (ams_run / ".hydra" / "config.yaml").exists()
    for stage in ["fold0", "fold1", "fold2", "final"]:
        assert list((ams_run / "tensorboard" / stage).glob("events.out.tfevents.*")), stage
        assert (ams_run / "checkpoints" / stage / "last.ckpt").exists(), stage
    assert not list(ams_run.rglob("*.tmp"))


def test_metrics_json_follows_the_contract(ams_run):
    metrics = json.loads((ams_run / "metrics.json").read_text())
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
    run_dir = ams_run
    n_train, n_test = N_TRAIN, N_TEST
    metrics = json.loads((run_dir / "metrics.json").read_text())
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    assert list(oof.columns) == ["EventId", "fold", "label", "weight", "score", "logit"]
    assert len(oof) == n_train and oof.EventId.is_unique
    assert set(oof.fold) == {0, 1, 2} and oof.score.between(0, 1).all()
    test = pd.read_csv(run_dir / "test_predictions.csv")
    assert list(test.columns) == ["EventId", "score", "logit"] and len(test) == n_test
    submission = pd.read_csv(run_dir / "submission.csv")
    assert list(submission.columns) == ["EventId", "RankOrder", "Class"]
    assert sorted(submission.RankOrder) == list(range(1, n_test + 1))
    n_signal = (submission.Class == "s").sum()
    assert n_signal == pytest.approx(metrics["cut"]["fraction"] * n_test, abs=1)
    signal_ranks = submission.loc[submission.Class == "s", "RankOrder"]
    assert signal_ranks.min() == n_test - n_signal + 1


class Linear(nn.Linear):
    """A second architecture, registered only in the test below."""

    def __init__(self, n_features: int, bias: int) -> None:
        super().__init__(n_features, 1, bias=bool(bias))


def test_one_architecture_registry_serves_checkpoints_and_run_folders(run, monkeypatch):
    """`model.NETS` is the allowlist of both: registering a network there (class and option
    types) is what lets a run folder's config name it and a checkpoint rebuild it."""
    from amsaware import model

    target = f"{__name__}.Linear"
    config = run.config_path.read_text()
    run.config_path.write_text(
        config.replace("_target_: amsaware.model.MLP", f"_target_: {target}").replace(
            "  n_layers: 2\n  hidden_size: ${width}\n  dropout: 0.0\n", "  bias: 1\n"
        )
    )
    with pytest.raises(RunFolderError, match=r"not a known architecture.*amsaware\.model\.MLP"):
        run.config()
    with pytest.raises(ValueError, match=r"net\.class must be one of"):
        model.build_net({"class": "Linear", "n_features": 3, "bias": 1})

    monkeypatch.setitem(model.NETS, "Linear", model.Architecture(Linear, {"bias": int}))
    spec = run.config().model
    assert (spec.architecture, spec.options) == (target, {"bias": 1})
    assert isinstance(spec.build(n_features=3), Linear)
    assert isinstance(model.build_net({"class": "Linear", "n_features": 3, "bias": 1}), Linear)
    run.config_path.write_text(run.config_path.read_text().replace("bias: 1", "bias: 0.5"))
    with pytest.raises(RunFolderError, match=r"model\.bias is 0\.5; expected an integer"):
        run.config()
