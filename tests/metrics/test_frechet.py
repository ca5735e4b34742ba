import warnings

import numpy as np
import pytest
import torch

from eartalk.metrics.frechet import (
    FrechetDistance,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
)


def test_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(600, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_closed_form_for_shifted_scaled_samples():
    # x and a*x + b: means mu and a*mu + b, covariances S and a^2 S,
    # so d^2 = |(a - 1) mu + b|^2 + (1 - a)^2 tr(S)
    x = np.random.default_rng(2).normal(size=(800, 4)) @ np.diag([1.0, 2.0, 0.5, 1.5])
    a, b = 1.7, np.array([0.3, -1.0, 2.0, 0.0])
    mu, sigma = gaussian_stats(x)
    shift = (a - 1) * mu + b
    expected = shift @ shift + (1 - a) ** 2 * np.trace(sigma)
    assert frechet_distance(x, a * x + b) == pytest.approx(expected, rel=1e-6)


def test_streaming_metric_matches_functional_and_warns_when_small():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(450, 6)), rng.normal(1.0, 2.0, size=(430, 6))
    metric = FrechetDistance(6)
    for chunk in np.array_split(real, 4):
        metric.update(torch.from_numpy(chunk), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = float(metric.compute())
    assert value == pytest.approx(frechet_distance(fake, real), rel=1e-9)
    with pytest.warns(UserWarning, match="rank-deficient"):
        frechet_distance(real[:50], fake[:50])


def test_input_checks():
    with pytest.raises(ValueError, match=r"\(N >= 2, D\)"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="expected features"):
        FrechetDistance(4).update(torch.zeros(3, 5), real=True)
