"""Scale: training throughput and peak memory against the number of events, and reading a
CERN-format file of the real size.

    python benchmarks/scale.py [--sizes 50000 250000 1000000 4000000] [--accelerator cpu|gpu]
        [--out scale.json]

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own. For each size: synthetic events generated, the fold's preprocessing fitted, then one
training epoch of the paper's AMS configuration (2 x 448, batch 256) through Lightning, timed.
Then an 818,238-event file in the CERN Open Data format (synthetic values, gzipped) is written
once and read with `read_cern`, reporting the reader's peak memory.

Targets (issue 6): throughput flat within 20% from 250k events up, memory linear in events,
reading the 818k-event file under 2 GB peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CERN_EVENTS = 818_238


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def train_epoch(n_events: int, accelerator: str = "cpu") -> dict:
    """One training epoch on `n_events` synthetic events (2/3 of them in the training fold)."""
    import logging
    import warnings

    import lightning as L
    import torch

    from amsaware.data.datamodule import HiggsDataModule, stratified_folds
    from amsaware.data.synthetic import generate
    from amsaware.losses import SoftAMSLoss
    from amsaware.model import MLP, SignificanceClassifier

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec")
    table = generate(n_events, seed=1)
    train_index, _ = stratified_folds(table.label, 3, seed=1)[0]
    datamodule = HiggsDataModule(table, 256, seed=1, train_index=train_index)
    torch.manual_seed(0)
    module = SignificanceClassifier(
        MLP(table.features.shape[1], 2, 448, 0.187),
        SoftAMSLoss(),
        lambda params: torch.optim.Adam(params, lr=1.08e-3),
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=accelerator,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    return {
        "events": n_events,
        "train_events": len(train_index),
        "epoch_s": seconds,
        "events_per_s": len(train_index) / seconds,
        "peak_mb": _peak_mb(),
    }


def write_cern_file(path: Path, n_events: int) -> None:
    """A synthetic file with the CERN Open Data columns, -999 placeholders and KaggleSets."""
    import numpy as np
    import pandas as pd

    from amsaware.data.schema import FEATURES, MISSING
    from amsaware.data.synthetic import generate

    table = generate(n_events, seed=2)
    frame = pd.DataFrame(np.nan_to_num(table.features, nan=MISSING), columns=list(FEATURES))
    frame.insert(0, "EventId", table.event_id)
    frame["Weight"] = table.weight
    frame["Label"] = np.where(table.label == 1, "s", "b")
    shares = [0.31, 0.12, 0.55, 0.02]  # roughly the real file's t/b/v/u split
    frame["KaggleSet"] = np.random.default_rng(0).choice(["t", "b", "v", "u"], n_events, p=shares)
    frame["KaggleWeight"] = table.weight
    frame.to_csv(path, index=False, float_format="%.6g", compression="gzip")


def read_file(path: Path) -> dict:
    from amsaware.data.formats import read_cern

    started = time.perf_counter()
    table = read_cern(path)
    return {
        "events": len(table),
        "read_s": time.perf_counter() - started,
        "peak_mb": _peak_mb(),
        "file_mb": path.stat().st_size / 2**20,
    }


def _in_subprocess(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sizes = [50_000, 250_000, 1_000_000, 4_000_000]
    parser.add_argument("--sizes", type=int, nargs="+", default=sizes)
    parser.add_argument("--out", type=Path, default=Path("scale.json"))
    parser.add_argument("--accelerator", default="cpu", help="Lightning's: cpu or gpu")
    parser.add_argument("--_train", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_read", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._train:
        print(json.dumps(train_epoch(args._train, args.accelerator)))
        return
    if args._read:
        print(json.dumps(read_file(args._read)))
        return

    print(f"{'events':>9s} {'train ev/s':>11s} {'epoch s':>8s} {'peak MB':>8s}")
    training = []
    for n in args.sizes:
        row = _in_subprocess("--_train", str(n), "--accelerator", args.accelerator)
        training.append(row)
        print(f"{n:9d} {row['events_per_s']:11.0f} {row['epoch_s']:8.1f} {row['peak_mb']:8.0f}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "atlas-higgs-challenge-2014-v2-synthetic.csv.gz"
        write_cern_file(path, CERN_EVENTS)
        reading = _in_subprocess("--_read", str(path))
    print(
        f"read_cern of {reading['events']} events ({reading['file_mb']:.0f} MB gzipped): "
        f"{reading['read_s']:.1f} s, peak {reading['peak_mb']:.0f} MB"
    )
    args.out.write_text(json.dumps({"training": training, "reading": reading}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
