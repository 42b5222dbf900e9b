"""data=samples: a physicist's ROOT, Parquet and CSV samples, their totals, and a full run."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

uproot = pytest.importorskip("uproot")
pytest.importorskip("pyarrow")

from amsaware.data.formats import DataFormatError  # noqa: E402
from amsaware.data.samples import (  # noqa: E402
    WeightExpression,
    file_kind,
    load_samples,
    read_feature_file,
)
from amsaware.data.schema import B_TOT, S_TOT  # noqa: E402
from tests import helpers  # noqa: E402
from tests.conftest import REPO  # noqa: E402

FEATURES = ["lep_pt", "met", "mjj", "njet"]
SCALES = {"ggH": 0.05, "vbf": 0.01, "ttbar": 2.0, "wjets": 3.0}
N = {"ggH": 1200, "vbf": 400, "ttbar_1": 500, "ttbar_2": 400, "wjets": 900}


def events(n: int, signal: bool, seed: int, btag: bool = False) -> dict[str, np.ndarray]:
    """Flat branches: three features separating signal from background, one integer, weights.

    mjj is -999 (undefined) where njet < 2, as the challenge's jet features are.
    """
    rng = np.random.default_rng(seed)
    shift = 1.0 if signal else 0.0
    njet = rng.integers(0, 4, n).astype(np.int32)
    mjj = rng.normal(60 + 40 * shift, 20, n).astype(np.float32)
    mjj[njet < 2] = -999.0
    branches = {
        "lep_pt": rng.normal(40 + 15 * shift, 10, n).astype(np.float32),
        "met": rng.exponential(30 + 20 * shift, n),
        "mjj": mjj,
        "njet": njet,
        "genWeight": rng.uniform(0.5, 1.5, n),
        "puWeight": rng.uniform(0.9, 1.1, n).astype(np.float32),
    }
    if btag:
        branches["btagSF"] = rng.uniform(0.8, 1.2, n)
    return branches


def write_root(path: Path, branches: dict[str, np.ndarray], tree: str = "Events") -> Path:
    """A ROOT file with one TTree (mktree: uproot would write an RNTuple for a plain dict)."""
    with uproot.recreate(path) as f:
        f.mktree(tree, {name: values.dtype for name, values in branches.items()})
        if len(next(iter(branches.values()))):
            f[tree].extend(branches)
    return path


def make_samples(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """ggH (ROOT), vbf (CSV) signal; ttbar (two ROOT files, a glob), wjets (Parquet) background."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "ggH": events(N["ggH"], True, 1),
        "vbf": events(N["vbf"], True, 2),
        "ttbar_1": events(N["ttbar_1"], False, 3, btag=True),
        "ttbar_2": events(N["ttbar_2"], False, 4, btag=True),
        "wjets": events(N["wjets"], False, 5),
    }
    write_root(folder / "ggH.root", data["ggH"])
    pd.DataFrame(data["vbf"]).to_csv(folder / "vbf.csv.gz", index=False)
    write_root(folder / "ttbar_1.root", data["ttbar_1"])
    write_root(folder / "ttbar_2.root", data["ttbar_2"])
    pd.DataFrame(data["wjets"]).to_parquet(folder / "wjets.parquet")
    return data


def config(folder: Path) -> dict:
    """The `data` keys of a samples config for the files of `make_samples`."""
    return {
        "features": list(FEATURES),
        "placeholder": -999,
        "tree": "Events",
        "signal": {
            "ggH": {
                "files": str(folder / "ggH.root"),
                "weight": "genWeight * puWeight",
                "scale": SCALES["ggH"],
            },
            "vbf": {
                "files": [str(folder / "vbf.csv.gz")],
                "weight": "genWeight",
                "scale": "0.1 / 10",
            },
        },
        "background": {
            "ttbar": {
                "files": [str(folder / "ttbar_*.root")],
                "weight": "genWeight * puWeight * btagSF",
                "scale": SCALES["ttbar"],
            },
            "wjets": {"files": str(folder / "wjets.parquet"), "weight": "2 * genWeight / 2"},
        },
    }


def expected_weights(data) -> dict[str, np.ndarray]:
    def product(d, *names):
        return np.prod([d[n].astype(np.float64) for n in names], axis=0)

    return {
        "ggH": product(data["ggH"], "genWeight", "puWeight") * SCALES["ggH"],
        "vbf": product(data["vbf"], "genWeight") * 0.01,
        "ttbar": np.concatenate(
            [product(data[k], "genWeight", "puWeight", "btagSF") for k in ("ttbar_1", "ttbar_2")]
        )
        * SCALES["ttbar"],
        "wjets": product(data["wjets"], "genWeight"),
    }


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    return folder, make_samples(folder)


def load(cfg: dict, **changes):
    return load_samples(**{**cfg, **changes})


# --- reading ---------------------------------------------------------------------------------


def test_labels_weights_and_totals_come_from_the_samples(sample_files):
    folder, data = sample_files
    dataset = load(config(folder))
    train = dataset.train
    weights = expected_weights(data)
    n_signal = N["ggH"] + N["vbf"]
    assert len(train) == sum(N.values()) and dataset.test is None
    assert train.feature_names == tuple(FEATURES) and train.features.dtype == np.float32
    assert train.label.tolist() == [1] * n_signal + [0] * (len(train) - n_signal)
    expected = np.concatenate([weights[k] for k in ("ggH", "vbf", "ttbar", "wjets")])
    np.testing.assert_allclose(train.weight, expected, rtol=1e-12)
    s_tot = weights["ggH"].sum() + weights["vbf"].sum()
    b_tot = weights["ttbar"].sum() + weights["wjets"].sum()
    assert train.s_tot == pytest.approx(s_tot, rel=1e-12)
    assert train.b_tot == pytest.approx(b_tot, rel=1e-12)
    assert (train.s_tot, train.b_tot) != pytest.approx((S_TOT, B_TOT))
    assert train.event_id.tolist() == list(range(len(train)))
    # the subsets the protocol takes (folds) keep the totals
    assert train.subset(np.arange(10)).s_tot == train.s_tot


def test_placeholder_becomes_nan_and_globs_read_files_in_name_order(sample_files):
    folder, data = sample_files
    train = load(config(folder)).train
    mjj = train.features[:, FEATURES.index("mjj")]
    raw = np.concatenate([data[k]["mjj"] for k in ("ggH", "vbf", "ttbar_1", "ttbar_2", "wjets")])
    assert np.array_equal(np.isnan(mjj), raw == -999.0) and np.isnan(mjj).sum() > 100
    start = N["ggH"] + N["vbf"]
    ttbar = train.features[start : start + N["ttbar_1"] + N["ttbar_2"], 0]
    expected = np.concatenate([data["ttbar_1"]["lep_pt"], data["ttbar_2"]["lep_pt"]])
    assert np.array_equal(ttbar, expected)
    # the integer branch is a feature like the others
    assert set(np.unique(train.features[:, 3])) == {0.0, 1.0, 2.0, 3.0}


def test_placeholder_per_feature_and_none(sample_files):
    folder, _ = sample_files
    per_feature = load(config(folder), placeholder={"mjj": -999, "njet": 0}).train
    assert np.isnan(per_feature.features[:, 2]).any()
    assert (
        np.isnan(per_feature.features[:, 3]).sum()
        == (load(config(folder), placeholder=None).train.features[:, 3] == 0).sum()
    )
    assert not np.isnan(load(config(folder), placeholder=None).train.features).any()
    with pytest.raises(DataFormatError, match=r"data.placeholder names \['nope'\]"):
        load(config(folder), placeholder={"nope": 1})


def test_held_out_fraction_is_stratified_and_keeps_the_totals(sample_files):
    folder, _ = sample_files
    full = load(config(folder)).train
    dataset = load(config(folder), test_fraction=0.25, seed=3)
    train, test = dataset.train, dataset.test
    assert len(train) + len(test) == len(full) and test.labelled
    assert not set(train.event_id) & set(test.event_id)
    assert test.label.mean() == pytest.approx(full.label.mean(), abs=0.01)
    assert (test.s_tot, test.b_tot) == (full.s_tot, full.b_tot) == (train.s_tot, train.b_tot)


def test_test_samples_are_unlabelled_events_numbered_after_training(sample_files):
    folder, _ = sample_files
    dataset = load(config(folder), test={"data": {"files": str(folder / "wjets.parquet")}})
    test = dataset.test
    assert not test.labelled and len(test) == N["wjets"]
    assert test.event_id[0] == len(dataset.train)
    with pytest.raises(DataFormatError, match="both set"):
        load(config(folder), test={"data": [str(folder / "wjets.parquet")]}, test_fraction=0.2)


def test_n_train_keeps_a_stratified_subset_and_the_totals(sample_files):
    folder, _ = sample_files
    full = load(config(folder)).train
    small = load(config(folder), n_train=500, seed=1).train
    assert len(small) == 500 and small.s_tot == full.s_tot
    assert small.label.mean() == pytest.approx(full.label.mean(), abs=0.01)


def test_file_kinds_are_recognised_by_content(sample_files, tmp_path):
    folder, _ = sample_files
    assert file_kind(folder / "ggH.root") == "root"
    assert file_kind(folder / "wjets.parquet") == "parquet"
    assert file_kind(folder / "vbf.csv.gz") == "csv"
    renamed = tmp_path / "ggH.dat"
    shutil.copy(folder / "ggH.root", renamed)
    assert file_kind(renamed) == "root"


def test_an_rntuple_reads_like_a_ttree(tmp_path):
    path = tmp_path / "rntuple.root"
    with uproot.recreate(path) as f:
        f["Events"] = {"x": np.array([1.0, -1.0, 3.0]), "n": np.arange(3, dtype=np.int32)}
    table = read_feature_file(path, ["x", "n"], placeholder={"x": -1})
    assert np.isnan(table.features[1, 0]) and table.features[:, 1].tolist() == [0, 1, 2]


def test_a_file_with_several_trees_needs_a_tree_name(tmp_path):
    path = tmp_path / "two.root"
    with uproot.recreate(path) as f:
        for name in ("Events", "Runs"):
            f.mktree(name, {"x": np.float64})
            f[name].extend({"x": np.ones(3)})
    assert len(read_feature_file(path, ["x"], tree="Runs")) == 3
    with pytest.raises(DataFormatError, match=r"holds 2 trees \['Events', 'Runs'\]"):
        read_feature_file(path, ["x"])


# --- weight expressions ----------------------------------------------------------------------


def test_weight_expression_evaluates_arithmetic_over_branches():
    columns = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    expression = WeightExpression.parse("-(a + 1) * b ** 2 / 2 - -a", "here")
    assert expression.names == ("a", "b")
    np.testing.assert_allclose(expression.evaluate(columns), [-8.0, -22.0])
    assert WeightExpression.parse(1.5, "here").evaluate({}) == 1.5
    assert math.isnan(WeightExpression.parse("(-8) ** 0.5", "here").evaluate({}))
    assert WeightExpression.parse("1 / 0", "here").evaluate({}) == math.inf


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("__import__('os').system('true')", "__import__"),
        ("a.real", "a.real"),
        ("a[0]", "a[0]"),
        ("a > 1", "a > 1"),
        ("a if b else 1", "a if b else 1"),
        ("(lambda: 1)()", "lambda"),
        ("a % 2", "Mod"),
        ("a // 2", "FloorDiv"),
        ("not a", "Not"),
        ("'text'", "'text'"),
        ("a and b", "a and b"),
    ],
)
def test_weight_expression_refuses_anything_but_arithmetic(text, part):
    with pytest.raises(DataFormatError, match="is not allowed") as error:
        WeightExpression.parse(text, "signal sample 'ggH'")
    message = str(error.value)
    assert "signal sample 'ggH'" in message and part in message


def test_weight_expression_syntax_error_names_the_sample():
    with pytest.raises(DataFormatError, match=r"sample 'x': weight expression 'a \*' is not valid"):
        WeightExpression.parse("a *", "sample 'x'")


# --- errors ----------------------------------------------------------------------------------


def break_sample(folder: Path, kind: str, name: str, **entry) -> dict:
    cfg = config(folder)
    cfg[kind][name] = {**cfg[kind][name], **entry}
    return cfg


BAD = [
    ("signal", "ggH", {"files": "/nowhere/ggH.root"}, "ggH': /nowhere/ggH.root: file not found"),
    (
        "background",
        "ttbar",
        {"files": ["/nowhere/tt_*.root"]},
        r"ttbar': the pattern '/nowhere/tt_\*.root' matches no file",
    ),
    (
        "signal",
        "ggH",
        {"tree": "Nominal"},
        r"ggH': .*ggH.root: no tree 'Nominal'; expected one of the file's trees \['Events'\]",
    ),
    (
        "signal",
        "ggH",
        {"weight": "genWeight * pileupWeight"},
        r"ggH': .*ggH.root tree 'Events': no branch 'pileupWeight' "
        r"\(in weight 'genWeight \* pileupWeight'; did you mean \['puWeight'",
    ),
    (
        "background",
        "wjets",
        {"weight": "genWeight * btagSF"},
        r"wjets': .*wjets.parquet: no branch 'btagSF' \(in weight",
    ),
    (
        "signal",
        "ggH",
        {"weight": "genWeight * os.system"},
        r"ggH': weight expression .* contains os.system, which is not allowed",
    ),
    (
        "signal",
        "ggH",
        {"weight": "genWeight *"},
        r"ggH': weight expression 'genWeight \*' is not valid arithmetic",
    ),
    (
        "signal",
        "ggH",
        {"weight": "genWeight - 1"},
        r"ggH': .*ggH.root: entry \d+: weight 'genWeight - 1' x scale 0.05 = -[\d.e-]+ is "
        r"negative \(genWeight=",
    ),
    (
        "signal",
        "ggH",
        {"weight": "genWeight / (puWeight - puWeight)"},
        r"ggH': .*entry 0: weight .* = (inf|nan) is not finite",
    ),
    ("signal", "ggH", {"scale": 0}, r"ggH': scale 0 is 0.0; expected a finite number > 0"),
    ("signal", "ggH", {"scale": "xsec * 2"}, r"ggH': scale 'xsec \* 2' names \['xsec'\]"),
    ("signal", "ggH", {"weight": "genWeight * 0"}, r"ggH': all 1200 weights are 0"),
    ("background", "wjets", {"colour": "red"}, r"wjets': unknown keys \['colour'\]"),
]


@pytest.mark.parametrize(("kind", "name", "entry", "message"), BAD)
def test_bad_samples_are_named(sample_files, kind, name, entry, message):
    folder, _ = sample_files
    with pytest.raises(DataFormatError, match=f"{kind} sample '{message}"):
        load(break_sample(folder, kind, name, **entry))


def test_missing_feature_branch_is_named_with_the_file_and_tree(sample_files):
    folder, _ = sample_files
    message = r"signal sample 'ggH': .*ggH.root tree 'Events': no branch 'mjj_fixed' \(a feature\)"
    with pytest.raises(DataFormatError, match=message):
        load(config(folder), features=["lep_pt", "mjj_fixed"])


def test_empty_sample_and_missing_class_are_named(sample_files, tmp_path):
    folder, _ = sample_files
    empty = write_root(tmp_path / "empty.root", {k: v[:0] for k, v in events(5, True, 0).items()})
    cfg = break_sample(folder, "signal", "vbf", files=str(empty))
    message = r"signal sample 'vbf': its 1 file\(s\) .* hold no events"
    with pytest.raises(DataFormatError, match=message):
        load(cfg)
    with pytest.raises(DataFormatError, match=r"data\.background lists no samples"):
        load(config(folder), background={})


def test_bad_feature_values_are_named(sample_files, tmp_path):
    folder, _ = sample_files
    branches = events(50, True, 0)
    branches["met"][7] = np.inf
    bad = write_root(tmp_path / "inf.root", branches)
    message = r"sample 'ggH': .*inf.root: branch 'met', entry 7: value inf"
    with pytest.raises(DataFormatError, match=message):
        load(break_sample(folder, "signal", "ggH", files=str(bad)))
    jagged = tmp_path / "jagged.root"
    with uproot.recreate(jagged) as f:
        f.mktree("Events", {"lep_pt": "var * float32"})
        f["Events"].extend({"lep_pt": pytest.importorskip("awkward").Array([[1.0], []])})
    message = r"branch 'lep_pt' is not one number per event \(it is jagged"
    with pytest.raises(DataFormatError, match=message):
        read_feature_file(jagged, ["lep_pt"])


def test_non_root_file_named_root_is_refused(sample_files, tmp_path):
    folder, _ = sample_files
    fake = tmp_path / "fake.root"
    fake.write_bytes(b"\x00\x01 not root")
    message = r"signal sample 'ggH': .*fake.root: not a readable ROOT file"
    with pytest.raises(DataFormatError, match=message):
        load(break_sample(folder, "signal", "ggH", files=str(fake)))


def test_the_shipped_template_composes_and_names_its_missing_files(tmp_path):
    from hydra import compose, initialize_config_dir

    from amsaware.experiment import load_dataset

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=samples", f"paths.data_dir={tmp_path}"])
    assert list(cfg.data.signal) == ["ggH"] and list(cfg.data.background) == ["ttbar"]
    message = r"signal sample 'ggH': the pattern '.*/samples/ggH_\*.root' matches no file"
    with pytest.raises(Exception, match=message):  # Hydra wraps it in its InstantiationException
        load_dataset(cfg)


# --- losses get the data's totals ------------------------------------------------------------


def test_losses_that_take_totals_get_the_datas():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from amsaware.settings import loss_totals as _loss_totals

    def build(**loss):
        cfg = OmegaConf.create(loss)
        return instantiate(cfg, **_loss_totals(cfg, 5.0, 70.0))

    ams = build(_target_="amsaware.losses.SoftAMSLoss")
    assert (ams.s_tot, ams.b_tot) == (5.0, 70.0)
    assert build(_target_="amsaware.losses.DeltaZBarLoss", eps=None).eps == 5.0
    assert build(_target_="amsaware.losses.BCELoss").weighted is False
    mine = build(_target_="amsaware.losses.AsimovLoss", s_tot=1.0)
    assert (mine.s_tot, mine.b_tot) == (1.0, 70.0)  # an explicit loss.s_tot wins


# --- end to end: train.py, metrics, predict.py, compare, export --------------------------------


@pytest.fixture(scope="module")
def samples_run(sample_files, tmp_path_factory):
    """`train.py data=mysamples experiment=smoke` with the config in a user's own folder."""
    folder, _ = sample_files
    root = tmp_path_factory.mktemp("samples_run")
    conf = root / "conf" / "data"
    conf.mkdir(parents=True)
    cfg = {"_target_": "amsaware.data.sources.samples", **config(folder)}
    cfg |= {"test_fraction": 0.2, "seed": "${seed}", "batch_size": 256}
    (conf / "mysamples.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = root / "run"
    # train.py --config-dir ROOT/conf data=mysamples, in-process: Hydra's search path override.
    helpers.run(
        run_dir,
        f"hydra.searchpath=[file://{root / 'conf'}]",
        "data=mysamples",
        "experiment=smoke",
        "loss=ams",
        "loss.normalisation=batch",
        "~logger",
        tiny=False,
    )
    return run_dir, load(config(folder), test_fraction=0.2, seed=42)


def test_run_records_and_uses_the_datas_totals(samples_run):
    from amsaware.metrics import ams_curve

    run_dir, dataset = samples_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    s_tot, b_tot = dataset.train.s_tot, dataset.train.b_tot
    assert metrics["data"] == {"s_tot": pytest.approx(s_tot), "b_tot": pytest.approx(b_tot)}
    assert metrics["run"]["n_train"] == len(dataset.train)
    assert metrics["run"]["n_test"] == len(dataset.test)
    assert {"test/auroc", "test/ams"} <= set(metrics["test"])
    assert metrics["cv"]["oof"]["oof/auroc"] > 0.75  # the samples are separable
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    assert len(oof) == len(dataset.train)
    curve = ams_curve(
        torch.tensor(oof.score.to_numpy()),
        torch.tensor(oof.label.to_numpy()),
        torch.tensor(oof.weight.to_numpy()),
        s_tot,
        b_tot,
    )
    assert metrics["cv"]["oof"]["oof/ams_max"] == pytest.approx(float(curve.ams.max()))
    # with the challenge's constants the value would be a different one altogether
    challenge = ams_curve(
        torch.tensor(oof.score.to_numpy()),
        torch.tensor(oof.label.to_numpy()),
        torch.tensor(oof.weight.to_numpy()),
    )
    assert not math.isclose(float(challenge.ams.max()), float(curve.ams.max()), rel_tol=0.01)
    config_yaml = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config_yaml["loss"]["_target_"].endswith("SoftAMSLoss")
    stats = run_dir / "checkpoints" / "final" / "preprocessing.json"
    preprocessing = json.loads(stats.read_text())
    assert [f["name"] for f in preprocessing["features"]] == FEATURES


def test_predict_scores_a_root_file_by_branch_name(samples_run, sample_files, tmp_path):
    from amsaware.inference import ApplyRequest, load_scorer, predict_file, read_input
    from amsaware.run_folder import RunFolder

    run_dir, _ = samples_run
    folder, data = sample_files
    # another tree name, extra branches, other branch order: read by name, tree= says which
    branches = {name: data["ggH"][name][::-1].copy() for name in reversed(list(data["ggH"]))}
    branches["EventId"] = np.arange(N["ggH"], dtype=np.int64) + 7
    source = write_root(tmp_path / "new_ggH.root", branches, tree="Nominal")
    output = tmp_path / "scores.csv"
    # predict.py's call for tree=Nominal
    predict_file(ApplyRequest(run_dir, source, output, tree="Nominal"))
    scores = pd.read_csv(output)
    assert list(scores.columns) == ["EventId", "score", "selected"]
    assert scores.EventId.tolist() == (np.arange(N["ggH"]) + 7).tolist()
    assert scores.score.between(0, 1).all() and scores.selected.isin([0, 1]).all()
    # the same events through the library and the run's own tree default agree
    scorer = load_scorer(run_dir)
    table = read_input(RunFolder(run_dir).config(), folder / "ggH.root", scorer.feature_names)
    expected = scorer.score(table)[::-1]
    np.testing.assert_allclose(scores.score.to_numpy(), expected, rtol=1e-6)
    # parquet input, and a missing branch named
    pq = tmp_path / "wjets.parquet"
    shutil.copy(folder / "wjets.parquet", pq)
    table = read_input(RunFolder(run_dir).config(), pq, scorer.feature_names)
    assert len(table) == N["wjets"] and np.isnan(table.features[:, 2]).any()
    with pytest.raises(DataFormatError, match=r"input: .*: no branch 'lep_pt'"):
        frame = pd.DataFrame(data["wjets"]).drop(columns="lep_pt")
        frame.to_parquet(tmp_path / "bad.parquet")
        read_input(RunFolder(run_dir).config(), tmp_path / "bad.parquet", scorer.feature_names)


def test_compare_uses_the_runs_totals(samples_run, tmp_path):
    from amsaware.comparison import compare, to_dict

    run_dir, dataset = samples_run
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    comparison = compare([run_dir, other], n_bootstrap=20)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    observed = comparison.sample.observed[comparison.runs[0].name]
    # AMS at the run's cut on its own out-of-fold events is the cut's AMS of metrics.json
    assert observed["ams@cut"] == pytest.approx(metrics["cut"]["ams"], rel=1e-9)
    assert to_dict(comparison)["totals"]["s_tot"] == pytest.approx(dataset.train.s_tot)
    changed = json.loads((other / "metrics.json").read_text())
    changed["data"]["s_tot"] *= 2
    (other / "metrics.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="different totals"):
        compare([run_dir, other], n_bootstrap=20)


def test_exported_graph_treats_the_runs_placeholder_as_undefined(samples_run, sample_files):
    from amsaware.data.samples import placeholder_values
    from amsaware.export import RawFeatureScorer
    from amsaware.inference import load_scorer, placeholder_of, read_input
    from amsaware.run_folder import RunFolder

    run_dir, _ = samples_run
    folder, data = sample_files
    scorer = load_scorer(run_dir)
    placeholders = placeholder_values(
        placeholder_of(RunFolder(run_dir).config()), scorer.feature_names
    )
    module = RawFeatureScorer(scorer, placeholders).eval()
    raw = np.stack([data["ggH"][name].astype(np.float32) for name in FEATURES], axis=1)
    with torch.no_grad():
        graph = module(torch.from_numpy(raw)).numpy()
    table = read_input(RunFolder(run_dir).config(), folder / "ggH.root", scorer.feature_names)
    np.testing.assert_allclose(graph, scorer.score(table), rtol=1e-6)
