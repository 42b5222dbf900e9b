"""Shared fixtures: small synthetic tables, the location of the shared real sample, and the tiny
finished runs (made once per session, in-process) that predict, compare, explain, eval and the
run-folder contract tests read. A test that changes a run folder copies it first."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from amsaware.data.schema import EventTable
from amsaware.data.synthetic import generate
from tests.helpers import REPO, run

REAL_SAMPLE = REPO.parent / "shared" / "data" / "atlas-higgs-sample.csv.gz"
#: The generator of train.py's default data, for tests that rebuild a run's events.
DEFAULT_GENERATOR: str = OmegaConf.load(REPO / "conf" / "data" / "synthetic.yaml").generator

__all__ = ["DEFAULT_GENERATOR", "REAL_SAMPLE", "REPO"]


def pytest_configure(config: pytest.Config) -> None:
    """A test named by its id (`pytest tests/test_x.py::test_y`) runs even where it is marked
    slow: pyproject's `-m 'not slow'` is for the whole suite, not for a test asked for by name.
    """
    named = [arg for arg in config.args if "::" in arg]
    if named and len(named) == len(config.args) and config.option.markexpr == "not slow":
        config.option.markexpr = ""


@pytest.fixture(scope="session")
def small_table() -> EventTable:
    return generate(3_000, seed=7)


@pytest.fixture
def real_sample() -> Path:
    if not REAL_SAMPLE.exists():
        pytest.skip(f"shared real sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """Where the session's tiny runs live; their folder names are the runs' names in compare."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def bce_run(runs_root) -> Path:
    """`train.py ~logger` with helpers.TINY: BCE, 1500 training and 1100 test events, 3 folds.

    Without TensorBoard: its figures (a dozen matplotlib renders) cost most of a tiny run.
    """
    run(runs_root / "bce", "~logger")
    return runs_root / "bce"


@pytest.fixture(scope="session")
def ams_run(runs_root) -> Path:
    """As bce_run (same events and folds) with `loss=ams`, and TensorBoard's curves and figures."""
    run(runs_root / "ams", "loss=ams")
    return runs_root / "ams"


@pytest.fixture(scope="session")
def both_run(runs_root) -> Path:
    """As bce_run with `ensemble=both`: the final fit and the fold ensemble score test events."""
    run(runs_root / "both", "~logger", "ensemble=both")
    return runs_root / "both"
