"""Resume (`resume=true`, `ckpt_path=<run folder>`): a run killed between folds continues in
its folder, reloads the finished folds instead of training them, and ends with the metrics.json
of a run never stopped; what resume cannot do is refused before anything runs."""

import json
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from amsaware import experiment, protocol
from amsaware.checks import ConfigError, check_resume_config, resume_folder
from amsaware.run_folder import FOLD_SCORES, RunFolder, RunFolderError
from tests import helpers
from tests.conftest import REPO
from tests.helpers import QUIET

#: This file's runs: smaller than helpers.TINY's, a smaller network.
SIZES = [
    "experiment=smoke",
    "data.n_train=900",
    "data.n_test=300",
    "model.hidden_size=16",
    "trainer.log_every_n_steps=1",
]
TINY = [*SIZES, *QUIET]


def compose_run(folder, *overrides):
    return helpers.compose_run(folder, *SIZES, *overrides, tiny=False)


def run(folder, *overrides):
    """run_experiment in process; the folder keeps the first command's config, as Hydra's
    `.hydra/config.yaml` does before a resumed command is checked against it."""
    cfg = compose_run(folder, *overrides)
    config = folder / ".hydra" / "config.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True)
        OmegaConf.save(cfg, config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        experiment.run_experiment(cfg)
    return json.loads((folder / "metrics.json").read_text())


class Killed(KeyboardInterrupt):
    """Ctrl-C between folds."""


def kill_after_fold(index):
    def hook(cfg):
        def on_fold(k, metrics):
            if k == index:
                raise Killed

        return on_fold

    return hook


def trained_stages(monkeypatch):
    """The stages the run trains (not those it reloads), in order."""
    stages = []
    fit = protocol.fit

    def counting(datamodule, make_module, make_trainer, stage, seed):
        stages.append(stage)
        return fit(datamodule, make_module, make_trainer, stage, seed)

    monkeypatch.setattr(protocol, "fit", counting)
    return stages


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["ensemble=both"],
        ["finetune=ams", "cv.repeats=2"],
        # the fit re-scores the reloaded fold's shifted events from its checkpoint
        ["systematics=higgs", "fit.toys=5", "data.n_train=1500"],
    ],
)
def test_a_run_killed_after_a_fold_resumes_to_the_metrics_of_one_never_stopped(
    tmp_path, monkeypatch, overrides
):
    whole = run(tmp_path / "whole", *overrides)

    folder = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(experiment, "fold_hook", kill_after_fold(0))
        with pytest.raises(Killed):
            run(folder, *overrides)
    assert (folder / "checkpoints" / "fold0" / FOLD_SCORES).is_file()
    assert (
        not (folder / "checkpoints" / "fold1").exists() and not (folder / "metrics.json").exists()
    )
    # What an interruption inside fold 1 would have left: cleared, not mixed with the retraining.
    stale = folder / "tensorboard" / "fold1" / "events.out.tfevents.stale"
    stale.parent.mkdir(parents=True)
    stale.write_text("half a fold")

    stages = trained_stages(monkeypatch)
    resumed = run(folder, *overrides, "resume=true")
    n_folds = len(whole["cv"]["folds"])
    assert stages == [f"fold{k}" for k in range(1, n_folds)] + ["final"]
    assert not stale.exists()
    # Exact by construction: fold 0's metrics come from its saved float32 logits, and every
    # other stage trains seeded exactly as in the uninterrupted run, on the same machine.
    whole.pop("run"), resumed.pop("run")
    assert resumed == whole
    for name in ("oof_predictions.csv", "test_predictions.csv", "submission.csv"):
        assert (folder / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_folds_saved_scores_round_trip_and_changed_data_is_refused(tmp_path, small_table):
    plans = protocol.plan_folds(small_table.label, 3, 0)
    store = protocol.FoldStore(RunFolder(tmp_path), resume=True)
    z_val = torch.linspace(-2, 2, len(plans[0].val_index), dtype=torch.float32)
    store.save(plans[0], small_table, None, z_val, None, None)
    saved = store.load(plans[0], small_table, None, finetune=False)
    assert saved.val_logits.dtype == z_val.numpy().dtype
    assert (saved.val_logits == z_val.numpy()).all()
    assert saved.test_logits is None and saved.pretrain_logits is None
    assert protocol.FoldStore(RunFolder(tmp_path)).load(plans[0], small_table, None, False) is None
    heavier = small_table.subset(np.arange(len(small_table)))
    heavier.weight[plans[0].val_index[0]] *= 2
    with pytest.raises(
        RunFolderError, match=r"fold0/fold_scores\.npz: this fold was scored on other"
    ):
        store.load(plans[0], heavier, None, finetune=False)
    # A fold that did not finish: its folders are cleared, and it trains again.
    (tmp_path / "checkpoints" / "fold1").mkdir()
    (tmp_path / "checkpoints" / "fold1" / "last.ckpt").write_bytes(b"half")
    assert store.load(plans[1], small_table, None, finetune=False) is None
    assert not (tmp_path / "checkpoints" / "fold1").exists()
    (tmp_path / "checkpoints" / "fold0" / FOLD_SCORES).write_bytes(b"not numpy")
    with pytest.raises(RunFolderError, match=r"fold_scores\.npz: corrupt"):
        store.load(plans[0], small_table, None, finetune=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["cv.parallel=true"], "cannot resume cv.parallel=true"),
        (["callbacks=early_stopping"], "cannot resume callbacks.early_stopping"),
        (["+trainer.strategy=ddp"], "cannot resume trainer.strategy=ddp"),
        (["callbacks.model_checkpoint=null"], "cannot resume a run without checkpoints"),
        (["overwrite=true"], "overwrite=true deletes it: choose one"),
        (["resume=maybe"], "resume is 'maybe'; expected true or false"),
    ],
)
def test_what_resume_cannot_do_is_refused_before_anything_runs(tmp_path, overrides, message):
    cfg = compose_run(tmp_path / "run", "resume=true", *overrides)
    with pytest.raises(ConfigError, match=message):
        experiment.run_experiment(cfg)
    assert not (tmp_path / "run").exists()


def test_a_run_without_checkpoints_keeps_no_fold_scores(tmp_path):
    # A search trial's settings: nothing to resume from, so nothing written for it.
    run(tmp_path / "run", "callbacks.model_checkpoint=null", "callbacks.preprocessing=null")
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_with_another_config_is_refused_naming_the_keys(tmp_path):
    folder = tmp_path / "run"
    first = compose_run(folder)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(first, folder / ".hydra" / "config.yaml")
    check_resume_config(folder, compose_run(folder, "resume=true"))  # the same command: fine
    check_resume_config(folder, compose_run(folder, f"ckpt_path={folder}"))
    other = compose_run(folder, "resume=true", "trainer.max_epochs=3", "seed=7")
    with pytest.raises(RunFolderError, match=r"differs .* in seed, trainer\.max_epochs\."):
        check_resume_config(folder, other)
    with pytest.raises(RunFolderError, match="differs"):
        experiment.run_experiment(other)
    assert not (folder / "metrics.json").exists()


def test_a_finished_run_and_a_wrong_ckpt_path_are_refused(tmp_path):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    with pytest.raises(RunFolderError, match=r"no run folder of train\.py there"):
        resume_folder(str(folder))
    (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert resume_folder(str(folder)) == folder
    (folder / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunFolderError, match="ckpt_path names the run folder to continue"):
        resume_folder(str(folder / "last.ckpt"))
    elsewhere = compose_run(tmp_path / "other", f"ckpt_path={folder}")
    with pytest.raises(ConfigError, match="is not the run's output folder"):
        experiment.run_experiment(elsewhere)
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"holds a finished run .*nothing to resume"):
        experiment.run_experiment(compose_run(folder, "resume=true"))


KILLED_AFTER_FOLD_0 = """
import runpy, sys
from amsaware import experiment

def hook(cfg):
    def on_fold(k, metrics):
        if k == 0:
            raise KeyboardInterrupt
    return on_fold

experiment.fold_hook = hook
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_train_py_continues_the_run_named_by_ckpt_path(tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "run"
    args = [*TINY, "ensemble=both"]
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}

    def python(*command):
        return subprocess.run(
            [sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True
        )

    killed = python("-c", KILLED_AFTER_FOLD_0, f"hydra.run.dir={folder}", *args)
    assert killed.returncode != 0 and (folder / "checkpoints/fold0" / FOLD_SCORES).is_file()
    config = (folder / ".hydra" / "config.yaml").read_bytes()

    other = python("train.py", f"ckpt_path={folder}", *args, "trainer.max_epochs=3")
    assert other.returncode != 0
    assert "cannot resume" in other.stderr and "trainer.max_epochs" in other.stderr
    assert (folder / ".hydra" / "config.yaml").read_bytes() == config  # kept for a retry

    done = python("train.py", f"ckpt_path={folder}", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (folder / "train.log").read_text()
    assert "fold0 [1/3]: finished before the interruption; its scores reloaded" in log
    assert RunFolder(folder).metrics()["cv"]["folds"][0]["fold"] == 0
    assert python("train.py", f"ckpt_path={folder}", *args).returncode != 0  # finished


def test_lightnings_own_resume_would_not_give_the_uninterrupted_stage(tmp_path):
    """Why an interrupted stage restarts from scratch (docs/training.md): continuing a fold
    from its last.ckpt with Lightning's `trainer.fit(ckpt_path=...)` restores weights,
    optimizer and epoch, but not the batch shuffler's generator or the dropout state, so the
    continued fold ends with other weights than the uninterrupted one."""
    import lightning as L

    from amsaware.data.datamodule import HiggsDataModule

    def stage(folder, epochs):
        cfg = compose_run(folder, f"trainer.max_epochs={epochs}", "~logger", "model.dropout=0.2")
        dataset = experiment.load_dataset(cfg)
        plan = protocol.plan_folds(dataset.train.label, 3, cfg.seed)[0]
        totals = (dataset.train.s_tot, dataset.train.b_tot)
        make_module, make_trainer, _ = experiment._factories(
            cfg, folder, len(dataset.train.feature_names), totals
        )

        def datamodule():
            return HiggsDataModule(dataset.train, 64, plan.seed, plan.train_index, plan.val_index)

        return datamodule, make_module, make_trainer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(log_every_n_steps|many workers).*")
        datamodule, make_module, make_trainer = stage(tmp_path / "whole", 2)
        whole = protocol.fit(datamodule(), make_module, make_trainer, "fold0", 1)
        datamodule, make_module, make_trainer = stage(tmp_path / "cut", 1)
        protocol.fit(datamodule(), make_module, make_trainer, "fold0", 1)  # epoch 1 only
        last = tmp_path / "cut" / "checkpoints" / "fold0" / "last.ckpt"
        datamodule, make_module, make_trainer = stage(tmp_path / "cut", 2)
        L.seed_everything(1, verbose=False)
        continued = make_module()
        make_trainer("fold0").fit(continued, datamodule=datamodule(), ckpt_path=last)
    assert continued.trainer.current_epoch == whole.trainer.current_epoch == 2
    differs = [
        not torch.equal(a, b)
        for a, b in zip(
            whole.net.state_dict().values(), continued.net.state_dict().values(), strict=True
        )
    ]
    assert any(differs)
