"""One run per folder: the lock, what marks a used folder, `overwrite`, and planted links.

`claim_run_folder` runs before anything is written into a run folder (from Hydra's callback,
before Hydra writes the new `.hydra/`, and again at the start of the run): it takes the
folder's lock for the run's lifetime, refuses a folder holding a symbolic link (a link planted
there would take the run's checkpoints, logs or results wherever it points), and refuses a
folder holding an earlier run unless the run continues it (`resume`) or replaces it
(`overwrite`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import IO

from amsaware.run_folder.layout import (
    CHECKPOINTS,
    CSV_LOGS,
    FIGURES,
    FIT,
    HYDRA,
    LOCK_FILE,
    METRICS,
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    OOF_PREDICTIONS,
    PRETRAIN,
    SUBMISSION,
    SUBMISSION_FOLDS,
    TENSORBOARD,
    TEST_PREDICTIONS,
    TEST_PREDICTIONS_FOLDS,
    WANDB,
    RunFolderError,
)

log = logging.getLogger(__name__)

#: What marks a folder as holding a run (Hydra's own .hydra/ and log files do not: Hydra writes
#: them for the new run before it starts).
RUN_FILES = (
    METRICS,
    OOF_PREDICTIONS,
    TEST_PREDICTIONS,
    TEST_PREDICTIONS_FOLDS,
    SUBMISSION,
    SUBMISSION_FOLDS,
    MLFLOW_DB,  # logger=mlflow's store: a second run's stages would join the first's
)
#: Folders a run fills: its checkpoints, the fine-tune's `pretrain/`, and the loggers' logs
#: (logger=tensorboard|csv|wandb, MLflow's artifacts). A second run would mix its logs with
#: these (CSVLogger even deletes an earlier stage's metrics.csv), so they mark a used folder.
RUN_FOLDERS = (CHECKPOINTS, TENSORBOARD, PRETRAIN, CSV_LOGS, WANDB, MLFLOW_ARTIFACTS, FIT, FIGURES)
#: Kept when `overwrite=true` empties a folder: this run's config and log, and the lock.
KEPT = (HYDRA, LOCK_FILE)

_held: dict[str, IO[str]] = {}


def previous_run(run_dir: Path) -> list[str]:
    """What of an earlier run the folder holds, as relative paths (empty for a fresh folder)."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    for name in RUN_FOLDERS:
        files = sorted(p for p in (run_dir / name).rglob("*") if p.is_file())
        if files:
            shown = ", ".join(str(p.relative_to(run_dir)) for p in files[:3])
            more = f" and {len(files) - 3} more" if len(files) > 3 else ""
            found.append(f"{name}/ ({shown}{more})")
    return found


def planted_links(run_dir: Path) -> list[Path]:
    """The symbolic links inside the folder, found without following any.

    W&B's own links (`wandb/latest-run`, `wandb/debug.log`) are not counted where they lead
    to a place inside the folder's `wandb/`: W&B makes them, and writing through them stays
    there.
    """
    found = []
    for root, folders, files in os.walk(run_dir):  # does not descend into linked folders
        for name in sorted(folders + files):
            path = Path(root) / name
            if path.is_symlink() and not _wandb_own(path, run_dir):
                found.append(path)
    return found


def _wandb_own(link: Path, run_dir: Path) -> bool:
    parts = link.relative_to(run_dir).parts
    if len(parts) < 2 or parts[0] != WANDB or (run_dir / WANDB).is_symlink():
        return False
    return link.resolve().is_relative_to((run_dir / WANDB).resolve())


def refuse_links(run_dir: Path) -> None:
    """A `RunFolderError` naming the symbolic links in the folder, if it holds any."""
    links = planted_links(run_dir)
    if links:
        shown = ", ".join(f"{p.relative_to(run_dir)} -> {os.readlink(p)}" for p in links[:3])
        more = f" and {len(links) - 3} more" if len(links) > 3 else ""
        raise RunFolderError(
            f"{run_dir}: holds symbolic links ({shown}{more}); a run writes only into its own "
            "folder and follows no link, which would take its checkpoints, logs or results "
            "wherever it points. Remove the links (overwrite=true does not), or choose another "
            "hydra.run.dir."
        )


def _open_lock(path: Path) -> IO[str]:
    """The lock file, created if missing, never through a link (`O_NOFOLLOW`) nor into
    anything but a regular file; nothing is written to it here."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            # An earlier run's lock file: the lock, which dies with its process, is what counts.
            fd = os.open(path, flags)
    except OSError as error:
        if path.is_symlink():
            raise RunFolderError(
                f"{path}: is a symbolic link (to {os.readlink(path)}); the lock file is never "
                "opened through a link, which would write into the file it points to. Remove "
                "the link."
            ) from None
        if path.exists() and not path.is_file():
            raise RunFolderError(f"{path}: is not a regular file; remove it") from None
        raise type(error)(error.errno, f"{path}: cannot open it ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFolderError(f"{path}: is not a regular file; remove it")
    return os.fdopen(fd, "w")


def lock_run_folder(run_dir: Path) -> None:
    """Hold `<run>/.run.lock` until this process ends or locks its next run folder.

    A second run into the same folder fails at once instead of interleaving its files with
    the first's. The operating system drops the lock when the process ends, however it ends,
    so a stale lock file never blocks a later run. A lock file that is a link is refused
    before anything is written.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    for key in list(_held):  # a sequential sweep: this process's previous trial is done
        if key != str(path):
            _held.pop(key).close()
    if str(path) in _held:
        return
    handle = _open_lock(path)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderError(
            f"{run_dir}: another run is writing into this folder now (it holds {LOCK_FILE}); "
            "wait for it to end, or choose another hydra.run.dir"
        ) from None
    handle.truncate(0)  # the holder's process id, for a person looking at a busy folder
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[str(path)] = handle


def claim_run_folder(run_dir: str | Path, overwrite: bool = False, resume: bool = False) -> None:
    """Lock the run folder, then refuse it if it holds a link or a run, or empty it with
    `overwrite`.

    `resume` (continuing the folder's own run) is the one other way into a used folder.
    """
    run_dir = Path(run_dir)
    lock_run_folder(run_dir)
    refuse_links(run_dir)
    if resume and (run_dir / METRICS).is_file():
        raise RunFolderError(
            f"{run_dir} holds a finished run ({METRICS}): there is nothing to resume"
        )
    found = previous_run(run_dir)
    if not found or resume:
        return
    if not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run: {'; '.join(found)}. A second run would mix its "
            "checkpoints, metrics and TensorBoard files with these. Choose another "
            "hydra.run.dir (hydra.sweep.dir in a sweep), or pass overwrite=true to delete "
            "them first."
        )
    log.warning("overwrite=true: deleting the earlier run in %s: %s", run_dir, "; ".join(found))
    for path in run_dir.iterdir():
        if path.name in KEPT or path.suffix == ".log":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
