"""The network parameterised by the shape nuisances (model=mlp_nuisance, `NuisanceMLP`): its
pulls as inputs, the training batches that carry them, the fit's templates scored at +-1,
nominal scoring everywhere else, and the refusals."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_run, quiet_trainer, run

from amsaware.checks import ConfigError, check_config
from amsaware.data.datamodule import HiggsDataModule, Needs, PriorDraws, nuisance_inputs
from amsaware.data.systematics import Systematics
from amsaware.fit_stage import HeldOutScores, variation_inputs
from amsaware.losses import BCELoss
from amsaware.model import NuisanceMLP, SignificanceClassifier, predict_logit
from amsaware.phase import raw_scorer

SETTINGS = Systematics()  # tes and jes 3%, three normalisations


def settings_of(*overrides):
    return check_config(compose_run(Path("unused"), *overrides))


def _net(n_features, n_nuisances=2):
    torch.manual_seed(0)
    return NuisanceMLP(n_features, n_nuisances, 1, 16, 0.0)


def test_scores_depend_on_the_pulls_and_default_to_nominal():
    net = _net(5).eval()
    x = torch.randn(64, 5)
    nominal = net(x)
    assert nominal.shape == (64,)
    torch.testing.assert_close(net(x, torch.zeros(2)), nominal)  # None means pulls 0
    assert not torch.allclose(net(x, torch.tensor([1.0, 0.0])), nominal)
    per_event = torch.tensor([1.0, -1.0]).expand(64, 2)
    torch.testing.assert_close(net(x, per_event), net(x, torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match="n_nuisances"):
        NuisanceMLP(5, 0, 1, 16, 0.0)


def test_training_batches_carry_the_draws_pulls(small_table):
    half = np.arange(len(small_table)) % 2 == 0
    datamodule = HiggsDataModule(small_table, 512, 0, np.flatnonzero(half), np.flatnonzero(~half))
    needs = Needs(PriorDraws(SETTINGS, grid=4, pulls=True))
    net = _net(small_table.features.shape[1])
    module = SignificanceClassifier(net, BCELoss(), {"class": "Adam", "lr": 1e-3}, needs=needs)
    trainer = quiet_trainer(limit_train_batches=0, limit_val_batches=0)
    trainer.strategy.connect(module)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    x_grid = datamodule._train_batches.tensors[0]
    grid_pulls = datamodule._train_batches.inputs
    assert grid_pulls.shape == (4, 2)
    for x, target, weight, pulls in datamodule.train_dataloader():
        # the batch's pulls are those of the draw its events were shifted by
        g = int(torch.nonzero((grid_pulls == pulls).all(-1))[0])
        assert x.shape[1] == x_grid.shape[2] and pulls.shape == (2,)
        drawn = [bool((x_grid[:, k] == x[0]).all(-1).any()) for k in range(4)]
        assert drawn[g] and sum(drawn) < 4
        assert torch.isfinite(module.training_step((x, target, weight, pulls), 0))
    # the step feeds them to the network: the loss changes with them
    loss = module.training_step((x, target, weight, pulls), 0)
    assert not torch.isclose(loss, module.training_step((x, target, weight, pulls + 3), 0))
    # validation stays nominal: three tensors, no pulls
    assert len(datamodule._val_device_tensors) == 3


def test_soft_met_input_is_the_drawn_width():
    pulls = torch.tensor([[-0.5, -2.0], [1.0, 1.5]])
    got = nuisance_inputs(pulls, ("tes", "soft_met"))
    torch.testing.assert_close(got, torch.tensor([[-0.5, 2.0], [1.0, 1.5]]))
    inputs = variation_inputs(("tes", "soft_met"))
    np.testing.assert_array_equal(inputs["soft_met_down"], [0.0, 0.0])  # its down: nominal
    np.testing.assert_array_equal(inputs["soft_met_up"], [0.0, 1.0])


def test_fit_templates_are_scored_at_plus_minus_one_pulls(small_table):
    held = HeldOutScores(small_table, SETTINGS)
    received = {}

    def score(features, pulls):
        received[tuple(pulls)] = features
        return np.full(len(features), pulls @ np.array([1.0, 10.0]))

    held.add(np.arange(len(small_table)), score, takes_pulls=True)
    assert set(received) == {(0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)}
    fit_input = held.fit_input()
    np.testing.assert_allclose(fit_input.score, 0.0)
    by_name = {shape.name: shape for shape in fit_input.shapes}
    np.testing.assert_allclose(by_name["tes"].down, -1.0)
    np.testing.assert_allclose(by_name["jes"].up, 10.0)
    # ... and the events shifted with them: the tau pT of the tes templates differs
    tau = small_table.feature_names.index("PRI_tau_pt")
    down, up = received[(-1.0, 0.0)][:, tau], received[(1.0, 0.0)][:, tau]
    assert np.nanmean(down) < np.nanmean(up)


def test_a_plain_network_scorer_ignores_the_pulls(small_table):
    from amsaware.model import MLP

    datamodule = HiggsDataModule(small_table, 256, 0)
    plain = raw_scorer(MLP(small_table.features.shape[1], 1, 8, 0.0), datamodule)
    features = small_table.features[:50]
    np.testing.assert_array_equal(plain(features, np.ones(2)), plain(features))
    nuisance = raw_scorer(_net(small_table.features.shape[1]), datamodule)
    assert not np.allclose(nuisance(features, np.array([1.0, 0.0])), nuisance(features))
    np.testing.assert_allclose(nuisance(features, np.zeros(2)), nuisance(features))


def test_refusals():
    with pytest.raises(ConfigError, match="augment=systematics"):
        settings_of("model=mlp_nuisance")
    with pytest.raises(ConfigError, match="augment=systematics"):
        settings_of("model=mlp_nuisance", "systematics=higgs")
    with pytest.raises(ConfigError, match=r"model\.n_nuisances=2"):
        settings_of(
            "model=mlp_nuisance", "systematics=higgs", "augment=systematics", "model.n_nuisances=3"
        )
    with pytest.raises(ConfigError, match="loss=inferno"):
        settings_of(
            "model=mlp_nuisance", "systematics=higgs", "augment=systematics", "loss=inferno"
        )
    with pytest.raises(ConfigError, match=r"finetune\.loss=inferno"):
        settings_of(
            "model=mlp_nuisance", "systematics=higgs", "augment=systematics", "finetune=inferno"
        )
    chosen = settings_of("model=mlp_nuisance", "systematics=higgs", "augment=systematics")
    assert chosen.augment is not None


@pytest.mark.slow
def test_a_run_fits_reloads_predicts_and_exports_at_nominal_pulls(tmp_path):
    from amsaware.inference import load_scorer, load_stage, training_events
    from amsaware.run_folder import RunFolder

    run_dir = tmp_path / "run"
    metrics = run(
        run_dir, "model=mlp_nuisance", "systematics=higgs", "augment=systematics",
        "augment.grid=2", "fit.toys=0", "~logger",
    )  # fmt: skip
    assert np.isfinite(metrics["cv"]["oof"]["oof/ams_max"])
    assert np.isfinite(metrics["fit"]["fit/sigma_mu"])
    # the run folder rebuilds the parameterised network; its scores are the nominal ones
    stage = load_stage(run_dir, "final")
    assert isinstance(stage.net, NuisanceMLP) and stage.net.n_nuisances == 2
    table, _ = training_events(run_dir)
    features = table.features[:200]
    x = torch.from_numpy(stage.preprocessing.transform(features))
    nominal = predict_logit(stage.net, x, pulls=torch.zeros(2)).numpy()
    np.testing.assert_allclose(stage.logit(features), nominal)
    assert not np.allclose(stage.logit(features, np.array([3.0, 0.0])), nominal)
    scorer = load_scorer(run_dir, "final")
    scores, _ = scorer.score_and_logit(table)
    assert np.isfinite(scores).all()
    # the checkpoint rebuilds the same network
    ckpt = RunFolder(run_dir).stage_files("final")["checkpoint"][0]
    loaded = SignificanceClassifier.load_from_checkpoint(ckpt)
    assert isinstance(loaded.net, NuisanceMLP) and loaded.net.n_nuisances == 2
    torch.testing.assert_close(loaded.net.eval()(x), stage.net(x))
    # SHAP explains the features at the nominal pulls (the network's own zeros)
    pytest.importorskip("shap")
    from amsaware import explain
    from amsaware.inference import ApplyRequest

    summary = explain.explain(
        ApplyRequest(run_dir, scorer="final"), tmp_path / "explain", n_events=20, n_background=10
    )
    assert summary["scorer"] == "final"
    values = pd.read_csv(tmp_path / "explain" / explain.region_file(explain.SHAP_VALUES, "all"))
    assert len(values) == 20 and np.isfinite(values.drop(columns="EventId").to_numpy()).all()
    # the ONNX graph appends the nominal pulls itself: one input, the raw features
    ort = pytest.importorskip("onnxruntime")
    from amsaware.export import export

    path = export(run_dir, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    got = session.run(None, {"features": features.astype(np.float32)})[0]
    expected = scorer.score_and_logit(table)[0][:200]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
