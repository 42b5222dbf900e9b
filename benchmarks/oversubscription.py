"""Processes sharing cores: the time per training step when two trainings run at once.

    python benchmarks/oversubscription.py [--steps 400] [--out oversubscription.json]

Each case starts one or two fresh Python processes, each timing `--steps` Adam steps of the
paper's BCE network (5 x 384, batch 64, on random data) with a given number of torch threads
and `OMP_WAIT_POLICY`. torch's OpenMP threads spin while they wait for work (the default
policy), which is fastest for one process alone and wasteful when processes share the cores;
`PASSIVE` makes them sleep instead. The table says which setting to give concurrent jobs
(parallel search trials, DDP on a CPU): this is the measurement behind the advice on `threads`
in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STEP = """
import time, torch
from torch import nn
torch.set_num_threads({threads})
torch.manual_seed(0)
layers = [m for _ in range(5) for m in (nn.LazyLinear(384), nn.ReLU())]
net = nn.Sequential(*layers, nn.Linear(384, 1))
x, y = torch.randn(64, 30), torch.rand(64, 1)
optimizer = torch.optim.Adam(net.parameters())
def step():
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()
for _ in range(20):
    step()
started = time.perf_counter()
for _ in range({steps}):
    step()
print((time.perf_counter() - started) / {steps} * 1e3)
"""

CASES = [  # (processes at once, torch threads each, OMP_WAIT_POLICY)
    (1, 2, None),
    (1, 2, "PASSIVE"),
    (1, 1, None),
    (2, 2, None),
    (2, 2, "PASSIVE"),
    (2, 1, None),
]


def run_case(processes: int, threads: int, policy: str | None, steps: int) -> list[float]:
    """Milliseconds per step of each of `processes` simultaneous processes."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = STEP.format(threads=threads, steps=steps)
    running = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return [float(p.communicate()[0].strip()) for p in running]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("oversubscription.json"))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; BCE 5 x 384, batch 64, Adam; ms per step of each process")
    print(f"{'processes':>9} {'threads':>7} {'OMP_WAIT_POLICY':>15}  ms per step")
    rows = []
    for processes, threads, policy in CASES:
        times = run_case(processes, threads, policy, args.steps)
        rows.append(
            {"processes": processes, "threads": threads, "policy": policy, "ms_per_step": times}
        )
        shown = " / ".join(f"{t:.2f}" for t in times)
        print(f"{processes:>9} {threads:>7} {policy or 'default':>15}  {shown}")
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
