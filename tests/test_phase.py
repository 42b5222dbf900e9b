"""The per-fold hook's `FoldReport`: each fold's raw-feature scorer reproduces the logits the
protocol scored its held-out events with, on both CV paths (sequential and `cv.parallel`)."""

import numpy as np
import pytest
import torch

from amsaware.losses import BCELoss
from amsaware.model import MLP, SignificanceClassifier
from amsaware.phase import ensemble_scorer
from amsaware.protocol import cross_validate
from tests.helpers import quiet_trainer


def factories(table):
    def make_module():
        net = MLP(len(table.feature_names), 2, 16, 0.0)
        optimizer = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
        return SignificanceClassifier(net, BCELoss(), optimizer)

    return make_module, lambda stages: quiet_trainer(1)


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_each_folds_scorer_gives_the_logits_of_its_held_out_events(small_table, parallel):
    reports = []
    cv = cross_validate(
        small_table, 2, 128, 3, *factories(small_table), test=small_table,
        parallel=parallel, on_fold=reports.append,
    )  # fmt: skip
    assert [r.stage for r in reports] == ["fold0", "fold1"]
    for report in reports:
        raw = small_table.features[report.val_index]  # NaN where undefined, as the table holds
        np.testing.assert_allclose(report.score(raw), report.val_logits, atol=1e-6)
        assert not report.reloaded
    # The fold ensemble's scorer: the logit of the mean probability the run ranks test events by.
    ensemble = ensemble_scorer([r.score for r in reports])
    np.testing.assert_allclose(ensemble(small_table.features), cv.test_logits, atol=1e-6)
