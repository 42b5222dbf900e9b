"""Embedded synthetic data: the project's default `data=synthetic`, shaped like the challenge.

Every new user trains on it first and most tests use it, so it carries the real data's
quirks: the 30 columns, the -999 (NaN) pattern that follows PRI_jet_num, DER_mass_MMC undefined
in ~15% of events, ~34% signal, and weights normalised per class to S_TOT/B_TOT within each
KaggleSet. The events come from a generator chosen by name from `GENERATORS`, so a better one
(a physics-level simulation) can replace the default without touching callers. A generator is
`(n_events, rng) -> (features float32 (n, 30) with NaN, label int8, raw weight float64)`, plus,
where the generator knows it, each event's process name (`EventTable.process`); this module adds
EventIds, rescales the weights and splits sets.

Two generators are registered. "physics", train.py's default (conf/data/synthetic.yaml),
simulates H -> tau tau and its backgrounds as four-vectors and computes the DER_ features from
the PRI_ ones, so the challenge's identities hold (see `amsaware.data.physics`). "copula"
(`data.generator=copula`, and this module's default when called from Python) is a Gaussian
copula fitted to aggregate statistics of the 12,000-event development sample (see
`amsaware.data.copula`); refit it with

    python -m amsaware.data.synthetic fit PATH_TO_CERN_FILE

Its marginals are closer to the real ones, but a classifier tells its events from real ones
easily (the DER_ identities do not hold); docs/synthetic.md compares the two.
"""

from __future__ import annotations

import argparse
import functools
import json
import numbers
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

from amsaware.atomic import atomic_path
from amsaware.data import copula, physics
from amsaware.data.schema import B_TOT, FEATURES, S_TOT, Dataset, EventTable
from amsaware.data.weights import rescaled_weights

Generator = Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]

#: The package file holding the fitted copula (aggregate statistics only, no events).
COPULA_PARAMETERS = "synthetic_copula.json"
#: The challenge's EventIds start here (training.csv 100000-349999, test.csv 350000-899999).
FIRST_EVENT_ID = 100_000
#: Share of the test events in the public leaderboard set 'b' (100k of the 550k).
PUBLIC_SHARE = 100 / 550


@functools.lru_cache(maxsize=1)
def _packaged_copula() -> copula.CopulaModel:
    text = resources.files("amsaware.data").joinpath(COPULA_PARAMETERS).read_text("utf-8")
    return copula.CopulaModel.from_dict(json.loads(text))


def _copula(n_events: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _packaged_copula().sample(n_events, rng)


GENERATORS: dict[str, Generator] = {"copula": _copula, "physics": physics.sample}
#: The generator of `generate`, `make_dataset` and `data=synthetic` unless one is named.
DEFAULT_GENERATOR = "physics"


def generate(
    n_events: int, seed: int, generator: str = DEFAULT_GENERATOR, first_event_id: int = 0
) -> EventTable:
    """`n_events` labelled events, weights rescaled per class to S_TOT and B_TOT.

    Deterministic per `seed`; EventIds are `first_event_id, first_event_id + 1, ...`.
    """
    _check_count("n_events", n_events, minimum=1)
    _check_count("seed", seed, minimum=0)
    _check_count("first_event_id", first_event_id, minimum=0)
    return _table(n_events, np.random.default_rng(seed), generator, first_event_id, None)


def make_dataset(
    n_train: int = 250_000, n_test: int = 550_000, generator: str = DEFAULT_GENERATOR, seed: int = 0
) -> Dataset:
    """A challenge-shaped data set: training events (KaggleSet 't') and labelled test events.

    Like the CERN file, the first 100/550 of the test events form the public set 'b' and the
    rest the private set 'v'; weights are normalised per class within each of t, b and v (as
    KaggleWeight is), and test EventIds continue after the training ones, starting at 100000.
    Training and test are independent streams of `seed`. `n_test=0` gives no test set.
    """
    _check_count("n_train", n_train, minimum=1)
    _check_count("n_test", n_test, minimum=0)
    _check_count("seed", seed, minimum=0)
    train = _table(
        n_train, np.random.default_rng([seed, 0]), generator, FIRST_EVENT_ID, np.array(["t"])
    )
    if n_test == 0:
        return Dataset(train=train)
    n_public = round(n_test * PUBLIC_SHARE)
    sets = np.repeat(np.array(["b", "v"]), [n_public, n_test - n_public])
    test = _table(
        n_test, np.random.default_rng([seed, 1]), generator, FIRST_EVENT_ID + n_train, sets
    )
    return Dataset(train=train, test=test)


def _table(
    n_events: int,
    rng: np.random.Generator,
    generator: str,
    first_event_id: int,
    kaggle_set: np.ndarray | None,
) -> EventTable:
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; known: {sorted(GENERATORS)}")
    made = GENERATORS[generator](n_events, rng)
    features, label, weight = _checked(generator, n_events, *made[:3])
    process = _checked_process(generator, n_events, made[3]) if len(made) > 3 else None
    if kaggle_set is not None:
        kaggle_set = np.broadcast_to(kaggle_set, (n_events,)).copy()
    weight = _normalise(weight, label, kaggle_set, f"synthetic:{generator} ({n_events} events)")
    return EventTable(
        event_id=np.arange(first_event_id, first_event_id + n_events, dtype=np.int64),
        features=features,
        label=label,
        weight=weight,
        kaggle_set=kaggle_set,
        source=f"synthetic:{generator}",
        process=process,
    )


def _checked(
    name: str, n: int, features: np.ndarray, label: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A generator's output in the EventTable dtypes, or a ValueError naming what is wrong."""
    if features.shape != (n, len(FEATURES)) or label.shape != (n,) or weight.shape != (n,):
        raise ValueError(
            f"generator {name!r} returned shapes {features.shape}, {label.shape}, "
            f"{weight.shape}; expected ({n}, {len(FEATURES)}), ({n},), ({n},)"
        )
    if not np.isin(label, (0, 1)).all():
        raise ValueError(f"generator {name!r} returned labels other than 0 and 1")
    if not (np.isfinite(weight).all() and (weight > 0).all()):
        raise ValueError(f"generator {name!r} returned non-positive or non-finite weights")
    return (
        np.asarray(features, dtype=np.float32),
        np.asarray(label, dtype=np.int8),
        np.asarray(weight, dtype=np.float64),
    )


def _checked_process(name: str, n: int, process: np.ndarray) -> np.ndarray:
    """A generator's process names as a string array, or a ValueError naming the generator."""
    process = np.asarray(process)
    if process.shape != (n,) or process.dtype.kind != "U":
        raise ValueError(
            f"generator {name!r} returned process labels of shape {process.shape} and dtype "
            f"{process.dtype}; expected ({n},) strings"
        )
    return process


def _normalise(
    weight: np.ndarray, label: np.ndarray, kaggle_set: np.ndarray | None, what: str
) -> np.ndarray:
    """Rescale per class (and per KaggleSet) so each part carries the full-data totals."""
    out = weight.copy()
    parts = (
        [(None, np.ones(len(label), dtype=bool))]
        if kaggle_set is None
        else [(s, kaggle_set == s) for s in np.unique(kaggle_set)]
    )
    for part, in_part in parts:
        for cls, name in ((1, "signal"), (0, "background")):
            if not (in_part & (label == cls)).any():
                where = "" if part is None else f" in KaggleSet '{part}'"
                raise ValueError(
                    f"{what}: no {name} events{where}, so weights cannot be normalised per "
                    "class; ask for more events"
                )
        out[in_part] = rescaled_weights(label[in_part], weight[in_part], S_TOT, B_TOT)
    return out


def _check_count(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def main(argv: list[str] | None = None) -> None:
    """`fit PATH [--output JSON]`: refit the copula to a CERN-format file."""
    parser = argparse.ArgumentParser(prog="python -m amsaware.data.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the copula generator to a CERN-format CSV")
    fit.add_argument("path", type=Path, help="CERN Open Data file (or its 12k-event sample)")
    fit.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).with_name(COPULA_PARAMETERS),
        help="where to write the parameters (default: the package file)",
    )
    args = parser.parse_args(argv)
    params = copula.fit_file(args.path)
    text = json.dumps(params, separators=(",", ":")) + "\n"
    with atomic_path(args.output) as tmp:  # readers never see half a file
        tmp.write_text(text, encoding="utf-8")
    groups = ", ".join(f"{g['label']}/{g['jet_num']}:{g['n_events']}" for g in params["groups"])
    print(f"wrote {args.output} ({len(text.encode()) / 1024:.0f} KiB); label/jets:n {groups}")


if __name__ == "__main__":
    main()
