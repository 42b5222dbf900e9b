"""How close is the synthetic data to the real sample, and how fast is it made?

    python benchmarks/synthetic_realism.py [--generator physics|copula] [--sample PATH]

Prints generation time for the default 800k events, the real-vs-synthetic summary statistics
that tests/test_synthetic.py asserts, the worst per-feature KS distances, and classifier AUCs:
3-fold CV on real and on synthetic events (gradient boosting and an MLP), training on synthetic
and testing on real (optimistic when the copula was fitted to that sample), and a
real-vs-synthetic discriminator (0.5 = indistinguishable).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from amsaware.data.copula import read_cern_file
from amsaware.data.schema import FEATURES
from amsaware.data.synthetic import GENERATORS, generate, make_dataset

#: The CERN file's first 12,000 events; docs/development-sample.md says how to make it.
SAMPLE = Path("atlas-higgs-sample.csv.gz")


def cv_auc(model, x: np.ndarray, y: np.ndarray) -> float:
    score = cross_val_predict(model, x, y, cv=3, method="predict_proba")[:, 1]
    return roc_auc_score(y, score)


def mlp():
    return make_pipeline(
        SimpleImputer(),
        StandardScaler(),
        MLPClassifier((128, 64), early_stopping=True, max_iter=200, random_state=0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generator", default="physics", choices=sorted(GENERATORS))
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    args = parser.parse_args()

    generate(1000, seed=0, generator=args.generator)  # load parameters once, outside the timing
    start = time.perf_counter()
    make_dataset(generator=args.generator, seed=1)
    print(f"make_dataset(250k + 550k): {time.perf_counter() - start:.2f} s")

    frame = read_cern_file(args.sample)
    x_real = frame[list(FEATURES)].to_numpy(np.float32)
    y_real = frame["label"].to_numpy()
    w_real = frame["weight"].to_numpy()
    synth = generate(50_000, seed=2, generator=args.generator)
    x_syn, y_syn, w_syn = synth.features, synth.label, synth.weight

    jet = FEATURES.index("PRI_jet_num")
    mmc = FEATURES.index("DER_mass_MMC")
    rows = [(f"jet_num={j} share", lambda x, _y, j=j: np.mean(x[:, jet] == j)) for j in range(4)]
    rows += [
        ("MMC undefined", lambda x, _y: np.isnan(x[:, mmc]).mean()),
        ("signal fraction", lambda _x, y: y.mean()),
    ]
    print(f"\n{'':20s}  real    synthetic")
    for name, stat in rows:
        print(f"{name:20s}  {stat(x_real, y_real):.4f}  {stat(x_syn, y_syn):.4f}")
    for cls, name in ((1, "signal"), (0, "background")):
        for y, w, tag in ((y_real, w_real, "real"), (y_syn, w_syn, "synth")):
            ws = w[y == cls]
            q = np.quantile(ws / ws.mean(), [0.1, 0.5, 0.9])
            print(f"{name:10s} weight/mean q10 q50 q90 {tag:5s} {np.round(q, 3)}")

    ks = []
    for k, feature in enumerate(FEATURES):
        for cls in (0, 1):
            a = x_real[y_real == cls, k]
            b = x_syn[y_syn == cls, k]
            ks.append((ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)]).statistic, feature, cls))
    ks.sort(reverse=True)
    print("\nworst KS (feature, class): " + ", ".join(f"{f}/{c} {d:.3f}" for d, f, c in ks[:6]))
    print(f"median KS: {np.median([d for d, _, _ in ks]):.3f}")

    hgb = HistGradientBoostingClassifier(random_state=0)
    n = 30_000
    print("\nAUC (3-fold CV)         real 12k   synthetic 12k   synthetic 30k")
    for name, model in (("HistGradientBoosting", hgb), ("MLP 128-64", mlp())):
        real = cv_auc(model, x_real, y_real)
        s12 = cv_auc(model, x_syn[:12_000], y_syn[:12_000])
        s30 = cv_auc(model, x_syn[:n], y_syn[:n])
        print(f"{name:22s}  {real:.4f}     {s12:.4f}          {s30:.4f}")
    # optimistic where the generator was fitted or tuned to this same sample
    tstr = roc_auc_score(y_real, hgb.fit(x_syn[:n], y_syn[:n]).predict_proba(x_real)[:, 1])
    print(f"HGB trained on synthetic 30k, tested on real 12k: AUC {tstr:.4f}")
    x_both = np.concatenate([x_real, x_syn[: len(x_real)]])
    origin = np.repeat([1, 0], len(x_real))
    print(f"real-vs-synthetic discriminator (HGB, 3-fold): AUC {cv_auc(hgb, x_both, origin):.4f}")


if __name__ == "__main__":
    main()
