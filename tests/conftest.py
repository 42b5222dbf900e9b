"""Shared fixtures: small synthetic tables and the location of the shared real sample."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from amsaware.data.schema import EventTable
from amsaware.data.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "data" / "atlas-higgs-sample.csv.gz"
#: The generator of train.py's default data, for tests that rebuild a run's events.
DEFAULT_GENERATOR: str = OmegaConf.load(REPO / "conf" / "data" / "synthetic.yaml").generator


@pytest.fixture(scope="session")
def small_table() -> EventTable:
    return generate(3_000, seed=7)


@pytest.fixture
def real_sample() -> Path:
    if not REAL_SAMPLE.exists():
        pytest.skip(f"shared real sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE
