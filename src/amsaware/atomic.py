"""Atomic writes: a file appears complete or not at all, and never through a symbolic link.

Every artifact (a run's files, figures, reports, the synthetic generator's parameters) is
written to a temporary name in its destination folder and renamed into place when complete, so
that a reader, or a run stopped by Ctrl-C, never sees half a file. Under DDP only the main
process writes (`write_json`, `write_frame`).

A destination that is a symbolic link is refused, and so is every folder from `within` down to
it that is one: a link planted in a run folder would otherwise take the write (and the folders
`mkdir` makes on the way) wherever it points. Written by hand: neither the standard library
nor the ecosystem has a rename-into-place writer that refuses links.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


class SymlinkError(OSError):
    """A path to write that is, or passes through, a symbolic link; the message names it."""


def main_process() -> bool:
    """False in the other processes of a DDP run: only the main one writes."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def refuse_symlinks(path: str | Path, within: str | Path | None = None) -> None:
    """A `SymlinkError` if `path`, or a folder below `within` on the way to it, is a link.

    `within` (a run folder) is trusted as it is, link or not: a user may keep runs on another
    disk. Only what lies inside it is checked.
    """
    path = Path(path)
    checked = [path]
    if within is not None:
        folder = Path(within)
        for part in path.relative_to(folder).parts[:-1]:
            folder = folder / part
            checked.append(folder)
    for link in checked:
        if link.is_symlink():
            raise SymlinkError(
                errno.ELOOP,
                f"{link}: is a symbolic link (to {os.readlink(link)}); refusing to write "
                f"{path} through it, which would put the file wherever the link points. "
                "Remove the link.",
            )


@contextmanager
def atomic_path(path: str | Path, within: str | Path | None = None) -> Iterator[Path]:
    """A temporary path next to `path`, renamed onto it only if the block succeeds.

    Refuses `path` if it, or a folder from `within` down to it, is a symbolic link.
    """
    path = Path(path)
    refuse_symlinks(path, within)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; expected the name of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise type(error)(
            error.errno, f"{path}: cannot write it ({error.strerror} in {path.parent})"
        ) from None
    os.close(fd)
    # mkstemp makes the file private (0600); written files get the permissions of any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(data: Any, path: str | Path, within: str | Path | None = None) -> Path:
    """`data` as indented JSON, atomically (only the main process writes under DDP)."""
    path = Path(path)
    if main_process():
        with atomic_path(path, within) as tmp:
            tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    return path


def write_frame(frame: pd.DataFrame, path: str | Path, within: str | Path | None = None) -> Path:
    """A CSV file (gzipped where the name ends in .gz), atomically, main process only."""
    path = Path(path)
    if main_process():
        with atomic_path(path, within) as tmp:
            compression = "gzip" if path.suffix == ".gz" else None
            frame.to_csv(tmp, index=False, compression=compression)
    return path
