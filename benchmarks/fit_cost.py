"""Fit cost: the wall time of one run's binned fit (amsaware.fit) on a realistic model.

    python benchmarks/fit_cost.py [--events 40000] [--bins 10] [--toys 1000] [--workers 2]
        [--out fit_cost.json]

The model is what a training run on the full sample fits: `--bins` bins of a classifier score,
a signal and three background processes, a normalisation nuisance on each background (5%, 10%,
20%), three shape nuisances (events' scores shifted by -1/+1 sigma, 1% of the events failing the
selection after a shift) and the Monte Carlo statistical uncertainty (staterror) in every bin.
The events are synthetic (Gaussian logits per process), since only the model's size matters here.

Timed, in this process: building the binning, templates and workspace; the Asimov fit (MINOS on
mu with nuisances profiled and fixed, and the two discovery significances); the likelihood scan
(21 points, profiled and fixed); the nuisance ranking (pulls and impacts); and `--toys`
pseudo-experiments with `--workers` processes. Goals on an idle machine: fit + scan + impacts
under 10 s; 1000 toys under 3 minutes on 2 CPU cores. The toys' coverage, mean interval width
and FAIR score are printed too (they should sit near 0.6827 for this well-behaved model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from amsaware import fit

PROCESSES = {  # name: (events, expected yield, logit centre)
    "signal": (0.1, 300.0, 1.5),
    "ztt": (0.5, 5000.0, -1.0),
    "top": (0.25, 2000.0, -0.6),
    "diboson": (0.15, 800.0, -0.3),
}
NORMS = {"ztt": 0.05, "top": 0.1, "diboson": 0.2}
SHAPES = {"tes": 0.08, "jes": 0.04, "met": 0.02}


def synthetic(events: int, rng: np.random.Generator) -> fit.FitInput:
    """Held-out events of four processes with three shape nuisances and three norms."""
    counts = {p: max(1, int(share * events)) for p, (share, _, _) in PROCESSES.items()}
    process = np.repeat(list(counts), list(counts.values()))
    score = np.concatenate([rng.normal(PROCESSES[p][2], 1, n) for p, n in counts.items()])
    weight = np.concatenate([np.full(n, PROCESSES[p][1] / n) for p, n in counts.items()])
    shapes = []
    for name, size in SHAPES.items():
        step = size * (1 + rng.normal(0, 0.3, len(score)))
        shapes.append(
            fit.ShapeVariation(
                name,
                score - step,
                score + step,
                down_selected=rng.random(len(score)) > 0.01,
                up_selected=rng.random(len(score)) > 0.01,
            )
        )
    return fit.FitInput(score, weight, process, "signal", shapes, NORMS)


def timed(what: str, times: dict[str, float], call, *args, **kwargs):
    start = time.perf_counter()
    out = call(*args, **kwargs)
    times[what] = round(time.perf_counter() - start, 3)
    print(f"{what}: {times[what]:.2f} s", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--toys", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = synthetic(args.events, rng)
    times: dict[str, float] = {}

    def build() -> dict:
        signal = data.process == "signal"
        binning = fit.choose_binning(data.score, data.weight, signal, args.bins)
        return fit.workspace(fit.build_templates(data, binning), mc_stat=True)

    spec = timed("workspace", times, build)
    result = timed("asimov_fit", times, fit.asimov_fit, spec)
    timed("likelihood_scan", times, fit.likelihood_scan, spec)
    timed("ranking", times, fit.ranking, spec)
    times["fit_scan_ranking"] = round(
        times["asimov_fit"] + times["likelihood_scan"] + times["ranking"], 3
    )
    toys = timed("toys", times, fit.pseudo_experiments, spec, args.toys, rng, workers=args.workers)
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "bins": result.n_bins,
        "parameters": len(result.labels),
        "seconds": times,
        "fit": result.as_metrics(),
        "toys": toys.as_metrics(),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
