"""Framework tax: training events per second of this framework against a hand-written loop;
and what one training step costs under each loss (INFERNO's against soft AMS's).

    python benchmarks/throughput.py [--events 250000] [--repeats 3] [--device cpu|cuda]
        [--compile MODE] [--part framework|steps|both] [--step-batches 1024 4096]
        [--step-events 100000] [--steps 50] [--out throughput.json]

For the seed paper's two configurations (BCE: 5 x 384 at batch 64; soft AMS: 2 x 448 at batch
256), one training epoch over the training rows of one fold (2/3 of `--events` synthetic
events) is timed two ways in the same process, interleaved `--repeats` times:

- framework: Lightning's Trainer fitting `SignificanceClassifier` on `HiggsDataModule`, with
  the project's loss and the `train/loss` metric (validation, logging, checkpoints and the
  progress bar off, as they are not per-step costs);
- hand loop: the same model, loss and Adam over the same tensors, one permutation per epoch,
  slices, forward, backward, step.

The median ratio (hand-loop throughput / framework throughput) is the framework's tax; the
issue's targets are <= 1.15 at batch 256 and <= 1.3 at batch 64 on CPU. `--device cuda` runs
both on the GPU (the framework through `accelerator=gpu`, its data moved to the device once
per fit; the hand loop over device tensors, synchronised before the clock stops);
`--compile MODE` gives the framework `compile_mode` (e.g. reduce-overhead).

Steps (`--part steps`, `step_seconds`): the median wall time of one training step (Lightning's,
batch fetch included) of `loss=bce`, `loss=ams` (soft AMS) and `loss=inferno`, each with
`systematics=higgs` and built from conf/ exactly as a run builds it, on the same network (the
seed paper's soft-AMS MLP, 2 x 448) at each of `--step-batches`. INFERNO's batches then carry
every event nominal and at -1/+1 sigma of each shape nuisance (5 rows: the network runs on 5 x
the events) and its loss is the variance of mu from the batch's binned likelihood, a Hessian of
a few parameters. The issue's target: an INFERNO step within 2 x a soft-AMS step at the same
batch size (the `inferno/ams` ratio). benchmarks/inferno_cost.py times the losses alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from amsaware.data.datamodule import HiggsDataModule, stratified_folds
from amsaware.data.schema import EventTable
from amsaware.data.synthetic import generate
from amsaware.losses import BCELoss, SoftAMSLoss
from amsaware.model import MLP, SignificanceClassifier

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "bce 5x384 batch 64": dict(
        n_layers=5, hidden_size=384, dropout=0.256, lr=2.67e-4, batch=64, loss=BCELoss
    ),
    "ams 2x448 batch 256": dict(
        n_layers=2, hidden_size=448, dropout=0.187, lr=1.08e-3, batch=256, loss=SoftAMSLoss
    ),
}


def make_module(
    n_features: int, cfg: dict, compile_mode: str | None = None
) -> SignificanceClassifier:
    torch.manual_seed(0)
    net = MLP(n_features, cfg["n_layers"], cfg["hidden_size"], cfg["dropout"])
    return SignificanceClassifier(
        net,
        cfg["loss"](),
        lambda params: torch.optim.Adam(params, lr=cfg["lr"]),
        compile_mode=compile_mode,
    )


def framework_epoch(
    datamodule: HiggsDataModule, cfg: dict, device: torch.device, compile_mode: str | None
) -> float:
    module = make_module(datamodule.train_tensors[0].shape[1], cfg, compile_mode)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return time.perf_counter() - started


def hand_epoch(datamodule: HiggsDataModule, cfg: dict, seed: int, device: torch.device) -> float:
    module = make_module(datamodule.train_tensors[0].shape[1], cfg)
    net, loss_fn = module.net.to(device), module.loss
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    x, y, w = (t.to(device) for t in datamodule.train_tensors)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    net.train()
    order = torch.randperm(len(x), generator=generator).to(device)
    xs, ys, ws = x[order], y[order], w[order]
    for start in range(0, len(x), cfg["batch"]):
        end = start + cfg["batch"]
        loss = loss_fn(net(xs[start:end]), ys[start:end], ws[start:end])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


#: The losses `step_seconds` times (conf/loss/<name>.yaml), each with systematics=higgs.
STEP_LOSSES = ("bce", "ams", "inferno")
#: The one network of every loss's step: the seed paper's soft-AMS MLP.
STEP_NET = dict(n_layers=2, hidden_size=448, dropout=0.187)


def loss_module(loss: str, table: EventTable) -> SignificanceClassifier:
    """`train.py loss=<loss> systematics=higgs`'s module around `STEP_NET`, built from conf/ as
    a run builds it (`amsaware.experiment.build_module`): INFERNO with the nuisances of the
    systematics group and the table's background processes, its batches carrying the shifted
    copies (`ShiftedCopies`); BCE and soft AMS on plain batches."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from amsaware.data.systematics import background_processes
    from amsaware.experiment import build_module
    from amsaware.settings import Settings

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={loss}", "systematics=higgs", "threads=null"])
    with open_dict(cfg):
        cfg.paths.output_dir = "."  # ${hydra:...} resolves only inside a Hydra job
    settings = Settings.from_config(cfg)
    torch.manual_seed(0)
    net = MLP(table.features.shape[1], **STEP_NET)
    totals = (table.s_tot, table.b_tot)
    return build_module(settings, cfg, net, None, totals, background_processes(table))


class StepClock(L.Callback):
    """The wall time between consecutive training batches' ends: one step, its batch fetch and
    the shifting of the batch included (synchronised on a GPU)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.ends.append(time.perf_counter())


def step_seconds(
    loss: str,
    table: EventTable,
    batch: int,
    steps: int,
    device: torch.device,
    warmup: int = 5,
) -> float:
    """The median seconds of one training step of `loss_module(loss)` at batch size `batch`
    over `steps` steps after `warmup` (the epoch restarts when the table runs out)."""
    module = loss_module(loss, table)
    datamodule = HiggsDataModule(table, batch, seed=1)
    clock = StepClock()
    trainer = L.Trainer(
        max_steps=warmup + steps + 1,
        max_epochs=-1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)][warmup:]
    if not gaps:
        raise ValueError(f"{loss}: no step timed (raise --steps)")
    return statistics.median(gaps)


def step_costs(
    batches: list[int], events: int, steps: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per batch size: each loss's median step seconds and the ratio INFERNO / soft AMS."""
    table = generate(events, seed=1)
    print(f"steps: {events} events, network {STEP_NET}, systematics=higgs, {steps} steps each")
    print(
        f"{'batch':>6s} "
        + " ".join(f"{name + ' ms':>11s}" for name in STEP_LOSSES)
        + "  inferno/ams"
    )
    results = {}
    for batch in batches:
        timings = {name: step_seconds(name, table, batch, steps, device) for name in STEP_LOSSES}
        ratio = timings["inferno"] / timings["ams"]
        results[str(batch)] = {**{f"{k}_s": v for k, v in timings.items()}, "inferno/ams": ratio}
        shown = " ".join(f"{timings[name] * 1e3:11.2f}" for name in STEP_LOSSES)
        print(f"{batch:6d} {shown}  {ratio:11.2f}")
    return results


def framework_costs(
    events: int, repeats: int, device: torch.device, compile_mode: str | None
) -> tuple[int, dict[str, dict]]:
    """The framework's tax per configuration of `CONFIGS` (module docstring)."""
    table = generate(events, seed=1)
    train_index, _ = stratified_folds(table.label, 3, seed=1)[0]
    n_train = len(train_index)
    print(f"{n_train} training events, {torch.get_num_threads()} torch threads, {platform.node()}")
    print(f"{'configuration':22s} {'framework ev/s':>15s} {'hand ev/s':>10s} {'ratio':>6s}")
    results = {}
    for name, cfg in CONFIGS.items():
        datamodule = HiggsDataModule(table, cfg["batch"], seed=1, train_index=train_index)
        ratios, framework, hand = [], [], []
        for repeat in range(repeats):
            t_framework = framework_epoch(datamodule, cfg, device, compile_mode)
            t_hand = hand_epoch(datamodule, cfg, seed=repeat, device=device)
            framework.append(n_train / t_framework)
            hand.append(n_train / t_hand)
            ratios.append(t_framework / t_hand)
        results[name] = {
            "framework_events_per_s": statistics.median(framework),
            "hand_events_per_s": statistics.median(hand),
            "median_ratio": statistics.median(ratios),
            "ratios": ratios,
        }
        r = results[name]
        print(
            f"{name:22s} {r['framework_events_per_s']:15.0f} {r['hand_events_per_s']:10.0f} "
            f"{r['median_ratio']:6.3f}"
        )
    return n_train, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", default=None, help="the framework's torch.compile mode")
    parser.add_argument("--part", choices=["framework", "steps", "both"], default="both")
    parser.add_argument("--step-batches", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--step-events", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per loss and batch")
    parser.add_argument("--out", type=Path, default=Path("throughput.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")

    payload: dict = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "machine": platform.platform(),
        "device": str(device),
        "compile": args.compile,
    }
    if args.part in ("framework", "both"):
        payload["n_train"], payload["results"] = framework_costs(
            args.events, args.repeats, device, args.compile
        )
    if args.part in ("steps", "both"):
        payload["steps"] = {
            "events": args.step_events,
            "network": STEP_NET,
            "timed_steps": args.steps,
            "by_batch": step_costs(args.step_batches, args.step_events, args.steps, device),
        }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
