"""How faithful is a synthetic generator to real labelled events?

    python benchmarks/synthetic_fidelity.py --real FILE [--generator physics|copula]
        [--n-synthetic N] [--seed S] [--epochs E] [--output JSON]

FILE is any CERN-format file with labels (the 12,000-event development sample, or the full CERN
Open Data file). Synthetic events, as many as the real ones unless --n-synthetic says
otherwise, are drawn from the named generator. Reported:

- per feature and class, the Kolmogorov-Smirnov distance between synthetic and real (defined
  values only; the share of undefined values is compared separately for DER_mass_MMC);
- per class, the out-of-fold AUC of a gradient-boosting classifier trained to tell synthetic
  from real events (3-fold CV; 0.5 = indistinguishable). Target: < 0.75;
- the out-of-fold AUC and maximum AMS of the same models trained on each data set: the
  project's BCE MLP through `amsaware.experiment.cross_validate` (3x256, batch 256, lr 1e-3,
  unweighted BCE) and a HistGradientBoosting classifier. Target: BCE AUC within 0.03 of real.

The table is printed and the numbers written as JSON (default synthetic_fidelity_<gen>.json).
Note that the copula generator was fitted to the development sample, so comparing it with that same
sample flatters it; the physics generator only had a handful of its constants tuned on it.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from amsaware.artifacts import write_json
from amsaware.data.formats import read_cern
from amsaware.data.schema import EventTable
from amsaware.data.synthetic import GENERATORS, generate
from amsaware.experiment import cross_validate
from amsaware.losses import BCELoss
from amsaware.metrics import evaluate
from amsaware.model import MLP, SignificanceClassifier

CLASSES = {1: "signal", 0: "background"}
TARGET_DISCRIMINATOR_AUC = 0.75
TARGET_AUC_GAP = 0.03


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


def bce_mlp(table: EventTable, seed: int, epochs: int) -> dict[str, float]:
    """Out-of-fold metrics of the project's BCE MLP under the project's CV protocol."""

    def make_module() -> SignificanceClassifier:
        net = MLP(len(table.feature_names), n_layers=3, hidden_size=256, dropout=0.2)
        return SignificanceClassifier(
            net, BCELoss(weighted=False), lambda params: torch.optim.Adam(params, lr=1e-3)
        )

    def make_trainer(stage: str) -> L.Trainer:
        del stage
        return L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )

    cv = cross_validate(table, 3, 256, seed, make_module, make_trainer)
    return _oof(cv.scores, table)


def hgb(table: EventTable, seed: int) -> dict[str, float]:
    """Out-of-fold metrics of HistGradientBoosting (3-fold, stratified)."""
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    model = HistGradientBoostingClassifier(random_state=seed)
    score = cross_val_predict(model, table.features, table.label, cv=folds, method="predict_proba")
    return _oof(score[:, 1], table)


def _oof(scores: np.ndarray, table: EventTable) -> dict[str, float]:
    metrics = evaluate(
        torch.from_numpy(np.asarray(scores, dtype=np.float64)),
        torch.from_numpy(table.label.astype(np.int64)),
        torch.from_numpy(np.array(table.weight, dtype=np.float64)),
        "oof/",
    )
    return {name: metrics[f"oof/{name}"] for name in ("auroc", "ams_max", "ams@15%")}


def run(real_path: Path, generator: str, n_synthetic: int | None, seed: int, epochs: int) -> dict:
    real = read_cern(real_path)
    if not real.labelled:
        raise ValueError(f"{real_path}: the fidelity benchmark needs labelled events")
    n = n_synthetic or len(real)
    start = time.process_time()
    synth = generate(n, seed=seed, generator=generator)
    generation_cpu_s = time.process_time() - start
    L.seed_everything(seed, verbose=False)
    models = {
        "bce_mlp": {"real": bce_mlp(real, seed, epochs), "synthetic": bce_mlp(synth, seed, epochs)},
        "hgb": {"real": hgb(real, seed), "synthetic": hgb(synth, seed)},
    }
    disc = discriminator_auc(real, synth, seed)
    gap = abs(models["bce_mlp"]["synthetic"]["auroc"] - models["bce_mlp"]["real"]["auroc"])
    mmc = real.feature_names.index("DER_mass_MMC")
    return {
        "real": str(real_path),
        "generator": generator,
        "n_real": len(real),
        "n_synthetic": n,
        "seed": seed,
        "generation_cpu_s": round(generation_cpu_s, 3),
        "mmc_undefined": {
            name: {
                "real": float(np.isnan(real.features[real.label == cls, mmc]).mean()),
                "synthetic": float(np.isnan(synth.features[synth.label == cls, mmc]).mean()),
            }
            for cls, name in CLASSES.items()
        },
        "ks": ks_table(real, synth),
        "discriminator_auc": disc,
        "models": models,
        "targets": {
            "discriminator_auc_below": TARGET_DISCRIMINATOR_AUC,
            "discriminator_met": all(disc[c] < TARGET_DISCRIMINATOR_AUC for c in CLASSES.values()),
            "bce_auc_gap": gap,
            "bce_auc_gap_within": TARGET_AUC_GAP,
            "bce_auc_met": gap <= TARGET_AUC_GAP,
        },
    }


def format_table(result: dict) -> str:
    lines = [
        f"generator {result['generator']}: {result['n_synthetic']} synthetic vs "
        f"{result['n_real']} real events ({result['real']})",
        "",
        f"{'feature':30s} {'KS signal':>10s} {'KS backgr.':>10s}",
    ]
    for name, row in result["ks"].items():
        lines.append(f"{name:30s} {row['signal']:10.3f} {row['background']:10.3f}")
    ks = np.array([[r["signal"], r["background"]] for r in result["ks"].values()])
    lines.append(f"{'median':30s} {np.nanmedian(ks[:, 0]):10.3f} {np.nanmedian(ks[:, 1]):10.3f}")
    lines.append(f"{'max':30s} {np.nanmax(ks[:, 0]):10.3f} {np.nanmax(ks[:, 1]):10.3f}")
    mmc = result["mmc_undefined"]
    lines.append(
        "DER_mass_MMC undefined (real / synthetic): "
        + ", ".join(f"{c} {v['real']:.3f} / {v['synthetic']:.3f}" for c, v in mmc.items())
    )
    disc = result["discriminator_auc"]
    lines += [
        "",
        "real-vs-synthetic discriminator AUC (HGB, 3-fold; target < 0.75): "
        + ", ".join(f"{c} {v:.3f}" for c, v in disc.items()),
        "",
        f"{'out-of-fold (3-fold)':22s} {'AUC real':>9s} {'AUC syn':>9s} "
        f"{'AMSmax real':>12s} {'AMSmax syn':>11s}",
    ]
    for model, values in result["models"].items():
        r, s = values["real"], values["synthetic"]
        lines.append(
            f"{model:22s} {r['auroc']:9.4f} {s['auroc']:9.4f} {r['ams_max']:12.3f} "
            f"{s['ams_max']:11.3f}"
        )
    t = result["targets"]
    verdict = {True: "met", False: "NOT met"}
    lines.append(
        f"\ntargets: discriminator < 0.75 per class: {verdict[t['discriminator_met']]};"
        f" BCE AUC gap {t['bce_auc_gap']:.4f} (<= 0.03: {verdict[t['bce_auc_met']]})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--real", type=Path, required=True, help="labelled CERN-format CSV")
    parser.add_argument("--generator", default="physics", choices=sorted(GENERATORS))
    parser.add_argument("--n-synthetic", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="BCE MLP epochs per fold")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    # one Trainer per fold: keep Lightning's per-trainer banners out of the table
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    result = run(args.real, args.generator, args.n_synthetic, args.seed, args.epochs)
    print(format_table(result))
    output = args.output or Path(f"synthetic_fidelity_{args.generator}.json")
    write_json(result, output)
    print(f"\nwrote {output}")
    return result


if __name__ == "__main__":
    main()
