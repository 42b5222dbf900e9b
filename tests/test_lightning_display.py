"""What the console and the curves say while a run trains: stage names, val/loss, the clock."""

import logging
import warnings

import lightning as L
import pytest
import torch

from amsaware.data.datamodule import HiggsDataModule
from amsaware.loggers import describe_run
from amsaware.losses import BCELoss, SoftAMSLoss
from amsaware.model import MLP, SignificanceClassifier
from amsaware.progress import RunClock, StageProgressBar, format_seconds, stage_label
from tests.helpers import compose_run, quiet_trainer


def test_stage_labels_keep_the_folder_names_and_count_from_one():
    assert stage_label("fold0", 3) == "fold0 [1/3]"
    assert stage_label("fold5", 6, "finetune=ams") == "fold5 [6/6] finetune=ams"
    assert stage_label("final", 3) == "final"
    assert stage_label("final", 3, "pretrain") == "final pretrain"
    assert stage_label(["fold0", "fold1", "fold2"], 3) == "fold0-2 [3/3 at once]"


def fit_one(table, loss, bar, epochs=2):
    datamodule = HiggsDataModule(
        table, 256, 0, train_index=range(2000), val_index=range(2000, 3000)
    )
    L.seed_everything(0, verbose=False)
    net = MLP(len(table.feature_names), 1, 8, 0.0)
    module = SignificanceClassifier(net, loss, lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer = quiet_trainer(epochs, [bar], enable_progress_bar=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
    return module, trainer, datamodule


def test_the_bar_names_the_stage_and_shows_loss_and_ams_not_v_num(small_table):
    import numpy as np

    table = small_table
    bar = StageProgressBar(stage="fold1 [2/3]")
    module, trainer, _ = fit_one(table, BCELoss(), bar)
    assert bar.train_progress_bar.desc.startswith("fold1 [2/3] epoch 2/2")
    shown = bar.get_metrics(trainer, module)
    assert "v_num" not in shown
    assert {"train/loss", "val/ams_max"} <= set(shown)
    assert np.isfinite(float(shown["train/loss"]))


def test_val_loss_is_the_loss_of_the_whole_validation_fold(small_table):
    """The soft AMS of the whole fold's weights, not a mean of per-batch values (with raw
    weights a batch's soft AMS is that of a small fraction of the fold's yields)."""
    loss = SoftAMSLoss(normalisation="raw")
    module, trainer, datamodule = fit_one(small_table, loss, StageProgressBar(), epochs=1)
    x, y, w = datamodule.val_tensors
    module.eval()
    with torch.no_grad():
        expected = float(loss(module.net(x), y, w))
        per_batch = [
            float(loss(module.net(x[i : i + 256]), y[i : i + 256], w[i : i + 256]))
            for i in range(0, len(x), 256)
        ]
    logged = float(trainer.callback_metrics["val/loss"])
    assert logged == pytest.approx(expected, rel=1e-4)
    assert abs(logged) > 1.5 * abs(sum(per_batch) / len(per_batch))


def test_the_clock_logs_each_stage_and_estimates_the_rest(caplog):
    now = [100.0]
    clock = RunClock(n_fold_models=3, n_folds=3, final=True, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="amsaware.progress"):
        now[0] = 110.0
        left = clock.stage_done("fold0 [1/3]")
        assert left == pytest.approx(10.0 * (2 + 1.5))  # two folds and a final of 1.5 folds
        now[0] = 130.0
        assert clock.stage_done("fold1 [2/3]") == pytest.approx(15.0 * 2.5)
        now[0] = 140.0
        clock.stage_done("fold2 [3/3]")
        now[0] = 155.0
        assert clock.stage_done("final", final=True) == 0.0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[1] == "fold1 [2/3] done in 20 s; run: 30 s elapsed, about 38 s left"
    assert lines[3].startswith("final done in 15 s; run: 55 s elapsed")


def test_format_seconds():
    assert format_seconds(42.4) == "42 s"
    assert format_seconds(185) == "3 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"


def test_the_run_line_shows_what_loss_ams_silently_sets(tmp_path):
    line = describe_run(compose_run(tmp_path, "loss=ams", "finetune=ams"))
    assert "loss=SoftAMSLoss" in line or "loss=ams" in line
    assert "model=MLP(2x448" in line
    assert "lr=0.00107956" in line and "dropout=0.186578" in line
    assert "batch=256" in line
    assert "epochs=2" in line
    assert "finetune=" in line and "data=" in line


def test_epoch_lines_log_one_line_per_epoch_with_this_epochs_metrics(small_table, caplog):
    """Where no terminal shows the bar: one line per epoch, with the epoch's own train/loss
    (Lightning calls the module's on_train_epoch_end, which logs it, after the callbacks')."""
    from amsaware.progress import EpochLines, show_bar

    lines = EpochLines(stage="fold0 [1/3]")
    with caplog.at_level(logging.INFO, logger="amsaware.progress"):
        _, trainer, _ = fit_one(small_table, BCELoss(), lines, epochs=3)
    said = [r.getMessage() for r in caplog.records if r.name == "amsaware.progress"]
    assert [line.split(":")[0] for line in said] == [f"fold0 [1/3] epoch {k}/3" for k in (1, 2, 3)]
    losses = [float(line.split("train/loss ")[1].split(",")[0]) for line in said]
    assert losses[-1] == pytest.approx(float(trainer.callback_metrics["train/loss"]), rel=1e-3)
    assert len(set(losses)) == 3  # each line its own epoch's loss, the first one included
    assert "val/ams_max" in said[-1] and "\r" not in "".join(said)
    assert show_bar(True) and not show_bar(False)
