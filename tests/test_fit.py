"""The binned profile-likelihood fit (amsaware.fit) against closed forms, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pyhf
import pytest
from matplotlib.figure import Figure

from amsaware import fit, fit_plots


def counting(s: float, b: float, norm: float | None = None, n: int = 400) -> fit.FitInput:
    """A one-bin experiment: `n` signal and `n` background events carrying totals s and b."""
    process = np.repeat(["signal", "bkg"], n)
    weight = np.concatenate([np.full(n, s / n), np.full(n, b / n)])
    score = np.linspace(0, 1, 2 * n)
    return fit.FitInput(score, weight, process, norms={"bkg": norm} if norm else {})


def one_bin(data: fit.FitInput, mc_stat: bool = False) -> dict:
    binning = fit.choose_binning(data.score, data.weight, data.process == "signal", bins=1)
    assert binning.n_bins == 1
    return fit.workspace(fit.build_templates(data, binning), mc_stat=mc_stat)


def z_asimov(s: float, b: float) -> float:
    """Cowan, Cranmer, Gross, Vitells (2011), Eq. 97."""
    return float(np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s)))


def z_asimov_uncertain(s: float, b: float, sigma_b: float) -> float:
    """The same with a background known to sigma_b (Cowan's note on discovery significance)."""
    n, v = s + b, sigma_b**2
    first = n * np.log(n * (b + v) / (b**2 + n * v))
    second = b**2 / v * np.log(1 + v * s / (b * (b + v)))
    return float(np.sqrt(2 * (first - second)))


def synthetic(rng: np.random.Generator, scale: float = 1.0, shapes: bool = True) -> fit.FitInput:
    """Three backgrounds and a signal in logit space, two shape and three norm nuisances."""
    counts = {"signal": 2000, "ztt": 4000, "top": 2000, "diboson": 1000}
    totals = {"signal": 200, "ztt": 4000, "top": 1500, "diboson": 600}
    centres = {"signal": 1.5, "ztt": -1.0, "top": -0.6, "diboson": -0.3}
    process = np.repeat(list(counts), list(counts.values()))
    score = np.concatenate([rng.normal(centres[p], 1, n) for p, n in counts.items()])
    weight = np.concatenate([np.full(n, scale * totals[p] / n) for p, n in counts.items()])
    variations = []
    if shapes:
        for name, size in (("tes", 0.08), ("jes", 0.04)):
            step = size * (1 + rng.normal(0, 0.3, len(score)))
            kept = rng.random(len(score)) > 0.02
            variations.append(
                fit.ShapeVariation(name, score - step, score + step, down_selected=kept)
            )
    norms = {"ztt": 0.05, "top": 0.1, "diboson": 0.2}
    return fit.FitInput(score, weight, process, "signal", variations, norms)


def spec_of(data: fit.FitInput, bins: int = 10, mc_stat: bool = True) -> dict:
    binning = fit.choose_binning(data.score, data.weight, data.process == "signal", bins)
    return fit.workspace(fit.build_templates(data, binning), mc_stat=mc_stat)


def test_counting_experiment_matches_closed_forms() -> None:
    s, b = 100.0, 1000.0
    result = fit.asimov_fit(one_bin(counting(s, b)))
    assert result.sigma_mu_hesse == pytest.approx(np.sqrt(s + b) / s, rel=1e-3)
    assert result.sigma_mu == pytest.approx(np.sqrt(s + b) / s, rel=0.02)  # MINOS, Poisson
    assert result.sigma_mu_stat == pytest.approx(result.sigma_mu, rel=1e-3)  # no nuisance
    assert result.z_discovery == pytest.approx(z_asimov(s, b), rel=2e-3)
    assert result.z_discovery_stat == pytest.approx(z_asimov(s, b), rel=2e-3)
    assert result.mu_interval[0] < 1 < result.mu_interval[1]


def test_normalisation_uncertainty_matches_its_analytic_width() -> None:
    s, b, f = 50.0, 1000.0, 0.05
    result = fit.asimov_fit(one_bin(counting(s, b, norm=f)))
    assert result.sigma_mu_hesse == pytest.approx(np.sqrt(s + b + (f * b) ** 2) / s, rel=0.03)
    assert result.sigma_mu == pytest.approx(np.sqrt(s + b + (f * b) ** 2) / s, rel=0.05)
    assert result.sigma_mu_stat == pytest.approx(np.sqrt(s + b) / s, rel=0.02)
    assert result.z_discovery == pytest.approx(z_asimov_uncertain(s, b, f * b), rel=0.05)
    assert result.z_discovery_stat == pytest.approx(z_asimov(s, b), rel=2e-3)


def test_stat_only_is_narrower_and_mc_stat_widens() -> None:
    data = synthetic(np.random.default_rng(3))
    exact = fit.asimov_fit(spec_of(data, mc_stat=False))
    with_mc = fit.asimov_fit(spec_of(data, mc_stat=True))
    for result in (exact, with_mc):
        assert result.sigma_mu_stat <= result.sigma_mu
        assert result.z_discovery <= result.z_discovery_stat
    assert with_mc.sigma_mu > exact.sigma_mu * 1.01
    assert exact.sigma_mu_stat == pytest.approx(with_mc.sigma_mu_stat, rel=1e-3)
    metrics = with_mc.as_metrics()
    assert set(metrics) == {
        "fit/sigma_mu",
        "fit/sigma_mu_stat",
        "fit/z_discovery",
        "fit/z_discovery_stat",
    }


def test_workspace_validates_and_reloads_to_the_same_fit(tmp_path) -> None:
    import cabinetry

    spec = spec_of(synthetic(np.random.default_rng(4)))
    path = fit.write_workspace(spec, tmp_path / "fit" / "workspace.json")
    on_disk = json.loads(path.read_text())
    pyhf.Workspace(on_disk)  # the HistFactory schema
    assert cabinetry.workspace.load(path) == on_disk
    types = {m["type"] for sample in on_disk["channels"][0]["samples"] for m in sample["modifiers"]}
    assert types == {"normfactor", "normsys", "histosys", "staterror"}
    assert fit.asimov_fit(fit.read_workspace(path)).sigma_mu == pytest.approx(
        fit.asimov_fit(spec).sigma_mu, rel=1e-6
    )


def test_templates_follow_the_shifted_scores_and_selection() -> None:
    data = synthetic(np.random.default_rng(5))
    binning = fit.choose_binning(data.score, data.weight, data.process == "signal", 10)
    templates = fit.build_templates(data, binning)
    weight = np.asarray(data.weight)
    for p in templates.processes:
        mine = data.process == p
        assert templates.nominal[p].sum() == pytest.approx(weight[mine].sum())
        assert templates.sumw2[p].sum() == pytest.approx((weight[mine] ** 2).sum())
        down, up = templates.shapes["tes"][p]
        kept = np.asarray(data.shapes[0].down_selected)
        assert down.sum() == pytest.approx(weight[mine & kept].sum())  # failing events leave
        assert up.sum() == pytest.approx(weight[mine].sum())
    # the +1 sigma shift moves events to higher scores: the top bin gains background
    assert templates.shapes["tes"]["ztt"][1][-1] > templates.nominal["ztt"][-1]


def test_binning_has_equal_signal_bins_and_enough_background() -> None:
    data = synthetic(np.random.default_rng(6), shapes=False)
    signal = data.process == "signal"
    binning = fit.choose_binning(data.score, data.weight, signal, 10, min_background=20)
    index = binning.index(data.score)
    background = np.bincount(index[~signal], minlength=binning.n_bins)
    assert background.min() >= 20
    assert 2 <= binning.n_bins <= 10
    # below the merged top, every bin holds a tenth of the signal
    s = np.bincount(index[signal], weights=data.weight[signal], minlength=binning.n_bins)
    assert s[:-1] / s.sum() == pytest.approx(np.full(binning.n_bins - 1, 0.1), abs=2e-3)
    # the bins depend on the scores' order only: logits and probabilities bin alike
    probability = 1 / (1 + np.exp(-data.score))
    same = fit.choose_binning(probability, data.weight, signal, 10, min_background=20)
    assert np.array_equal(same.index(probability), index)
    # a stricter rule merges more
    strict = fit.choose_binning(data.score, data.weight, signal, 10, min_background=400)
    assert strict.n_bins < binning.n_bins


def test_binning_refuses_too_few_events() -> None:
    data = counting(10, 100, n=50)
    signal = data.process == "signal"
    with pytest.raises(ValueError, match=r"fit\.bins=10.*50 background events.*need >= 10 x 20"):
        fit.choose_binning(data.score, data.weight, signal, 10, min_background=20)
    with pytest.raises(ValueError, match=r"fit\.bins=0"):
        fit.choose_binning(data.score, data.weight, signal, 0)
    with pytest.raises(ValueError, match=r"3 scores or weights are NaN"):
        fit.choose_binning(np.where(np.arange(100) < 3, np.nan, data.score), data.weight, signal, 1)
    with pytest.raises(ValueError, match=r"99 scores, 100 weights"):
        fit.choose_binning(data.score[:-1], data.weight, signal, 1, 1)
    with pytest.raises(ValueError, match=r"fit\.bins=3.*2 signal events"):
        fit.choose_binning(data.score, data.weight, np.arange(100) < 2, 3, min_background=1)


def test_inputs_are_checked() -> None:
    data = counting(10, 100)
    binning = fit.choose_binning(data.score, data.weight, data.process == "signal", 1)
    with pytest.raises(ValueError, match=r"norms\['ghost'\]|not background"):
        fit.build_templates(
            fit.FitInput(data.score, data.weight, data.process, norms={"ghost": 0.1}), binning
        )
    with pytest.raises(ValueError, match=r"norms\['bkg'\]=1.5"):
        fit.build_templates(
            fit.FitInput(data.score, data.weight, data.process, norms={"bkg": 1.5}), binning
        )
    short = fit.ShapeVariation("tes", data.score[:-1], data.score)
    with pytest.raises(ValueError, match=r"shape 'tes' \(down\): 799 scores"):
        fit.build_templates(
            fit.FitInput(data.score, data.weight, data.process, shapes=[short]), binning
        )


def test_fit_failures_carry_the_fitters_message(monkeypatch) -> None:
    import cabinetry

    def failing(*args, **kwargs):
        raise pyhf.exceptions.FailedMinimization(
            type("R", (), {"message": "Optimization failed. Call limit was reached."})()
        )

    monkeypatch.setattr(cabinetry.fit, "fit", failing)
    with pytest.raises(fit.FitError, match=r"Asimov fit did not converge.*Call limit"):
        fit.asimov_fit(one_bin(counting(10, 100)))


def test_a_discovery_fit_that_stops_short_is_retried_with_the_careful_strategy(
    monkeypatch,
) -> None:
    """At mu = 0 the shape nuisances can nearly absorb a flat signal; MIGRAD's default strategy
    then fails where strategy 2 converges, and sigma_mu must not be lost to it."""
    import cabinetry

    significance = cabinetry.fit.significance
    strategies = []

    def stops_short(*args, strategy=None, **kwargs):
        strategies.append(strategy)
        if strategy != 2:
            raise pyhf.exceptions.FailedMinimization(
                type("R", (), {"message": "Optimization terminated successfully."})()
            )
        return significance(*args, strategy=strategy, **kwargs)

    spec = spec_of(synthetic(np.random.default_rng(3)))
    expected = fit.asimov_fit(spec)
    monkeypatch.setattr(cabinetry.fit, "significance", stops_short)
    result = fit.asimov_fit(spec)
    assert strategies == [None, 2]
    assert result.z_discovery == pytest.approx(expected.z_discovery, rel=1e-3)
    assert result.sigma_mu == pytest.approx(expected.sigma_mu, rel=1e-6)


def test_fair_score_at_known_points() -> None:
    n = 400
    sigma = np.sqrt(0.6827 * 0.3173 / n)
    assert fit.fair_score(0.6827, 0.5, n) == pytest.approx(-np.log(0.501))
    assert fit.fair_score(0.6827 + 1.9 * sigma, 0.5, n) == pytest.approx(-np.log(0.501))
    # one sigma_c outside the band: f = 1 + 1 = 2 on either side
    assert fit.fair_score(0.6827 - 3 * sigma, 0.5, n) == pytest.approx(-np.log(0.501 * 2))
    assert fit.fair_score(0.6827 + 3 * sigma, 0.5, n) == pytest.approx(-np.log(0.501 * 2))
    # two sigma_c outside: 1 + 2^4 below, 1 + 2^3 above (under-coverage costs more)
    assert fit.fair_score(0.6827 - 4 * sigma, 0.5, n) == pytest.approx(-np.log(0.501 * 17))
    assert fit.fair_score(0.6827 + 4 * sigma, 0.5, n) == pytest.approx(-np.log(0.501 * 9))


def test_pseudo_experiments_are_seeded_and_recorded() -> None:
    spec = one_bin(counting(100, 1000, norm=0.05))
    first = fit.pseudo_experiments(spec, 20, np.random.default_rng(7))
    again = fit.pseudo_experiments(spec, 20, np.random.default_rng(7))
    assert np.array_equal(first.low, again.low) and np.array_equal(first.mu_true, again.mu_true)
    assert np.all((first.mu_true > 0.1) & (first.mu_true < 3))
    assert np.all(first.high > first.low)
    assert first.failed == 0
    metrics = first.as_metrics()
    assert metrics["fit/coverage"] == pytest.approx(first.covered.mean())
    assert metrics["fit/score"] == pytest.approx(
        fit.fair_score(metrics["fit/coverage"], metrics["fit/interval_width"], 20)
    )
    with pytest.raises(ValueError, match=r"fit\.toys=0"):
        fit.pseudo_experiments(spec, 0, np.random.default_rng(0))


@pytest.mark.slow
def test_coverage_of_a_known_model_is_inside_the_binomial_band() -> None:
    data = synthetic(np.random.default_rng(8), scale=3.0)
    toys = fit.pseudo_experiments(spec_of(data, bins=4), 300, np.random.default_rng(9))
    sigma = np.sqrt(0.6827 * 0.3173 / 300)
    assert abs(toys.coverage - 0.6827) < 3 * sigma
    assert toys.failed <= 3


def test_scan_ranking_and_figures() -> None:
    spec = spec_of(synthetic(np.random.default_rng(10)), bins=4)
    result = fit.asimov_fit(spec)
    scan = fit.likelihood_scan(spec, steps=7)
    assert len(scan.mu) == 7 and scan.mu[0] < 1 < scan.mu[-1]
    assert np.all(scan.stat >= scan.full - 1e-6)  # fixing nuisances can only raise -2 ln L
    # the profile is 0 at the best fit and crosses 1 at MINOS's interval edges
    low, high = result.mu_interval
    edges = fit.likelihood_scan(spec, mu=[low, 1.0, high])
    assert edges.full == pytest.approx([1, 0, 1], abs=0.02)
    assert edges.stat[0] > 1 and edges.stat[2] > 1
    bestfit, ranked = fit.ranking(spec)
    assert "mu" not in ranked.labels and "tes" in ranked.labels
    for figure in (
        fit_plots.distributions(spec),
        fit_plots.pulls(bestfit.bestfit, bestfit.uncertainty, list(bestfit.labels)),
        fit_plots.impacts(ranked),
        fit_plots.likelihood_scan(scan),
    ):
        assert isinstance(figure, Figure) and figure.axes


@pytest.mark.slow
def test_worker_processes_change_nothing_but_the_time() -> None:
    spec = one_bin(counting(100, 1000, norm=0.05))
    alone = fit.pseudo_experiments(spec, 12, np.random.default_rng(11))
    shared = fit.pseudo_experiments(spec, 12, np.random.default_rng(11), workers=2)
    assert np.allclose(alone.low, shared.low) and np.allclose(alone.high, shared.high)


def test_analyse_runs_binning_fit_and_toys() -> None:
    data = synthetic(np.random.default_rng(12))
    config = fit.FitConfig(bins=5, toys=5)
    report = fit.analyse(data, config, np.random.default_rng(13))
    metrics = report.metrics()
    assert {"fit/sigma_mu", "fit/coverage", "fit/interval_width", "fit/score"} <= set(metrics)
    assert report.result.n_bins <= 5
    assert report.spec["measurements"][0]["config"]["poi"] == "mu"
    assert fit.analyse(data, fit.FitConfig(bins=5), np.random.default_rng(13)).coverage is None


def test_a_process_absent_from_some_bins_fits_and_an_empty_bin_is_refused() -> None:
    rng = np.random.default_rng(14)
    data = synthetic(rng, shapes=False)
    # a background confined to the lowest scores: zero yield and zero sumw2 in the upper bins
    rare = fit.FitInput(
        np.concatenate([data.score, np.full(200, -5.0)]),
        np.concatenate([data.weight, np.full(200, 0.5)]),
        np.concatenate([data.process, np.full(200, "rare")]),
        norms=dict(data.norms),
    )
    binning = fit.choose_binning(rare.score, rare.weight, rare.process == "signal", 5)
    templates = fit.build_templates(rare, binning)
    assert templates.nominal["rare"][1:].sum() == 0 and templates.sumw2["rare"][1:].sum() == 0
    result = fit.asimov_fit(fit.workspace(templates, mc_stat=True))
    assert np.isfinite(result.sigma_mu) and result.sigma_mu > result.sigma_mu_stat
    zero = fit.FitInput(
        rare.score, np.where(rare.score >= binning.thresholds[-1], 0.0, rare.weight), rare.process
    )
    with pytest.raises(ValueError, match=rf"bins \[{binning.n_bins - 1}\] expect no events"):
        fit.build_templates(zero, binning)


def test_impacts_from_the_covariance_follow_the_correlation_and_the_prior_width():
    """Where the ranking's refits fail, the impacts come from the fit's covariance: post-fit
    rho sigma_mu, pre-fit scaled to the prior width over the post-fit error."""
    import cabinetry

    from amsaware.fit import covariance_impacts

    spec = {
        "channels": [{"name": "c", "samples": [
            {"name": "s", "data": [5.0, 10.0], "modifiers": [
                {"name": "mu", "type": "normfactor", "data": None}]},
            {"name": "b", "data": [50.0, 20.0], "modifiers": [
                {"name": "nb", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]},
        ]}],
        "observations": [{"name": "c", "data": [55.0, 30.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }  # fmt: skip
    model, data = fit.model_and_data(spec)
    with fit._numpy():
        result = cabinetry.fit.fit(model, data)
    ranked = covariance_impacts(result, model)
    i, j = result.labels.index("mu"), result.labels.index("nb")
    rho, sigma_mu, sigma_nb = result.corr_mat[i, j], result.uncertainty[i], result.uncertainty[j]
    assert ranked.labels == ["nb"]
    assert ranked.postfit_up[0] == pytest.approx(rho * sigma_mu)
    assert ranked.prefit_up[0] == pytest.approx(rho * sigma_mu / sigma_nb)
    assert ranked.prefit_down[0] == pytest.approx(-ranked.prefit_up[0])
    assert rho < 0  # more background, less signal
