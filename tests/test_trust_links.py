"""Symbolic links planted in a run folder are refused, never followed: not for the lock, not for
a stage's checkpoints or TensorBoard folder on resume, not for metrics.json or the predictions.
Each test checks both that the write is refused with the link named and that the file the link
points to is unchanged."""

import json
import os
import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

from amsaware import experiment
from amsaware.atomic import SymlinkError, atomic_path, write_json
from amsaware.run_folder import (
    LOCK_FILE,
    FoldScores,
    RunFolder,
    RunFolderError,
    claim_run_folder,
    planted_links,
)
from tests.helpers import TINY, compose_run, entry_point

PRECIOUS = "a file outside the run folder\n"


def outside_file(tmp_path):
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(PRECIOUS)
    return target


def outside_folder(tmp_path):
    """A folder outside the run folder holding a file a write through a link would replace."""
    folder = tmp_path / "elsewhere" / "folder"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_text(PRECIOUS)
    return folder


def unchanged(target):
    if target.is_dir():
        return sorted(p.name for p in target.iterdir()) == ["last.ckpt"] and unchanged(
            target / "last.ckpt"
        )
    return target.read_text() == PRECIOUS


@pytest.mark.slow
def test_train_py_refuses_a_lock_file_that_is_a_link_before_writing_through_it(tmp_path):
    """The issue's reproduction, as a user runs it (a subprocess: tens of seconds loaded)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = outside_file(tmp_path)
    (run_dir / LOCK_FILE).symlink_to(target)
    done = entry_point("train.py", f"hydra.run.dir={run_dir}", *TINY)
    assert done.returncode != 0
    assert LOCK_FILE in done.stderr and "symbolic link" in done.stderr, done.stderr[-2000:]
    assert unchanged(target)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # Hydra wrote nothing


def test_claiming_a_folder_whose_lock_is_a_link_leaves_the_target_alone(tmp_path):
    target = outside_file(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).symlink_to(target)
    with pytest.raises(RunFolderError, match=rf"{LOCK_FILE}: is a symbolic link"):
        claim_run_folder(tmp_path / "run")
    assert unchanged(target)
    # A dangling link would be created by a plain open: refused as well, nothing created.
    (tmp_path / "run" / LOCK_FILE).unlink()
    (tmp_path / "run" / LOCK_FILE).symlink_to(tmp_path / "elsewhere" / "new.txt")
    with pytest.raises(RunFolderError, match="symbolic link"):
        claim_run_folder(tmp_path / "run")
    assert not (tmp_path / "elsewhere" / "new.txt").exists()


def test_an_earlier_runs_lock_file_is_reused(tmp_path):
    (tmp_path / LOCK_FILE).write_text("12345\n")  # left by a run that ended
    claim_run_folder(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_resuming_into_a_linked_stage_folder_is_refused_before_anything_runs(tmp_path):
    """The issue's second reproduction: checkpoints/fold0 (and tensorboard/fold1) linked to
    folders outside; `resume=true` must not write through them."""
    folder = tmp_path / "run"
    cfg = compose_run(folder, "resume=true")
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    target = outside_folder(tmp_path)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "fold0").symlink_to(target, target_is_directory=True)
    with warnings.catch_warnings(), pytest.raises(RunFolderError) as refused:
        warnings.simplefilter("ignore")
        experiment.run_experiment(cfg)
    assert "checkpoints/fold0 -> " in str(refused.value)
    assert unchanged(target)
    assert sorted(p.name for p in folder.iterdir()) == [".hydra", LOCK_FILE, "checkpoints"]


def test_claim_names_every_link_and_overwrite_does_not_follow_them(tmp_path):
    target = outside_folder(tmp_path)
    (tmp_path / "run" / "tensorboard").mkdir(parents=True)
    (tmp_path / "run" / "tensorboard" / "fold1").symlink_to(target, target_is_directory=True)
    (tmp_path / "run" / "metrics.json").symlink_to(target / "last.ckpt")
    with pytest.raises(RunFolderError, match=r"metrics\.json -> .*tensorboard/fold1 -> "):
        claim_run_folder(tmp_path / "run", overwrite=True)
    assert unchanged(target)
    assert (tmp_path / "run" / "metrics.json").is_symlink()  # refused, not deleted either


def test_wandbs_own_links_inside_its_folder_are_allowed(tmp_path):
    wandb = tmp_path / "wandb"
    (wandb / "run-1" / "logs").mkdir(parents=True)
    (wandb / "run-1" / "logs" / "debug.log").write_text("x")
    (wandb / "latest-run").symlink_to("run-1", target_is_directory=True)
    (wandb / "debug.log").symlink_to(wandb / "run-1" / "logs" / "debug.log")
    assert planted_links(tmp_path) == []
    claim_run_folder(tmp_path, resume=True)
    (wandb / "latest-run").unlink()
    (wandb / "latest-run").symlink_to(outside_folder(tmp_path), target_is_directory=True)
    assert planted_links(tmp_path) == [wandb / "latest-run"]


def test_a_stage_folder_that_is_a_link_is_not_cleared_or_written_through(tmp_path):
    """The library's own defence, for callers that do not claim the folder first."""
    target = outside_folder(tmp_path)
    (tmp_path / "run" / "tensorboard").mkdir(parents=True)
    (tmp_path / "run" / "tensorboard" / "fold1").symlink_to(target, target_is_directory=True)
    with pytest.raises(RunFolderError, match=r"tensorboard/fold1: is a symbolic link"):
        RunFolder(tmp_path / "run").clear_stage("fold1")
    assert unchanged(target)


@pytest.mark.parametrize(
    "name, write",
    [
        ("metrics.json", lambda run: run.write_metrics({"cut": {}})),
        ("test_predictions.csv", lambda run: run.write_test_predictions(np.arange(3), np.ones(3))),
        (
            "oof_predictions.csv",
            lambda run: run.write_oof_predictions(*[np.arange(3)] * 4, np.ones(3)),
        ),
        ("submission.csv", lambda run: run.write_submission(np.arange(3), np.ones(3), np.ones(3))),
    ],
)
def test_a_run_file_that_is_a_link_is_refused(tmp_path, name, write):
    target = outside_file(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).symlink_to(target)
    with pytest.raises(RunFolderError, match=rf"run/{name}: is a symbolic link"):
        write(RunFolder(tmp_path / "run"))
    assert unchanged(target)
    assert (tmp_path / "run" / name).is_symlink()


def test_a_linked_folder_on_the_way_to_a_run_file_is_refused(tmp_path):
    target = outside_folder(tmp_path)
    run = RunFolder(tmp_path / "run")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "fold0").symlink_to(target, target_is_directory=True)
    scores = FoldScores(np.arange(3), np.zeros(3, dtype=np.float32), "digest")
    with pytest.raises(RunFolderError, match=r"checkpoints/fold0: is a symbolic link"):
        run.write_fold_scores("fold0", scores)
    (tmp_path / "run" / "pretrain").symlink_to(target, target_is_directory=True)
    with pytest.raises(RunFolderError, match=r"run/pretrain: is a symbolic link"):
        run.pretrain.write_json({}, "metrics.json")  # pretrain/ lies in the run's folder
    assert unchanged(target)


def test_the_atomic_writer_refuses_links(tmp_path):
    target = outside_file(tmp_path)
    (tmp_path / "out.json").symlink_to(target)
    with pytest.raises(SymlinkError, match=r"out\.json: is a symbolic link"):
        write_json({"a": 1}, tmp_path / "out.json")
    with pytest.raises(SymlinkError), atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("never")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "sub").symlink_to(target.parent, target_is_directory=True)
    with pytest.raises(SymlinkError, match=r"folder/sub: is a symbolic link"):
        write_json({"a": 1}, tmp_path / "folder" / "sub" / "new.json", within=tmp_path / "folder")
    assert unchanged(target) and not (target.parent / "new.json").exists()
    # The run folder itself may be a link (runs kept on another disk): only what is inside
    # it is checked.
    (tmp_path / "runs").symlink_to(target.parent, target_is_directory=True)
    write_json({"a": 1}, tmp_path / "runs" / "fine.json", within=tmp_path / "runs")
    assert json.loads((target.parent / "fine.json").read_text()) == {"a": 1}
