"""The test suite's own selection: slow tests are left out of a plain run but run when named."""

import subprocess
import sys

from tests.helpers import REPO

SLOW = "tests/test_ddp.py::test_metrics_under_ddp_equal_the_single_process_values"


def collected(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing collected
    return done.stdout


def test_a_slow_test_is_deselected_from_its_file_but_runs_when_named():
    assert SLOW not in collected("tests/test_ddp.py")
    assert SLOW in collected(SLOW)
    # An explicit -m is the user's choice and stays in force.
    assert SLOW not in collected(SLOW, "-m", "not slow and not slow")
