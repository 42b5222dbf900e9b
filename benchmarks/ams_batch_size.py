"""What batch size does the batch-normalised soft AMS need? (issue 4)

The batch-rescaled soft AMS estimates the full-data s and b from one batch; small batches make
that estimate noisy (and collapsed to selecting 1-2% of events in earlier measurements). This
trains the seed paper's AMS network with `SoftAMSLoss(normalisation="batch")` at several batch
sizes for the same number of gradient steps (about 300), 3-fold out-of-fold on the real sample,
and writes docs/ams_batch_size.json, which `loss_verdict.py --page-only` adds to the page.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ams_batch_size.py \
        --real atlas-higgs-sample.csv.gz   # the CERN file's first 12,000 events

(docs/development-sample.md says how to make that file from a clone.)
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
from loss_verdict import FOLDS, REPO, oof_scores, summarise

from amsaware import run_folder
from amsaware.data.formats import read_cern

#: The seed paper's AMS network and learning rate (docs/formulas.md).
PAPER_NET = {"n_layers": 2, "hidden_size": 448, "dropout": 0.18657792297018724}
PAPER_LR = 0.0010795586890825545


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", default="atlas-higgs-sample.csv.gz")
    parser.add_argument("--json", default=str(REPO / "docs/ams_batch_size.json"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096, 8000])
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per fold")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    table = read_cern(args.real)
    n_train = len(table) * (FOLDS - 1) // FOLDS
    rows = []
    for batch_size in args.batch_sizes:
        steps_per_epoch = math.ceil(n_train / batch_size)
        epochs = max(1, round(args.steps / steps_per_epoch))
        started = time.process_time()
        net = {**PAPER_NET, "lr": PAPER_LR, "batch_size": batch_size}
        loss = {"normalisation": "batch"}
        scores = oof_scores(table, "ams_batch", net, loss, epochs, args.seed)
        row = {"batch_size": batch_size, "epochs": epochs, "steps": epochs * steps_per_epoch}
        row.update(summarise(scores, table), cpu_seconds=round(time.process_time() - started, 1))
        logging.info("%s", {k: round(v, 3) for k, v in row.items()})
        rows.append(row)
        run_folder.write_json(
            {"seed": args.seed, "network": PAPER_NET, "rows": rows}, Path(args.json)
        )


if __name__ == "__main__":
    main()
