"""The Optuna search: the sweeper's logic in-process (a stand-in launcher whose jobs report
like real runs), and the real `train.py -m hparams_search=optuna` on tiny trials (slow)."""

import json
import logging
import math
import os
import re
import shlex
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

from amsaware.pruning import TrialReporter
from amsaware.report import lookup_metric
from amsaware.run_folder import (
    RUN_FILES,
    RUN_FOLDERS,
    RunFolderError,
    claim_run_folder,
    previous_run,
)
from amsaware.search import (
    FAIL_REASON,
    FINGERPRINT,
    PRUNED_AT,
    SearchConfigError,
    SearchFailedError,
    TrialLink,
    best_run_command,
    check_optimized_metric,
    default_study_name,
    fold_metric,
    metric_names,
    open_study,
    override_value,
    parse_space,
    sqlite_path,
)
from hydra_plugins.amsaware_sweeper import (
    PRUNERS,
    AmsawareSweeper,
    _fingerprint,
    first_decision_step,
)
from tests.conftest import REPO
from tests.helpers import multirun

TINY_TRIAL = [
    "experiment=smoke",
    "data.n_train=1500",
    "data.n_test=300",
    "trainer.max_epochs=1",
    "cv.folds=2",
    "threads=1",
]
#: Searches run folds in parallel and report every quarter epoch; these trials train their
#: folds one after the other and report after each fold.
SEQUENTIAL = ["cv.parallel=false", "trainer.val_check_interval=1.0"]
#: A pruner that stops trials in a search of a few: below the median of the earlier trials
#: from the second trial on (the default, successive halving, decides first at step 4).
MEDIAN = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1"]
NO_PRUNER = ["hydra/sweeper/pruner=none"]
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
    assert "SuccessiveHalvingPruner" in sweeper.pruner._target_
    assert cfg.optimized_metric == "oof/ams_max"
    assert cfg.final_fit is False
    # Folds trained at once, reporting to the pruner every quarter epoch.
    assert cfg.cv.parallel is True and cfg.trainer.val_check_interval == 0.25


def test_trials_have_no_logger_unless_asked():
    assert search_config().get("logger") is None
    assert "TensorBoardLogger" in search_config("logger=tensorboard").logger.tensorboard._target_
    assert search_config("logger=csv").logger.csv is not None


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
    # The search's own settings that change a trial's result are written as the trials ran,
    # replacing the command line's.
    command = best_run_command(
        ["hparams_search=optuna", "cv.parallel=false", "seed=3"],
        {"model.n_layers": 3},
        {"cv.parallel": True},
    )
    assert command == "python train.py seed=3 cv.parallel=true model.n_layers=3"


def test_sqlite_path():
    assert sqlite_path("sqlite:///logs/optuna/studies.db") == Path("logs/optuna/studies.db")
    assert sqlite_path("sqlite:////abs/s.db") == Path("/abs/s.db")
    assert sqlite_path("postgresql://host/db") is None
    assert sqlite_path(None) is None


@pytest.mark.parametrize(
    ("every", "batches", "per_epoch"),
    [(3, 12, 4), (3, 14, 4), (1, 3, 3), (12, 12, 1), (float("inf"), 12, 1)],
)
def test_validations_per_epoch_follow_lightnings_val_check_batch(every, batches, per_epoch):
    from types import SimpleNamespace

    from amsaware.pruning import _validations_per_epoch

    trainer = SimpleNamespace(val_check_batch=every, num_training_batches=batches)
    assert _validations_per_epoch(trainer) == per_epoch


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
    # The upgraded study has no record of its trials' fixed settings: refused, then adopted.
    name = "hydra.sweeper.study_name=bce-synthetic"
    with pytest.raises(SearchConfigError, match=r"predates study fingerprints.*adopt_study=true"):
        run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", name, pruner=False)
    run_sweeper(
        tmp_path, "hydra.sweeper.n_trials=2", name, "hydra.sweeper.adopt_study=true", pruner=False
    )
    # The adopted study continues: its 3 trials stay, new ones are numbered on.
    trials = stored_study(tmp_path, "bce-synthetic").trials
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
        reporter = TrialReporter(link, "val/ams_max")
        if math.isinf(given.get("optimizer.lr", 1e-3)):
            raise RuntimeError("fold 0 diverged: 750 of 750 validation scores are not finite")
        value = float(given["model.n_layers"] - 2)
        for k in range(3):
            reporter.report(value, f"fold {k + 1} of 3", last=k == 2)
        return value


def run_sweeper(
    tmp_path: Path,
    *overrides: str,
    arguments=(),
    storage: bool = True,
    pruner: bool | list[str] = True,
):
    """The sweeper in this process, its trials run by ReportingLauncher; `pruner`: True for
    the median pruner from the third trial on, False for none, or the pruner's overrides."""
    if not isinstance(pruner, list):
        pruner = [MEDIAN[0], "hydra.sweeper.pruner.n_startup_trials=2"] if pruner else NO_PRUNER
    sweep_overrides = [
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *pruner,
        *([] if storage else ["hydra.sweeper.storage=null"]),
        *overrides,
    ]
    cfg = search_config(*sweep_overrides)
    sweeper = AmsawareSweeper()
    sweeper.config = cfg
    sweeper.launcher = ReportingLauncher(cfg.hydra.sweeper.pruner)
    sweeper.sweep(list(arguments))
    return sweeper


def only_study(storage: str, name: str | None = None) -> optuna.Study:
    """The study `name`, or the storage's one study (whose default name holds a hash)."""
    if name is None:
        names = optuna.study.get_all_study_names(storage)
        assert len(names) == 1, names
        name = names[0]
    return optuna.load_study(study_name=name, storage=storage)


def stored_study(tmp_path: Path, name: str | None = None) -> optuna.Study:
    return only_study(f"sqlite:///{tmp_path}/logs/optuna/studies.db", name)


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


@pytest.mark.parametrize(
    ("pruner", "first"),
    [
        ({}, None),
        (PRUNERS["median"], 0),
        ({**PRUNERS["percentile"], "n_warmup_steps": 2}, 2),
        ({**PRUNERS["successive_halving"], "min_resource": "auto"}, None),
        ({**PRUNERS["successive_halving"], "min_resource": 4}, 4),
        ({**PRUNERS["successive_halving"], "min_resource": 2, "min_early_stopping_rate": 1}, 8),
        (PRUNERS["hyperband"], 1),
    ],
)
def test_the_first_step_a_pruner_can_stop_a_trial_at(pruner, first):
    assert first_decision_step(OmegaConf.create(pruner)) == first


def test_a_pruner_that_decides_only_after_a_trials_last_report_is_named(tmp_path, caplog):
    # The default pruner, successive halving deciding first at step 4 (1.25 epochs with four
    # reports an epoch), never stops a trial that reports once per fold, 3 times.
    late = ["hydra/sweeper/pruner=successive_halving"]
    with caplog.at_level(logging.WARNING):
        run_sweeper(tmp_path / "late", "hydra.sweeper.n_trials=3", pruner=late)
    message = "trial 0 reported 3 values (steps 0-2), but the pruner decides first at step 4"
    assert message in caplog.text
    assert caplog.text.count("this search prunes nothing") == 1
    assert "hydra.sweeper.pruner.min_resource" in caplog.text
    caplog.clear()
    early = [late[0], "hydra.sweeper.pruner.min_resource=1"]
    with caplog.at_level(logging.WARNING):
        run_sweeper(tmp_path / "early", "hydra.sweeper.n_trials=3", pruner=early)
    assert "prunes nothing" not in caplog.text


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
    with pytest.raises(
        SearchFailedError, match=r"every trial of study 'bce-synthetic-[0-9a-f]{8}'"
    ) as error:
        run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", arguments=["optimizer.lr=inf"])
    assert "train.log" in str(error.value)
    assert [t.state for t in stored_study(tmp_path).trials] == [FAIL, FAIL]


# ---------------------------------------------------------------------------------------------
# Studies keyed by what the search holds fixed


def default_name(*overrides: str) -> str:
    """The study name the sweeper gives `train.py -m hparams_search=optuna OVERRIDES`."""
    cfg = search_config(*overrides)
    space, _ = parse_space(cfg.hydra.sweeper.params, overrides)
    return default_study_name(_fingerprint(cfg, space))


def test_the_default_study_name_is_keyed_by_what_the_search_holds_fixed():
    base = default_name()
    assert re.fullmatch(r"bce-synthetic-[0-9a-f]{8}", base), base
    assert default_name() == base, "the same command continues the same study"
    # Where files go, threads, loggers and the search's own settings are not the objective.
    same = ["paths.log_dir=/elsewhere", "threads=1", "logger=csv", "hydra.sweeper.n_trials=3"]
    assert default_name(*same) == base
    assert default_name("optimizer.lr=0.5") != base, "a searched key fixed is part of it"
    changed = [
        "data.n_train=1000",
        "experiment=smoke",
        "cv.folds=5",
        "cv.repeats=2",
        "trainer.max_epochs=3",
        "optimized_metric=cut/ams_smoothed",
        "seed=1",
    ]
    names = {change: default_name(change) for change in changed}
    assert base not in names.values() and len(set(names.values())) == len(changed), names
    assert default_name("loss=ams").startswith("ams-synthetic-")
    finetune = default_name("finetune=ams")
    assert re.fullmatch(r"bce-ams-synthetic-[0-9a-f]{8}", finetune), finetune
    opendata = default_name("data=opendata", "data.path=/data/a.csv.gz")
    assert opendata.startswith("bce-opendata-")
    assert default_name("data=opendata", "data.path=/data/b.csv.gz") != opendata
    assert default_name("data=opendata", "data.path=/data/a.csv.gz", "data.limit=12000") != (
        opendata
    )


def test_the_fingerprint_holds_the_fixed_values_not_the_searched_ones():
    cfg = search_config("experiment=smoke")
    space, _ = parse_space(cfg.hydra.sweeper.params)
    values = _fingerprint(cfg, space)
    assert values["data.n_train"] == 5000 and values["trainer.max_epochs"] == 2
    assert values["cv.folds"] == 3 and values["optimized_metric"] == "oof/ams_max"
    assert values["choices.experiment"] == "smoke" and values["choices.loss"] == "bce"
    assert values["loss._target_"] == "amsaware.losses.BCELoss"
    assert not set(values) & SEARCHED
    assert not any(key.split(".")[0] in ("paths", "logger", "threads", "hydra") for key in values)


def test_an_explicit_study_name_is_used_as_given(tmp_path):
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=mine", pruner=False)
    study = stored_study(tmp_path)
    assert study.study_name == "mine"
    assert study.user_attrs[FINGERPRINT]["data.n_train"] == 250000


def test_a_search_continuing_a_study_of_other_fixed_settings_is_refused(tmp_path):
    name = "hydra.sweeper.study_name=shared"
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", name, pruner=False)
    with pytest.raises(SearchConfigError) as error:
        run_sweeper(
            tmp_path,
            "hydra.sweeper.n_trials=2",
            name,
            "data.n_train=1000",
            "cv.folds=5",
            pruner=False,
        )
    message = str(error.value)
    assert "'shared'" in message
    assert "data.n_train: 250000 in the study, 1000 in this search" in message
    assert "cv.folds: 3 in the study, 5 in this search" in message
    assert len(stored_study(tmp_path).trials) == 2, "the refused search ran no trial"
    # Without the explicit name the second search gets its own study.
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", "data.n_train=1000", pruner=False)
    names = optuna.study.get_all_study_names(f"sqlite:///{tmp_path}/logs/optuna/studies.db")
    assert len(names) == 2


def test_best_run_quotes_the_studys_best_trial_and_its_command_reproduces_it(tmp_path):
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=4", pruner=False)
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", pruner=False)  # resumed: 6 trials
    study = stored_study(tmp_path)
    assert len(study.trials) == 6
    best = study.best_trial
    lines = (tmp_path / "sweep" / "best_run.sh").read_text().splitlines()
    assert f"Best trial of study {study.study_name!r}: oof/ams_max = {best.value:.6g}." in lines[1]
    words = shlex.split(lines[-1])
    assert words[:2] == ["python", "train.py"] and words[-1] == "$@"
    # The command's overrides compose a run with the best trial's parameters, and, searched
    # again, with the fingerprint of the study it came from.
    overrides = words[2:-1]
    rerun = search_config(*overrides)
    for key, value in best.params.items():
        assert OmegaConf.select(rerun, key) == value
    space, _ = parse_space(rerun.hydra.sweeper.params)
    assert _fingerprint(rerun, space) == study.user_attrs[FINGERPRINT]


def hydra_multirun(task, overrides: list[str]) -> None:
    """`train.py -m hparams_search=optuna OVERRIDES` in this process with another task
    function: the real sweeper, Hydra's basic launcher and the run folders it makes."""
    multirun(task, ["hparams_search=optuna", *overrides])


def folder_trial(cfg) -> float:
    """A trial that writes its trial number into its run folder (never into a used one)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    with (Path(hydra_cfg.runtime.output_dir) / "trial.txt").open("x") as out:
        out.write(str(hydra_cfg.sweeper.trial))
    return float(cfg.model.n_layers)


def files_of(*folders: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path): (path.read_bytes(), path.stat().st_mtime_ns)
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_resumed_search_numbers_its_folders_by_trial_and_leaves_earlier_ones(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/pruner=none",
    ]
    hydra_multirun(folder_trial, overrides)
    earlier = files_of(sweep / "0", sweep / "1")
    assert any(name.endswith("overrides.yaml") for name in earlier)
    hydra_multirun(folder_trial, overrides)  # the same sweep folder, the same study
    trials = stored_study(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state for t in trials] == [COMPLETE] * 4
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    for trial in trials:
        folder = sweep / str(trial.number)
        assert Path(trial.user_attrs["run_dir"]) == folder
        assert (folder / "trial.txt").read_text() == str(trial.number)
    assert files_of(sweep / "0", sweep / "1") == earlier, "the resumed search wrote into them"


# ---------------------------------------------------------------------------------------------
# A run folder holding only a logger's files holds a run


@pytest.mark.parametrize(
    "written",
    [
        "csv/fold0/metrics.csv",
        "wandb/offline-run-20261130_100000-abc/run-abc.wandb",
        "mlflow.db",
        "mlartifacts/1/abc/artifacts/x.txt",
    ],
)
def test_a_folder_with_only_a_loggers_files_holds_a_run(tmp_path, written):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "train.log").write_text("")
    path = tmp_path / written
    path.parent.mkdir(parents=True, exist_ok=True)
    assert previous_run(tmp_path) == [], "an empty logger folder is no run"
    path.write_text("x")
    top = written.split("/")[0]
    (found,) = previous_run(tmp_path)
    assert found == top if top == written else found == f"{top}/ ({written})"
    with pytest.raises(RunFolderError, match=re.escape(f"already holds a run: {found}")):
        claim_run_folder(tmp_path)
    claim_run_folder(tmp_path, overwrite=True)
    assert not (tmp_path / top).exists() and (tmp_path / ".hydra").exists()


def test_run_folder_markers_cover_every_loggers_output():
    """Where conf/logger/*.yaml write inside the run folder is what `previous_run` looks at."""
    configs = {
        p.stem: OmegaConf.to_container(OmegaConf.load(p))  # unresolved: ${paths.output_dir}
        for p in (REPO / "conf" / "logger").glob("*.yaml")
    }
    assert {"tensorboard", "csv", "mlflow", "wandb"} <= set(configs)
    for name in ("tensorboard", "csv"):
        assert configs[name][name]["save_dir"] == "${paths.output_dir}"
        assert configs[name][name]["name"] in RUN_FOLDERS
    mlflow = configs["mlflow"]["mlflow"]
    assert mlflow["tracking_uri"].removeprefix("sqlite:///${paths.output_dir}/") in RUN_FILES
    assert mlflow["artifact_location"].removeprefix("${paths.output_dir}/") in RUN_FOLDERS
    # W&B writes <save_dir>/wandb/.
    assert configs["wandb"]["wandb"]["save_dir"] == "${paths.output_dir}"
    assert "wandb" in RUN_FOLDERS


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


def study(logs: Path, name: str | None = None) -> optuna.Study:
    return only_study(f"sqlite:///{logs}/optuna/studies.db", name)


def test_the_search_command_as_typed_keeps_its_study_under_the_project(tmp_path):
    """No path given: the study's storage resolves through paths.root_dir (a ${hydra:...}
    path) when Hydra builds the sweeper, before any run. A copy of the project's conf/ and
    train.py stands in for the project, so the study lands under tmp_path."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "conf", project / "conf")
    shutil.copy(REPO / "train.py", project)
    command = [sys.executable, "train.py", "-m", "hparams_search=optuna", *TINY_TRIAL]
    command.append("hydra.sweeper.n_trials=1")
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study(project / "logs").trials
    assert [t.state for t in trials] == [COMPLETE]
    assert Path(trials[0].user_attrs["run_dir"]).parent.parent == project / "multirun"


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
    # 3 folds trained at once and reporting every quarter epoch (the search's default), and a
    # pruner that compares from the first trial on: trials get pruned. TensorBoard asked for
    # (trials have no logger by default), for its HPARAMS view.
    search(
        logs,
        first,
        "hydra.sweeper.n_trials=4",
        "cv.folds=3",
        *MEDIAN,
        "logger=tensorboard",
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
        # One epoch of 1,000 training events a fold: 4 to 16 batches, a validation every 1-4.
        assert trial.user_attrs[PRUNED_AT] == f"epoch {len(trial.intermediate_values) / 4:g} of 1"
        log = (Path(trial.user_attrs["run_dir"]) / "train.log").read_text()
        assert f"trial {trial.number} pruned after {trial.user_attrs[PRUNED_AT]}" in log
    for trial in trials:
        if trial.state == COMPLETE:
            assert sorted(trial.intermediate_values) == [0, 1, 2, 3]


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
        "trainer.max_epochs=3",
        "trainer.val_check_interval=1.0",
        *MEDIAN,
    )
    trials = study(tmp_path / "logs").trials
    for trial in trials:
        if trial.state == COMPLETE:
            assert sorted(trial.intermediate_values) == [0, 1, 2]
    pruned = [t for t in trials if t.state == PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in trials]
    assert all(t.user_attrs[PRUNED_AT].startswith("epoch ") for t in pruned)


@pytest.mark.slow
def test_fold_parallel_trials_report_every_quarter_epoch(tmp_path):
    search(
        tmp_path / "logs",
        tmp_path / "sweep",
        "hydra.sweeper.n_trials=6",
        "cv.parallel=true",
        "trainer.max_epochs=2",
        "trainer.val_check_interval=0.25",
        "data.batch_size=64",  # 750 training events a fold: 12 batches, a validation every 3
    )  # the default pruner: successive halving, deciding first at step 4 (1.25 epochs)
    trials = study(tmp_path / "logs").trials
    complete = [t for t in trials if t.state == COMPLETE]
    assert complete and all(sorted(t.intermediate_values) == list(range(8)) for t in complete)
    pruned = [t for t in trials if t.state == PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in trials]
    for trial in pruned:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps))) and len(steps) < 8
        assert trial.user_attrs[PRUNED_AT] == f"epoch {len(steps) / 4:g} of 2"


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
        *SEQUENTIAL,
    )
    assert "is launching 2 jobs" in done.stdout + done.stderr
    trials = study(tmp_path / "logs").trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    # The jobs ran in joblib's worker processes and reported each fold through the database.
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()
    # By default a trial writes no logger files (no TensorBoard, no figures).
    assert not [p for p in (tmp_path / "sweep" / "0").iterdir() if p.name in RUN_FOLDERS]


@pytest.mark.slow
def test_the_overhead_benchmark_times_each_part_of_a_trial(tmp_path):
    command = [
        sys.executable,
        "benchmarks/search_cost.py",
        "--overhead",
        *TINY_TRIAL,
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/pruner=none",
        "logger=tensorboard",
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "wall"])
    columns = lines[header].split()
    rows = [
        dict(zip(columns, map(float, line.split()), strict=True))
        for line in lines[header + 1 :][:2]
    ]
    assert [row["trial"] for row in rows] == [0, 1]
    for row in rows:
        assert row["train_steps"] > 0 and row["validation"] > 0 and row["figures"] > 0
        parts = ("train_steps", "validation", "figures", "loggers", "data", "artifacts")
        assert sum(row[p] for p in parts) <= row["cpu"] + 0.05
    assert rows[0]["data"] > 0 and rows[1]["data"] < rows[0]["data"], "data built once"
    assert "start until the first trial" in done.stdout


@pytest.mark.slow
def test_the_search_benchmark_summarises_a_whole_search(tmp_path):
    command = [sys.executable, "benchmarks/search_cost.py", "--search", "--out-dir", str(tmp_path)]
    command += [*TINY_TRIAL, "cv.folds=3", *SEQUENTIAL, "hydra.sweeper.n_trials=4"]
    command += MEDIAN
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads((tmp_path / "search.json").read_text())
    trials = study(tmp_path / "logs").trials
    assert row["trials"] == len(trials) == 4
    assert row["complete"] + row["pruned"] + row["failed"] == 4
    steps = sum(len(t.intermediate_values) for t in trials)
    assert row["steps_run"] == f"{steps} of {4 * 3}"
    assert row["best_value"] == max(t.value for t in trials if t.state == COMPLETE)
    assert row["wall_min"] > 0 and row["cpu_user_s"] >= 0


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
        *SEQUENTIAL,
        *MEDIAN,
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
    trials = only_study(postgres_url).trials
    assert sorted(t.number for t in trials) == list(range(16)), "no duplicate trial numbers"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 16
    # Both searches' pruners compared with the shared study: some trials were pruned, and the
    # search that ended last names the study's best trial.
    assert any(t.state == PRUNED for t in trials)
    best = max((t for t in trials if t.state == COMPLETE), key=lambda t: t.value)
    results = [OmegaConf.load(tmp_path / n / "sweep" / "optimization_results.yaml") for n in "ab"]
    assert best.value in [r.best_value for r in results]
    assert max(r.trials.study for r in results) == 16, "a sweeper sees the other one's trials"


def test_optuna_dashboard_serves_the_sweepers_study(tmp_path):
    """The study opens in the current optuna-dashboard (its own WSGI app, no server): the
    trials with their states, values, parameters and the intermediate values the pruner saw."""
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    run_sweeper(tmp_path, "hydra.sweeper.n_trials=6")
    study = stored_study(tmp_path)
    app = wsgi(f"sqlite:///{tmp_path}/logs/optuna/studies.db")

    def get(path: str) -> dict:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        status = []
        body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
        assert status == ["200 OK"], (path, status, body[:500])
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == study.study_name
    served = get(f"/api/studies/{summary['study_id']}")["trials"]
    assert [t["number"] for t in served] == [t.number for t in study.trials]
    states = {"Complete": COMPLETE, "Pruned": PRUNED}
    assert [states[t["state"]] for t in served] == [t.state for t in study.trials]
    assert any(t["state"] == "Pruned" for t in served)
    for trial, stored in zip(served, study.trials, strict=True):
        steps = {v["step"]: v["value"] for v in trial["intermediate_values"]}
        assert steps == pytest.approx(stored.intermediate_values)


class FitLauncher(ReportingLauncher):
    """Each job 'fits' once its folds are done: sigma_mu = n_layers / 10, no per-fold report
    (its per-fold val/sigma_mu is measured with sequential folds only, and these trials run
    them in parallel, hparams_search=optuna's default)."""

    def run(self, given: dict) -> float:
        assert fold_metric("fit/sigma_mu") == "val/sigma_mu"
        return given["model.n_layers"] / 10


def test_a_fit_objective_is_minimised_and_never_pruned(tmp_path, caplog):
    fit = ["systematics=higgs", "optimized_metric=fit/sigma_mu"]
    with pytest.raises(SearchConfigError, match=r"better when lower.*direction=minimize"):
        run_sweeper(tmp_path / "max", "hydra.sweeper.n_trials=1", *fit)
    with pytest.raises(SearchConfigError, match=r"better when higher.*direction=maximize"):
        run_sweeper(
            tmp_path / "min", "hydra.sweeper.n_trials=1", "hydra.sweeper.direction=minimize"
        )
    cfg = search_config(
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *MEDIAN,
        *fit,
        "hydra.sweeper.direction=minimize",
        "hydra.sweeper.n_trials=6",
    )
    sweeper = AmsawareSweeper()
    sweeper.config = cfg
    sweeper.launcher = FitLauncher(cfg.hydra.sweeper.pruner)
    with caplog.at_level(logging.WARNING):
        sweeper.sweep([])
    assert caplog.text.count("nothing is pruned") == 1
    assert "sequential folds only: set cv.parallel=false" in caplog.text
    trials = stored_study(tmp_path).trials
    assert [t.state for t in trials] == [COMPLETE] * 6
    assert all(not t.intermediate_values for t in trials)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_value == min(t.value for t in trials)
    assert results.best_value < max(t.value for t in trials)  # TPE drew several depths
    assert "optimized_metric=fit/sigma_mu" in (tmp_path / "sweep" / "best_run.sh").read_text()
