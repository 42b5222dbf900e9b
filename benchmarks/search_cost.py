"""Search cost: the wall time of one search trial per paper configuration, and the 50-trial
search it projects to.

    python benchmarks/search_cost.py [--events 250000] [--epochs 10] [--trials 50]
        [--losses bce ams] [--parallel false true] [--trainer default] [--threads N]
        [--out search_cost.json]

A trial is what `python train.py -m hparams_search=optuna` runs for each point: stratified
3-fold cross-validation, `--epochs` epochs per fold, no final fit, no checkpoints, no progress
bars (the overrides of conf/hparams_search/optuna.yaml). Each trial here is a real `train.py`
run in a fresh process, at the seed paper's tuned hyperparameters for the loss (5 x 384 at
batch 64 for BCE, 2 x 448 at batch 256 for AMS), with sequential folds and with
`cv.parallel=true`. The time includes what every trial pays: Python start-up, generating the
synthetic data, the preprocessing, the out-of-fold scoring and the artifacts.

The projected search is `trials x trial time`, scaled by 10 / `--epochs` when a shorter trial
was measured (an overestimate: start-up and data do not grow with epochs).
Goals: the 50-trial search at the default size (250,000 events) within 60 minutes for the
AMS configuration and 2 hours for BCE on 2 CPU cores, under 5 minutes on one GPU
(`--trainer gpu`).

Where a trial's time goes beyond its training steps (docs/search.md):

    python benchmarks/search_cost.py --overhead experiment=smoke hydra.sweeper.n_trials=3 threads=1

runs `train.py -m hparams_search=optuna OVERRIDES` in this process with timers around its
parts and prints, per trial, its wall and CPU seconds and the CPU seconds of: training steps
(Lightning's fit less its validation), validation every epoch, metric computation (also
counted inside validation), figures (TensorBoard, MLflow, W&B), loggers (their creation,
hparams and closing), the data, the artifacts (CSV, JSON), pruning reports, building the
trainers, and the rest; then the process's start (imports, Hydra, the study) and the
sweeper's wall time between trials. CPU seconds change less than wall time with the load.

A whole search, as a user types it (its wall and CPU time, trials complete / pruned / failed,
the share of epochs or folds it trained, its best value and top five):

    python benchmarks/search_cost.py --search --out-dir DIR loss=ams threads=1 ...

runs `train.py -m hparams_search=optuna OVERRIDES` in a fresh process with its study in a new
database under DIR, and writes DIR/search.json.

Pruners, replayed (how the default pruner of hparams_search=optuna was chosen):

    python train.py -m hparams_search=optuna hydra/sweeper/pruner=none ...   # a search
    python benchmarks/search_cost.py --replay STUDY --storage sqlite:///logs/optuna/studies.db

replays the study's complete, unpruned trials in their order through each pruner (the values
each trial reported after every fold) and prints, per pruner, the share of fold trainings it
would have run, the best value among the trials it lets finish, and that trial's rank among
all of them (1: the pruner keeps the search's best trial). A replay keeps the sampler's
proposals as they were, which a live pruned search changes (TPE learns from pruned trials too).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_EPOCHS = 10
TRIAL = [
    "final_fit=false",
    "callbacks.model_checkpoint=null",
    "callbacks.preprocessing=null",
    "callbacks.progress_bar=null",
    "+trainer.enable_checkpointing=false",
    "+trainer.enable_progress_bar=false",
]


def run_trial(
    loss: str, parallel: bool, events: int, epochs: int, trainer: str, threads: int | None
) -> dict:
    """One trial through the real train.py; its wall time and what it reports."""
    with tempfile.TemporaryDirectory(prefix="search-cost-") as run_dir:
        command = [
            sys.executable,
            "train.py",
            f"loss={loss}",
            f"trainer={trainer}",
            f"cv.parallel={str(parallel).lower()}",
            f"data.n_train={events}",
            f"trainer.max_epochs={epochs}",
            f"hydra.run.dir={run_dir}",
            *TRIAL,
            *([f"threads={threads}"] if threads else []),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {
        "loss": loss,
        "parallel": parallel,
        "events": events,
        "epochs": epochs,
        "trial_s": round(wall, 1),
        "run_s": metrics["run"]["seconds"],
        "oof_auroc": metrics["cv"]["oof"]["oof/auroc"],
        "oof_ams_max": metrics["cv"]["oof"]["oof/ams_max"],
    }


def pruners(n_steps: int) -> dict:
    """The pruners `hydra.sweeper.pruner` offers, at their conf/ settings (see the sweeper)."""
    import optuna

    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5),
        "percentile": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=5),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_steps),
    }


def replay(trials: list, make_pruner, direction: str) -> dict:
    """Run recorded trials (complete, with intermediate values) through a pruner, in order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, pruner=make_pruner())
    ran = total = 0
    kept = []
    for recorded in trials:
        trial = study.ask()
        steps = sorted(recorded.intermediate_values.items())
        total += len(steps)
        for step, value in steps:
            trial.report(value, step)
            ran += 1
            if step != steps[-1][0] and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, recorded.value)
            kept.append(recorded)
    sign = -1 if direction == "maximize" else 1
    order = sorted(trials, key=lambda t: sign * t.value)
    best = min(kept, key=lambda t: sign * t.value)
    return {
        "work": round(ran / total, 3),
        "finished": len(kept),
        "best_value": best.value,
        "best_rank": order.index(best) + 1,
    }


def replay_study(study_name: str, storage: str) -> None:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [
        t
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        if t.intermediate_values
    ]
    if not trials:
        raise SystemExit(f"study {study_name!r} has no complete trial with intermediate values")
    n_steps = max(len(t.intermediate_values) for t in trials)
    direction = study.direction.name.lower()
    print(f"study {study_name!r}: {len(trials)} complete trials of {n_steps} steps, {direction}")
    print(f"{'pruner':<20} {'work':>6} {'finished':>9} {'best value':>11} {'its rank':>9}")
    for name, make in pruners(n_steps).items():
        row = replay(trials, make, direction)
        print(
            f"{name:<20} {row['work']:>6.0%} {row['finished']:>9} "
            f"{row['best_value']:>11.4f} {row['best_rank']:>9}"
        )


def live_search(overrides: list[str], out_dir: Path) -> dict:
    """`train.py -m hparams_search=optuna OVERRIDES` as a user types it, in a fresh process
    with its study in a fresh database under `out_dir`; its wall and CPU time and the study's
    outcome."""
    import resource

    import optuna

    logs, sweep = out_dir / "logs", out_dir / "multirun"
    if logs.exists() or sweep.exists():
        raise SystemExit(f"{out_dir} already holds a search: give --out-dir a new folder")
    command = [sys.executable, "train.py", "-m", "hparams_search=optuna", *overrides]
    command += [f"paths.log_dir={logs}", f"hydra.sweep.dir={sweep}"]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the search failed (exit {done.returncode})")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    storage = f"sqlite:///{logs}/optuna/studies.db"
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    n_steps = max(len(t.intermediate_values) for t in complete)
    ran = sum(len(t.intermediate_values) for t in trials)
    ranked = sorted((t.value for t in complete), reverse=study.direction.name == "MAXIMIZE")
    row = {
        "study": name,
        "overrides": overrides,
        "wall_min": round(wall / 60, 1),
        "cpu_user_s": round(usage.ru_utime),
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == states.PRUNED for t in trials),
        "failed": sum(t.state == states.FAIL for t in trials),
        # Steps are validations with cv.parallel=true (4 an epoch in searches), folds otherwise.
        "steps_run": f"{ran} of {len(trials) * n_steps}",
        "work": round(ran / (len(trials) * n_steps), 3),
        "best_value": study.best_value,
        "best_params": study.best_params,
        "top5": [round(v, 4) for v in ranked[:5]],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    print(json.dumps(row, indent=2))
    return row


def overhead(overrides: list[str]) -> list[dict]:
    """Time a search's trials part by part, in this process (see the module doc)."""
    import functools
    import runpy
    from collections import defaultdict

    started = time.perf_counter()
    import lightning.pytorch as pl
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop

    import amsaware.experiment as experiment
    import amsaware.loggers as loggers
    import amsaware.model as model
    import amsaware.plots as plots
    import amsaware.protocol as protocol
    import amsaware.pruning as pruning
    from amsaware.run_folder import RunFolder

    imports = time.perf_counter() - started
    parts: dict[str, float] = defaultdict(float)
    trials: list[dict] = []
    spans: list[tuple[float, float]] = []

    def timed(owner: object, name: str, part: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            begin = time.process_time()  # CPU seconds: steadier than wall time on a busy machine
            try:
                return original(*args, **kwargs)
            finally:
                parts[part] += time.process_time() - begin

        setattr(owner, name, wrapper)

    timed(pl.Trainer, "fit", "fit")
    timed(_EvaluationLoop, "run", "validation")
    timed(protocol, "evaluate", "metrics")
    timed(model, "classification_metrics", "metrics")
    timed(plots, "log_to_logger", "figures")
    timed(loggers.StageLoggers, "make", "loggers")
    timed(loggers.StageLoggers, "close", "loggers")
    timed(experiment, "log_hparams", "loggers")
    timed(experiment, "load_dataset", "data")
    timed(pruning.TrialReporter, "__init__", "pruning")
    timed(pruning.TrialReporter, "report", "pruning")
    timed(experiment, "_trainer", "trainers")
    for name in ("write_oof_predictions", "write_metrics"):
        timed(RunFolder, name, "artifacts")
    run = experiment.run_experiment

    shown = ("validation", "metrics", "figures", "loggers", "data", "artifacts", "pruning")

    def run_experiment(cfg):
        parts.clear()
        begin, cpu = time.perf_counter(), time.process_time()
        try:
            return run(cfg)
        finally:
            end = time.perf_counter()
            spans.append((begin, end))
            row = {"trial": len(trials), "wall": end - begin, "cpu": time.process_time() - cpu}
            row["train_steps"] = parts["fit"] - parts["validation"]
            row |= {part: parts[part] for part in (*shown, "trainers")}
            # Metrics computed inside the validation loop count there and here.
            inside = ("fit", "figures", "loggers", "data", "artifacts", "pruning", "trainers")
            row["other"] = row["cpu"] - sum(parts[p] for p in inside)
            trials.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})

    experiment.run_experiment = run_experiment
    argv = sys.argv
    sys.argv = ["train.py", "-m", "hparams_search=optuna", *overrides]
    try:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    except SystemExit as done:
        if done.code not in (None, 0):
            raise
    finally:
        sys.argv = argv
    ended = time.perf_counter()
    columns = list(trials[0]) if trials else []
    print(" ".join(f"{c:>11}" for c in columns))
    for row in trials:
        print(" ".join(f"{row[c]:>11}" for c in columns))
    if spans:
        gaps = [b - a for (_, a), (b, _) in itertools.pairwise(spans)]
        print(f"imports of torch, Lightning and amsaware: {imports:.2f} s")
        print(f"start until the first trial (Hydra, the study): {spans[0][0] - started:.2f} s")
        print(f"sweeper between trials: {', '.join(f'{g:.2f}' for g in gaps)} s")
        print(f"after the last trial (best_run.sh): {ended - spans[-1][1]:.2f} s")
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", metavar="STUDY", help="replay a study through the pruners")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="time a search's trials part by part; other arguments go to train.py",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="run a whole search as typed and summarise it; other arguments go to train.py",
    )
    parser.add_argument("--out-dir", type=Path, help="--search: where its study and trials go")
    parser.add_argument("--storage", default="sqlite:///logs/optuna/studies.db")
    parser.add_argument("--events", type=int, default=250_000)
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--losses", nargs="+", default=["bce", "ams"])
    parser.add_argument("--parallel", nargs="+", default=["false", "true"])
    parser.add_argument("--trainer", default="default", help="default (CPU) or gpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("search_cost.json"))
    args, rest = parser.parse_known_args()
    if args.overhead:
        overhead(rest)
        return
    if args.search:
        out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="search-"))
        row = live_search(rest, out_dir.resolve())
        (out_dir / "search.json").write_text(json.dumps(row, indent=2) + "\n")
        print(f"written: {out_dir / 'search.json'}")
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.replay:
        replay_study(args.replay, args.storage)
        return

    scale = PAPER_EPOCHS / args.epochs
    rows = []
    for loss in args.losses:
        for parallel in (value.lower() == "true" for value in args.parallel):
            row = run_trial(loss, parallel, args.events, args.epochs, args.trainer, args.threads)
            row["search_min"] = round(args.trials * row["trial_s"] * scale / 60, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)

    header = f"{'loss':<5} {'cv.parallel':<12} {'trial s':>8} {'oof auroc':>10}"
    header += f" {f'{args.trials}-trial search, min':>24}"
    print(f"\n{args.events} events, 3 folds x {args.epochs} epochs, trainer={args.trainer}")
    if scale != 1:
        print(f"(search projected to {PAPER_EPOCHS} epochs per fold: x{scale:g})")
    print(header)
    for row in rows:
        print(
            f"{row['loss']:<5} {row['parallel']!s:<12} {row['trial_s']:>8.1f} "
            f"{row['oof_auroc']:>10.4f} {row['search_min']:>24.1f}"
        )
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads}
    result = {"machine": machine, "trainer": args.trainer, "trials": args.trials, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
