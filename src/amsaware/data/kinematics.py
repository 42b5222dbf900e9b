"""Four-vectors for the DER_ features (`derived`) and the physics generator (`physics`).

One layout: the last axis holds (E, px, py, pz), so a vector is `(..., 4)`: an event's
particle `(n, 4)`, an event's jets `(n, k, 4)`. Sums of vectors are plain `+`. Angles are in
radians, momenta and masses in GeV. A handful of formulas on plain NumPy arrays, which the
generator indexes, stacks and masks freely; a four-vector library (scikit-hep `vector`) would
wrap them in its own types, and its formulas round differently from these, so the synthetic
events would change.
"""

from __future__ import annotations

import numpy as np


def massless(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """A massless particle from pT, pseudorapidity and azimuth: E = pT cosh(eta).

    The DER_ features take every particle massless, as the challenge's documentation does.
    """
    return np.stack(
        [pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1
    )


def from_rapidity(
    pt: np.ndarray, y: np.ndarray, phi: np.ndarray, mass: float | np.ndarray
) -> np.ndarray:
    """A particle of `mass` from pT, rapidity y and azimuth: E = mT cosh y, pz = mT sinh y."""
    mt = np.sqrt(pt**2 + mass**2)
    energy, pz = mt * np.cosh(y), mt * np.sinh(y)
    return np.stack([energy, pt * np.cos(phi), pt * np.sin(phi), pz], axis=-1)


def from_pseudorapidity(
    pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: float | np.ndarray
) -> np.ndarray:
    """A particle of `mass` from pT, pseudorapidity and azimuth (pz = pT sinh(eta))."""
    pz = pt * np.sinh(eta)
    energy = np.sqrt(pt**2 + pz**2 + mass**2)
    return np.stack([energy, pt * np.cos(phi), pt * np.sin(phi), pz], axis=-1)


def transverse(pt: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(px, py) of a transverse vector of magnitude `pt` and azimuth `phi` (e.g. the MET)."""
    return pt * np.cos(phi), pt * np.sin(phi)


def pt(p: np.ndarray) -> np.ndarray:
    """Transverse momentum."""
    return np.hypot(p[..., 1], p[..., 2])


def eta(p: np.ndarray) -> np.ndarray:
    """Pseudorapidity (finite along the beam: pT is floored at 1e-9 GeV)."""
    return np.arcsinh(p[..., 3] / np.maximum(pt(p), 1e-9))


def phi(p: np.ndarray) -> np.ndarray:
    """Azimuth in (-pi, pi]."""
    return np.arctan2(p[..., 2], p[..., 1])


def mass(p: np.ndarray) -> np.ndarray:
    """Invariant mass; 0 where rounding makes E^2 - |p|^2 slightly negative."""
    m2 = p[..., 0] ** 2 - p[..., 1] ** 2 - p[..., 2] ** 2 - p[..., 3] ** 2
    return np.sqrt(np.maximum(m2, 0.0))


def delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The azimuth difference a - b wrapped into [-pi, pi)."""
    return (a - b + np.pi) % (2 * np.pi) - np.pi
