"""Does the fold ensemble beat the final fit on test events? Paired runs on the real sample.

    python benchmarks/fold_ensemble.py [--sample PATH] [--seeds 0 1 2] [--loss bce ams]

The development sample (the CERN file's first 12,000 events) has training events only
(KaggleSet t), so each seed splits it, stratified by label, into 2/3 training (t) and 1/3 test
events (half b, half v), writes that as a CERN file and runs `train.py data=opendata
ensemble=both`: the same folds and cut then score the
test events with the final fit (`test/...`) and with the mean of the fold models
(`test_folds/...`). Per seed, a paired bootstrap of the two scorers on the same test events
(`amsaware.stats`, the comparison's, 1000 resamples) gives the difference's 95% CI; across
seeds the mean difference and its spread. Prints both; writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from amsaware.stats import RunScores, bootstrap, differences

REPO = Path(__file__).resolve().parents[1]
#: The CERN file's first 12,000 events; docs/development-sample.md says how to make it.
SAMPLE = Path("atlas-higgs-sample.csv.gz")
NAMES = ("auroc", "auroc_weighted", "ams", "ams_max", "ams_public", "ams_private")


def split_sample(sample: Path, seed: int, folder: Path) -> Path:
    frame = pd.read_csv(sample)
    train, test = train_test_split(
        np.arange(len(frame)), test_size=1 / 3, stratify=frame.Label, random_state=seed
    )
    public, _ = train_test_split(
        test, test_size=0.5, stratify=frame.Label.iloc[test], random_state=seed
    )
    frame["KaggleSet"] = "v"
    frame.loc[train, "KaggleSet"] = "t"
    frame.loc[public, "KaggleSet"] = "b"
    path = folder / f"split{seed}.csv.gz"
    frame.to_csv(path, index=False)
    return path


def run(path: Path, loss: str, seed: int, folder: Path, extra: list[str]) -> dict:
    run_dir = folder / f"{loss}-{seed}"
    command = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={run_dir}",
        "data=opendata",
        f"data.path={path}",
        "data.download=false",
        f"loss={loss}",
        f"seed={seed}",
        "ensemble=both",
        "callbacks.progress_bar=null",
        *extra,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "final": {n: metrics["test"][f"test/{n}"] for n in NAMES},
        "folds": {n: metrics["test_folds"][f"test_folds/{n}"] for n in NAMES},
        "bootstrap": paired_bootstrap(run_dir, path, metrics["cut"]),
        "cut_fraction": metrics["cut"]["fraction"],
        "seconds": metrics["run"]["seconds"],
    }


def paired_bootstrap(run_dir: Path, path: Path, cut: dict) -> dict:
    """Fold ensemble minus final fit on the same test events: each statistic's difference,
    95% CI and one-sided p-value, over 1000 paired resamples."""
    events = pd.read_csv(path, usecols=["EventId", "Label", "KaggleWeight"]).set_index("EventId")
    runs = []
    for name, file in (("final", "test_predictions.csv"), ("folds", "test_predictions_folds.csv")):
        scores = pd.read_csv(run_dir / file)
        runs.append(RunScores(name, scores.score.to_numpy(), cut[f"threshold_{name}"]))
    test = events.loc[scores.EventId]
    label = (test.Label == "s").to_numpy(np.int64)
    sample = bootstrap(runs, label, test.KaggleWeight.to_numpy(), n_resamples=1000, seed=0)
    return {
        d.statistic: {"diff": d.observed, "ci": [d.ci_low, d.ci_high], "p": d.p_value}
        for d in differences(sample)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loss", nargs="+", default=["bce"])
    parser.add_argument("--out", type=Path, default=Path("fold_ensemble.json"))
    parser.add_argument("extra", nargs="*", help="more train.py overrides, e.g. threads=1")
    args = parser.parse_args()
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed in args.seeds:
            path = split_sample(args.sample, seed, folder)
            for loss in args.loss:
                result = run(path, loss, seed, folder, args.extra)
                results.setdefault(loss, []).append({"seed": seed, **result})
                cells = "  ".join(
                    f"{n} {result['final'][n]:.4f}->{result['folds'][n]:.4f}" for n in NAMES
                )
                print(f"{loss} seed {seed}: {cells}", flush=True)
                for name, d in result["bootstrap"].items():
                    low, high = d["ci"]
                    print(f"  folds - final {name}: {d['diff']:+.4f} [{low:+.4f}, {high:+.4f}]")
    for loss, rows in results.items():
        for name in NAMES:
            diff = np.array([r["folds"][name] - r["final"][name] for r in rows])
            sd = diff.std(ddof=1) if len(diff) > 1 else float("nan")
            print(
                f"{loss} {name}: folds - final = {diff.mean():+.4f} +- {sd:.4f} (sd, "
                f"{len(diff)} seeds; folds better in {int((diff > 0).sum())})"
            )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
