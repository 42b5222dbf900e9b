"""The weighted metrics under DDP: 2 CPU processes (gloo) give the single-process values.

Each rank holds a different, unevenly sized shard of the events; the metrics' `cat` states are
gathered across ranks before computing, so the AMS curve and the weighted AUC see every event.
"""

import json
import socket

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amsaware.metrics import classification_metrics

WORLD = 2


def events(n: int = 3001) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    target = (torch.rand(n, generator=generator) < 0.35).long()
    preds = (0.3 * target + 0.7 * torch.rand(n, generator=generator)).double()
    weight = torch.where(target == 1, 0.002, 1.5) * (0.5 + torch.rand(n, generator=generator))
    return preds, target, weight.double()


def shards(n: int) -> list[slice]:
    cut = n // 3  # uneven on purpose: 1000 and 2001 events
    return [slice(0, cut), slice(cut, n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, results: dict) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        preds, target, weight = events()
        rows = shards(len(preds))[rank]
        metrics = classification_metrics("val/")
        # two updates per rank, as over validation batches
        half = rows.start + (rows.stop - rows.start) // 2
        for part in (slice(rows.start, half), slice(half, rows.stop)):
            metrics.update(preds=preds[part], target=target[part], weight=weight[part])
        results[rank] = {name: float(value) for name, value in metrics.compute().items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_under_ddp_equal_the_single_process_values():
    preds, target, weight = events()
    single = classification_metrics("val/")
    single.update(preds=preds, target=target, weight=weight)
    expected = {name: float(value) for name, value in single.compute().items()}

    # A single shard's values differ, so the comparison below can tell a missing gather.
    alone = classification_metrics("val/")
    rows = shards(len(preds))[0]
    alone.update(preds=preds[rows], target=target[rows], weight=weight[rows])
    assert float(alone.compute()["val/ams_max"]) != pytest.approx(expected["val/ams_max"])

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(_free_port(), results), nprocs=WORLD, join=True)
        results = dict(results)
    for rank in range(WORLD):
        assert results[rank] == pytest.approx(expected, rel=1e-9, abs=1e-12), rank


@pytest.mark.slow
def test_train_py_under_ddp_shards_each_epoch_and_writes_one_run_folder(tmp_path):
    """trainer=ddp on 2 CPU processes: each trains on half of every epoch, the validation
    metrics gathered from both shards equal the main process's evaluation of the whole fold,
    and the run folder is written once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from amsaware.data.datamodule import stratified_folds
    from amsaware.data.synthetic import make_dataset
    from tests.conftest import DEFAULT_GENERATOR
    from tests.helpers import train

    run_dir = tmp_path / "ddp"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "threads=1"]
    train(run_dir, *ddp, "callbacks.progress_bar=null")
    metrics = json.loads((run_dir / "metrics.json").read_text())

    events = EventAccumulator(str(run_dir / "tensorboard" / "fold0"))
    events.Reload()
    for name in ("val/auroc", "val/auroc_weighted", "val/ams_max"):
        last = events.Scalars(name)[-1].value  # the gathered metric after the last epoch
        assert last == pytest.approx(metrics["cv"]["folds"][0][name], rel=1e-5), name

    train_table = make_dataset(1500, 1100, DEFAULT_GENERATOR, 42).train  # helpers.TINY's data
    n_fold0 = len(stratified_folds(train_table.label, 3, 42)[0][0])
    steps = torch.load(run_dir / "checkpoints" / "fold0" / "last.ckpt", weights_only=True)
    assert steps["global_step"] == 2 * -(-(n_fold0 // 2) // 64)  # 2 epochs of half the fold

    assert sorted(p.name for p in run_dir.glob("*.log")) == [
        "train.log",
        "train_ddp_process_1.log",
    ]
    assert not list(run_dir.rglob("*.tmp"))
    assert len(pd.read_csv(run_dir / "oof_predictions.csv")) == 1500
