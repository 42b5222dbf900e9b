"""The Optuna search: the sweeper's logic in-process (a stand-in launcher whose jobs report
like real runs), and the real `train.py -m hparams_search=optuna` on tiny trials (slow)."""

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from amsaware.experiment import lookup_metric
from amsaware.pruning import TrialReporter
from amsaware.search import (
    FAIL_REASON,
    PRUNED_AT,
    SearchConfigError,
    SearchFailedError,
    TrialLink,
    best_run_command,
    check_optimized_metric,
    fold_metric,
    metric_names,
    open_study,
    override_value,
    parse_space,
    sqlite_path,
)
from hydra_plugins.amsaware_sweeper import AmsawareSweeper
from tests.conftest import REPO

TINY_TRIAL = [
    "experiment=smoke",
    "data.n_train=1500",
    "data.n_test=300",
    "trainer.max_epochs=1",
    "cv.folds=2",
    "threads=1",
]
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL
PRUNED = optuna.trial.TrialState.PRUNED
SEARCHED = {
    "model.n_layers",
    "model.hidden_size",
    "model.dropout",
    "optimizer.lr",
    "data.batch_size",
}


# ---------------------------------------------------------------------------------------------
# The space, the metric names, the overrides


def search_config(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True
        )


def test_search_space_is_the_papers():
    cfg = search_config()
    sweeper = cfg.hydra.sweeper
    space, fixed = parse_space(sweeper.params)
    assert fixed == {}
    assert space == {
        "model.n_layers": IntDistribution(2, 5),
        "model.hidden_size": IntDistribution(64, 512, step=64),
        "model.dropout": FloatDistribution(0.1, 0.5),
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "data.batch_size": CategoricalDistribution([64, 128, 256]),
    }
    assert sweeper.n_trials == 50
    assert sweeper.direction == "maximize"
    assert sweeper.sampler.seed == cfg.seed
    assert "TPESampler" in sweeper.sampler._target_
    assert "MedianPruner" in sweeper.pruner._target_
    assert cfg.optimized_metric == "oof/ams_max"
    assert cfg.final_fit is False


def test_command_line_overrides_search_new_keys_and_fix_searched_ones():
    space, fixed = parse_space(
        {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "model.dropout": "0.2"},
        [
            "optimizer.lr=0.003",
            "+model.width=tag(int, interval(8, 64))",
            "seed=range(0.5, 1.5, 0.25)",
            "loss=ams",
        ],
    )
    assert space == {
        "+model.width": IntDistribution(8, 64),
        "seed": FloatDistribution(0.5, 1.5, step=0.25),
    }
    assert fixed == {
        "optimizer.lr": "optimizer.lr=0.003",
        "model.dropout": "model.dropout=0.2",
        "loss": "loss=ams",
    }


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("glob(*)", "not a choice"),
        ("tag(exp, interval(1, 2))", "unknown tag"),
        ("tag(int, interval(1.5, 4))", "integer ends"),
        ("tag(log, range(1, 10, 2))", "step 1"),
        ("tag(log, choice(1, 2))", "choice"),
        ("interval(1, ", "cannot parse"),
    ],
)
def test_a_bad_search_space_is_named_in_the_error(expression, message):
    with pytest.raises(SearchConfigError, match=message) as error:
        parse_space({"model.dropout": expression})
    assert "model.dropout" in str(error.value)


@pytest.mark.parametrize(
    "value", [3, 0.000123, float("inf"), True, None, "ams", "a b", "it's", "1e-3", "null", "x,y"]
)
def test_override_values_read_back_as_the_same_value(value):
    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}").value()
    if isinstance(value, float) and math.isinf(value):
        assert math.isinf(parsed)
    else:
        assert parsed == value and type(parsed) is type(value)


def test_best_run_command_keeps_the_task_and_replaces_the_searched_keys():
    command = best_run_command(
        [
            "hparams_search=optuna",
            "loss=ams",
            "hydra/launcher=joblib",
            "hydra.sweeper.n_trials=3",
            "model.n_layers=range(2,5)",
            "data.path=/data/my file.csv",
        ],
        {"model.n_layers": 3, "optimizer.lr": 0.000123},
    )
    assert command == (
        "python train.py loss=ams 'data.path=/data/my file.csv' model.n_layers=3 "
        "optimizer.lr=0.000123"
    )


def test_sqlite_path():
    assert sqlite_path("sqlite:///logs/optuna/studies.db") == Path("logs/optuna/studies.db")
    assert sqlite_path("sqlite:////abs/s.db") == Path("/abs/s.db")
    assert sqlite_path("postgresql://host/db") is None
    assert sqlite_path(None) is None


def test_metric_names_and_the_per_fold_metric_pruning_reports():
    names = metric_names(final_fit=False)
    assert {"oof/ams_max", "val/auroc", "cut/ams_smoothed"} <= set(names)
    assert not any(name.startswith("test") for name in names)
    assert "test_folds/ams" in metric_names(final_fit=True, ensemble="both")
    assert fold_metric("oof/ams_max") == "val/ams_max"
    assert fold_metric("val/auroc") == "val/auroc"
    assert fold_metric("cut/ams_smoothed") == "val/ams_max"
    assert fold_metric("cut/fraction") is None
    assert fold_metric("test/ams") is None


def test_a_mistyped_or_unavailable_metric_is_rejected():
    assert check_optimized_metric("oof/auroc", final_fit=False) == "oof/auroc"
    with pytest.raises(SearchConfigError, match="'oof/ams_mx' is not a metric"):
        check_optimized_metric("oof/ams_mx", final_fit=False)
    with pytest.raises(SearchConfigError, match="only with final_fit=true"):
        check_optimized_metric("test/ams", final_fit=False)


def test_a_study_written_by_optuna_2_says_how_to_upgrade_it_and_then_resumes(tmp_path):
    database = tmp_path / "logs" / "optuna" / "studies.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as db:
        db.executescript((REPO / "tests" / "data" / "optuna2_study.sql").read_text())
    storage = f"sqlite:///{database}"
    with pytest.raises(SearchConfigError) as error:
        open_study("bce-synthetic", storage, ["maximize"])
    command = f"optuna storage upgrade --storage {storage}"
    assert command in str(error.value)
    assert "Optuna 2" in str(error.value)
    cli = Path(sys.executable).parent / "optuna"
    done = subprocess.run([str(cli), *command.split()[1:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # The upgraded study continues: its 3 trials stay, new ones are numbered on.
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", pruner=False)
    trials = stored_study(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.state for t in trials] == [COMPLETE] * 5


# ---------------------------------------------------------------------------------------------
# The sweeper in-process, with jobs that report per fold like real runs


class ReportingLauncher:
    """Stands in for Hydra's launcher: each job 'trains' 3 folds whose value is n_layers - 2
    (lr=inf raises, as a diverged run does), reporting to its trial through the storage."""

    def __init__(self, pruner_cfg) -> None:
        self.pruner_cfg = pruner_cfg
        self.launched: list[list[str]] = []

    def launch(self, job_overrides, initial_job_idx):
        returns = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            self.launched.append(list(overrides))
            given = {}
            for text in overrides:
                override = OverridesParser.create().parse_override(text)
                given[override.get_key_element()] = override.value()
            run_dir = OmegaConf.create({"hydra": {"runtime": {"output_dir": f"run/{idx}"}}})
            job = JobReturn(overrides=overrides, hydra_cfg=run_dir, status=JobStatus.COMPLETED)
            try:
                job.return_value = self.run(given)
            except Exception as error:
                job.status, job.return_value = JobStatus.FAILED, error
            returns.append(job)
        return returns

    def run(self, given: dict) -> float:
        link = TrialLink(
            given["hydra.sweeper.study_name"],
            given["hydra.sweeper.storage"],
            given["hydra.sweeper.trial"],
            self.pruner_cfg,
        )
        reporter = TrialReporter(link, "val/ams_max", n_steps=3, unit="fold")
        if math.isinf(given.get("optimizer.lr", 1e-3)):
            raise RuntimeError("fold 0 diverged: 750 of 750 validation scores are not finite")
        value = float(given["model.n_layers"] - 2)
        for k in range(3):
            reporter.report(k, value)
        return value


def run_sweeper(
    tmp_path: Path, *overrides: str, arguments=(), storage: bool = True, pruner: bool = True
):
    sweep_overrides = [
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *(["hydra.sweeper.pruner.n_startup_trials=2"] if pruner else ["hydra/sweeper/pruner=none"]),
        *([] if storage else ["hydra.sweeper.storage=null"]),
        *overrides,
    ]
    cfg = search_config(*sweep_overrides)
    sweeper = AmsawareSweeper()
    sweeper.config = cfg
    sweeper.launcher = ReportingLauncher(cfg.hydra.sweeper.pruner)
    sweeper.sweep(list(arguments))
    return sweeper


def stored_study(tmp_path: Path, name: str = "bce-synthetic") -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path}/logs/optuna/studies.db"
    )


def test_the_sweeper_records_pruned_trials_with_where_they_stopped(tmp_path):
    sweeper = run_sweeper(tmp_path, "hydra.sweeper.n_trials=8")
    trials = stored_study(tmp_path).trials
    assert [t.number for t in trials] == list(range(8))
    pruned = [t for t in trials if t.state == PRUNED]
    assert pruned, [t.params["model.n_layers"] for t in trials]
    for trial in pruned:
        assert trial.user_attrs[PRUNED_AT] == "fold 1 of 3"
        assert list(trial.intermediate_values) == [0]
    complete = [t for t in trials if t.state == COMPLETE]
    assert all(len(t.intermediate_values) == 3 for t in complete)
    best = max(complete, key=lambda t: t.value)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_value == best.value
    assert results.trials.this_search.pruned == len(pruned)
    assert trials[0].user_attrs["run_dir"] == "run/0"
    # Each job found its trial through its overrides, and no hydra.* key reaches best_run.sh.
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path}/logs/optuna/studies.db"
    assert storage in sweeper.launcher.launched[3]
    assert "hydra.sweeper.trial=3" in sweeper.launcher.launched[3]
    assert "hydra." not in (tmp_path / "sweep" / "best_run.sh").read_text().splitlines()[-1]


def test_an_in_memory_study_prunes_trials_run_in_the_sweepers_process(tmp_path):
    sweeper = run_sweeper(tmp_path, "hydra.sweeper.n_trials=8", storage=False)
    assert any("hydra.sweeper.trial=7" in job for job in sweeper.launcher.launched)
    assert any("hydra.sweeper.storage=null" in job for job in sweeper.launcher.launched)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.trials.this_search.pruned >= 1
    assert not (tmp_path / "logs" / "optuna").exists()


def test_resuming_continues_trial_numbers_without_reproposing_points(tmp_path):
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=3", pruner=False)
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=3", pruner=False)
    trials = stored_study(tmp_path).trials
    assert [t.number for t in trials] == list(range(6))
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == 6, "a resumed study must not propose its first points again"


def test_a_sweeper_joining_a_study_does_not_replay_another_seeds_points(tmp_path):
    # Seed 1 joining at 1 trial must not draw what seed 2 drew at 0 (1 + 1 == 2 + 0).
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.seed=2", pruner=False)
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.seed=1", pruner=False)
    first, second = stored_study(tmp_path).trials
    assert first.params != second.params


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path):
    run_sweeper(
        tmp_path,
        "hydra.sweeper.n_trials=6",
        arguments=["optimizer.lr=choice(0.001,inf)"],
        pruner=False,
    )
    trials = stored_study(tmp_path).trials
    assert len(trials) == 6
    states = [t.state for t in trials]
    assert FAIL in states and COMPLETE in states, states
    failed = trials[states.index(FAIL)]
    assert failed.params["optimizer.lr"] == math.inf
    assert "diverged" in failed.user_attrs[FAIL_REASON]
    assert (tmp_path / "sweep" / "best_run.sh").exists()


def test_too_many_failures_stop_the_search(tmp_path):
    with pytest.raises(SearchFailedError, match=r"max_failure_rate=0\.0.*diverged"):
        run_sweeper(
            tmp_path,
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.max_failure_rate=0.0",
            arguments=["optimizer.lr=inf"],
        )
    assert len(stored_study(tmp_path).trials) == 1


def test_a_search_where_every_trial_fails_ends_with_a_clear_error(tmp_path):
    with pytest.raises(SearchFailedError, match="every trial of study 'bce-synthetic'") as error:
        run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", arguments=["optimizer.lr=inf"])
    assert "train.log" in str(error.value)
    assert [t.state for t in stored_study(tmp_path).trials] == [FAIL, FAIL]


# ---------------------------------------------------------------------------------------------
# train.py itself


def imported_by(*args: str) -> set[str]:
    """The heavy modules `python train.py ARGS` imports (it exits before any training)."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['train.py', *{list(args)!r}]\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('lightning', 'torch', 'optuna', 'amsaware.experiment', 'sqlalchemy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(eval(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "args", [["--help"], ["--cfg", "job"], ["hparams_search=optuna", "--cfg", "hydra"]]
)
def test_help_and_cfg_do_not_import_the_library(args):
    assert imported_by(*args) == set()


def search(logs: Path, sweep_dir: Path, *overrides: str, check: bool = True):
    command = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=optuna",
        *TINY_TRIAL,
        f"paths.log_dir={logs}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def study(logs: Path, name: str = "bce-synthetic") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{logs}/optuna/studies.db")


def test_a_mistyped_metric_stops_the_search_before_any_trial(tmp_path):
    done = search(tmp_path / "logs", tmp_path / "sweep", "optimized_metric=oof/ams_mx", check=False)
    assert done.returncode != 0
    assert "optimized_metric 'oof/ams_mx' is not a metric" in done.stderr
    assert not (tmp_path / "sweep" / "0").exists()


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    logs = root / "logs"
    first = root / "first"
    # 3 folds and a pruner that compares from the first trial on: trials get pruned.
    search(
        logs,
        first,
        "hydra.sweeper.n_trials=4",
        "cv.folds=3",
        "hydra.sweeper.pruner.n_startup_trials=1",
    )
    return logs, first


@pytest.mark.slow
def test_search_writes_results_and_a_best_run_file(finished_search):
    logs, sweep_dir = finished_search
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(results.best_params) == SEARCHED
    trials = study(logs).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    complete = [t for t in trials if t.state == COMPLETE]
    assert results.best_value == max(t.value for t in complete)
    for trial in complete:
        run_dir = Path(trial.user_attrs["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert "test" not in metrics, "trials must skip the final fit"
        assert not (run_dir / "checkpoints").exists()
        # Every name metric_names() promises for a trial is in its metrics.json.
        for name in metric_names(final_fit=False):
            assert math.isfinite(lookup_metric(metrics, name)) or name.endswith("threshold")
    best_run = (sweep_dir / "best_run.sh").read_text()
    assert f"oof/ams_max = {results.best_value:.6g}" in best_run
    for key, value in results.best_params.items():
        assert f"{key}={value!r}" in best_run
    assert "hparams_search" not in best_run.splitlines()[-1]


@pytest.mark.slow
def test_a_real_search_with_a_pruner_records_pruned_trials(finished_search):
    logs, _ = finished_search
    trials = study(logs).trials
    pruned = [t for t in trials if t.state == PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in trials]
    for trial in pruned:
        assert trial.user_attrs[PRUNED_AT].startswith("fold ")
        log = (Path(trial.user_attrs["run_dir"]) / "train.log").read_text()
        assert f"trial {trial.number} pruned after {trial.user_attrs[PRUNED_AT]}" in log
    for trial in trials:
        if trial.state == COMPLETE:
            assert sorted(trial.intermediate_values) == [0, 1, 2]


@pytest.mark.slow
def test_best_run_file_reruns_the_best_trial_with_the_final_fit(finished_search, tmp_path):
    _, sweep_dir = finished_search
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = os.environ | {"PATH": path, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        ["sh", str(sweep_dir / "best_run.sh"), f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/ams" in metrics["test"]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    rerun = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert rerun.model.n_layers == best.best_params["model.n_layers"]
    assert rerun.optimizer.lr == best.best_params["optimizer.lr"]
    assert math.isclose(metrics["cv"]["oof"]["oof/ams_max"], best.best_value, rel_tol=1e-6)


@pytest.mark.slow
def test_every_trial_is_in_tensorboards_hparams_view(finished_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, sweep_dir = finished_search
    accumulator = EventAccumulator(str(sweep_dir / "0" / "tensorboard" / "summary"))
    accumulator.Reload()
    assert "oof/ams_max" in accumulator.Tags()["scalars"]
    start = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    config = OmegaConf.load(sweep_dir / "0" / ".hydra" / "config.yaml")
    assert start.hparams["model.n_layers"].number_value == config.model.n_layers
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(config.optimizer.lr)
    assert start.hparams["loss"].string_value == "bce"


@pytest.mark.slow
def test_fold_parallel_trials_report_and_are_pruned_per_epoch(tmp_path):
    search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=4",
        "cv.parallel=true",
        "trainer.max_epochs=3",
        "hydra.sweeper.pruner.n_startup_trials=1",
    )
    trials = study(tmp_path / "logs").trials
    for trial in trials:
        if trial.state == COMPLETE:
            assert sorted(trial.intermediate_values) == [0, 1, 2]
    pruned = [t for t in trials if t.state == PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in trials]
    assert all(t.user_attrs[PRUNED_AT].startswith("epoch ") for t in pruned)


@pytest.mark.slow
def test_a_real_diverging_trial_fails_and_the_search_goes_on(tmp_path):
    # A 1e30 step size makes the weights NaN (an infinite one is refused before training);
    # the seeded sampler draws both values.
    done = search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/pruner=none",
        "optimizer.lr=choice(0.001,1e30)",
    )
    trials = study(tmp_path / "logs").trials
    states = [t.state for t in trials]
    assert FAIL in states and COMPLETE in states, states
    failed = trials[states.index(FAIL)]
    assert "diverged" in failed.user_attrs[FAIL_REASON]
    assert "diverged" in (Path(failed.user_attrs["run_dir"]) / "train.log").read_text()
    assert f"trial {failed.number} failed" in done.stdout + done.stderr
    assert (tmp_path / "sweep" / "best_run.sh").exists()


@pytest.mark.slow
def test_joblib_trials_report_to_the_study_through_its_storage(tmp_path):
    done = search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert "is launching 2 jobs" in done.stdout + done.stderr
    trials = study(tmp_path / "logs").trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    # The jobs ran in joblib's worker processes and reported each fold through the database.
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()


def test_trials_in_one_process_build_the_data_once_and_get_their_own_copy(monkeypatch):
    import amsaware.search

    calls = []

    def load(source):
        calls.append(source)
        return {"events": [1, 2, 3], **source}

    monkeypatch.setattr(amsaware.search, "trial_link", lambda: None)
    amsaware.search.load_for_trial({"n": 1}, load)
    amsaware.search.load_for_trial({"n": 1}, load)
    assert len(calls) == 2, "outside a search every run loads its data"

    link = TrialLink("s", None, 0, None)
    monkeypatch.setattr(amsaware.search, "trial_link", lambda: link)
    first = amsaware.search.load_for_trial({"n": 1}, load)
    first["events"].append(4)  # a trial changing its data does not reach the next one
    second = amsaware.search.load_for_trial({"n": 1}, load)
    assert len(calls) == 3 and second == {"events": [1, 2, 3], "n": 1}
    amsaware.search.load_for_trial({"n": 2}, load)
    assert len(calls) == 4, "another data config is built anew"


@pytest.mark.slow
def test_submitit_jobs_are_pruned_through_the_studys_storage(tmp_path):
    search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=2",
        "cv.folds=3",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
    )
    first, second = study(tmp_path / "logs").trials
    assert first.state == COMPLETE and sorted(first.intermediate_values) == [0, 1, 2]
    # The seeded second point is worse after its first fold (checked with this seed).
    assert second.state == PRUNED and second.user_attrs[PRUNED_AT] == "fold 1 of 3"


def test_without_a_pruner_trials_report_but_none_is_pruned(tmp_path):
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=8", pruner=False)
    trials = stored_study(tmp_path).trials
    assert [t.state for t in trials] == [COMPLETE] * 8
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in trials)


# ---------------------------------------------------------------------------------------------
# Several sweeper processes on one study in a PostgreSQL server


def _postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl, createdb)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a Unix socket (no TCP), with an empty database."""
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the postgres extra)")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server programs are not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="amsaware-pg-"))
    root.chmod(0o777)
    as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data, socket, port = root / "data", str(root), "54329"

    def server(*command: str) -> None:
        done = subprocess.run([*as_server, *command], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    server(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {socket} -c listen_addresses=''"
    # -l: the server writes to a file, not to pipes this test would wait on forever.
    start = ["-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start"]
    server(str(bin_dir / "pg_ctl"), *start)
    try:
        server(str(bin_dir / "createdb"), "-h", socket, "-p", port, "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@/optuna?host={socket}&port={port}"
    finally:
        server(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


WORKER = """
import shutil
import sys
import tempfile
from pathlib import Path
from tests.test_search import run_sweeper
run_sweeper(Path(sys.argv[1]), "hydra.sweeper.n_trials=8", f"hydra.sweeper.storage='{sys.argv[2]}'",
            f"hydra.sweeper.sampler.seed={sys.argv[3]}")
"""


# A throwaway PostgreSQL server and two sweeper processes (~30 s): CI's slow phase, where
# .ci/run installs the server programs.
@pytest.mark.slow
def test_two_sweeper_processes_fill_one_study_in_a_server_database(postgres_url, tmp_path):
    env = os.environ | {"PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    # Seeds 1 and 2: a sampler reseeded by adding the trial count would collide (1+1 == 2+0).
    logs = [tmp_path / f"{name}.log" for name in "ab"]
    workers = []
    for name, seed, log in zip("ab", "12", logs, strict=True):
        with log.open("w") as out:  # the child keeps its own copy of the file
            command = [sys.executable, "-c", WORKER, str(tmp_path / name), postgres_url, seed]
            workers.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    codes = [worker.wait(timeout=300) for worker in workers]
    assert codes == [0, 0], "".join(log.read_text()[-2000:] for log in logs)
    trials = optuna.load_study(study_name="bce-synthetic", storage=postgres_url).trials
    assert sorted(t.number for t in trials) == list(range(16)), "no duplicate trial numbers"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 16
    # Both searches' pruners compared with the shared study: some trials were pruned, and the
    # search that ended last names the study's best trial.
    assert any(t.state == PRUNED for t in trials)
    best = max((t for t in trials if t.state == COMPLETE), key=lambda t: t.value)
    results = [OmegaConf.load(tmp_path / n / "sweep" / "optimization_results.yaml") for n in "ab"]
    assert best.value in [r.best_value for r in results]
    assert max(r.trials.study for r in results) == 16, "a sweeper sees the other one's trials"
