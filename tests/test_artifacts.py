"""Atomic artifact writing: all or nothing, with ordinary file permissions."""

import os

import pytest

from amsaware.artifacts import CorruptFileError, atomic_path, read_metrics, write_json


def test_artifact_gets_the_permissions_of_a_new_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json({"a": 1.0}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_as_the_destination_is_named(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path}: is a directory"):
        write_json({"a": 1.0}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"{blocker}/metrics\.json: cannot write it"):
        write_json({"a": 1.0}, blocker / "metrics.json")


@pytest.mark.parametrize("text", ['{"cut": ', "\xff\xfe", "[1, 2]"])
def test_corrupt_json_is_named_as_corrupt(tmp_path, text):
    (tmp_path / "metrics.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CorruptFileError, match=rf"{tmp_path}/metrics\.json: corrupt"):
        read_metrics(tmp_path)
