"""Atomic artifact writing: all or nothing, with ordinary file permissions."""

import os

import pytest

from amsaware.artifacts import atomic_path, write_json


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
