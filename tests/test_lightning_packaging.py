"""Packaging a user meets: extras for launchers, loggers and Parquet; paths anchored at the root."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from tests.conftest import REPO


def extras():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_launchers_loggers_and_parquet_are_extras_that_dev_installs():
    found = extras()
    names = {extra: " ".join(found[extra]) for extra in ("launchers", "loggers", "parquet")}
    assert "hydra-joblib-launcher" in names["launchers"]
    assert "hydra-submitit-launcher" in names["launchers"]
    assert "mlflow" in names["loggers"] and "wandb" in names["loggers"]
    assert "pyarrow" in names["parquet"]
    for extra in names:
        assert f"amsaware[{extra}]" in found["dev"]


def resolved_paths(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return {key: Path(cfg.paths[key]).resolve() for key in ("root_dir", "log_dir", "data_dir")}


@pytest.mark.parametrize("where", ["tmp", "conf"])
def test_paths_are_anchored_at_the_project_root_from_any_folder(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path if where == "tmp" else REPO / "conf")
    paths = resolved_paths()
    assert paths["root_dir"] == REPO.resolve()
    assert paths["log_dir"] == REPO.resolve() / "logs"
    assert paths["data_dir"] == REPO.resolve() / "data"


def test_data_and_log_dirs_stay_overridable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = resolved_paths(f"paths.data_dir={tmp_path}/d", f"paths.log_dir={tmp_path}/l")
    assert paths["data_dir"] == tmp_path.resolve() / "d"
    assert paths["log_dir"] == tmp_path.resolve() / "l"


def test_reading_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from amsaware.data.samples import read_feature_file

    path = tmp_path / "events.parquet"
    pd.DataFrame({"x": np.arange(3.0)}).to_parquet(path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ModuleNotFoundError, match=r"amsaware\[parquet\]") as error:
        read_feature_file(path, ["x"])
    assert str(path) in str(error.value)
