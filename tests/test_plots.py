"""Every figure is drawn from constructed predictions and written as a non-empty PNG."""

import numpy as np
import pytest

from amsaware import plots
from amsaware.stats import STATISTICS, RunScores, bootstrap, differences

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    n = 2000
    label = (rng.random(n) < 0.35).astype(np.int64)
    weight = np.where(label == 1, rng.uniform(1e-3, 5e-3, n), rng.uniform(0.5, 3.0, n))
    scores = {
        "bce": 1 / (1 + np.exp(-rng.normal(2.0 * label - 1.0, 1.0))),
        "ams": 1 / (1 + np.exp(-rng.normal(1.5 * label - 0.7, 1.0))),
    }
    return scores, label, weight


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path


def test_every_figure_is_written_as_a_png(predictions, tmp_path):
    scores, label, weight = predictions
    sample = bootstrap(
        [RunScores(name, s, 0.6) for name, s in scores.items()], label, weight, 50, 0
    )
    history = {
        name: {
            f"fold{k}": {"train/loss": [0.6, 0.5, 0.45], "val/ams_max": [1.0, 1.4, 1.5]}
            for k in range(3)
        }
        for name in scores
    }
    figures = {
        "history.png": plots.training_history(history, {"bce": "BCELoss", "ams": "SoftAMSLoss"}),
        "bootstrap.png": plots.bootstrap_differences(
            sample.resampled, differences(sample), STATISTICS
        ),
        "roc.png": plots.roc_curves(scores, label),
        "roc_weighted.png": plots.roc_curves(scores, label, weight),
        "pr.png": plots.precision_recall_curves(scores, label),
        "ams.png": plots.ams_curves(scores, label, weight, {"bce": 0.15, "ams": 0.2}),
        "scores.png": plots.score_distributions(scores, label, weight),
    }
    for name, figure in figures.items():
        assert_png(plots.save(figure, tmp_path / name))
    assert not list(tmp_path.glob("*.tmp"))
    legend = [t.get_text() for t in figures["ams.png"].axes[0].get_legend().get_texts()]
    assert any(text.startswith("bce cut: top 15.0%") for text in legend)


def test_figures_go_to_tensorboard_as_images_and_a_pr_curve(predictions, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    scores, label, weight = predictions
    writer = SummaryWriter(str(tmp_path))
    plots.log_to_tensorboard(writer, "oof/", scores["bce"], label, weight, cut_fraction=0.15)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["images"]) == {"oof/roc", "oof/ams_vs_fraction", "oof/score_distribution"}
    assert "oof/pr_curve" in tags["tensors"]
    image = events.Images("oof/ams_vs_fraction")[0]
    assert image.encoded_image_string.startswith(PNG_MAGIC)


def test_loggers_without_tensorboard_get_nothing(predictions, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    scores, label, weight = predictions
    args = ("val/", scores["bce"], label, weight)
    assert plots.log_to_logger(None, *args) is False
    assert plots.log_to_logger(CSVLogger(str(tmp_path)), *args) is False
