"""Does significance fine-tuning beat BCE on real events? The verdict behind docs/results.md.

    python benchmarks/loss_verdict.py --real atlas-higgs-challenge-2014-v2.csv.gz --limit 12000
    python benchmarks/loss_verdict.py --page-only      # rewrite the page from the JSON

Every model is a real `train.py` run (the config composed in-process, `run_experiment`), on
the CERN file's first `--limit` events, with 3-fold out-of-fold predictions:

- `bce`: `loss=bce`, the seed paper's BCE model (read from the fine-tuned runs' `pretrain/`,
  which is exactly this model: the fine-tune starts from it);
- `finetune_ams`: `loss=bce finetune=ams`;
- `finetune_bce`: `loss=bce finetune=bce`, the control: the same phase (batch, learning rate,
  epochs) under BCE, so the comparison isolates the loss;
- `hgb`: scikit-learn's HistGradientBoostingClassifier on the same folds.

Each is also bagged: the mean of its seeds' out-of-fold scores. Every seed splits the events
differently, so that mean is R = 5 repeats of the CV, which is what `cv.repeats=5` averages
(tests/test_finetune.py checks that a repeat is a run with seed + 1000).

The fine-tune's keys (lr, batch size, epochs, temperature) come from an Optuna TPE search on
`--search-seed`, never on the evaluated `--seeds`. Every AMS is taken at a cut chosen out of
fold: each fold's selected fraction is the one `protocol.choose_cut` picks on the other folds'
scores. The paired bootstrap resamples events (one draw shared by every model and seed) with
those selections fixed. Runs are cached in `--cache` (one folder per run), so an interrupted
verdict resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from sklearn.ensemble import HistGradientBoostingClassifier

from amsaware import run_folder
from amsaware.data.formats import read_cern
from amsaware.data.schema import EventTable
from amsaware.data.weights import rescaled_weights
from amsaware.experiment import run_experiment
from amsaware.metrics import ams, ams_of_selection, evaluate, select_top_fraction
from amsaware.protocol import choose_cut

log = logging.getLogger("loss_verdict")
REPO = Path(__file__).resolve().parents[1]
FOLDS = 3
#: The fine-tune's space: the phase's own keys, pretraining held at loss=bce's values.
SPACE = {
    "finetune.optimizer.lr": ("float_log", 1e-5, 1e-3),
    "finetune.batch_size": ("choice", [512, 1024, 2048, 4096]),
    "finetune.max_epochs": ("choice", [10, 20, 40]),
    "finetune.loss.temperature": ("float_log", 1.0, 5.0),
}
#: The models compared: name -> (description, finetune group or None).
MODELS = {
    "bce": ("BCE (the seed paper's model)", None),
    "finetune_ams": ("BCE, then the soft-AMS fine-tune", "ams"),
    "finetune_bce": ("control: BCE, then a BCE fine-tune with the same settings", "bce"),
    "hgb": ("HistGradientBoostingClassifier (scikit-learn defaults)", None),
}
#: (model, reference) pairs whose AMS difference is bootstrapped, for single models (the
#: seed mean) and for their bagged ensembles.
PAIRS = [
    ("finetune_ams", "bce"),
    ("finetune_ams", "finetune_bce"),
    ("finetune_bce", "bce"),
    ("hgb", "bce"),
]


# --------------------------------------------------------------------------------------------
# Runs: train.py's own configuration, composed in-process


def train(folder: Path, overrides: list[str]) -> Path:
    """One train.py run into `folder` (skipped when it already finished there)."""
    if (folder / run_folder.METRICS).is_file():
        return folder
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    run_experiment(cfg)
    return folder


#: What every measured run adds: one thread, out-of-fold only, no files beyond metrics and the
#: fit, no loggers, no bar (fit_verdict.py's runs too).
QUIET_RUN = [
    "threads=1",
    "final_fit=false",
    "overwrite=true",  # a run interrupted before its metrics.json is redone
    "~logger",
    "callbacks.model_checkpoint=null",
    "callbacks.preprocessing=null",
    "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
]


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "data=opendata",
        f"data.path={Path(args.real).resolve()}",
        "data.download=false",
        f"data.limit={args.limit}",
        "loss=bce",
        f"seed={seed}",
        *QUIET_RUN,
    ]


def finetune_overrides(group: str, settings: dict[str, Any]) -> list[str]:
    keys = dict(settings)
    if group != "ams":  # the control has no temperature
        keys.pop("finetune.loss.temperature", None)
    return [f"finetune={group}", *(f"{key}={value}" for key, value in keys.items())]


def oof_scores(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A run's out-of-fold scores and folds (of its first repeat), in EventId order."""
    frame = pd.read_csv(folder / run_folder.OOF_PREDICTIONS).sort_values("EventId")
    return frame.score.to_numpy(), frame.fold.to_numpy()


# --------------------------------------------------------------------------------------------
# Metrics with cuts chosen out of fold


def out_of_fold_selection(
    scores: np.ndarray, table: EventTable, fold: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """The events selected when each fold's cut (a fraction) is chosen on the other folds.

    The cut a run reports is chosen and evaluated on the same out-of-fold scores, which
    flatters it; here no event's selection depends on its own label.
    """
    selected = np.zeros(len(scores), dtype=bool)
    fractions = []
    for k in np.unique(fold):
        inside, outside = fold == k, fold != k
        cut = choose_cut(
            scores[outside],
            table.label[outside],
            table.weight[outside],
            s_tot=table.s_tot,
            b_tot=table.b_tot,
        )
        chosen = select_top_fraction(torch.from_numpy(scores[inside]), cut.fraction).numpy()
        selected[np.flatnonzero(inside)[chosen]] = True
        fractions.append(cut.fraction)
    return selected, fractions


def summarise(scores: np.ndarray, table: EventTable, fold: np.ndarray) -> dict[str, float]:
    label = torch.from_numpy(table.label.astype(np.int64))
    weight = torch.from_numpy(table.weight)
    metrics = evaluate(torch.from_numpy(scores), label, weight, "oof/", table.s_tot, table.b_tot)
    selected, fractions = out_of_fold_selection(scores, table, fold)
    at_cut = ams_of_selection(torch.from_numpy(selected), label, weight, table.s_tot, table.b_tot)
    return {
        "ams_oof_cut": float(at_cut),
        "cut_fraction": float(np.mean(fractions)),
        "oof/ams@15%": metrics["oof/ams@15%"],
        "oof/ams_max": metrics["oof/ams_max"],
        "oof/auroc": metrics["oof/auroc"],
        "oof/auroc_weighted": metrics["oof/auroc_weighted"],
    }


def selection_ams_bootstrap(
    selections: dict[str, np.ndarray],
    label: np.ndarray,
    weight: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    totals: tuple[float, float] = (1.0, 1.0),
) -> dict[str, np.ndarray]:
    """AMS of fixed selections on event resamples (with replacement), the same for all keys.

    Each resample's weights are rescaled per class to the totals, as every AMS here is.
    Pairing: every selection sees the same resampled events, so their differences cancel the
    sampling noise they share. Hand-written because `amsaware.stats` bootstraps a cut given as
    a score threshold, and these selections (a fraction per fold) are not one.
    """
    rng = np.random.default_rng(seed)
    n = len(label)
    signal = label.astype(bool)
    out = {key: np.empty(n_resamples) for key in selections}
    for r in range(n_resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        w = rescaled_weights(signal, counts * weight, *totals)
        for key, selected in selections.items():
            s = w[selected & signal].sum()
            b = w[selected & ~signal].sum()
            out[key][r] = float(ams(s, b))
    return out


def hgb_scores(table: EventTable, fold: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold scores of gradient-boosted trees on the runs' folds (NaN handled natively)."""
    scores = np.full(len(table), np.nan)
    for k in np.unique(fold):
        model = HistGradientBoostingClassifier(random_state=seed)
        model.fit(table.features[fold != k], table.label[fold != k])
        scores[fold == k] = model.predict_proba(table.features[fold == k])[:, 1]
    return scores


# --------------------------------------------------------------------------------------------
# The search of the fine-tune's keys (on a seed that is not evaluated)


def search(args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        values = {}
        for key, (kind, *bounds) in SPACE.items():
            if kind == "float_log":
                values[key] = trial.suggest_float(key, *bounds, log=True)
            else:
                values[key] = trial.suggest_categorical(key, bounds[0])
        return values

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial)
        folder = cache / "search" / f"trial{trial.number}"
        overrides = base_overrides(args, args.search_seed) + finetune_overrides("ams", settings)
        train(folder, overrides)
        value = json.loads((folder / run_folder.METRICS).read_text())["cut"]["ams_smoothed"]
        log.info("search trial %d: %.3f %s", trial.number, value, settings)
        return value

    cache.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{cache / 'search.db'}"
    study = optuna.create_study(
        study_name="finetune",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.search_seed),
    )
    # The recipe's defaults are the first point, so the search can only improve on them.
    if len(study.trials) == 0:
        study.enqueue_trial(dict(DEFAULTS))
    remaining = args.trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    trials = [
        {"number": t.number, "value": t.value, "params": t.params}
        for t in study.trials
        if t.value is not None
    ]
    return {"best": study.best_trial.params, "best_value": study.best_value, "trials": trials}


DEFAULTS = [
    ("finetune.optimizer.lr", 5e-5),
    ("finetune.batch_size", 1024),
    ("finetune.max_epochs", 20),
    ("finetune.loss.temperature", 1.0),
]


# --------------------------------------------------------------------------------------------
# Driver


def run(args: argparse.Namespace) -> dict[str, Any]:
    table = read_cern(args.real, weight_column="KaggleWeight", limit=args.limit)
    table = table.subset(np.argsort(table.event_id, kind="stable"))  # the runs' CSV order
    cache = Path(args.cache)
    started = time.perf_counter()  # for the log only
    searched = search(args, cache)
    settings = searched["best"]
    log.info("fine-tune settings from the search on seed %d: %s", args.search_seed, settings)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in MODELS}
    folds: list[np.ndarray] = []
    for seed in args.seeds:
        for group in ("ams", "bce"):
            folder = cache / f"seed{seed}" / f"finetune_{group}"
            train(folder, base_overrides(args, seed) + finetune_overrides(group, settings))
            finetuned, fold = oof_scores(folder)
            scores[f"finetune_{group}"].append(finetuned)
            pretrained = oof_scores(folder / "pretrain")[0]
            if group == "ams":
                scores["bce"].append(pretrained)
            else:  # both fine-tunes start from the same seeded BCE model
                drift = float(np.max(np.abs(pretrained - scores["bce"][-1])))
                log.info("seed %d: the two fine-tunes' BCE starts differ by %.2g", seed, drift)
        folds.append(fold)
        scores["hgb"].append(hgb_scores(table, fold, seed))
        log.info("seed %d done after %.0f s", seed, time.perf_counter() - started)
    # Each seed splits the events differently, so the mean of the seeds' out-of-fold scores
    # is R = len(seeds) repeats of the CV: exactly what `cv.repeats` averages.
    bagged = {name: [np.mean(runs, axis=0)] for name, runs in scores.items()}
    document = {
        "command": " ".join(
            [
                "python benchmarks/loss_verdict.py --real atlas-higgs-challenge-2014-v2.csv.gz",
                f"--limit {args.limit} --seeds {' '.join(map(str, args.seeds))}",
                f"--search-seed {args.search_seed} --trials {args.trials}",
            ]
        ),
        "protocol": {
            "events": len(table),
            "folds": FOLDS,
            "seeds": list(args.seeds),
            "search_seed": args.search_seed,
            "trials": args.trials,
            "bootstrap": "paired, events with replacement, 1000 resamples, seed 0, cuts fixed",
            "optuna": optuna.__version__,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, 2 CPU cores, 1 torch thread per run",
            "date": time.strftime("%Y-%m-%d"),
            # What the runs took (their own clocks), whether this call ran them or found them
            # cached: the verdict's training cost.
            "run_seconds": round(
                sum(
                    json.loads(path.read_text())["run"]["seconds"]
                    for path in cache.glob("**/metrics.json")
                    if path.parent.name != "pretrain"
                )
            ),
        },
        "search": searched,
        "single": compare_models(scores, folds, table),
        "bagged": compare_models(bagged, folds[:1], table),
    }
    run_folder.write_json(document, Path(args.json))
    return document


def compare_models(
    scores: dict[str, list[np.ndarray]], folds: list[np.ndarray], table: EventTable
) -> dict[str, Any]:
    """Each model's metrics per seed (mean and spread) and the paired bootstrap of PAIRS."""
    models: dict[str, Any] = {}
    selections: dict[str, np.ndarray] = {}
    for name, runs in scores.items():
        per_seed = [summarise(s, table, f) for s, f in zip(runs, folds, strict=True)]
        keys = per_seed[0]
        models[name] = {
            "description": MODELS[name][0],
            "seeds": per_seed,
            "mean": {k: float(np.mean([m[k] for m in per_seed])) for k in keys},
            "std": {
                k: float(np.std([m[k] for m in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0
                for k in keys
            },
        }
        for i, (s, f) in enumerate(zip(runs, folds, strict=True)):
            selections[f"{name}/{i}"] = out_of_fold_selection(s, table, f)[0]
            selections[f"{name}/{i}/top15"] = select_top_fraction(torch.from_numpy(s), 0.15).numpy()
    boot = selection_ams_bootstrap(
        selections, table.label, table.weight, totals=(table.s_tot, table.b_tot)
    )
    comparisons: dict[str, Any] = {}
    # At the cut chosen out of fold (the verdict), and at a fixed top 15% (no cut choice: it
    # separates the ranking from the noise of choosing where to cut).
    for rule, suffix, key in (("oof_cut", "", "ams_oof_cut"), ("top15", "/top15", "oof/ams@15%")):
        mean = {
            name: np.mean([boot[f"{name}/{i}{suffix}"] for i in range(len(folds))], axis=0)
            for name in scores
        }
        section = comparisons if rule == "oof_cut" else comparisons.setdefault("top15", {})
        for name, reference in PAIRS:
            diff = mean[name] - mean[reference]
            a = [m[key] for m in models[name]["seeds"]]
            b = [m[key] for m in models[reference]["seeds"]]
            section[f"{name} - {reference}"] = {
                "difference": float(np.mean(a) - np.mean(b)),
                "ci_low": float(np.quantile(diff, 0.025)),
                "ci_high": float(np.quantile(diff, 0.975)),
                "p_not_better": float(np.mean(diff <= 0.0)),
                "seeds_better": int(sum(x > y for x, y in zip(a, b, strict=True))),
                "per_seed": [float(x - y) for x, y in zip(a, b, strict=True)],
            }
    top15 = comparisons.pop("top15")
    return {"models": models, "comparisons": comparisons, "comparisons_top15": top15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", required=True, help="a CERN-format file (the Open Data file)")
    parser.add_argument("--limit", type=int, default=12000, help="its first N events")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=6, help="fine-tune search trials")
    parser.add_argument("--json", default=str(REPO / "docs/loss_verdict.json"))
    parser.add_argument("--page", default=str(REPO / "docs/results.md"))
    parser.add_argument("--cache", default=str(REPO / "logs/loss_verdict"))
    parser.add_argument("--page-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "amsaware"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    torch.set_num_threads(1)
    document = json.loads(Path(args.json).read_text()) if args.page_only else run(args)
    from verdict_page import render

    page = Path(args.page)
    with run_folder.atomic_path(page) as tmp:
        Path(tmp).write_text(replace_section(page, render(document)))
    log.info("wrote %s and %s", args.json, args.page)


def replace_section(page: Path, section: str) -> str:
    """The page with this verdict's section (from its heading to the end) replaced by
    `section`; the page's other sections (benchmarks/fit_verdict.py's, above it) are kept."""
    heading = section.splitlines()[0]
    text = page.read_text() if page.exists() else ""
    start = text.find(heading)
    kept = text if start < 0 else text[:start]
    return (kept.rstrip("\n") + "\n\n" if kept.strip() else "") + section


if __name__ == "__main__":
    main()
