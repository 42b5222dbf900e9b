"""What a hostile (or unlucky) user still broke after the second round of checks (issue 25):
each case is refused with a message naming the file or key, or gives the correct result."""

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from amsaware import experiment, protocol
from amsaware.checks import ConfigError, check_values
from amsaware.data.formats import (
    MIN_EVENTS_FOR_PAIR_SHARE,
    DataFormatError,
    check_trainable,
    read_cern,
    read_kaggle_train,
)
from amsaware.data.synthetic import generate
from amsaware.run_folder import FOLD_SCORES, RunFolder, RunFolderError
from amsaware.search import file_identity
from tests import helpers
from tests.helpers import kaggle_frame
from tests.test_resume import Killed, kill_after_fold, trained_stages

#: This file's runs: a kaggle-format pair of files, two epochs, a small network.
SIZES = ["trainer.max_epochs=2", "model.hidden_size=16", "trainer.log_every_n_steps=1"]


def run_config(root, overrides):
    return helpers.compose_run(root / "run", *SIZES, *overrides, tiny=False)


def run(folder, *overrides):
    """run_experiment in process, the folder keeping the first command's config (as Hydra's
    `.hydra/config.yaml` does)."""
    cfg = run_config(folder.parent, overrides)
    config = folder / ".hydra" / "config.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True)
        OmegaConf.save(cfg, config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(log_every_n_steps|many workers).*")
        experiment.run_experiment(cfg)


# --- resume: the data and the finished folds' files are checked before anything trains -------


@pytest.fixture
def killed_run(tmp_path):
    """A kaggle-format run killed after fold 0 (its later folds' files and metrics.json never
    written), with its data files."""
    root = tmp_path
    kaggle_frame(generate(900, seed=1), with_labels=True).to_csv(root / "training.csv", index=False)
    kaggle_frame(generate(300, seed=2)).to_csv(root / "test.csv", index=False)
    overrides = [
        "data=kaggle",
        f"data.train_path={root / 'training.csv'}",
        f"data.test_path={root / 'test.csv'}",
        "ensemble=both",
    ]
    folder = root / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(experiment, "fold_hook", kill_after_fold(0))
        with pytest.raises(Killed):
            run(folder, *overrides)
    assert (folder / "checkpoints" / "fold0" / FOLD_SCORES).is_file()
    assert not (folder / "metrics.json").exists()
    return root, overrides


def test_a_training_row_edited_outside_fold_0s_rows_refuses_the_resume(
    killed_run, tmp_path, monkeypatch
):
    root, overrides = killed_run
    training = pd.read_csv(root / "training.csv")
    dataset = experiment.load_dataset(run_config(root, overrides))
    plan = protocol.plan_folds(dataset.train.label, 3, 1)[0]
    outside = np.setdiff1d(np.arange(len(training)), plan.val_index)[0]
    event = dataset.train.event_id[outside]
    training.loc[training.EventId == event, "Weight"] *= 3
    training.to_csv(root / "training.csv", index=False)

    stages = trained_stages(monkeypatch)
    with pytest.raises(RunFolderError, match=r"other events than data\.train_path=.*training\.csv"):
        run(root / "run", *overrides, "resume=true")
    assert stages == [] and not (root / "run" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_a_finished_folds_damaged_checkpoint_is_refused_before_anything_trains(
    killed_run, tmp_path, monkeypatch, damage
):
    root, overrides = killed_run
    checkpoint = root / "run" / "checkpoints" / "fold0" / "last.ckpt"
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    else:  # a valid checkpoint with other weights
        weights = RunFolder(root / "run").checkpoint("fold0")
        state = {f"net.{k}": v + 1 for k, v in weights.items()}
        torch.save({"state_dict": state}, checkpoint)
    stages = trained_stages(monkeypatch)
    with pytest.raises(RunFolderError, match=r"fold 0.*delete .*fold0 .*overwrite=true"):
        run(root / "run", *overrides, "resume=true")
    assert stages == []


def test_the_same_data_still_resumes(killed_run, tmp_path, monkeypatch):
    root, overrides = killed_run
    stages = trained_stages(monkeypatch)
    run(root / "run", *overrides, "resume=true")
    assert stages == ["fold1", "fold2", "final"]


# --- configs that trained nothing, or were ignored --------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.max_steps=0", r"trainer\.max_steps is 0; expected -1"),
        ("+trainer.max_steps=-5", r"trainer\.max_steps is -5"),
        ("+trainer.limit_train_batches=0", r"trainer\.limit_train_batches is 0;"),
        ("+trainer.limit_train_batches=0.0", r"trainer\.limit_train_batches is 0\.0;"),
        ("+finetune.max_epoch=3", r"finetune has no key max_epoch .*max_epochs"),
    ],
)
def test_a_run_that_would_train_nothing_or_ignore_a_key_is_refused(tmp_path, override, message):
    extra = ["finetune=ams"] if "finetune" in override else []
    cfg = helpers.compose_run(tmp_path / "run", *extra, override)
    with pytest.raises(ConfigError, match=message):
        experiment.run_experiment(cfg)
    assert not (tmp_path / "run").exists()


def test_the_training_limits_that_train_something_are_accepted(tmp_path):
    for override in ("+trainer.max_steps=3", "+trainer.limit_train_batches=0.5"):
        check_values(helpers.compose_run(tmp_path, override))


# --- weights ----------------------------------------------------------------------------------


def test_two_heavy_background_weights_are_refused_naming_both_rows(real_sample, tmp_path):
    frame = pd.read_csv(real_sample)
    check_trainable(read_cern(real_sample), 3)  # the real weights pass
    background = np.flatnonzero(frame.Label == "b")[[5, 9]]
    frame.loc[background, "KaggleWeight"] = [6e5, 5.9e5]  # each under half of the class's
    frame.to_csv(tmp_path / "heavy.csv", index=False)
    table = read_cern(tmp_path / "heavy.csv")
    lines = " and ".join(rf"row {k + 1} \(line {k + 2}, EventId \d+\)" for k in background)
    with pytest.raises(DataFormatError, match=rf"{lines}.*background.*no two events"):
        check_trainable(table, 3)


def test_the_pair_bound_leaves_small_classes_alone():
    table = generate(300, seed=4)
    signal = np.flatnonzero(table.label == 1)
    assert len(signal) < MIN_EVENTS_FOR_PAIR_SHARE
    table.weight[signal[:2]] = table.weight[signal].sum() * 0.2  # 2 x 17% of a small class
    check_trainable(table, 3)


# --- unreadable files and hostile YAML ---------------------------------------------------------


def _denied(monkeypatch, target):
    """`open` of `target` fails as for a file without read permission (the tests run as root,
    for whom chmod 000 changes nothing)."""
    import builtins
    import io

    real = io.open

    def guarded(file, *args, **kwargs):
        if str(file) == str(target):
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded)
    monkeypatch.setattr(builtins, "open", guarded)


def test_an_unreadable_training_file_is_named_not_a_bare_permission_error(tmp_path, monkeypatch):
    path = tmp_path / "training.csv"
    kaggle_frame(generate(100, seed=1), with_labels=True).to_csv(path, index=False)
    _denied(monkeypatch, path)
    with pytest.raises(DataFormatError, match=rf"{path}: not readable \(permission denied\)"):
        read_kaggle_train(path)


def test_an_unreadable_checkpoint_or_config_is_not_called_corrupt(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    path = run.write_checkpoint("fold0", torch.nn.Linear(2, 1))
    (tmp_path / ".hydra").mkdir()
    run.config_path.write_text("seed: 1\n")
    _denied(monkeypatch, path)
    with pytest.raises(RunFolderError, match=r"last\.ckpt: not readable \(permission denied\)"):
        run.checkpoint("fold0")
    _denied(monkeypatch, run.config_path)
    with pytest.raises(RunFolderError, match=r"config\.yaml: not readable \(permission denied\)"):
        run.loss_name()


def test_a_yaml_alias_bomb_in_a_run_config_is_refused_unread(tmp_path):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, 10):  # 9**10 strings once expanded
        levels.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]")
    (tmp_path / ".hydra").mkdir()
    RunFolder(tmp_path).config_path.write_text("\n".join(levels) + "\n")
    with pytest.raises(RunFolderError, match=r"config\.yaml: holds a YAML alias \(\*a0\)"):
        RunFolder(tmp_path).config()


class _Planted:
    """What a hostile checkpoint holds: unpickling it writes a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_load_from_checkpoint_never_unpickles_code(tmp_path, monkeypatch):
    from amsaware.model import SignificanceClassifier

    marker = tmp_path / "ran.txt"
    path = tmp_path / "planted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": _Planted(marker)}, path)
    # torch < 2.6's default: a torch.load without weights_only unpickles anything.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        SignificanceClassifier.load_from_checkpoint(path)
    assert not marker.exists()


# --- a search's study is keyed by its data's content, not only its path -----------------------


def _study_name(path):
    from tests.test_search import default_name

    return default_name("data=opendata", f"data.path={path}")


def test_a_data_file_replaced_at_the_same_path_starts_a_study_of_its_own(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"EventId,Weight\n1,0.5\n")
    first = _study_name(path)
    assert _study_name(path) == first, "unchanged data continues its study"
    stat = path.stat()
    path.write_bytes(b"EventId,Weight\n1,6e5\n")  # same size; mtime set back below
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _study_name(path) != first


def test_a_large_files_identity_samples_it_and_notices_a_changed_block(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).bytes(20 << 20))
    path.write_bytes(data)
    stat = path.stat()
    before = file_identity(path)
    for where in (100, len(data) - 1):  # the header, the last line
        data[where] ^= 1
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert file_identity(path) != before
        data[where] ^= 1
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_identity(path) == before
    path.touch()  # rewritten in place: a new time
    assert file_identity(path) != before


# --- a sweep's trial folders are claimed before Hydra writes into them --------------------------


def marked_trial(cfg) -> float:
    """A trial that leaves a finished run's mark (metrics.json) in its folder."""
    from hydra.core.hydra_config import HydraConfig

    (Path(HydraConfig.get().runtime.output_dir) / "metrics.json").write_text("{}")
    return float(cfg.model.n_layers)


def test_a_new_studys_trial_into_a_used_sweep_folder_leaves_the_old_config_intact(tmp_path):
    from tests.test_search import files_of, hydra_multirun

    sweep = tmp_path / "sweep"
    common = [
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=1",
        "hydra/sweeper/pruner=none",
    ]
    hydra_multirun(marked_trial, [*common, "hydra.sweeper.study_name=first"])
    saved = sweep / "0" / ".hydra"
    assert {p.name for p in saved.iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    hydra_cfg = OmegaConf.load(saved / "hydra.yaml").hydra
    assert hydra_cfg.output_subdir == ".hydra"
    assert "hydra.output_subdir=null" not in hydra_cfg.overrides.hydra
    earlier = files_of(sweep / "0")
    with pytest.raises(SystemExit, match=r"sweep/0 already holds a run: metrics\.json"):
        hydra_multirun(marked_trial, [*common, "hydra.sweeper.study_name=second"])
    # Only train.log gained the refusal's lines (Hydra's log file opens before any callback).
    kept = {k: v for k, v in files_of(sweep / "0").items() if not k.endswith(".log")}
    assert kept == {k: v for k, v in earlier.items() if not k.endswith(".log")}
