"""Cost of the INFERNO loss alone against the soft-AMS loss, and of their training steps.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/inferno_cost.py [--batches 1024 4096]
        [--repeats 200] [--steps 50] [--device cpu|cuda] [--out FILE]

- loss only (here): the median over `--repeats` of one forward + backward of `InfernoLoss` (10
  bins, 2 shape nuisances, so 5 logit rows, 3 background processes with a normalisation
  nuisance each; the Fisher and the autograd-Hessian variants) against
  `amsaware.losses.SoftAMSLoss` (batch normalisation), on logits that require grad: what the
  likelihood's few-parameter Hessian adds, without the network;
- step: one training step of `loss=inferno` and `loss=ams` (and `loss=bce`) with
  `systematics=higgs`, as a run trains, timed by benchmarks/throughput.py's `step_seconds`
  (the one implementation; `python benchmarks/throughput.py --part steps` runs it alone).

The issue's target is an INFERNO step within 2 x a soft-AMS step. Timings on a loaded machine
mean nothing: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch

from amsaware.inferno import InfernoLoss
from amsaware.losses import SoftAMSLoss

SHAPES = ("tes", "jes")
PROCESSES = ("ztautau", "ttbar", "wjets")
NORMS = {"ztautau": 0.05, "ttbar": 0.1, "wjets": 0.2}


def _median_seconds(fn: Callable[[], None], repeats: int, device: str) -> float:
    for _ in range(min(10, repeats)):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_seconds(batch: int, repeats: int, device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Median seconds of one forward + backward of each loss alone at one batch size."""
    g = torch.Generator().manual_seed(seed)
    rows = 1 + 2 * len(SHAPES)
    target = (torch.rand(batch, generator=g) < 0.3).long().to(device)
    weight = (torch.rand(batch, generator=g) + 0.01).to(device)
    process = torch.randint(0, len(PROCESSES), (batch,), generator=g).to(device)
    logits = torch.randn(rows, batch, generator=g).to(device).requires_grad_(True)
    ams = SoftAMSLoss(normalisation="batch")
    inferno = {
        method: InfernoLoss(shapes=SHAPES, processes=PROCESSES, norms=NORMS, method=method)
        for method in ("fisher", "hessian")
    }

    def loss_step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            logits.grad = None
            fn().backward()

        return step

    variants = {
        "loss soft-AMS": loss_step(lambda: ams(logits[0], target, weight)),
        "loss INFERNO fisher": loss_step(
            lambda: inferno["fisher"](logits, target, weight, process)
        ),
        "loss INFERNO hessian": loss_step(
            lambda: inferno["hessian"](logits, target, weight, process)
        ),
    }
    return {name: _median_seconds(fn, repeats, device) for name, fn in variants.items()}


def main(argv: Sequence[str] | None = None) -> None:
    from throughput import STEP_LOSSES, step_seconds

    from amsaware.data.synthetic import generate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=200, help="timings of each loss alone")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps (0: none)")
    parser.add_argument("--events", type=int, default=100_000, help="events the steps train on")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", help="write the timings as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")
    table = generate(args.events, seed=1) if args.steps else None
    results = {}
    for batch in args.batches:
        timings = loss_seconds(batch, args.repeats, args.device)
        if table is not None:
            for name in STEP_LOSSES:
                seconds = step_seconds(name, table, batch, args.steps, torch.device(args.device))
                timings[f"step {name}"] = seconds
        results[batch] = timings
        for name, seconds in timings.items():
            print(f"batch {batch:>5}  {name:<22} {seconds * 1e3:8.3f} ms")
        print(
            f"batch {batch:>5}  loss ratio INFERNO fisher / soft-AMS: "
            f"{timings['loss INFERNO fisher'] / timings['loss soft-AMS']:.2f}"
        )
        if table is not None:
            ratio = timings["step inferno"] / timings["step ams"]
            print(f"batch {batch:>5}  step ratio INFERNO / soft-AMS: {ratio:.2f} (target <= 2)")
    if args.out:
        machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
        with open(args.out, "w") as f:
            json.dump({"device": args.device, "machine": machine, "timings": results}, f, indent=2)


if __name__ == "__main__":
    main()
