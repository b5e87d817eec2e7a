"""The pieces of lab.active that notebook 07 checks its derivations with: classes covered by a selection
(and its expectation under a uniform draw), BALD's sampled estimate, the k-center cover radius."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from lab import active


def test_classes_covered_counts_distinct_classes_per_selection():
    labels = np.array([0, 0, 1, 2, 2, 2])
    assert active.classes_covered(labels, [[0, 1], [0, 2, 3], [3, 4, 5], []]).tolist() == [1, 3, 1, 0]


@pytest.mark.parametrize("size", [0, 1, 3, 5, 7])
def test_expected_classes_covered_is_the_mean_over_every_subset(size):
    labels = np.array([0, 0, 0, 0, 1, 1, 2])  # unbalanced: class 2 is missed most often
    subsets = list(itertools.combinations(range(len(labels)), size))
    exact = np.mean(active.classes_covered(labels, subsets))  # every draw without replacement is equally likely
    assert active.expected_classes_covered(labels, size) == pytest.approx(exact)


def test_expected_classes_covered_refuses_a_draw_larger_than_the_pool():
    with pytest.raises(ValueError, match=r"size must be an integer in 0\.\.3, got 4"):
        active.expected_classes_covered(np.array([0, 1, 1]), 4)


def joint_mutual_information(probabilities: np.ndarray) -> np.ndarray:
    """I(y; θ) of the joint table p(θ, y) = p(y | θ) / members, per example, as sum p log p / (p(θ) p(y))."""
    members = probabilities.shape[0]
    joint = probabilities / members  # (members, n, c)
    marginal = joint.sum(0, keepdims=True)  # p(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / (marginal / members)), 0.0)
    return terms.sum((0, 2))


def test_bald_and_its_sampled_estimate_match_the_joint_mutual_information():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(4, 0.5), size=(5, 6))  # 5 members, 6 examples, 4 classes
    probabilities[:, 0] = [0.25, 0.25, 0.25, 0.25]  # members agree: no mutual information, however uncertain
    probabilities[:, 1] = np.eye(4)[[0, 1, 2, 3, 0]]  # members sure and disagreeing
    reference = joint_mutual_information(probabilities)
    np.testing.assert_allclose(active.bald_scores(probabilities), reference, atol=1e-5)

    estimate, error = active.bald_monte_carlo(jax.random.key(0), probabilities, samples=20_000)
    estimate, error = np.asarray(estimate), np.asarray(error)
    assert np.all(error < 0.02) and error[0] == pytest.approx(0, abs=1e-6)
    assert np.all(np.abs(estimate - reference) <= 5 * error + 1e-6), (estimate, reference, error)
    assert estimate[0] == pytest.approx(0, abs=1e-6)


def test_cover_radius_is_the_largest_distance_to_the_nearest_centre():
    points = np.random.default_rng(1).normal(size=(30, 3))
    centres = [2, 7, 19]
    reference = cdist(points, points[centres]).min(1).max()
    assert active.cover_radius(points, centres) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_k_center_greedy_is_within_twice_the_optimal_radius(seed):
    points = np.random.default_rng(seed).normal(size=(10, 2))
    optimum = min(active.cover_radius(points, centres) for centres in itertools.combinations(range(10), 3))
    greedy = active.k_center_greedy(jax.random.key(seed), np.zeros(10, bool), 3, points)
    assert len(set(greedy.tolist())) == 3
    assert optimum <= active.cover_radius(points, greedy) <= 2 * optimum + 1e-6
