"""The apply tools' vocabulary: one ApplyRequest, `scorer` and `cut_by` (old keys deprecated),
and the loss configs that pull their tuned settings from conf/tuned/."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf.errors import MissingMandatoryValue

from amsaware.inference import ApplyRequest
from tests.helpers import compose_config

APPLY_CONFIGS = ("predict", "eval", "explain", "export")


def test_a_request_checks_its_options_and_holds_paths():
    request = ApplyRequest("runs/a", "events.csv", scorer="folds", cut_by="fraction")
    assert request.run == Path("runs/a") and request.input == Path("events.csv")
    assert request.output is None and request.tree is None
    with pytest.raises(ValueError, match=r"scorer must be one of \('final', 'folds'\)"):
        ApplyRequest("runs/a", scorer="bag")
    with pytest.raises(ValueError, match=r"cut_by must be one of \('threshold', 'fraction'\)"):
        ApplyRequest("runs/a", cut_by="median")


@pytest.mark.parametrize("name", APPLY_CONFIGS)
def test_each_apply_config_gives_a_request_with_the_new_names(name):
    given = ["input=x.csv"] if name in ("predict", "eval") else []
    cfg = compose_config(name, "run=runs/a", "scorer=folds", *given)
    request = ApplyRequest.from_config(cfg)
    assert request.run == Path("runs/a") and request.scorer == "folds"
    assert request.cut_by == "threshold"


@pytest.mark.parametrize("name", ["predict", "eval", "explain"])
def test_the_old_keys_still_work_with_one_warning_line_each(name, caplog):
    cfg = compose_config(name, "run=runs/a", "input=x.csv", "ensemble=folds", "cut=fraction")
    with caplog.at_level(logging.WARNING, logger="amsaware.inference"):
        request = ApplyRequest.from_config(cfg)
    assert (request.scorer, request.cut_by) == ("folds", "fraction")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "ensemble=folds is deprecated: write scorer=folds",
        "cut=fraction is deprecated: write cut_by=fraction",
    ]


def test_export_reads_the_old_ensemble_key(caplog):
    cfg = compose_config("export", "run=runs/a", "ensemble=final")
    with caplog.at_level(logging.WARNING, logger="amsaware.inference"):
        assert ApplyRequest.from_config(cfg).scorer == "final"
    assert "ensemble=final is deprecated" in caplog.text


def test_a_mandatory_key_left_unset_is_named():
    with pytest.raises(MissingMandatoryValue, match="input"):
        ApplyRequest.from_config(compose_config("predict", "run=runs/a"))


def test_old_and_new_keys_that_disagree_are_refused():
    cfg = compose_config("predict", "run=r", "input=x", "ensemble=folds", "scorer=final")
    with pytest.raises(ValueError, match="ensemble=folds and scorer=final disagree"):
        ApplyRequest.from_config(cfg)


def test_evaluation_does_not_import_the_training_protocol():
    code = "import sys, amsaware.evaluation; print('amsaware.protocol' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


# --- the tuned settings: conf/tuned/, pulled by each loss ---------------------------------------


@pytest.mark.parametrize(
    ("loss", "layers", "hidden", "batch"),
    [("bce", 5, 384, 64), ("ams", 2, 448, 256), ("asimov", 2, 448, 256), ("deltaz", 2, 448, 256)],
)
def test_loss_x_selects_x_tuned_settings(loss, layers, hidden, batch):
    cfg = compose_config("train", f"loss={loss}")
    assert (cfg.model.n_layers, cfg.model.hidden_size, cfg.data.batch_size) == (
        layers,
        hidden,
        batch,
    )
    # The loss node holds the loss only.
    assert cfg.loss._target_.startswith("amsaware.losses.")
    assert not {"model", "optimizer", "data", "tuned"} & set(cfg.loss)


def test_tuned_settings_are_a_group_of_their_own():
    cfg = compose_config("train", "loss=ams", "tuned@_global_=bce")
    assert cfg.loss._target_ == "amsaware.losses.SoftAMSLoss"
    assert (cfg.model.n_layers, cfg.model.hidden_size, cfg.data.batch_size) == (5, 384, 64)
    # Later groups still override them, and so does the command line.
    smoke = compose_config("train", "loss=ams", "model.hidden_size=32")
    assert smoke.model.hidden_size == 32


def test_the_tuned_group_is_not_part_of_a_search_fingerprint():
    """It follows from the loss (whose values the fingerprint holds): existing studies keep
    their default names."""
    from amsaware.search import fingerprint

    cfg = compose_config("train", "hparams_search=optuna", "loss=ams", hydra_config=True)
    values = fingerprint(cfg, list(cfg.hydra.sweeper.params))
    assert not [key for key in values if "tuned" in key]
    assert values["choices.loss"] == "ams" and values["loss.b_reg"] == 10.0
