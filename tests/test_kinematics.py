"""Four-vector helpers shared by the DER_ features and the physics generator."""

import numpy as np
import pytest

from amsaware.data import kinematics as kin

PT = np.array([20.0, 45.0, 130.0])
ETA = np.array([-2.1, 0.0, 1.3])
PHI = np.array([-3.0, 0.5, 2.9])


def test_a_massless_particle_gives_back_its_pt_eta_phi_and_no_mass():
    p = kin.massless(PT, ETA, PHI)
    assert p.shape == (3, 4)  # (..., 4) = (E, px, py, pz)
    np.testing.assert_allclose(kin.pt(p), PT, rtol=1e-14)
    np.testing.assert_allclose(kin.eta(p), ETA, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(kin.phi(p), PHI, rtol=1e-14)
    # sqrt of a difference of squares of order E^2: rounding leaves ~sqrt(eps) * E at most
    assert (kin.mass(p) < 1e-6 * p[..., 0]).all()


@pytest.mark.parametrize("make", [kin.from_rapidity, kin.from_pseudorapidity])
def test_a_massive_particle_keeps_its_mass_pt_and_azimuth(make):
    p = make(PT, ETA, PHI, 80.4)
    np.testing.assert_allclose(kin.mass(p), 80.4, rtol=1e-9)
    np.testing.assert_allclose(kin.pt(p), PT, rtol=1e-14)
    np.testing.assert_allclose(kin.phi(p), PHI, rtol=1e-14)


def test_rapidity_and_pseudorapidity_are_each_the_one_given():
    p = kin.from_rapidity(PT, ETA, PHI, 80.4)
    rapidity = 0.5 * np.log((p[..., 0] + p[..., 3]) / (p[..., 0] - p[..., 3]))
    np.testing.assert_allclose(rapidity, ETA, atol=1e-12)
    q = kin.from_pseudorapidity(PT, ETA, PHI, 80.4)
    np.testing.assert_allclose(kin.eta(q), ETA, atol=1e-12)


def test_two_back_to_back_particles_make_their_pair_mass():
    # 45 GeV each, opposite in the transverse plane: m = 90 GeV (a Z at rest).
    a = kin.massless(np.array([45.0]), np.array([0.0]), np.array([0.3]))
    b = kin.massless(np.array([45.0]), np.array([0.0]), np.array([0.3 - np.pi]))
    np.testing.assert_allclose(kin.mass(a + b), 90.0, rtol=1e-12)
    np.testing.assert_allclose(kin.pt(a + b), 0.0, atol=1e-12)


def test_vectors_of_several_particles_per_event_stack_on_the_second_axis():
    jets = kin.from_pseudorapidity(PT.reshape(1, 3), ETA.reshape(1, 3), PHI.reshape(1, 3), 0.0)
    assert jets.shape == (1, 3, 4)
    px, py = kin.transverse(PT, PHI)
    np.testing.assert_allclose(jets[0, :, 1], px, rtol=1e-15)
    np.testing.assert_allclose(jets[0, :, 2], py, rtol=1e-15)
    np.testing.assert_allclose(jets.sum(axis=1)[0, 1], px.sum(), rtol=1e-14)


def test_delta_phi_wraps_into_minus_pi_to_pi():
    np.testing.assert_allclose(kin.delta_phi(3.0, -3.0), 6.0 - 2 * np.pi, rtol=1e-14)
    np.testing.assert_allclose(kin.delta_phi(-3.0, 3.0), 2 * np.pi - 6.0, rtol=1e-14)
    np.testing.assert_allclose(kin.delta_phi(0.5, 0.2), 0.3, rtol=1e-14)
