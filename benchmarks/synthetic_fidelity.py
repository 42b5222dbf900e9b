"""How faithful is a synthetic generator to real labelled events, where this project looks?

    python benchmarks/synthetic_fidelity.py --real FILE [--generator physics copula]
        [--models bce ams] [--seed S] [--epochs E] [--threads T] [--output JSON]
    python benchmarks/synthetic_fidelity.py --sizes [N ...] [--generator physics] ...

FILE is a CERN-format file with labels whose KaggleSet 't' rows are the comparison (the first
12,000 events of the CERN Open Data file, say). Each generator makes a training set of the
challenge's size and keeps as many of its first events as FILE has (so their weights have the
scale of FILE's), written in the CERN format, so that both go through the same reader and the
same `train.py`. Reported per generator, against the same numbers on FILE:

- the seed paper's models, each trained by `train.py` itself (`loss=bce`: 5x384, batch 64,
  unweighted BCE; `loss=ams`: 2x448, batch 256, soft AMS), 3-fold CV, no final fit: the
  out-of-fold AUC, the AMS at the top 15% and the AMS at the cut `train.py` chooses (the
  smoothed out-of-fold AMS curve's maximum). Targets: each AMS within 10% of FILE's, and the
  BCE AUC within 0.02;
- per class, the out-of-fold AUC of a gradient-boosting classifier trained to tell the
  synthetic events from FILE's (3-fold; 0.5 = indistinguishable). Target: < 0.75;
- per feature and class, the Kolmogorov-Smirnov distance (defined values), and the share of
  undefined DER_mass_MMC.

`--sizes` instead runs `train.py loss=bce` (with its final fit and 550,000 labelled test
events) on N synthetic training events for each N (default 12,000, 50,000 and 250,000) and
reports the out-of-fold AMS at the chosen cut and the test AMS there. Target at 250,000 events
(the default size): test AMS 3.3-4.0, where the challenge's real single networks are.

Every run is a `train.py` run folder under --workdir (kept: its metrics.json and predictions
are the raw numbers; the real file's runs are reused by a later call with the same file, seed
and epochs); the summary is printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from amsaware.data.formats import read_cern
from amsaware.data.schema import FEATURES, MISSING, EventTable
from amsaware.data.synthetic import GENERATORS, make_dataset
from amsaware.run_folder import write_json

REPO = Path(__file__).resolve().parents[1]
CLASSES = {1: "signal", 0: "background"}
#: The seed paper's two models, as `loss=...` selects them.
MODELS = ("bce", "ams")
TARGET_DISCRIMINATOR_AUC = 0.75
TARGET_AMS_RELATIVE = 0.10
TARGET_AUC_GAP = 0.02
TARGET_TEST_AMS_250K = (3.3, 4.0)
DEFAULT_SIZES = (12_000, 50_000, 250_000)
#: Training events of the challenge (KaggleSet t), over which KaggleWeight sums to the totals.
TRAINING_SET_SIZE = 250_000


# ---------------------------------------------------------------------------------------------
# train.py runs


def train_run(run_dir: Path, overrides: list[str], threads: int, reuse: bool = False) -> dict:
    """Run `train.py` with `overrides` into `run_dir` and return its metrics.

    With `reuse`, a finished run already in `run_dir` is read instead (the real file's runs:
    they do not change while a generator is being tuned); otherwise the folder is replaced.
    """
    metrics = run_dir / "metrics.json"
    if not (reuse and metrics.exists()):
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [
            sys.executable,
            "train.py",
            f"hydra.run.dir={run_dir}",
            f"threads={threads}",
            "~logger",
            # without a logger, Lightning's own checkpoints (cv.parallel) go to its root dir
            f"++trainer.default_root_dir={run_dir}",
            *overrides,
        ]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"train.py {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    return json.loads(metrics.read_text("utf-8"))


def development_like(generator: str, n_events: int, seed: int) -> EventTable:
    """The first `n_events` of a synthetic training set of the challenge's size (250,000).

    The real comparison sample is the first events of the CERN file, whose KaggleWeight sums to
    the full totals over all 250,000 training events, so its weights are ~1/20 of what a
    12,000-event set normalised on its own would carry. Losses that use raw weights (the soft
    AMS) see that scale; taking the synthetic events the same way gives them the same scale.
    """
    train = make_dataset(max(n_events, TRAINING_SET_SIZE), 0, generator, seed).train
    return train.subset(np.arange(n_events))


def write_cern_like(table: EventTable, path: Path) -> None:
    """Write labelled events in the CERN file's columns (KaggleSet t), -999 where undefined."""
    # float64 rounded to the files' 3 decimals: the float32 values read back are unchanged
    features = np.round(table.features.astype(np.float64), 3)
    frame = pd.DataFrame(np.nan_to_num(features, nan=MISSING), columns=FEATURES)
    frame.insert(0, "EventId", table.event_id)
    frame["Weight"] = table.weight
    frame["Label"] = np.where(table.label == 1, "s", "b")
    frame["KaggleSet"] = "t"
    frame["KaggleWeight"] = table.weight
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def data_overrides(source: str | Path, n_events: int | None) -> list[str]:
    """`train.py` overrides for a CERN file (KaggleSet t) or a named generator's events."""
    if isinstance(source, Path):
        return ["data=opendata", f"data.path={source.resolve()}", "data.download=false"]
    return ["data=synthetic", f"data.generator={source}", f"data.n_train={n_events}"]


def test_metrics(metrics: dict) -> dict[str, float]:
    """Test AUC and AMS at the chosen cut, of the final fit or (ensemble=folds) the folds'."""
    test = metrics.get("test") or metrics.get("test_folds")
    if test is None:
        raise ValueError("the run scored no test events (final_fit=false?)")
    prefix = "test/" if "test" in metrics else "test_folds/"
    return {"test_ams": test[f"{prefix}ams"], "test_auroc": test[f"{prefix}auroc"]}


def model_metrics(metrics: dict) -> dict[str, float]:
    oof = metrics["cv"]["oof"]
    return {
        "auroc": oof["oof/auroc"],
        "ams@15%": oof["oof/ams@15%"],
        "ams_cut": metrics["cut"]["ams"],
        "cut_fraction": metrics["cut"]["fraction"],
    }


# ---------------------------------------------------------------------------------------------
# distribution distances


def ks_table(real: EventTable, synth: EventTable) -> dict[str, dict[str, float]]:
    """KS distance per feature and class, over the values defined in both."""
    table: dict[str, dict[str, float]] = {}
    for k, name in enumerate(real.feature_names):
        row = {}
        for cls, cls_name in CLASSES.items():
            a = real.features[real.label == cls, k]
            b = synth.features[synth.label == cls, k]
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            row[cls_name] = float(ks_2samp(a, b).statistic) if len(a) and len(b) else float("nan")
        table[name] = row
    return table


def discriminator_auc(real: EventTable, synth: EventTable, seed: int) -> dict[str, float]:
    """Out-of-fold AUC of HistGradientBoosting separating synthetic from real, per class."""
    result = {}
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    for cls, name in [*CLASSES.items(), (None, "all")]:
        a = real.features if cls is None else real.features[real.label == cls]
        b = synth.features if cls is None else synth.features[synth.label == cls]
        x = np.concatenate([a, b])
        origin = np.repeat([0, 1], [len(a), len(b)])
        model = HistGradientBoostingClassifier(random_state=seed)
        score = cross_val_predict(model, x, origin, cv=folds, method="predict_proba")[:, 1]
        result[name] = float(roc_auc_score(origin, score))
    return result


def mmc_undefined(table: EventTable) -> dict[str, float]:
    mmc = table.feature_names.index("DER_mass_MMC")
    return {
        name: float(np.isnan(table.features[table.label == cls, mmc]).mean())
        for cls, name in CLASSES.items()
    }


# ---------------------------------------------------------------------------------------------
# the two modes


def targets(real: dict[str, dict], synth: dict[str, dict], disc: dict[str, float]) -> dict:
    """Each target with the synthetic value, the real one and whether it is met."""
    out: dict[str, dict] = {}
    for model in synth:
        for metric in ("ams@15%", "ams_cut"):
            r, s = real[model][metric], synth[model][metric]
            deviation = s / r - 1
            out[f"{model} {metric}"] = {
                "real": r,
                "synthetic": s,
                "deviation": deviation,
                "met": abs(deviation) <= TARGET_AMS_RELATIVE,
            }
    if "bce" in synth:
        r, s = real["bce"]["auroc"], synth["bce"]["auroc"]
        out["bce auroc"] = {
            "real": r,
            "synthetic": s,
            "deviation": s - r,
            "met": abs(s - r) <= TARGET_AUC_GAP,
        }
    for cls in CLASSES.values():
        out[f"discriminator {cls}"] = {
            "synthetic": disc[cls],
            "met": disc[cls] < TARGET_DISCRIMINATOR_AUC,
        }
    return out


def fidelity(args: argparse.Namespace) -> dict:
    """Compare each generator with the real file at equal size (see the module docstring)."""
    real = read_cern(args.real)
    if not real.labelled:
        raise ValueError(f"{args.real}: the fidelity benchmark needs labelled events")
    if real.kaggle_set is not None:
        real = real.subset(np.flatnonzero(real.kaggle_set == "t"))
    n = len(real)
    common = ["final_fit=false", f"seed={args.seed}", f"trainer.max_epochs={args.epochs}"]
    result: dict = {
        "real": str(args.real),
        "n_events": n,
        "seed": args.seed,
        "epochs": args.epochs,
        "models": list(args.models),
        "mmc_undefined_real": mmc_undefined(real),
    }
    real_models = {}
    for model in args.models:
        run_dir = args.workdir / f"real-{args.real.name}-{model}-seed{args.seed}-e{args.epochs}"
        overrides = [f"loss={model}", *data_overrides(args.real, None), *common]
        metrics = train_run(run_dir, [*overrides, *args.override], args.threads, reuse=True)
        real_models[model] = model_metrics(metrics)
    result["real_models"] = real_models
    result["generators"] = {}
    for generator in args.generator:
        start = time.process_time()
        synth = development_like(generator, n, args.seed)
        generation_cpu_s = time.process_time() - start
        path = args.workdir / f"{generator}-seed{args.seed}.csv.gz"
        write_cern_like(synth, path)
        models = {}
        for model in args.models:
            run_dir = args.workdir / f"{generator}-{model}"
            overrides = [f"loss={model}", *data_overrides(path, None), *common, *args.override]
            models[model] = model_metrics(train_run(run_dir, overrides, args.threads))
        disc = discriminator_auc(real, synth, args.seed)
        result["generators"][generator] = {
            "generation_cpu_s": round(generation_cpu_s, 3),
            "mmc_undefined": mmc_undefined(synth),
            "ks": ks_table(real, synth),
            "discriminator_auc": disc,
            "models": models,
            "targets": targets(real_models, models, disc),
        }
    return result


def sizes(args: argparse.Namespace) -> dict:
    """`train.py loss=bce` on growing synthetic training sets, with test events."""
    result: dict = {
        "seed": args.seed,
        "epochs": args.epochs,
        "overrides": list(args.override),
        "runs": [],
    }
    for generator in args.generator:
        for n in args.sizes:
            run_dir = args.workdir / f"size-{generator}-{n}"
            overrides = [
                "loss=bce",
                *data_overrides(generator, n),
                f"seed={args.seed}",
                f"trainer.max_epochs={args.epochs}",
                *args.override,
            ]
            start = time.perf_counter()
            metrics = train_run(run_dir, overrides, args.threads)
            row = {
                "generator": generator,
                "n_train": n,
                **model_metrics(metrics),
                **test_metrics(metrics),
                "wall_s": round(time.perf_counter() - start, 1),
            }
            if n == 250_000:
                low, high = TARGET_TEST_AMS_250K
                row["target_met"] = low <= row["test_ams"] <= high
            result["runs"].append(row)
            print(format_size_row(row), flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# output


def format_fidelity(result: dict) -> str:
    lines = [f"{result['n_events']} events of {result['real']} against as many synthetic ones"]
    verdict = {True: "met", False: "NOT met"}
    for generator, g in result["generators"].items():
        ks = np.array([[r["signal"], r["background"]] for r in g["ks"].values()])
        mmc, mmc_real = g["mmc_undefined"], result["mmc_undefined_real"]
        lines += [
            "",
            f"generator {generator} (generated in {g['generation_cpu_s']} s CPU)",
            f"  KS median signal {np.nanmedian(ks[:, 0]):.3f} background "
            f"{np.nanmedian(ks[:, 1]):.3f}; max {np.nanmax(ks):.3f}",
            "  DER_mass_MMC undefined (real / synthetic): "
            + ", ".join(f"{c} {mmc_real[c]:.3f} / {v:.3f}" for c, v in mmc.items()),
            f"  {'target':24s} {'real':>8s} {'synthetic':>10s} {'deviation':>10s}",
        ]
        for name, t in g["targets"].items():
            real = f"{t['real']:8.4f}" if "real" in t else f"{'':8s}"
            deviation = ""
            if "deviation" in t:
                relative = "auroc" not in name
                deviation = (
                    f"{100 * t['deviation']:+9.1f}%" if relative else f"{t['deviation']:+10.4f}"
                )
            lines.append(
                f"  {name:24s} {real} {t['synthetic']:10.4f} {deviation:>10s}  {verdict[t['met']]}"
            )
    return "\n".join(lines)


def format_size_row(row: dict) -> str:
    line = (
        f"{row['generator']:8s} n_train {row['n_train']:7d}: oof AUC {row['auroc']:.4f}, "
        f"AMS@15% {row['ams@15%']:.3f}, cut {100 * row['cut_fraction']:.1f}% (oof AMS "
        f"{row['ams_cut']:.3f}), test AMS {row['test_ams']:.3f} ({row['wall_s']} s)"
    )
    if "target_met" in row:
        line += f"; 3.3-4.0: {'met' if row['target_met'] else 'NOT met'}"
    return line


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--real", type=Path, help="labelled CERN-format CSV (fidelity mode)")
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=None, help="AMS-versus-size mode (event counts)"
    )
    parser.add_argument(
        "--generator", nargs="+", default=["physics", "copula"], choices=sorted(GENERATORS)
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="trainer.max_epochs per fit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per train.py run")
    parser.add_argument("--workdir", type=Path, default=Path("logs/synthetic_fidelity"))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--override",
        nargs="+",
        default=[],
        help="extra train.py overrides for every run, e.g. cv.parallel=true ensemble=folds",
    )
    args = parser.parse_args(argv)
    if args.sizes is None and args.real is None:
        parser.error("give --real FILE (fidelity at equal size) or --sizes (AMS versus size)")
    if args.sizes is not None:
        args.sizes = args.sizes or list(DEFAULT_SIZES)
        if min(args.sizes) < 1000:
            parser.error(f"--sizes: at least 1000 events per run, got {min(args.sizes)}")
        result = sizes(args)
        output = args.output or Path("synthetic_sizes.json")
    else:
        if not args.real.exists():
            parser.error(f"--real: no file {args.real}")
        result = fidelity(args)
        print(format_fidelity(result))
        output = args.output or Path("synthetic_fidelity.json")
    write_json(result, output)
    print(f"\nwrote {output}")
    return result


if __name__ == "__main__":
    main()
