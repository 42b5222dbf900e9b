"""callbacks=early_stopping: folds stop at their best epoch, the final fit trains their median."""

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from amsaware.experiment import load_dataset
from amsaware.inference import load_stage
from tests.helpers import run

STOP = ["callbacks=early_stopping", "callbacks.progress_bar=null", "trainer.max_epochs=8"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stop") / "run"
    # Patience 1 and a large learning rate: the validation loss turns up within a few epochs.
    metrics = run(
        folder,
        *STOP,
        "callbacks.early_stopping.monitor=val/loss",
        "callbacks.early_stopping.mode=min",
        "callbacks.early_stopping.patience=1",
        "optimizer.lr=0.05",
        "logger=csv",
    )
    return folder, metrics


def test_each_fold_records_its_best_epoch_and_the_final_fit_their_median(stopped):
    folder, metrics = stopped
    section = metrics["early_stopping"]
    epochs = section["fold_epochs"]
    assert set(epochs) == {"fold0", "fold1", "fold2"}
    assert all(1 <= n <= 8 for n in epochs.values())
    median = sorted(epochs.values())[1]
    assert section["final_epochs"] == {"final": median}
    final = pd.read_csv(folder / "csv" / "final" / "metrics.csv")
    assert final["epoch"].max() + 1 == median


def test_the_fold_model_is_its_best_epoch_and_the_checkpoint_agrees(stopped):
    folder, metrics = stopped
    history = pd.read_csv(folder / "csv" / "fold0" / "metrics.csv")
    losses = history["val/loss"].dropna().to_numpy()
    best = int(losses.argmin())
    assert metrics["early_stopping"]["fold_epochs"]["fold0"] == best + 1
    assert history["val/loss_best"].dropna().iloc[-1] == pytest.approx(losses[best], rel=1e-6)
    # It sits on the curve's best point: the epoch axis's step of the best epoch.
    assert history.loc[history["val/loss_best"].notna(), "step"].tolist() == [best]
    # The checkpoint was rewritten after the restore: it scores the fold's events as the
    # restored model did for oof_predictions.csv (the last epoch's weights would not).
    assert best + 1 < len(losses)  # the test needs a fold that trained past its best
    train = load_dataset(OmegaConf.load(folder / ".hydra" / "config.yaml")).train
    oof = pd.read_csv(folder / "oof_predictions.csv")
    rows = oof[oof.fold == 0]
    index = pd.Series(np.arange(len(train)), index=train.event_id)[rows.EventId].to_numpy()
    stage = load_stage(folder, "fold0")
    np.testing.assert_allclose(stage.score(train.features[index]), rows.score, rtol=1e-6)


def test_early_stopping_with_parallel_folds_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"cv\.parallel=false"):
        run(tmp_path, *STOP, "cv.parallel=true")
