"""The verdict's test keeps its false-positive rate on simulated nulls and has power on real effects."""

from __future__ import annotations

import numpy as np

from shared_core.trace.verify import fisher_p, minimum_images_for


def test_fisher_decision_false_positive_rate_on_nulls():
    rng = np.random.default_rng(0)
    n, alpha = 64, 0.01
    for rate in (0.0, 0.02, 0.1, 0.3):
        trials = 2000
        rejections = sum(fisher_p(int(rng.binomial(n, rate)), n, int(rng.binomial(n, rate)), n) < alpha for _ in range(trials))
        assert rejections / trials <= alpha + 0.005, rate


def test_power_on_a_real_effect():
    rng = np.random.default_rng(1)
    n = 64
    power = np.mean([fisher_p(int(rng.binomial(n, 0.3)), n, int(rng.binomial(n, 0.01)), n) < 0.01 for _ in range(500)])
    assert power > 0.95


def test_minimum_images_is_consistent_with_the_test():
    needed = minimum_images_for(1e-3, 0.3, 0.01)
    assert needed is not None and fisher_p(round(0.3 * needed), needed, round(0.01 * needed), needed) < 1e-3
    smaller = max(4, int(needed / 1.25) - 1)
    assert fisher_p(round(0.3 * smaller), smaller, round(0.01 * smaller), smaller) >= 1e-3 or smaller < 4
    assert minimum_images_for(1e-3, 0.05, 0.05) is None
