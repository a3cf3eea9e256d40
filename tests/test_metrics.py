import numpy as np
import pytest

from heads import accuracy, expected_calibration_error, log_likelihood


def test_accuracy_and_loglik():
    p = np.array([0.9, 0.6, 0.5, 0.2])
    assert accuracy(p) == 0.5
    assert log_likelihood(p) == pytest.approx(np.mean(np.log(p)))
    assert np.isfinite(log_likelihood(np.array([0.0, 1.0])))


def test_ece_symmetrised():
    # perfectly calibrated: outcomes drawn with probability p
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 1, 200000)
    chosen_is_first = rng.uniform(size=q.size) < q
    p = np.where(chosen_is_first, q, 1 - q)  # probability given to the observed winner
    assert expected_calibration_error(p) < 0.01
    # overconfident: always 0.99 but right 75 % of the time -> ECE = 0.24
    p = np.where(rng.uniform(size=100000) < 0.75, 0.99, 0.01)
    assert expected_calibration_error(p) == pytest.approx(0.24, abs=0.01)
    # a coin-flip model (p = 0.5 everywhere) is calibrated on the symmetrised problem
    assert expected_calibration_error(np.full(10, 0.5)) == pytest.approx(0.0)


def test_bad_probabilities():
    with pytest.raises(ValueError):
        accuracy(np.array([1.2]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([]))
