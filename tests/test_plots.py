"""Every figure is drawn from constructed predictions and written as a non-empty PNG."""

from pathlib import Path

import numpy as np
import pytest

from amsaware import plots
from amsaware.data.weights import rescaled_weights
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
        "pr_weighted.png": plots.precision_recall_curves(scores, label, weight),
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


def test_loggers_without_figures_get_nothing(predictions, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    scores, label, weight = predictions
    args = ("val/", scores["bce"], label, weight)
    assert plots.log_to_logger(None, *args) is False
    assert plots.log_to_logger(CSVLogger(str(tmp_path)), *args) is False


@pytest.mark.filterwarnings("ignore:.*noload.*")  # inside mlflow's own SQLAlchemy store
def test_mlflow_gets_the_figures_as_png_artifacts(predictions, tmp_path):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    scores, label, weight = predictions
    logger = MLFlowLogger(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_location=str(tmp_path / "mlartifacts"),  # else ./mlruns in the working folder
        run_name="fold0",
    )
    assert plots.log_to_logger([logger], "val/", scores["bce"], label, weight) is True
    artifacts = logger.experiment.list_artifacts(logger.run_id, "val")
    names = {a.path for a in artifacts}
    assert names == {"val/roc.png", "val/ams_vs_fraction.png", "val/score_distribution.png"}
    local = logger.experiment.download_artifacts(logger.run_id, "val/roc.png", str(tmp_path))
    assert Path(local).read_bytes().startswith(PNG_MAGIC)


def weighted_truth(scores, label, weight, threshold, totals=plots.TOTALS_DEFAULT):
    """Signal and background yields (rescaled to totals) of `score >= threshold`, by hand."""
    signal = label == 1
    w = np.where(signal, weight * totals[0] / weight[signal].sum(), 0.0)
    w += np.where(~signal, weight * totals[1] / weight[~signal].sum(), 0.0)
    chosen = scores >= threshold
    return w[chosen & signal].sum(), w[chosen & ~signal].sum()


def test_pr_counts_are_weighted_yields_at_each_threshold(predictions):
    scores, label, weight = predictions
    s = scores["bce"]
    counts = plots.weighted_pr_counts(s, label, weight, num_thresholds=11)
    for i in (0, 3, 5, 9):
        # Thresholds i/10; nudge off the bucket edge, where floating rounding could land.
        sig, bkg = weighted_truth(s, label, weight, i / 10 + 1e-12)
        assert counts["true_positive_counts"][i] == pytest.approx(sig, rel=1e-9)
        assert counts["false_positive_counts"][i] == pytest.approx(bkg, rel=1e-9)
        assert counts["precision"][i] == pytest.approx(sig / (sig + bkg), rel=1e-9)
    total_sig = counts["true_positive_counts"][0]
    np.testing.assert_allclose(
        counts["true_positive_counts"] + counts["false_negative_counts"], total_sig
    )
    # Signal weighs ~1000x less than background here: weighted purity is far below the
    # event-counting one, which is what an unweighted curve would wrongly show.
    unweighted = np.mean(label[s >= 0.5])
    assert counts["precision"][5] < unweighted / 50


def test_the_pr_figure_weights_average_precision(predictions):
    from sklearn.metrics import average_precision_score

    scores, label, weight = predictions
    figure = plots.precision_recall_curves({"bce": scores["bce"]}, label, weight)
    text = figure.axes[0].get_legend().get_texts()[0].get_text()
    w = rescaled_weights(label, weight, *plots.TOTALS_DEFAULT)
    expected = average_precision_score(label, scores["bce"], sample_weight=w)
    assert text == f"bce (AP {expected:.4f})"
    assert expected < 0.5 * average_precision_score(label, scores["bce"])


def test_tensorboard_pr_curve_holds_the_weighted_counts(predictions, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    from torch.utils.tensorboard import SummaryWriter

    scores, label, weight = predictions
    writer = SummaryWriter(str(tmp_path))
    plots.log_to_tensorboard(writer, "val/", scores["ams"], label, weight)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    data = tensor_util.make_ndarray(events.Tensors("val/pr_curve")[0].tensor_proto)
    counts = plots.weighted_pr_counts(scores["ams"], label, weight)
    np.testing.assert_allclose(data[0], counts["true_positive_counts"], rtol=1e-5)
    np.testing.assert_allclose(data[4], counts["precision"], rtol=1e-5)
