"""Runs trained with the default data paths are readable by every tool.

The default `paths.root_dir` is Hydra's own `${hydra:runtime.config_sources.1.path}/..`, which
resolves only inside the Hydra job that composed it. Each test copies conf/ into a fresh project
folder (so root_dir, data_dir and every default data path point there), places the data files
where the config expects them, trains with `train.py -cp` and no path override, and applies the
run with predict, eval, export and explain as a user types them.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from amsaware.data.synthetic import generate
from amsaware.run_folder import RunFolder, RunFolderError
from tests.helpers import REPO, entry_point, kaggle_frame

SMALL = ["trainer.max_epochs=1", "threads=1", "~logger"]


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(REPO / "conf", root / "conf")
    (root / "data").mkdir()
    return root


def _kaggle_files(data_dir: Path) -> Path:
    kaggle_frame(generate(1500, seed=1), with_labels=True).to_csv(
        data_dir / "training.csv", index=False
    )
    kaggle_frame(generate(600, seed=2)).to_csv(data_dir / "test.csv", index=False)
    return data_dir / "training.csv"


def _opendata_file(data_dir: Path) -> Path:
    """A small file in the CERN Open Data layout: training rows (t) and public ones (b)."""
    frame = kaggle_frame(generate(2000, seed=3), with_labels=True)
    frame["KaggleSet"] = np.where(np.arange(len(frame)) < 1500, "t", "b")
    frame["KaggleWeight"] = frame["Weight"]
    path = data_dir / "atlas-higgs-challenge-2014-v2.csv.gz"
    frame.to_csv(path, index=False)
    return path


def _ok(done) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _train(root: Path, data: str, *overrides: str) -> Path:
    run_dir = root / "run"
    _ok(
        entry_point(
            "train.py", "-cp", str(root / "conf"), f"data={data}", *SMALL, *overrides,
            f"hydra.run.dir={run_dir}",
        )
    )  # fmt: skip
    return run_dir


def test_the_saved_config_resolves_hydras_own_interpolations(tmp_path):
    root = _project(tmp_path)
    _kaggle_files(root / "data")
    run_dir = _train(root, "kaggle")
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    assert "${hydra:" not in str(saved)
    assert Path(saved["paths"]["root_dir"]).resolve() == root.resolve()
    # References between keys stay: the file still says where each path came from.
    assert saved["data"]["train_path"] == "${paths.data_dir}/training.csv"
    config = RunFolder(run_dir).config()
    assert Path(config.data["train_path"]).resolve() == (root / "data" / "training.csv")

    # The same command continues the run (interrupted here just before its metrics.json):
    # the command's config equals the folder's self-contained one.
    (run_dir / "metrics.json").unlink()
    _ok(entry_point("train.py", "-cp", str(root / "conf"), "data=kaggle", *SMALL,
                    f"ckpt_path={run_dir}"))  # fmt: skip
    prediction = tmp_path / "scores.csv"
    _ok(entry_point("predict.py", f"run={run_dir}", f"input={root / 'data' / 'test.csv'}",
                    f"output={prediction}"))  # fmt: skip
    assert prediction.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("data", ["kaggle", "opendata"])
def test_every_tool_reads_a_run_trained_with_the_default_paths(tmp_path, data):
    root = _project(tmp_path)
    if data == "kaggle":
        labelled = _kaggle_files(root / "data")
        run_dir = _train(root, "kaggle")
    else:
        labelled = _opendata_file(root / "data")
        run_dir = _train(root, "opendata", "data.download=false")
    _ok(entry_point("predict.py", f"run={run_dir}", f"input={labelled}",
                    f"output={tmp_path / 'scores.csv'}"))  # fmt: skip
    _ok(entry_point("eval.py", f"run={run_dir}", f"input={labelled}",
                    f"output={tmp_path / 'eval' / 'scores.csv'}"))  # fmt: skip
    _ok(entry_point("export.py", f"run={run_dir}", f"output={tmp_path / 'model.onnx'}"))
    explain = f"hydra.run.dir={tmp_path / 'explain'}"
    _ok(entry_point("explain.py", f"run={run_dir}", "explain.n_events=50",
                    "explain.n_background=20", explain))  # fmt: skip
    for made in ("scores.csv", "model.onnx"):
        assert (tmp_path / made).is_file(), made


def test_a_resolver_call_left_in_a_saved_config_is_named_with_its_file_and_key(bce_run, tmp_path):
    """Runs written before configs were saved self-contained still hold `${hydra:...}`: the
    refusal names the file and the key, not only the key."""
    run_dir = tmp_path / "run"
    shutil.copytree(bce_run, run_dir)
    config = run_dir / ".hydra" / "config.yaml"
    saved = OmegaConf.load(config)
    saved.data.generator = "${hydra:runtime.choices.data}"
    OmegaConf.save(saved, config)
    with pytest.raises(RunFolderError) as refused:
        RunFolder(run_dir).config()
    assert str(config) in str(refused.value) and "data.generator" in str(refused.value)
