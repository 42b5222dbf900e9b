"""Every loss of the `loss` group trains end to end as train.py runs it (tiny, seconds each)."""

import json

import pytest

from tests.helpers import run

NEW_LOSSES = {
    "asimov": ["loss=asimov", "loss.objective=inv_z2"],
    "deltaz": ["loss=deltaz"],
    "ams-options": [
        "loss=ams",
        "loss.normalisation=batch",
        "loss.temperature=5",
        "loss.squared=true",
    ],
}


@pytest.mark.parametrize("overrides", NEW_LOSSES.values(), ids=NEW_LOSSES.keys())
def test_train_runs_with_each_loss(tmp_path, overrides):
    run_dir = tmp_path / "run"
    run(run_dir, *overrides, "final_fit=false", "data.n_train=900", "~logger")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    oof = metrics["cv"]["oof"]
    assert 0.0 <= oof["oof/auroc"] <= 1.0 and oof["oof/ams_max"] >= 0.0
    target = {"asimov": "AsimovLoss", "deltaz": "DeltaZBarLoss"}
    name = overrides[0].split("=")[1]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"amsaware.losses.{target.get(name, 'SoftAMSLoss')}" in config
