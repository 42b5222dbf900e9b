"""Where a training step's time goes: torch's profiler over one fold's training steps.

    python benchmarks/profile_step.py [--config bce|ams] [--steps 300] [--parallel]
        [--threads N] [--out profile_step.json]

Runs `--steps` steps of the paper's configuration (BCE 5 x 384 at batch 64, AMS 2 x 448 at
batch 256) through the real DataModule and LightningModule (or the fold-parallel module with
`--parallel`) under `torch.profiler`, after a warm-up, and prints the operators by self CPU
time, grouped: matrix multiplies (forward and backward), the optimizer, the loss and
activations, and everything else (framework, Python, data slicing). It answers whether a step
is bound by arithmetic (matmuls dominate) or by overhead.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

from amsaware.data.datamodule import HiggsDataModule, stratified_folds
from amsaware.data.synthetic import generate
from amsaware.losses import BCELoss, SoftAMSLoss
from amsaware.model import MLP, SignificanceClassifier
from amsaware.parallel import FoldParallelClassifier, FoldParallelDataModule, StackedMLP

CONFIGS = {
    "bce": {"n_layers": 5, "hidden": 384, "dropout": 0.1, "batch": 64, "loss": BCELoss},
    "ams": {"n_layers": 2, "hidden": 448, "dropout": 0.187, "batch": 256, "loss": SoftAMSLoss},
}
OPTIMIZER: dict = {}
GROUPS = {
    "matmul": ("addmm", "mm", "bmm", "baddbmm", "matmul", "linear"),
    "optimizer": ("adam", "_foreach", "lerp", "addcmul", "addcdiv", "sqrt"),
    "loss and activations": ("relu", "threshold", "dropout", "bernoulli", "sigmoid", "binary"),
}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS.items():
        if any(key in lowered for key in keys):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="bce")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--parallel", action="store_true", help="3 fold models at once")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--adam", choices=["default", "foreach", "fused"], default="default")
    parser.add_argument("--out", type=Path, default=Path("profile_step.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.adam != "default":
        OPTIMIZER[args.adam] = True
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec")

    config = CONFIGS[args.config]
    table = generate(60_000, seed=1)
    folds = stratified_folds(table.label, 3, seed=1)
    modules = [
        HiggsDataModule(table, config["batch"], k, train_index=train, val_index=val)
        for k, (train, val) in enumerate(folds)
    ]
    nets = [
        MLP(table.features.shape[1], config["n_layers"], config["hidden"], config["dropout"])
        for _ in folds
    ]

    def optimizer(params):
        return torch.optim.Adam(params, lr=1e-3, **OPTIMIZER)

    if args.parallel:
        module = FoldParallelClassifier(StackedMLP(nets), config["loss"](), optimizer)
        datamodule = FoldParallelDataModule(modules)
    else:
        module = SignificanceClassifier(nets[0], config["loss"](), optimizer)
        datamodule = modules[0]

    def trainer(steps: int) -> L.Trainer:
        return L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )

    trainer(30).fit(module, datamodule=datamodule)  # warm-up
    started = time.perf_counter()
    trainer(args.steps).fit(module, datamodule=datamodule)
    wall_ms = (time.perf_counter() - started) * 1e3 / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer(args.steps).fit(module, datamodule=datamodule)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for event in events:
        group = group_of(event.key)
        groups[group] = groups.get(group, 0) + event.self_cpu_time_total
    models = 3 if args.parallel else 1
    print(
        f"{args.config}, {'3 folds at once' if args.parallel else 'one fold'}, {args.steps} steps"
    )
    print(f"{wall_ms:.2f} ms wall per step, unprofiled ({models} model(s) per step)")
    print(
        f"{total / 1e3 / args.steps:.2f} ms per step inside torch operators (profiled), by group:"
    )
    for group, micros in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"  {group:<22} {100 * micros / total:5.1f}%")
    print("top operators by self CPU time:")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        share = 100 * event.self_cpu_time_total / total
        print(f"  {event.key:<40} {share:5.1f}%  {event.count} calls")
    result = {
        "config": args.config,
        "parallel": args.parallel,
        "steps": args.steps,
        "wall_ms_per_step": wall_ms,
        "operator_ms_per_step": total / 1e3 / args.steps,
        "groups": {g: micros / total for g, micros in groups.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
