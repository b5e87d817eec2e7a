"""k-means in JAX against scikit-learn's KMeans and its own definitions."""

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.datasets import load_digits, make_blobs

from lab import kmeans


@pytest.mark.parametrize("dataset", ["blobs", "digits"])
def test_inertia_within_one_percent_of_scikit_learn(dataset):
    if dataset == "blobs":
        x, _ = make_blobs(n_samples=600, centers=8, n_features=5, cluster_std=1.5, random_state=0)
    else:
        x = load_digits().data[:600] / 16.0
    k = 10
    reference = SklearnKMeans(n_clusters=k, n_init=10, random_state=0).fit(x).inertia_
    runs = kmeans.kmeans_seeds(jax.random.split(jax.random.key(0), 10), x, k=k, iterations=100)
    best = float(np.min(runs.inertia))
    assert abs(best - reference) <= 0.01 * reference


def test_assignments_are_nearest_centres_and_inertia_never_increases():
    x, _ = make_blobs(n_samples=300, centers=5, n_features=3, random_state=1)
    result = kmeans.kmeans(jax.random.key(3), x, k=6, iterations=20)
    assert np.ptp(np.asarray(result.inertia_history)) > 0  # the Lloyd steps moved the centres
    centers = np.asarray(result.centers, np.float64)
    distances = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(result.assignments), distances.argmin(1))
    np.testing.assert_allclose(float(result.inertia), distances.min(1).sum(), rtol=1e-4)
    history = np.asarray(result.inertia_history)
    assert len(history) == 21
    assert np.all(np.diff(history) <= 1e-4 * history[:-1])


def test_seeds_side_by_side_equal_separate_runs():
    x, _ = make_blobs(n_samples=200, centers=4, n_features=2, random_state=2)
    keys = jax.random.split(jax.random.key(1), 3)
    together = kmeans.kmeans_seeds(keys, x, k=4)
    for i, key in enumerate(keys):
        alone = kmeans.kmeans(key, x, k=4)
        np.testing.assert_allclose(np.asarray(together.centers[i]), np.asarray(alone.centers), rtol=1e-5, atol=1e-5)


def test_plus_plus_picks_distinct_candidates_and_spreads_over_separated_groups():
    # Four tight groups far apart: k-means++ (D^2 sampling) all but surely seeds one point in each.
    rng = np.random.default_rng(0)
    groups = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], np.float32)
    x = np.concatenate([g + rng.normal(0, 0.1, (25, 2)) for g in groups]).astype(np.float32)
    candidates = np.ones(100, bool)
    candidates[:5] = False
    for seed in range(5):
        picked = np.asarray(kmeans.plus_plus(jax.random.key(seed), x, 4, candidates))
        assert len(set(picked.tolist())) == 4
        assert candidates[picked].all()
        assert sorted(picked // 25) == [0, 1, 2, 3]
    largest = np.asarray(kmeans.plus_plus(jax.random.key(0), x, 2, candidates, first="largest"))
    assert largest[0] == np.argmax(np.where(candidates, (x**2).sum(1), -1))


def test_plus_plus_on_duplicates_still_picks_distinct_points():
    x = np.zeros((6, 2), np.float32)
    picked = np.asarray(kmeans.plus_plus(jax.random.key(0), x, 6))
    assert sorted(picked.tolist()) == list(range(6))
