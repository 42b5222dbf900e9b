"""Cost of an INFERNO step against a soft-AMS step at the same batch size.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/inferno_cost.py [--batches 256 1024]
        [--repeats 200] [--device cpu|cuda] [--out FILE]

Two timings per batch size, each the median over `--repeats` of one forward + backward:

- loss only: `InfernoLoss` (10 bins, 2 shape nuisances, so 5 logit rows, 3 background
  processes with a normalisation nuisance each; Fisher and autograd-Hessian variants) against
  `amsaware.losses.SoftAMSLoss` (batch normalisation) on logits that require grad;
- step: the seed paper's soft-AMS network (MLP 2 x 448 on 30 features) forward on the batch,
  the loss, backward and an Adam step; INFERNO runs the network on the nominal batch and its
  4 shifted copies (5 x the events), which is what a training step with precomputed shifted
  copies costs.

- module step: the same through the project's `SignificanceClassifier.training_step`, on
  batches laid out as the datamodule serves them (INFERNO: the shifted rows (n, V, d) and
  per-row weights that `loss=inferno systematics=...` trains on).

The issue's target is an INFERNO step within 2 x a soft-AMS step. Timings on a loaded machine
mean nothing: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from amsaware.inferno import InfernoLoss
from amsaware.losses import SoftAMSLoss
from amsaware.model import MLP

SHAPES = ("tes", "jes")
PROCESSES = ("ztautau", "ttbar", "wjets")
NORMS = {"ztautau": 0.05, "ttbar": 0.1, "wjets": 0.2}
N_FEATURES = 30


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


def measure(batch: int, repeats: int, device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Median seconds of each variant at one batch size (see the module docstring)."""
    from amsaware.data.datamodule import Needs, ShiftedCopies
    from amsaware.data.systematics import Systematics
    from amsaware.model import SignificanceClassifier

    g = torch.Generator().manual_seed(seed)
    rows = 1 + 2 * len(SHAPES)
    target = (torch.rand(batch, generator=g) < 0.3).long().to(device)
    weight = (torch.rand(batch, generator=g) + 0.01).to(device)
    process = torch.randint(0, len(PROCESSES), (batch,), generator=g).to(device)
    x = torch.randn(rows, batch, N_FEATURES, generator=g).to(device)
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

    torch.manual_seed(seed)
    net = MLP(N_FEATURES, 2, 448, 0.0).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train_step(n_rows: int, loss: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            optimiser.zero_grad()
            out = net(x[:n_rows].reshape(-1, N_FEATURES)).reshape(n_rows, batch)
            loss(out).backward()
            optimiser.step()

        return step

    # The project's training step (`SignificanceClassifier.training_step`) on batches laid out
    # as the datamodule serves them: soft-AMS on (x, target, weight); INFERNO on the shifted
    # rows (n, V, d) with per-row weights (V, n), as `loss=inferno systematics=...` trains.
    x_rows = x.permute(1, 0, 2).contiguous()
    w_rows = weight.unsqueeze(-1).expand(batch, rows).contiguous()
    modules = {
        "soft-AMS": SignificanceClassifier(net, ams, optimizer={"class": "Adam", "lr": 1e-3}),
        "INFERNO": SignificanceClassifier(
            net,
            inferno["fisher"],
            optimizer={"class": "Adam", "lr": 1e-3},
            needs=Needs(ShiftedCopies(Systematics(), PROCESSES)),
        ),
    }
    batches = {
        "soft-AMS": (x[0], target, weight),
        "INFERNO": (x[0], target, weight, process, x_rows, w_rows),
    }

    def module_step(name: str) -> Callable[[], None]:
        module = modules[name].to(device)

        def step() -> None:
            optimiser.zero_grad()
            module.training_step(batches[name], 0).backward()
            optimiser.step()

        return step

    variants = {
        "module step soft-AMS": module_step("soft-AMS"),
        "module step INFERNO": module_step("INFERNO"),
        "loss soft-AMS": loss_step(lambda: ams(logits[0], target, weight)),
        "loss INFERNO fisher": loss_step(
            lambda: inferno["fisher"](logits, target, weight, process)
        ),
        "loss INFERNO hessian": loss_step(
            lambda: inferno["hessian"](logits, target, weight, process)
        ),
        "step soft-AMS": train_step(1, lambda out: ams(out[0], target, weight)),
        "step INFERNO fisher": train_step(
            rows, lambda out: inferno["fisher"](out, target, weight, process)
        ),
    }
    return {name: _median_seconds(fn, repeats, device) for name, fn in variants.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", help="write the timings as JSON here")
    args = parser.parse_args(argv)
    results = {}
    for batch in args.batches:
        timings = measure(batch, args.repeats, args.device)
        results[batch] = timings
        for name, seconds in timings.items():
            print(f"batch {batch:>5}  {name:<22} {seconds * 1e3:8.3f} ms")
        print(
            f"batch {batch:>5}  step ratio INFERNO / soft-AMS: "
            f"{timings['step INFERNO fisher'] / timings['step soft-AMS']:.2f}"
        )
    if args.out:
        machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
        with open(args.out, "w") as f:
            json.dump({"device": args.device, "machine": machine, "timings": results}, f, indent=2)


if __name__ == "__main__":
    main()
