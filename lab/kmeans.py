"""k-means in JAX: k-means++ seeding (Arthur & Vassilvitskii, 2007) and Lloyd iterations.

Pure functions of an explicit key, jit-able (``k`` and ``iterations`` are static) and vmapped
over seeds with :func:`kmeans_seeds`. Active learning uses them: TypiClust and ProbCover cluster
embeddings with :func:`kmeans`, and BADGE seeds its batch with :func:`plus_plus` on gradient
embeddings (the picked points themselves, hence indices rather than centres).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["KMeans", "kmeans", "kmeans_seeds", "plus_plus", "squared_distances"]


class KMeans(NamedTuple):
    centers: jax.Array  # (k, d)
    assignments: jax.Array  # (n,) index of each point's nearest centre
    inertia: jax.Array  # () sum of squared distances of the points to their centres
    inertia_history: jax.Array  # (iterations + 1,) inertia of the seeding, then after each Lloyd step (see kmeans)


def squared_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
    """(n, k) squared Euclidean distances, as one matrix product; clipped at 0 against rounding."""
    cross = x @ centers.T
    return jnp.maximum(jnp.sum(x * x, 1)[:, None] - 2 * cross + jnp.sum(centers * centers, 1)[None, :], 0.0)


@functools.partial(jax.jit, static_argnames=("k", "first"))
def plus_plus(key: jax.Array, x: jax.Array, k: int, candidates: jax.Array | None = None, first: str = "random"):
    """Indices of ``k`` points of ``x`` seeded by k-means++: the first at random (``first="random"``)
    or the one of largest norm (``"largest"``, as BADGE starts), each next drawn with probability
    proportional to its squared distance to the nearest point already picked.

    ``candidates`` (a boolean mask, default all) limits the draw to some points; a point already
    picked has distance 0 and is not drawn again while any other candidate is left.
    """
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    candidates = jnp.ones(n, bool) if candidates is None else jnp.asarray(candidates, bool)
    keys = jax.random.split(key, k)
    if first == "largest":
        start = jnp.argmax(jnp.where(candidates, jnp.sum(x * x, 1), -jnp.inf))
    else:
        start = _draw(keys[0], candidates.astype(jnp.float32))
    nearest = jnp.where(candidates, squared_distances(x, x[start][None])[:, 0], 0.0)

    def pick(i, carry):
        picked, nearest = carry
        # All left at distance 0 (duplicates): fall back to a uniform draw among unpicked candidates.
        unpicked = candidates & ~jnp.isin(jnp.arange(n), picked)
        weights = jnp.where(jnp.sum(nearest) > 0, nearest, unpicked.astype(jnp.float32))
        chosen = _draw(keys[i], weights)
        nearest = jnp.minimum(nearest, squared_distances(x, x[chosen][None])[:, 0])
        return picked.at[i].set(chosen), nearest

    picked = jnp.full(k, -1, jnp.int32).at[0].set(start)
    picked, _ = jax.lax.fori_loop(1, k, pick, (picked, nearest))
    return picked


def _draw(key: jax.Array, weights: jax.Array) -> jax.Array:
    """An index drawn with probability proportional to ``weights`` (Gumbel-max: no cumulative sum to compile)."""
    return jax.random.categorical(key, jnp.log(weights))


def _assign(x: jax.Array, centers: jax.Array) -> tuple[jax.Array, jax.Array]:
    distances = squared_distances(x, centers)
    assignments = jnp.argmin(distances, 1)
    return assignments, jnp.sum(jnp.min(distances, 1))


@functools.partial(jax.jit, static_argnames=("k", "iterations"))
def kmeans(key: jax.Array, x: jax.Array, k: int, iterations: int = 100) -> KMeans:
    """k-means++ seeding, then Lloyd steps (assign each point to its nearest centre, move each centre to
    the mean of its points; a centre left without points stays where it is) until no assignment changes,
    at most ``iterations``. ``inertia_history`` holds the seeding's inertia, then each step's; once
    converged, the final inertia repeats."""
    x = jnp.asarray(x, jnp.float32)
    centers = x[plus_plus(key, x, k)]
    assignments, inertia = _assign(x, centers)
    history = jnp.full(iterations + 1, inertia)

    def lloyd(carry):
        step, centers, assignments, _, history = carry
        one_hot = jax.nn.one_hot(assignments, k, dtype=x.dtype)
        counts = jnp.sum(one_hot, 0)
        means = (one_hot.T @ x) / jnp.maximum(counts, 1)[:, None]
        centers = jnp.where(counts[:, None] > 0, means, centers)
        new_assignments, inertia = _assign(x, centers)
        history = jnp.where(jnp.arange(iterations + 1) > step, inertia, history)
        return step + 1, centers, new_assignments, jnp.any(new_assignments != assignments), history

    def going(carry):
        step, _, _, changed, _ = carry
        return (step < iterations) & changed

    _, centers, assignments, _, history = jax.lax.while_loop(
        going, lloyd, (0, centers, assignments, jnp.array(True), history)
    )
    return KMeans(centers, assignments, history[-1], history)


@functools.partial(jax.jit, static_argnames=("k", "iterations"))
def kmeans_seeds(keys: jax.Array, x: jax.Array, k: int, iterations: int = 100) -> KMeans:
    """:func:`kmeans` of ``x`` for each key of ``keys`` (one run per seed, side by side): every field
    gains a leading seed axis. The best of several seeds is scikit-learn's ``n_init``."""
    return jax.vmap(functools.partial(kmeans, k=k, iterations=iterations), in_axes=(0, None))(keys, x)
