"""The fine-tune phase (`finetune=<loss>`) and bagged CV (`cv.repeats`), in-process.

Runs compose the real config (conf/) and call `run_experiment`, as train.py does, on a few
thousand synthetic events for two epochs; library-level tests drive `cross_validate`.
"""

import json

import lightning as L
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from amsaware.checks import check_finetune
from amsaware.comparison import load_run
from amsaware.experiment import run_experiment
from amsaware.inference import load_scorer
from amsaware.losses import BCELoss, SoftAMSLoss
from amsaware.model import MLP, SignificanceClassifier
from amsaware.phase import FineTune
from amsaware.protocol import cross_validate, plan_folds
from tests.conftest import REPO
from tests.helpers import N_TEST, compose_run, quiet_trainer, run, train


def oof(folder):
    return pd.read_csv(folder / "oof_predictions.csv").sort_values("EventId")


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "finetuned"
    metrics = run(folder, "loss=bce", "finetune=ams", "finetune.max_epochs=2")
    return folder, metrics


def test_a_zero_epoch_finetune_starts_from_exactly_the_trained_weights(tmp_path):
    metrics = run(tmp_path, "loss=bce", "finetune=ams", "finetune.max_epochs=0", "~logger")
    before, after = oof(tmp_path / "pretrain"), oof(tmp_path)
    # Exact by construction: the same network scores the same inputs.
    assert np.array_equal(before.score.to_numpy(), after.score.to_numpy())
    assert metrics["pretrain"]["cv"]["oof"] == metrics["cv"]["oof"]
    # The phase without epochs still leaves the stage's checkpoint, which predict.py loads.
    for stage in ["fold0", "fold1", "fold2", "final"]:
        assert (tmp_path / "checkpoints" / stage / "last.ckpt").is_file()


def test_the_finetune_changes_the_model_and_metrics_record_both_phases(finetuned_run):
    folder, metrics = finetuned_run
    before, after = oof(folder / "pretrain"), oof(folder)
    assert not np.allclose(before.score, after.score)
    pretrain = metrics["pretrain"]
    assert set(pretrain["cv"]["oof"]) == set(metrics["cv"]["oof"])
    assert set(pretrain["cv"]["mean"]) == set(metrics["cv"]["mean"])
    assert [f["fold"] for f in pretrain["cv"]["folds"]] == [0, 1, 2]
    assert {"fraction", "threshold", "ams", "ams_smoothed"} <= set(pretrain["cut"])
    # The run's cut is chosen on the fine-tuned scores.
    assert metrics["cut"]["fraction"] != pytest.approx(0.0)
    assert "test" in metrics
    # Only the stages' own checkpoints: no Lightning default ones from the first phase.
    assert sorted(p.parent.name for p in folder.rglob("*.ckpt")) == [
        "final",
        "fold0",
        "fold1",
        "fold2",
    ]


def test_the_finetuned_run_is_scored_and_compared_by_the_tools(finetuned_run):
    folder, _ = finetuned_run
    scorer = load_scorer(folder)
    test = pd.read_csv(folder / "test_predictions.csv")
    assert len(test) == N_TEST
    before = load_run(folder / "pretrain", "pretrain")
    after = load_run(folder, "finetune")
    assert before.oof.EventId.equals(after.oof.EventId)
    assert scorer.name == "final"


def test_each_fold_is_one_timeline_across_both_phases(finetuned_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, _ = finetuned_run
    events = EventAccumulator(str(folder / "tensorboard" / "fold0"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    phase = {e.step: e.value for e in events.Scalars("phase")}
    pretrain = [step for step, _ in loss if phase[step] == 0.0]
    finetune = [step for step, _ in loss if phase[step] == 1.0]
    # Two epochs each, on the epoch axis: the fine-tune continues the curve, not over it.
    assert pretrain == [0, 1] and finetune == [2, 3]


def recording_finetune(loss, batch_size, epochs=1):
    seen = {"batches": [], "loss": []}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["batches"].append(tuple(batch[0].shape[:-1]))  # (n,) or (folds, n)
            seen["loss"].append(module.loss)

    def make_module(net):
        optimizer = lambda params: torch.optim.Adam(params, lr=1e-4)  # noqa: E731
        return SignificanceClassifier(net, loss, optimizer, phase=1)

    def make_trainer(stages, callbacks):
        return quiet_trainer(epochs, [*callbacks, Record()])

    return FineTune(make_module, make_trainer, batch_size, epochs), seen


def factories(table):
    def make_module():
        net = MLP(len(table.feature_names), 2, 16, 0.0)
        optimizer = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
        return SignificanceClassifier(net, BCELoss(), optimizer)

    return make_module, lambda stages: quiet_trainer(1)


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_the_phase_trains_with_its_own_loss_and_batch_size(small_table, parallel):
    loss = SoftAMSLoss(normalisation="batch")
    finetune, seen = recording_finetune(loss, batch_size=700)
    cv = cross_validate(
        small_table, 2, 64, 3, *factories(small_table), parallel=parallel, finetune=finetune
    )
    assert seen["loss"] and all(recorded is loss for recorded in seen["loss"])
    # 1500 training rows per fold in batches of 700: 700, 700, 100 (stacked in parallel).
    first = (2, 700) if parallel else (700,)
    assert seen["batches"][:2] == [first, first]
    assert len(seen["batches"]) == (3 if parallel else 6)  # one epoch; 2 folds
    assert cv.pretrain is not None
    assert not np.allclose(cv.pretrain.scores, cv.scores)


def test_parallel_zero_epoch_finetune_keeps_the_pretrained_scores(small_table):
    finetune, _ = recording_finetune(SoftAMSLoss(), batch_size=700, epochs=0)
    cv = cross_validate(
        small_table, 2, 64, 3, *factories(small_table), parallel=True, finetune=finetune
    )
    assert np.array_equal(cv.pretrain.scores, cv.scores)


def test_repeats_average_the_out_of_fold_scores_of_each_split(small_table):
    make = factories(small_table)
    bagged = cross_validate(small_table, 2, 128, 5, *make, repeats=2)
    first = cross_validate(small_table, 2, 128, 5, *make)
    # Repeat 1 is the split and seeds of a plain run with seed + 1000.
    second = cross_validate(small_table, 2, 128, 1005, *make)
    np.testing.assert_allclose(bagged.scores, (first.scores + second.scores) / 2, atol=1e-9)
    assert [m["fold"] for m in bagged.fold_metrics] == [0, 1, 2, 3]
    assert [m.get("repeat", 0) for m in bagged.fold_metrics] == [0, 0, 1, 1]
    np.testing.assert_array_equal(bagged.fold, first.fold)


def test_repeats_split_differently_and_cover_every_event_once_per_repeat(small_table):
    plans = plan_folds(small_table.label, 3, 0, repeats=2)
    assert [p.stage for p in plans] == [f"fold{j}" for j in range(6)]
    for r in range(2):
        held_out = np.concatenate([p.val_index for p in plans if p.repeat == r])
        assert np.array_equal(np.sort(held_out), np.arange(len(small_table)))
    assert not np.array_equal(plans[0].val_index, plans[3].val_index)


def test_a_bagged_run_scores_test_events_with_every_fold_model(tmp_path):
    metrics = run(tmp_path, "cv.repeats=2", "ensemble=folds", "~logger")
    assert len(metrics["cv"]["folds"]) == 6
    assert metrics["run"]["n_fold_models"] == 6
    scorer = load_scorer(tmp_path)
    assert len(scorer.models) == 6


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("finetune.batch_size=0", "finetune.batch_size"),
        ("finetune.max_epochs=-1", "finetune.max_epochs"),
        ("finetune.optimizer.lr=-1e-5", "finetune.optimizer.lr"),
        ("finetune.loss._target_=os.system", "finetune.loss._target_"),
        ("finetune.loss.temperature=0", "finetune.loss"),
    ],
)
def test_bad_finetune_keys_are_refused_naming_the_key(tmp_path, override, key):
    cfg = compose_run(tmp_path, "finetune=ams", override)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_finetune(cfg.finetune, (1.0, 1.0))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run_experiment(cfg)  # refused before any training: nothing written
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("override", ["cv.repeats=0", "cv.repeats=1.5"])
def test_bad_repeats_are_refused_naming_the_key(tmp_path, override):
    with pytest.raises(ValueError, match=r"cv\.repeats"):
        run_experiment(compose_run(tmp_path, override))


def test_every_finetune_option_composes(tmp_path):
    for name, target in [
        ("ams", "SoftAMSLoss"),
        ("asimov", "AsimovLoss"),
        ("deltaz", "DeltaZBarLoss"),
        ("bce", "BCELoss"),
    ]:
        cfg = compose_run(tmp_path, f"finetune={name}")
        assert cfg.finetune.loss._target_.endswith(target)
        assert cfg.finetune.batch_size == 1024
        assert cfg.finetune.optimizer.lr == pytest.approx(5e-5)
        check_finetune(cfg.finetune, (1.0, 1.0))
    assert compose_run(tmp_path).get("finetune") is None
    assert OmegaConf.select(compose_run(tmp_path), "cv.repeats") == 1


def test_finetune_composes_with_parallel_folds_and_both_ensembles(tmp_path):
    phase = ["finetune=ams", "finetune.max_epochs=1"]
    metrics = run(tmp_path, *phase, "cv.parallel=true", "ensemble=both", "~logger")
    assert {"test", "test_folds", "pretrain"} <= set(metrics)
    for stage in ["fold0", "fold1", "fold2", "final"]:
        assert (tmp_path / "checkpoints" / stage / "last.ckpt").is_file()
    fold_models = load_scorer(tmp_path, "folds")
    written = pd.read_csv(tmp_path / "test_predictions_folds.csv")
    assert len(written) == N_TEST and len(fold_models.models) == 3


@pytest.mark.slow
def test_finetune_composes_with_compile(tmp_path):
    metrics = run(tmp_path, "finetune=ams", "finetune.max_epochs=1", "compile=default")
    assert np.isfinite(metrics["cv"]["oof"]["oof/auroc"])
    assert "pretrain" in metrics


@pytest.mark.slow
def test_finetune_under_ddp_writes_one_run_folder(tmp_path):
    run_dir = tmp_path / "ddp"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "threads=1"]
    train(run_dir, *ddp, "finetune=ams", "finetune.max_epochs=1", "callbacks.progress_bar=null")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "pretrain" in metrics
    assert len(pd.read_csv(run_dir / "pretrain" / "oof_predictions.csv")) == 1500
    assert not list(run_dir.rglob("*.tmp"))


def test_the_finetune_searches_tune_the_phase_or_both(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from amsaware.search import parse_space

    def space(search):
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[f"hparams_search={search}", "loss=bce", "finetune=ams"],
                return_hydra_config=True,
            )
        return parse_space(cfg.hydra.sweeper.params)[0], cfg

    phase, cfg = space("optuna_finetune")
    assert phase == {
        "finetune.optimizer.lr": FloatDistribution(1e-5, 1e-3, log=True),
        "finetune.batch_size": CategoricalDistribution([512, 1024, 2048, 4096]),
        "finetune.max_epochs": CategoricalDistribution([10, 20, 40]),
        "finetune.loss.temperature": FloatDistribution(1.0, 5.0, log=True),
    }
    assert cfg.final_fit is False and cfg.hydra.sweeper.n_trials == 50
    both, _ = space("optuna_both")
    assert {"model.n_layers", "optimizer.lr", "finetune.optimizer.lr"} <= set(both)
    paper, _ = space("optuna")  # the paper's search is unchanged by the shared base
    assert set(paper) == {
        "model.n_layers",
        "model.hidden_size",
        "model.dropout",
        "optimizer.lr",
        "data.batch_size",
    }


@pytest.mark.slow
def test_a_finetune_search_tunes_the_phase_keys(tmp_path):
    from tests.test_search import search, study

    logs = tmp_path / "logs"
    search(
        logs,
        tmp_path / "sweep",
        "hparams_search=optuna_finetune",
        "loss=bce",
        "finetune=ams",
        "finetune.max_epochs=1",
        "hydra.sweeper.n_trials=2",
    )
    found = study(logs)  # the storage's one study, named <loss>-<finetune>-<data>-<hash>
    assert found.study_name.startswith("bce-ams-synthetic-")
    trials = found.trials
    assert len(trials) == 2
    assert {"finetune.optimizer.lr", "finetune.batch_size"} <= set(trials[0].params)
    assert "finetune.max_epochs" not in trials[0].params  # fixed on the command line
    # The fine-tune's reports follow the pretraining's four (a quarter epoch each) as further
    # steps instead of overwriting them.
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps)))
        assert len(steps) >= 5 or trial.state != optuna.trial.TrialState.COMPLETE
