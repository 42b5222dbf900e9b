"""What a search writes from its study is checked against its space: a trial planted in the
study (any key, any value, a high objective) never reaches best_run.sh."""

import logging
import shlex

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from amsaware.search import (
    BEST_RUN,
    RESULTS,
    SearchConfigError,
    SearchFailedError,
    best_run_command,
    parse_space,
    point_problems,
)
from tests.test_search import run_sweeper, search_config, stored_study

EVIL = {
    "+callbacks.evil._target_": "pandas.read_pickle",
    "+callbacks.evil.filepath_or_buffer": "EVIL.pkl",
}


def space():
    return parse_space(search_config().hydra.sweeper.params)[0]


def test_only_the_spaces_keys_with_values_of_their_declared_type_and_range_pass():
    points = space()
    good = {
        "model.n_layers": 3,
        "model.hidden_size": 128,
        "model.dropout": 0.2,
        "optimizer.lr": 1e-3,
        "data.batch_size": 64,
    }
    assert point_problems(good, points) == []
    assert point_problems(good | EVIL, points) == [
        "+callbacks.evil._target_ is not searched",
        "+callbacks.evil.filepath_or_buffer is not searched",
    ]
    bad = {
        "model.n_layers": 99,  # out of range
        "model.hidden_size": 100,  # off the step
        "model.dropout": "0.2; rm -rf ~",  # a string for a float
        "optimizer.lr": float("nan"),
        "data.batch_size": True,  # a bool is not the choice 1
    }
    problems = point_problems(bad, points)
    assert len(problems) == 5 and all(p.split("=")[0] in bad for p in problems), problems
    assert "model.n_layers=99 is not an integer in [2, 5]" in problems[0]
    assert point_problems({"model.n_layers": 3}, points)[0] == "model.hidden_size is missing"


def test_best_run_command_refuses_params_outside_the_space_and_quotes_every_word():
    with pytest.raises(SearchConfigError, match=r"\+callbacks\.evil\._target_ is not searched"):
        best_run_command([], EVIL, space=space())
    choices = {"data.path": CategoricalDistribution(["a b;$(touch x)"])}
    command = best_run_command([], {"data.path": "a b;$(touch x)"}, space=choices)
    words = shlex.split(command)
    assert words[2] == "data.path='a b;$(touch x)'"


def plant(study: optuna.Study, params: dict, distributions: dict, value: float) -> int:
    study.add_trial(
        optuna.trial.create_trial(params=params, distributions=distributions, value=value)
    )
    return study.trials[-1].number


def test_a_planted_trial_is_ignored_with_a_warning_and_never_reaches_best_run(tmp_path, caplog):
    run_sweeper(tmp_path, "hydra.sweeper.n_trials=2", pruner=False)
    study = stored_study(tmp_path)
    evil = plant(study, EVIL, {k: CategoricalDistribution([v]) for k, v in EVIL.items()}, 1e9)
    wide = {
        "model.n_layers": IntDistribution(2, 99),
        "model.hidden_size": IntDistribution(64, 512, step=64),
        "model.dropout": FloatDistribution(0.1, 0.5),
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "data.batch_size": CategoricalDistribution([64, 128, 256]),
    }
    params = {
        "model.n_layers": 99,
        "model.hidden_size": 64,
        "model.dropout": 0.2,
        "optimizer.lr": 1e-3,
        "data.batch_size": 64,
    }
    out_of_range = plant(study, params, wide, 1e8)
    with caplog.at_level(logging.WARNING, logger="amsaware.search"):
        run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", pruner=False)
    assert f"trial #{evil} is ignored" in caplog.text
    assert f"trial #{out_of_range} is ignored" in caplog.text
    assert "model.n_layers=99 is not an integer in [2, 5]" in caplog.text
    best_run = (tmp_path / "sweep" / BEST_RUN).read_text()
    assert (
        "evil" not in best_run and "read_pickle" not in best_run and "n_layers=99" not in best_run
    )
    results = OmegaConf.load(tmp_path / "sweep" / RESULTS)
    assert results.best_trial not in (evil, out_of_range) and results.best_value < 1e8
    assert results.trials.study == 5


@pytest.mark.parametrize("n_trials", [0, -1])
def test_a_search_of_no_trials_is_refused_before_the_study_opens(tmp_path, n_trials):
    with pytest.raises(SearchConfigError, match=rf"hydra.sweeper.n_trials={n_trials}: expected"):
        run_sweeper(tmp_path, f"hydra.sweeper.n_trials={n_trials}", pruner=False)
    assert not (tmp_path / "logs" / "optuna").exists()


def test_a_study_whose_complete_trials_are_all_outside_the_space_says_so(tmp_path):
    diverging = ["optimizer.lr=choice(inf)"]  # every trial of these searches fails
    with pytest.raises(SearchFailedError, match="failed or was pruned, so there"):
        run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", arguments=diverging)
    plant(
        stored_study(tmp_path),
        {"model.n_layers": 99},
        {"model.n_layers": IntDistribution(2, 99)},
        1.0,
    )
    with pytest.raises(SearchFailedError, match=r"its 1 complete trial\(s\) are outside"):
        run_sweeper(tmp_path, "hydra.sweeper.n_trials=1", arguments=diverging)
