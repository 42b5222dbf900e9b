"""Does an AMS-aware loss beat BCE on real data? The verdict behind docs/results.md.

For every loss: an Optuna TPE search (seeded, the same number of trials for every loss) over
the library's cross-validation, then 3-fold out-of-fold predictions for 3 fresh seeds at the
best hyperparameters, the AMS at the cut chosen on those predictions (experiment.choose_cut),
and a paired bootstrap of its difference to BCE. A HistGradientBoostingClassifier on the same
folds is the baseline physicists would otherwise use.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/loss_verdict.py \
        --real ../shared/data/atlas-higgs-sample.csv.gz
    python benchmarks/loss_verdict.py --page-only      # rewrite the page from the JSON

Results per loss are cached (scores as .npz, summary in the JSON) so an interrupted run resumes.
The paired bootstrap is written here, small and self-contained; it will move to amsaware.stats.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from torch.optim.lr_scheduler import MultiStepLR

from amsaware import artifacts
from amsaware.data.datamodule import stratified_folds
from amsaware.data.formats import read_cern
from amsaware.data.schema import B_TOT, S_TOT, EventTable
from amsaware.experiment import choose_cut, cross_validate
from amsaware.losses import (
    AsimovLoss,
    BCELoss,
    BCEThenAMSLoss,
    DeltaZBarLoss,
    SoftAMSLoss,
)
from amsaware.metrics import ams, evaluate
from amsaware.model import MLP, SignificanceClassifier

log = logging.getLogger("loss_verdict")
REPO = Path(__file__).resolve().parents[1]
SEARCH_SEED = 0
EVAL_SEEDS = (1, 2, 3)
FOLDS = 3
REPORTED = ["oof/ams_max", "ams_at_cut", "cut_fraction", "oof/ams@0.5", "oof/auroc"]
REPORTED += ["oof/auroc_weighted"]

Params = dict[str, Any]
#: bce_ams's best settings trained with alpha = 1 (pure BCE): isolates the AMS term's effect.
CONTROL = "bce_ams_control"


# --------------------------------------------------------------------------------------------
# The losses compared and their search spaces (the network's space is common to all)


def _temperature(trial: optuna.Trial) -> float:
    return trial.suggest_float("temperature", 1.0, 20.0, log=True)


def _ams_space(normalisation: str) -> Callable[[optuna.Trial], Params]:
    def space(trial: optuna.Trial) -> Params:
        return {
            "normalisation": normalisation,
            "temperature": _temperature(trial),
            "squared": trial.suggest_categorical("squared", [False, True]),
        }

    return space


def _asimov_space(f: float) -> Callable[[optuna.Trial], Params]:
    def space(trial: optuna.Trial) -> Params:
        return {
            "sys_uncertainty": f,
            "objective": trial.suggest_categorical("objective", ["neg_z2", "inv_z2"]),
            "temperature": _temperature(trial),
        }

    return space


def _deltaz_space(trial: optuna.Trial) -> Params:
    return {"eps": S_TOT * trial.suggest_float("eps_over_s_tot", 0.1, 10.0, log=True)}


def _bce_ams_space(trial: optuna.Trial) -> Params:
    return {
        "warmup_fraction": trial.suggest_float("warmup_fraction", 0.3, 0.9),
        # lr * lr_factor once the AMS term starts (conf/loss/bce_ams.yaml: scheduler.gamma).
        "lr_factor": trial.suggest_float("lr_factor", 0.01, 1.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.0, 0.9),
        "ams": {
            "normalisation": trial.suggest_categorical("normalisation", ["raw", "batch"]),
            "temperature": _temperature(trial),
        },
    }


def _warmup_epochs(params: Params, epochs: int) -> int:
    return max(1, min(epochs - 1, round(params["warmup_fraction"] * epochs)))


def _bce_ams(params: Params, epochs: int) -> BCEThenAMSLoss:
    warmup = _warmup_epochs(params, epochs)
    return BCEThenAMSLoss(warmup_epochs=warmup, alpha=params["alpha"], ams=params["ams"])


def _scheduler(loss: Params, epochs: int) -> Callable | None:
    """The learning-rate drop at the end of BCE-then-AMS's warm-up (none for other losses)."""
    if "lr_factor" not in loss:
        return None
    milestone = _warmup_epochs(loss, epochs)
    return partial(MultiStepLR, milestones=[milestone], gamma=loss["lr_factor"])


#: name -> (description, search space of the loss options, loss from options and epochs)
LOSSES: dict[str, tuple[str, Callable[[optuna.Trial], Params], Callable[..., torch.nn.Module]]]
LOSSES = {
    "bce": ("BCE, unweighted (the paper's baseline)", lambda trial: {}, lambda p, e: BCELoss()),
    "ams_raw": (
        "soft AMS, raw weights (the paper's loss)",
        _ams_space("raw"),
        lambda p, e: SoftAMSLoss(**p),
    ),
    "ams_batch": (
        "soft AMS, batch rescaled to S_tot/B_tot",
        _ams_space("batch"),
        lambda p, e: SoftAMSLoss(**p),
    ),
    "asimov_0.1": ("Asimov Z_A, f = 0.1", _asimov_space(0.1), lambda p, e: AsimovLoss(**p)),
    "asimov_0.3": ("Asimov Z_A, f = 0.3", _asimov_space(0.3), lambda p, e: AsimovLoss(**p)),
    "deltaz": ("Delta-Z-bar (Lovasz hinge)", _deltaz_space, lambda p, e: DeltaZBarLoss(**p)),
    "bce_ams": ("BCE warm-up, then (mixed) soft AMS", _bce_ams_space, _bce_ams),
}


def network_space(trial: optuna.Trial) -> Params:
    return {
        "n_layers": trial.suggest_int("n_layers", 2, 4),
        "hidden_size": trial.suggest_int("hidden_size", 64, 512, step=64),
        "dropout": trial.suggest_float("dropout", 0.1, 0.4),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256, 512, 1024]),
    }


# --------------------------------------------------------------------------------------------
# One configuration: 3-fold out-of-fold scores through the library's cross_validate


def oof_scores(
    table: EventTable, name: str, net: Params, loss: Params, epochs: int, seed: int
) -> np.ndarray:
    make_loss = LOSSES[name][2]
    n_features = table.features.shape[1]

    def make_module() -> SignificanceClassifier:
        return SignificanceClassifier(
            net=MLP(n_features, net["n_layers"], net["hidden_size"], net["dropout"]),
            loss=make_loss(loss, epochs),
            optimizer=partial(torch.optim.Adam, lr=net["lr"]),
            scheduler=_scheduler(loss, epochs),
        )

    def make_trainer(stage: str) -> L.Trainer:
        return L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,  # cross_validate scores the held-out fold itself
            num_sanity_val_steps=0,
        )

    cv = cross_validate(table, FOLDS, net["batch_size"], seed, make_module, make_trainer)
    return cv.scores


def summarise(scores: np.ndarray, table: EventTable) -> dict[str, float]:
    """The reported metrics of one set of out-of-fold scores (the library's metric code)."""
    metrics = evaluate(
        torch.from_numpy(scores),
        torch.from_numpy(table.label.astype(np.int64)),
        torch.from_numpy(table.weight),
        "oof/",
    )
    cut = choose_cut(scores, table.label, table.weight)
    metrics.update(ams_at_cut=cut.ams, ams_at_cut_smoothed=cut.ams_smoothed)
    metrics.update(cut_fraction=cut.fraction, cut_threshold=cut.threshold)
    return metrics


def search(table: EventTable, name: str, n_trials: int, epochs: int) -> dict[str, Any]:
    """TPE search (seeded) maximising the smoothed out-of-fold AMS at the chosen cut."""
    loss_space = LOSSES[name][1]

    def objective(trial: optuna.Trial) -> float:
        net, loss = network_space(trial), loss_space(trial)
        scores = oof_scores(table, name, net, loss, epochs, SEARCH_SEED)
        if not np.isfinite(scores).all():
            return 0.0
        value = summarise(scores, table)["ams_at_cut_smoothed"]
        log.info("%s trial %d: %.3f %s", name, trial.number, value, trial.params)
        return value

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEARCH_SEED)
    )
    study.optimize(objective, n_trials=n_trials)
    best = study.best_trial
    return {
        "best_value": best.value,
        "best_params": best.params,
        "trials": [t.value for t in study.trials],
    }


def _split_params(name: str, params: Params) -> tuple[Params, Params]:
    """Replay the search space on a fixed trial to get (network, loss) options."""
    trial = optuna.trial.FixedTrial(params)
    return network_space(trial), LOSSES[name][1](trial)


def hgb_scores(table: EventTable, seed: int) -> np.ndarray:
    """Out-of-fold scores of scikit-learn's gradient-boosted trees (NaN handled natively)."""
    scores = np.full(len(table), np.nan)
    for train, val in stratified_folds(table.label, FOLDS, seed):
        model = HistGradientBoostingClassifier(random_state=seed)
        model.fit(table.features[train], table.label[train])
        scores[val] = model.predict_proba(table.features[val])[:, 1]
    return scores


# --------------------------------------------------------------------------------------------
# Paired bootstrap (self-contained here; to be unified with amsaware.stats)


def selection_ams_bootstrap(
    selections: dict[str, np.ndarray],
    label: np.ndarray,
    weight: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """AMS of fixed selections on event resamples (with replacement), the same for all keys.

    Each resample's weights are rescaled per class to S_tot/B_tot, as every AMS here is.
    Pairing: every selection sees the same resampled events, so their differences cancel the
    sampling noise they share. The cuts stay fixed (chosen once on the full OOF scores).
    """
    rng = np.random.default_rng(seed)
    n = len(label)
    signal = label.astype(bool)
    out = {key: np.empty(n_resamples) for key in selections}
    for r in range(n_resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        w = counts * weight
        w_s = S_TOT / w[signal].sum()
        w_b = B_TOT / w[~signal].sum()
        for key, selected in selections.items():
            s = w_s * w[selected & signal].sum()
            b = w_b * w[selected & ~signal].sum()
            out[key][r] = float(ams(s, b))
    return out


def paired_differences(
    results: dict[str, Any],
    runs: dict[str, list[np.ndarray]],
    table: EventTable,
    pairs: list[tuple[str, str]],
) -> dict[str, dict[str, float]]:
    """Bootstrap CI of (mean over seeds of AMS at cut) of A minus B's, for each pair (A, B).

    All pairs share the same resamples. Keys of the result: "A" when B is BCE, else "A-B".
    """
    selections = {}
    for name, seeds in runs.items():
        for k, scores in enumerate(seeds):
            fraction = results[name]["seeds"][k]["cut_fraction"]
            selected = _top_fraction(scores, fraction)
            selections[f"{name}/{k}"] = selected
    boot = selection_ams_bootstrap(selections, table.label, table.weight)
    mean = {
        name: np.mean([boot[f"{name}/{k}"] for k in range(len(seeds))], axis=0)
        for name, seeds in runs.items()
    }
    out = {}
    for name, reference in pairs:
        diff = mean[name] - mean[reference]
        point = results[name]["mean"]["ams_at_cut"] - results[reference]["mean"]["ams_at_cut"]
        out[name if reference == "bce" else f"{name}-{reference}"] = {
            "difference": float(point),
            "ci_low": float(np.quantile(diff, 0.025)),
            "ci_high": float(np.quantile(diff, 0.975)),
            "p_not_better": float(np.mean(diff <= 0.0)),
            "n_resamples": len(diff),
        }
    return out


def _top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """The events of the top `fraction` of scores (ties broken as metrics.select_top_fraction)."""
    from amsaware.metrics import select_top_fraction

    return select_top_fraction(torch.from_numpy(scores), fraction).numpy()


# --------------------------------------------------------------------------------------------
# Driver


def run(args: argparse.Namespace) -> dict[str, Any]:
    table = read_cern(args.real)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = _load(args.json).get("losses", {}) if args.resume else {}
    runs: dict[str, list[np.ndarray]] = {}
    names = ["hgb", *LOSSES, CONTROL] if args.only is None else args.only
    for name in names:
        npz = cache / f"{name}.npz"
        if name in results and npz.exists():
            runs[name] = list(np.load(npz)["scores"])
            log.info("%s: cached", name)
            continue
        started = time.process_time()
        wall = time.perf_counter()
        if name == "hgb":
            entry: dict[str, Any] = {"description": "HistGradientBoostingClassifier (defaults)"}
            seeds = [hgb_scores(table, s) for s in EVAL_SEEDS]
        elif name == CONTROL:
            if "bce_ams" not in results:
                continue
            # BCE-then-AMS's own settings with alpha = 1: the same network, lr and lr drop,
            # pure BCE. What bce_ams gains over this is the AMS term's doing.
            entry = {"description": "control: bce_ams's settings with alpha = 1 (pure BCE)"}
            net = results["bce_ams"]["network"]
            loss = {**results["bce_ams"]["loss"], "alpha": 1.0}
            entry.update(network=net, loss=loss)
            seeds = [oof_scores(table, "bce_ams", net, loss, args.epochs, s) for s in EVAL_SEEDS]
        else:
            entry = {"description": LOSSES[name][0]}
            entry["search"] = search(table, name, args.trials, args.search_epochs)
            net, loss = _split_params(name, entry["search"]["best_params"])
            entry.update(network=net, loss=loss)
            seeds = [oof_scores(table, name, net, loss, args.epochs, s) for s in EVAL_SEEDS]
        entry["seeds"] = [summarise(s, table) for s in seeds]
        keys = entry["seeds"][0]
        entry["mean"] = {k: float(np.mean([m[k] for m in entry["seeds"]])) for k in keys}
        entry["std"] = {k: float(np.std([m[k] for m in entry["seeds"]], ddof=1)) for k in keys}
        entry["cpu_seconds"] = round(time.process_time() - started, 1)
        entry["wall_seconds"] = round(time.perf_counter() - wall, 1)
        np.savez(npz, scores=np.stack(seeds))
        runs[name] = seeds
        results[name] = entry
        log.info("%s: %s", name, {k: round(v, 3) for k, v in entry["mean"].items()})
        _save(args, results, None)
    pairs = [(name, "bce") for name in runs if name != "bce"]
    if CONTROL in runs:
        pairs.append(("bce_ams", CONTROL))
    comparisons = paired_differences(results, runs, table, pairs) if "bce" in runs else {}
    return _save(args, results, comparisons)


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def _save(
    args: argparse.Namespace, results: dict[str, Any], comparisons: dict[str, Any] | None
) -> dict[str, Any]:
    document = {
        "data": str(Path(args.real).name),
        "protocol": {
            "folds": FOLDS,
            "search_seed": SEARCH_SEED,
            "eval_seeds": list(EVAL_SEEDS),
            "trials_per_loss": args.trials,
            "search_epochs": args.search_epochs,
            "epochs": args.epochs,
            "search_objective": "smoothed OOF AMS at the chosen cut",
            "bootstrap": "paired, events with replacement, 1000 resamples, seed 0, cuts fixed",
            "optuna": optuna.__version__,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, CPU, 1 torch thread",
        },
        "losses": results,
    }
    if comparisons is not None:
        document["vs_bce"] = comparisons
    artifacts.write_json(document, Path(args.json))
    return document


def write_page(document: dict[str, Any], path: Path) -> None:
    """docs/results.md from the verdict's JSON: tables, the verdict sentence, the caveats."""
    from verdict_page import render

    batch_sizes = path.parent / "ams_batch_size.json"
    extra = json.loads(batch_sizes.read_text()) if batch_sizes.exists() else None
    with artifacts.atomic_path(path) as tmp:
        Path(tmp).write_text(render(document, extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sample = REPO.parent / "shared/data/atlas-higgs-sample.csv.gz"
    parser.add_argument("--real", default=str(sample), help="the CERN-format real sample")
    parser.add_argument("--json", default=str(REPO / "docs/loss_verdict.json"))
    parser.add_argument("--page", default=str(REPO / "docs/results.md"))
    parser.add_argument("--cache", default=str(REPO / "logs/loss_verdict"))
    parser.add_argument("--trials", type=int, default=8, help="search trials per loss")
    parser.add_argument("--search-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the evaluated runs")
    parser.add_argument("--only", nargs="+", help="names to run (default: hgb and all losses)")
    parser.add_argument("--resume", action="store_true", help="reuse cached results")
    parser.add_argument("--page-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(1)
    document = _load(args.json) if args.page_only else run(args)
    write_page(document, Path(args.page))
    log.info("wrote %s and %s", args.json, args.page)


if __name__ == "__main__":
    main()
