"""Fold-parallel cross-validation: the stacked model, its batches, and the protocol it serves."""

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from amsaware.data.datamodule import HiggsDataModule, ShuffledBatches, stratified_folds
from amsaware.inference import load_scorer
from amsaware.losses import BCELoss, SoftAMSLoss
from amsaware.model import MLP, SignificanceClassifier
from amsaware.parallel import FoldBatches, FoldParallelClassifier, StackedMLP
from amsaware.protocol import cross_validate
from tests.helpers import METRIC_NAMES, quiet_trainer, run


def mlps(k=3, n_features=6, n_layers=2, hidden=8, dropout=0.0):
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(MLP(n_features, n_layers, hidden, dropout))
    return nets


def test_each_stacked_model_computes_what_its_mlp_does():
    nets = mlps()
    stacked = StackedMLP(nets).eval()
    x = torch.randn(3, 5, 6)
    expected = torch.stack([net.eval()(x[k]) for k, net in enumerate(nets)])
    torch.testing.assert_close(stacked(x), expected)
    for net, back in zip(nets, stacked.unstack(), strict=True):
        for a, b in zip(net.state_dict().values(), back.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_stacked_models_draw_their_own_dropout_masks():
    stacked = StackedMLP(mlps(dropout=0.5)).train()
    x = torch.randn(1, 64, 6).expand(3, 64, 6)  # the same events for every model
    logits = stacked(x)
    assert stacked.dropout == 0.5
    assert not torch.equal(logits[0], logits[1])


def test_only_one_architecture_of_mlps_can_be_stacked():
    with pytest.raises(TypeError, match=r"cv\.parallel=true stacks amsaware\.model\.MLP"):
        StackedMLP([nn.Linear(3, 1)])
    with pytest.raises(ValueError, match="one architecture"):
        StackedMLP([MLP(6, 2, 8, 0.0), MLP(6, 3, 8, 0.0)])


def test_a_folds_gradient_comes_from_its_own_loss_only():
    stacked = StackedMLP(mlps())
    module = FoldParallelClassifier(stacked, BCELoss(), partial(torch.optim.SGD, lr=0.1))
    x = torch.randn(3, 4, 6)
    target = torch.tensor([[1, 0, 1, 0]] * 3)
    weight = torch.ones(3, 4, dtype=torch.float64)
    # Fold 2 has no rows in this step: its weights must get a zero gradient.
    module.training_step((x, target, weight, (4, 3, 0)), 0).backward()
    grads = [w.grad for w in stacked.weights]
    assert all(g[0].abs().sum() > 0 and g[1].abs().sum() > 0 for g in grads)
    assert all(torch.equal(g[2], torch.zeros_like(g[2])) for g in grads)
    # Fold 1's padding row (index 3) changes nothing: same gradient as its 3 real rows alone.
    alone = mlps()[1]
    loss = BCELoss()(alone(x[1, :3]), target[1, :3], weight[1, :3])
    loss.backward()
    torch.testing.assert_close(grads[0][1], alone[0].weight.grad.T)


def test_fold_batches_keep_each_folds_own_order_and_pad_the_short_ones():
    sizes = (10, 9, 8)
    tensors = [
        (torch.randn(n, 2), torch.arange(n), torch.ones(n, dtype=torch.float64)) for n in sizes
    ]
    folds = FoldBatches([ShuffledBatches(t, 4, seed=k) for k, t in enumerate(tensors)])
    reference = [list(ShuffledBatches(t, 4, seed=k)) for k, t in enumerate(tensors)]
    batches = list(folds)
    assert len(batches) == 3
    assert [b[3] for b in batches] == [(4, 4, 4), (4, 4, 4), (2, 1, 0)]
    for step, (x, target, _, counts) in enumerate(batches):
        for k, n in enumerate(counts):
            if n:
                assert torch.equal(target[k, :n], reference[k][step][1])
                assert torch.equal(x[k, :n], reference[k][step][0])


def factories(table, loss, optimizer, dropout=0.0, compile_mode=None):
    def make_module():
        net = MLP(len(table.feature_names), 2, 16, dropout)
        return SignificanceClassifier(net, loss, optimizer, compile_mode=compile_mode)

    def make_trainer(stages):
        return quiet_trainer(2)

    return make_module, make_trainer


@pytest.mark.parametrize("loss", [BCELoss(), SoftAMSLoss()], ids=["bce", "ams"])
def test_parallel_folds_give_the_sequential_out_of_fold_scores(small_table, loss):
    """SGD, dropout 0: the same models up to float rounding (Adam amplifies rounding, see
    amsaware.parallel)."""
    make = factories(small_table, loss, partial(torch.optim.SGD, lr=0.05))
    sequential = cross_validate(small_table, 3, 128, 3, *make)
    parallel = cross_validate(small_table, 3, 128, 3, *make, parallel=True)
    assert np.array_equal(sequential.fold, parallel.fold)
    np.testing.assert_allclose(parallel.scores, sequential.scores, atol=1e-5)
    for seq, par in zip(sequential.fold_metrics, parallel.fold_metrics, strict=True):
        assert par["val/auroc"] == pytest.approx(seq["val/auroc"], abs=1e-4)


def test_parallel_folds_score_test_events_with_each_fold_model(small_table):
    make = factories(small_table, BCELoss(), partial(torch.optim.SGD, lr=0.05))
    test = small_table.subset(np.arange(500))
    sequential = cross_validate(small_table, 2, 128, 3, *make, test=test)
    parallel = cross_validate(small_table, 2, 128, 3, *make, test=test, parallel=True)
    np.testing.assert_allclose(parallel.test_scores, sequential.test_scores, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_compiled_training_gives_the_eager_scores(small_table, parallel):
    """`compile=default` (what `reduce-overhead` is on a CPU) trains the same models."""
    table = small_table.subset(np.arange(1200))
    optimizer = partial(torch.optim.SGD, lr=0.05)
    eager = cross_validate(table, 2, 128, 3, *factories(table, BCELoss(), optimizer))
    make = factories(table, BCELoss(), optimizer, compile_mode="default")
    compiled = cross_validate(table, 2, 128, 3, *make, parallel=parallel)
    np.testing.assert_allclose(compiled.scores, eager.scores, atol=1e-5)


def test_the_loaders_tensors_live_on_the_training_device(small_table):
    train_index, val_index = stratified_folds(small_table.label, 3, 0)[0]
    datamodule = HiggsDataModule(small_table, 64, 0, train_index=train_index, val_index=val_index)
    meta = torch.device("meta")  # any device other than the host's shows the move
    strategy = SimpleNamespace(root_device=meta)
    datamodule.trainer = SimpleNamespace(strategy=strategy, global_rank=0, world_size=1)
    datamodule.setup("fit")
    assert all(t.device == meta for t in next(iter(datamodule.train_dataloader())))
    assert all(t.device == meta for t in next(iter(datamodule.val_dataloader())))
    # The host copies stay for scoring after the fit.
    assert all(t.device.type == "cpu" for t in datamodule.val_tensors)


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "parallel"
    run(run_dir, "cv.parallel=true", "ensemble=both")
    return run_dir


def test_parallel_run_writes_every_stage_like_the_sequential_one(parallel_run):
    for stage in ("fold0", "fold1", "fold2", "final"):
        assert (parallel_run / "checkpoints" / stage / "last.ckpt").is_file()
        assert (parallel_run / "checkpoints" / stage / "preprocessing.json").is_file()
        events = EventAccumulator(str(parallel_run / "tensorboard" / stage))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert "train/loss" in tags
        if stage != "final":
            assert {"val/loss", *(f"val/{name}" for name in METRIC_NAMES)} <= tags
            assert len(events.Scalars("val/auroc")) == 2  # one per epoch (experiment=smoke)
        # The x axis is the epoch, as in sequential mode.
        assert [e.step for e in events.Scalars("train/loss")] == [0, 1]


def test_parallel_runs_fold_models_reproduce_its_fold_ensemble(parallel_run):
    import pandas as pd

    from amsaware.data.synthetic import make_dataset
    from tests.conftest import DEFAULT_GENERATOR

    scorer = load_scorer(parallel_run, "folds")
    test = make_dataset(1500, 1100, DEFAULT_GENERATOR, 42).test
    written = pd.read_csv(parallel_run / "test_predictions_folds.csv")
    np.testing.assert_allclose(scorer.score(test), written["score"].to_numpy(), atol=1e-6)


def test_from_module_trains_the_folds_as_the_sequential_module_would():
    template = SignificanceClassifier(
        mlps()[0],
        SoftAMSLoss(normalisation="batch"),
        partial(torch.optim.Adam, lr=1e-3),
        s_tot=2.0,
        b_tot=30.0,
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
        phase=1,
    )
    stacked = StackedMLP(mlps())
    module = FoldParallelClassifier.from_module(template, stacked)
    assert module.net is stacked and module.loss is template.loss
    assert module.optimizer_factory is template.optimizer_factory
    assert module.scheduler_factory is template.scheduler_factory
    assert (module.totals, module.phase) == ((2.0, 30.0), 1)
    assert module.compile_mode is None
    assert len(module.val_metrics) == len(module.train_loss) == 3
    ams = [metrics["ams"] for metrics in module.val_metrics]
    assert all((m.s_tot, m.b_tot) == (2.0, 30.0) for m in ams)
