"""Active learning: which examples of the pool to label next.

A *strategy* (:data:`STRATEGIES`, chosen by name with :func:`query`) is a pure function of an
explicit key, the labeled mask of the pool, the batch size and what it reads, to the indices of
the pool it picks (never a labeled one, never one twice). What it reads:

- ``probabilities``: (members, n, classes) predicted class probabilities of the pool, one row per
  ensemble member or MC-dropout sample (one member for a single model);
- ``embeddings``: (n, d) features of the pool (a backbone's, or the raw inputs flattened);
- ``labels``: the pool's true labels, which only the oracle reference ``stratified_random`` reads;
- ``num_classes``: how many classes the task has (ProbCover's number of clusters).

Strategies: ``random`` (unstratified, the honest baseline), ``stratified_random`` (an equal share
of each class: the oracle no user has), the uncertainty scores ``least_confidence``, ``margin``,
``entropy`` and ``bald`` (mutual information between prediction and model, Houlsby et al., 2011),
``coreset`` (k-center greedy, Sener & Savarese, 2018), ``badge`` (k-means++ seeding on gradient
embeddings, Ash et al., 2020), and for the cold start ``typiclust`` (Hacohen et al., 2022) and
``probcover`` (Yehuda et al., 2022).

:func:`run` is the pool-based loop around them (:class:`ActiveConfig`): a cold start, then per
budget the learner (any setup of :mod:`lab.experiment`) trains, the strategy scores the pool and
queries, and the batch's labels are revealed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab import files, kmeans, validate
from lab.record import Record

__all__ = [
    "ActiveConfig",
    "ActiveResult",
    "STRATEGIES",
    "Strategy",
    "bald_monte_carlo",
    "bald_scores",
    "check_budgets",
    "classes_covered",
    "cover_radius",
    "entropy_scores",
    "expected_classes_covered",
    "k_center_greedy",
    "label_curves_markdown",
    "labels_to_reach",
    "run_labels",
    "margin_scores",
    "plot_label_curves",
    "max_coverage",
    "probcover_delta",
    "query",
    "run",
    "typicality",
    "validate_parameters",
]

INPUTS = ("probabilities", "embeddings", "labels", "num_classes")
_CHUNK = 1024  # rows of a pairwise-distance block: memory stays O(chunk x n) on a 60,000-point pool


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A registered strategy: ``select(key, labeled, batch, **inputs)`` and the inputs it reads."""

    select: Callable[..., np.ndarray]
    needs: tuple[str, ...]  # of INPUTS

    @property
    def cold_start(self) -> bool:
        """Whether it can pick before any model is trained (it reads no probabilities)."""
        return "probabilities" not in self.needs


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, *, needs: Sequence[str] = ()) -> Callable:
    def add(select: Callable[..., Any]) -> Callable[..., Any]:
        if name in STRATEGIES:
            raise ValueError(f"a strategy named {name!r} is already registered")
        STRATEGIES[name] = Strategy(select, tuple(needs))
        return select

    return add


def check_strategy(name: str) -> Strategy:
    validate.choice("strategy", name, tuple(STRATEGIES))
    return STRATEGIES[name]


def check_budgets(budgets: Sequence[int], pool_size: int) -> tuple[int, ...]:
    """The budget schedule (total labels after each query) as ints: at least one, increasing, and below
    the pool's size (an unlabeled pool is left to query from and to learn from)."""
    budgets = tuple(budgets)
    if not budgets:
        raise ValueError("budgets must name at least one total number of labels (zero rounds), got []")
    for budget in budgets:
        validate.integer("budgets", budget, minimum=1)
    if any(later <= earlier for earlier, later in zip(budgets, budgets[1:])):
        raise ValueError(f"budgets must be increasing totals of labels, got {list(budgets)}")
    if budgets[-1] >= pool_size:
        raise ValueError(
            f"budgets must stay below the pool's {pool_size} examples (a batch must not exhaust the pool), "
            f"got {list(budgets)}"
        )
    return budgets


def query(name: str, key: jax.Array, labeled: np.ndarray, batch: int, **inputs: Any) -> np.ndarray:
    """The ``batch`` pool indices strategy ``name`` picks, given ``inputs`` (any of :data:`INPUTS`;
    it reads those it needs). Refuses an unknown name, a batch larger than what is left of the pool,
    and a missing input, each in one line."""
    strategy = check_strategy(name)
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        raise ValueError(f"unknown strategy inputs {unknown}; allowed: {list(INPUTS)}")
    labeled = np.asarray(labeled, bool)
    left = int(np.sum(~labeled))
    validate.integer("batch", batch, minimum=1)
    if batch > left:
        raise ValueError(f"batch must be at most the {left} unlabeled examples left in the pool, got {batch}")
    missing = [need for need in strategy.needs if inputs.get(need) is None]
    if missing:
        raise ValueError(f"strategy {name!r} needs the pool's {' and '.join(missing)}; none was given")
    return np.asarray(strategy.select(key, labeled, batch, **{need: inputs[need] for need in strategy.needs}))


def _top_unlabeled(scores: jax.Array, labeled: np.ndarray, batch: int) -> np.ndarray:
    """The ``batch`` unlabeled indices of highest score (ties: the lower index)."""
    masked = jnp.where(jnp.asarray(labeled), -jnp.inf, jnp.asarray(scores, jnp.float32))
    return np.asarray(jax.lax.top_k(masked, batch)[1])


# ------------------------------------------------------------------ without a model


@register("random")
def random(key: jax.Array, labeled: np.ndarray, batch: int) -> np.ndarray:
    """Uniformly at random among the unlabeled, without replacement."""
    return _top_unlabeled(jax.random.uniform(key, labeled.shape), labeled, batch)


@register("stratified_random", needs=("labels",))
def stratified_random(key: jax.Array, labeled: np.ndarray, batch: int, labels: np.ndarray) -> np.ndarray:
    """At random, but evening out the classes' counts of labels: each pick goes to a class with the
    fewest labels so far (ties at random). It reads the true labels: the oracle reference."""
    labels = np.asarray(labels)
    noise = np.asarray(jax.random.uniform(key, labels.shape))
    order = np.lexsort((noise, labeled, labels))  # by class, unlabeled first, then at random
    position = np.empty(len(labels), int)
    position[order] = np.arange(len(labels))
    rank = position - np.searchsorted(labels[order], labels)  # an unlabeled example is its class's rank-th
    have = np.bincount(labels[labeled], minlength=labels.max() + 1)
    return _top_unlabeled(-(have[labels] + rank + noise), labeled, batch)


def classes_covered(labels: np.ndarray, selections: Sequence[Sequence[int]]) -> np.ndarray:
    """How many distinct classes each selection (a list of pool indices) holds."""
    labels = np.asarray(labels)
    return np.array([len(np.unique(labels[np.asarray(selection, int)])) for selection in selections])


def expected_classes_covered(labels: np.ndarray, size: int) -> float:
    """The expected :func:`classes_covered` of ``size`` pool examples drawn uniformly without replacement:
    the sum over classes c of 1 - C(n - n_c, size) / C(n, size), the ratio being the chance that a draw misses c."""
    counts = np.bincount(np.asarray(labels))
    n = int(counts.sum())
    validate.integer("size", size, minimum=0, maximum=n)
    # C(n - n_c, size) / C(n, size) = prod_{i < size} (n - n_c - i) / (n - i), as a product of ratios (no overflow)
    steps = np.arange(size)
    missed = [np.prod(np.clip((n - count - steps) / (n - steps), 0, None)) for count in counts[counts > 0]]
    return float(np.sum(1 - np.array(missed)))


# ------------------------------------------------------------------ uncertainty


def _mean(probabilities: jax.Array) -> jax.Array:
    return jnp.mean(jnp.asarray(probabilities, jnp.float32), 0)


def entropy_scores(probabilities: jax.Array) -> jax.Array:
    """Entropy (nats) of the members' mean prediction, per example: (members, n, c) -> (n,)."""
    p = _mean(probabilities)
    return -jnp.sum(jax.scipy.special.xlogy(p, p), -1)


def margin_scores(probabilities: jax.Array) -> jax.Array:
    """Minus the gap between the two most probable classes (higher: less sure)."""
    top_two = jax.lax.top_k(_mean(probabilities), 2)[0]
    return top_two[:, 1] - top_two[:, 0]


def bald_scores(probabilities: jax.Array) -> jax.Array:
    """I(y; θ | x) = H(E_θ p(y|x,θ)) - E_θ H(p(y|x,θ)), the members standing for draws of θ."""
    p = jnp.asarray(probabilities, jnp.float32)
    expected_entropy = jnp.mean(-jnp.sum(jax.scipy.special.xlogy(p, p), -1), 0)
    return entropy_scores(p) - expected_entropy


def bald_monte_carlo(key: jax.Array, probabilities: jax.Array, samples: int) -> tuple[jax.Array, jax.Array]:
    """A sampled estimate of :func:`bald_scores` and its standard error, per example: draw a member θ
    uniformly and y ~ p(y|x,θ), ``samples`` times, and average log p(y|x,θ) - log E_θ p(y|x,θ), whose
    expectation under that joint draw is I(y; θ | x)."""
    p = jnp.asarray(probabilities, jnp.float32)
    members, n, _ = p.shape
    member_key, label_key = jax.random.split(key)
    theta = jax.random.randint(member_key, (samples, n), 0, members)
    p_theta = p[theta, jnp.arange(n)]  # (samples, n, c): the drawn member's prediction
    y = jax.random.categorical(label_key, jnp.log(p_theta))
    log_ratio = jnp.log(jnp.take_along_axis(p_theta, y[..., None], -1)[..., 0]) - jnp.log(_mean(p)[jnp.arange(n), y])
    return jnp.mean(log_ratio, 0), jnp.std(log_ratio, 0) / jnp.sqrt(samples)


def _uncertainty(scores: Callable[[jax.Array], jax.Array]) -> Callable[..., np.ndarray]:
    def select(key: jax.Array, labeled: np.ndarray, batch: int, probabilities: jax.Array) -> np.ndarray:
        return _top_unlabeled(scores(probabilities), labeled, batch)

    select.__doc__ = f"The unlabeled examples of highest {scores.__name__.removesuffix('_scores')} score."
    return select


register("least_confidence", needs=("probabilities",))(_uncertainty(lambda p: 1 - jnp.max(_mean(p), -1)))
register("margin", needs=("probabilities",))(_uncertainty(margin_scores))
register("entropy", needs=("probabilities",))(_uncertainty(entropy_scores))
register("bald", needs=("probabilities",))(_uncertainty(bald_scores))


# ------------------------------------------------------------------ embeddings


def _padded_indices(mask: np.ndarray) -> np.ndarray:
    """The indices of ``mask``, padded to a power of two by repeating the first (one compiled program
    serves many labeled-set sizes; a repeated point changes no nearest distance)."""
    indices = np.flatnonzero(mask)
    size = 1 << max(int(len(indices)) - 1, 0).bit_length()
    return np.pad(indices, (0, size - len(indices)), mode="edge")


def _nearest_distance(x: jax.Array, centres: jax.Array) -> jax.Array:
    """(n,) Euclidean distance of each row of ``x`` to its nearest row of ``centres``."""
    return jnp.sqrt(jnp.min(kmeans.squared_distances(x, centres), 1))


@functools.partial(jax.jit, static_argnames=("batch",))
def _k_center_greedy(x, first, nearest, batch):
    # A labeled or picked point stands at -1, below every distance, so it is never picked (again).
    def step(nearest, _):
        chosen = jnp.argmax(nearest)
        return jnp.minimum(nearest, _nearest_distance(x, x[chosen][None])).at[chosen].set(-1), chosen

    nearest = jnp.minimum(nearest, _nearest_distance(x, x[first][None])).at[first].set(-1)
    _, rest = jax.lax.scan(step, nearest, length=batch - 1)
    return jnp.concatenate([first[None], rest])


def k_center_greedy(key: jax.Array, labeled: np.ndarray, batch: int, embeddings: jax.Array) -> np.ndarray:
    """Each pick the unlabeled example farthest from every labeled or picked one (the first at random
    when nothing is labeled yet): the max-min cover radius is at most twice the optimal k-center's."""
    x = jnp.asarray(embeddings, jnp.float32).reshape(len(labeled), -1)
    if labeled.any():
        nearest = jnp.where(labeled, -1.0, _nearest_distance(x, x[_padded_indices(labeled)]))
        first = jnp.argmax(nearest)
    else:
        first = jax.random.randint(key, (), 0, len(labeled))
        nearest = jnp.full(len(labeled), jnp.inf)
    return np.asarray(_k_center_greedy(x, first, nearest, batch))


register("coreset", needs=("embeddings",))(k_center_greedy)


def cover_radius(embeddings: np.ndarray, centres: Sequence[int]) -> float:
    """The k-center objective: the largest distance from a point of ``embeddings`` to its nearest centre
    (``centres``: row indices), the radius within which the centres cover every point."""
    x = jnp.asarray(embeddings, jnp.float32).reshape(len(embeddings), -1)
    return float(_cover_radius(x, jnp.asarray(centres)))


@jax.jit  # one compiled program: a brute-force optimum calls it for every subset of centres
def _cover_radius(x: jax.Array, centres: jax.Array) -> jax.Array:
    return jnp.max(_nearest_distance(x, x[centres]))


@register("badge", needs=("probabilities", "embeddings"))
def badge(
    key: jax.Array, labeled: np.ndarray, batch: int, probabilities: jax.Array, embeddings: jax.Array
) -> np.ndarray:
    """k-means++ seeding (the first the largest) on gradient embeddings: the gradient of the
    cross-entropy at the predicted class with respect to the last layer, (p - onehot(ŷ)) ⊗ embedding."""
    p = _mean(probabilities)
    residual = p - jax.nn.one_hot(jnp.argmax(p, -1), p.shape[-1])
    x = jnp.asarray(embeddings, jnp.float32).reshape(len(labeled), -1)
    gradients = (residual[:, :, None] * x[:, None, :]).reshape(len(labeled), -1)
    return np.asarray(kmeans.plus_plus(key, gradients, batch, jnp.asarray(~labeled), first="largest"))


@functools.partial(jax.jit, static_argnames=("neighbours",))
def _mean_neighbour_distance(x: jax.Array, valid: jax.Array, neighbours: int) -> jax.Array:
    """Each row's mean Euclidean distance to its ``neighbours`` nearest valid rows (itself left out)."""
    rows = x.reshape(-1, _CHUNK, x.shape[-1]) if len(x) >= _CHUNK else x[None]

    def block(chunk):
        distances = jnp.sqrt(kmeans.squared_distances(chunk, x))
        nearest = -jax.lax.top_k(-jnp.where(valid[None, :], distances, jnp.inf), neighbours + 1)[0]
        return jnp.mean(nearest[:, 1:], -1)

    return jax.lax.map(block, rows).reshape(-1)


def typicality(embeddings: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """TypiClust's typicality: 1 / (mean distance to the ``neighbours`` nearest other points + 1e-5),
    with ``neighbours`` at most half the points (as the paper's code does for small clusters)."""
    x = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
    neighbours = min(neighbours, len(x) // 2)
    if neighbours == 0:
        return np.ones(len(x))
    size = max(1 << (len(x) - 1).bit_length(), 8)  # padded to a power of two: few compiled programs
    size = size if size < _CHUNK else -(-len(x) // _CHUNK) * _CHUNK
    padded = np.zeros((size, x.shape[1]), np.float32)
    padded[: len(x)] = x
    valid = np.arange(size) < len(x)
    distances = np.asarray(_mean_neighbour_distance(jnp.asarray(padded), jnp.asarray(valid), neighbours))
    return 1.0 / (distances[: len(x)] + 1e-5)


@register("typiclust", needs=("embeddings",))
def typiclust(
    key: jax.Array,
    labeled: np.ndarray,
    batch: int,
    embeddings: np.ndarray,
    *,
    max_clusters: int = 500,
    min_cluster_size: int = 5,
    neighbours: int = 20,
) -> np.ndarray:
    """TypiClust (Hacohen et al., 2022): k-means into labeled + batch clusters (at most
    ``max_clusters``), then, cluster by cluster from the fewest labeled points and the largest,
    the most typical unlabeled point of the cluster (typicality among all its points).

    As the paper's code, clusters of at most ``min_cluster_size`` points come last, and a batch
    larger than the clusters goes round them again.
    """
    x = np.asarray(embeddings, np.float32).reshape(len(labeled), -1)
    k = int(min(labeled.sum() + batch, max_clusters, len(x)))
    clusters = np.asarray(kmeans.kmeans(key, jnp.asarray(x), k).assignments)
    sizes = np.bincount(clusters, minlength=k)
    have = np.bincount(clusters[labeled], minlength=k)
    order = np.lexsort((np.arange(k), -sizes, have, sizes <= min_cluster_size))
    order = order[sizes[order] > 0]
    taken = labeled.copy()
    picked: list[int] = []
    position = 0
    while len(picked) < batch:
        members = np.flatnonzero(clusters == order[position % len(order)])
        position += 1
        if taken[members].all():
            continue
        scores = np.where(taken[members], -np.inf, typicality(x[members], neighbours))
        picked.append(int(members[np.argmax(scores)]))
        taken[picked[-1]] = True
    return np.array(picked)


# ------------------------------------------------------------------ ProbCover


@jax.jit
def _nearest_other_cluster(x: jax.Array, clusters: jax.Array) -> jax.Array:
    """Each row's Euclidean distance to the nearest row of another cluster (padded rows: cluster -1)."""
    rows, row_clusters = x.reshape(-1, _CHUNK, x.shape[-1]), clusters.reshape(-1, _CHUNK)

    def block(args):
        chunk, chunk_clusters = args
        distances = jnp.sqrt(kmeans.squared_distances(chunk, x))
        other = (chunk_clusters[:, None] != clusters[None, :]) & (clusters[None, :] >= 0)
        return jnp.min(jnp.where(other, distances, jnp.inf), 1)

    return jax.lax.map(block, (rows, row_clusters)).reshape(-1)


def _padded_rows(x: np.ndarray) -> np.ndarray:
    padded = np.zeros((-(-len(x) // _CHUNK) * _CHUNK, x.shape[1]), np.float32)
    padded[: len(x)] = x
    return padded


def probcover_delta(clusters: np.ndarray, embeddings: np.ndarray, purity: float = 0.95) -> float:
    """ProbCover's ball radius δ: the largest for which at least ``purity`` of the balls
    {y : ||x - y|| < δ} hold one cluster only (the paper's pseudo-labels: k-means with as many
    clusters as classes). A ball is pure while δ is at most the distance to the nearest point of
    another cluster, so δ is a quantile of those distances."""
    x = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
    padded_clusters = np.full(len(_padded_rows(x)), -1, np.int32)
    padded_clusters[: len(x)] = clusters
    nearest = np.asarray(_nearest_other_cluster(jnp.asarray(_padded_rows(x)), jnp.asarray(padded_clusters)))
    return float(np.sort(nearest[: len(x)])[int(np.floor((1 - purity) * len(x)))])


def _ball_edges(x: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The directed edges (x, y) with ||x - y|| < δ, self-loops included, computed a block of rows at a time."""
    padded = jnp.asarray(_padded_rows(x))
    within = jax.jit(lambda chunk: jnp.sqrt(kmeans.squared_distances(chunk, padded[: len(x)])) < delta)
    sources, targets = [], []
    for start in range(0, len(x), _CHUNK):
        rows, columns = np.nonzero(np.asarray(within(padded[start : start + _CHUNK]))[: len(x) - start])
        sources.append(rows + start)
        targets.append(columns)
    return np.concatenate(sources), np.concatenate(targets)


@register("probcover", needs=("embeddings", "num_classes"))
def probcover(
    key: jax.Array, labeled: np.ndarray, batch: int, embeddings: np.ndarray, num_classes: int, *, purity: float = 0.95
) -> np.ndarray:
    """ProbCover (Yehuda et al., 2022): :func:`max_coverage` of δ-balls, δ by :func:`probcover_delta` on
    k-means clusters of the embeddings, as many as classes."""
    x = np.asarray(embeddings, np.float32).reshape(len(labeled), -1)
    cluster_key, random_key = jax.random.split(key)
    clusters = np.asarray(kmeans.kmeans(cluster_key, jnp.asarray(x), min(num_classes, len(x))).assignments)
    return max_coverage(random_key, labeled, batch, x, probcover_delta(clusters, x, purity))


def max_coverage(key: jax.Array, labeled: np.ndarray, batch: int, embeddings: np.ndarray, delta: float) -> np.ndarray:
    """Greedy maximum coverage of the balls {y : ||x - y|| < δ}: each pick the point whose ball holds
    the most points not yet covered (by a labeled point or a pick); once all are covered, at random."""
    x = np.asarray(embeddings, np.float32).reshape(len(labeled), -1)
    sources, targets = _ball_edges(x, delta)
    covered = np.zeros(len(x), bool)
    covered[targets[labeled[sources]]] = True
    live = ~covered[targets]
    taken = labeled.copy()
    picked: list[int] = []
    for _ in range(batch):
        degrees = np.bincount(sources[live], minlength=len(x))
        degrees[taken] = -1
        if degrees.max() <= 0:
            return np.concatenate([np.array(picked, int), random(key, taken, batch - len(picked))])
        chosen = int(np.argmax(degrees))
        covered[targets[live & (sources == chosen)]] = True
        live &= ~covered[targets]
        picked.append(chosen)
        taken[chosen] = True
    return np.array(picked)


# ------------------------------------------------------------------ the loop

EMBEDDINGS = ("auto", "model", "pretrained", "inputs")


@dataclasses.dataclass(frozen=True)
class ActiveConfig:
    """A pool-based active-learning run; ``ActiveConfig.from_dict`` validates it before anything trains.

    ``learner`` is an :class:`lab.experiment.ExperimentConfig` as a mapping (any setup; its
    ``labels_per_class`` is not used). ``budgets`` are the totals of labels after each query: the
    cold-start strategy (it reads no model) fills the first, from ``initial`` (labeled indices every
    seed starts from) or from nothing; then, round after round, the learner trains and ``strategy``
    picks the next budget's batch. ``embeddings``: ``model`` (the trained learner's backbone features),
    ``pretrained`` (the setup's pretrained backbone), ``inputs`` (the flattened inputs), or ``auto``: the
    model's after a round, and at the cold start the pretrained backbone, else the inputs (not for text).
    """

    learner: typing.Mapping[str, Any] = dataclasses.field(default_factory=dict)
    strategy: str = "margin"
    cold_start: str = "random"
    budgets: tuple[int, ...] = (10, 20, 40, 80)
    initial: tuple[int, ...] = ()
    embeddings: str = "auto"

    @classmethod
    def from_dict(cls, values: typing.Mapping[str, Any]) -> ActiveConfig:
        """Build and validate a config. Without a ``learner`` key, the fields that are not this
        config's are the learner's (``{"strategy": "typiclust", "setup": "semi_supervised", ...}``)."""
        from lab.experiment import ExperimentConfig

        known = {field.name for field in dataclasses.fields(cls)}
        if "learner" not in values:
            learner_fields = {field.name for field in dataclasses.fields(ExperimentConfig)} | {"preset"}
            values = {
                **{k: v for k, v in values.items() if k in known},
                "learner": {k: v for k, v in values.items() if k not in known and k in learner_fields},
                **{k: v for k, v in values.items() if k not in known and k not in learner_fields},
            }  # fmt: skip
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown active-learning parameter(s) {unknown}; allowed: {sorted(known - {'learner'})} "
                "and the experiment's fields"
            )
        hints = typing.get_type_hints(cls)
        config = cls(**{name: validate.coerce(name, value, hints[name]) for name, value in values.items()})
        config.learner_config()  # validates the learner
        config.validate()
        return config

    def learner_config(self):
        from lab import experiment  # the loop trains through experiment.run; the strategies need none of it

        return experiment.ExperimentConfig.from_dict(self.learner)

    def validate(self) -> None:
        """Every check that needs no data: names, the schedule's shape, the embedding source."""
        from lab import data

        learner = self.learner_config()
        strategy, cold = check_strategy(self.strategy), check_strategy(self.cold_start)
        if not cold.cold_start:
            cold_starts = [name for name, entry in STRATEGIES.items() if entry.cold_start]
            raise ValueError(
                f"cold_start {self.cold_start!r} reads a model's predictions, and none is trained yet; "
                f"choose one of: {', '.join(cold_starts)}"
            )
        check_budgets(self.budgets, pool_size=max(self.budgets, default=0) + 1)  # run checks the pool's size
        if len(self.initial) > self.budgets[0]:
            raise ValueError(f"initial holds {len(self.initial)} labels, more than the first budget {self.budgets[0]}")
        if self.strategy == "bald" and len(learner.seeds) < 2:
            raise ValueError("strategy 'bald' reads the seeds' ensemble: give at least 2 seeds, got 1")
        validate.choice("embeddings", self.embeddings, EMBEDDINGS)
        pretrains = _pretrains(learner)
        text = data.modality_of(learner.dataset) == "text"
        if self.embeddings == "pretrained" and not pretrains:
            raise ValueError(
                f"embeddings='pretrained' needs a setup with a pretrained backbone (transfer, "
                f"transfer_semi_supervised), got setup {learner.setup!r}"
            )
        if "embeddings" in cold.needs and not pretrains and (self.embeddings == "model" or text):
            source = "the model (none is trained at the cold start)" if self.embeddings == "model" else (
                f"the inputs ({learner.dataset} is text: token ids are no embedding)"
            )  # fmt: skip
            raise ValueError(
                f"cold_start {self.cold_start!r} needs embeddings, and has no source: not {source}; use a "
                "setup with a pretrained backbone (e.g. setup=transfer pretrain=mlm) or another cold_start"
            )
        if "embeddings" in strategy.needs and self.embeddings == "inputs" and text:
            raise ValueError(f"embeddings='inputs' of {learner.dataset} are token ids, no embedding; use model")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "learner": dict(self.learner), "budgets": list(self.budgets),
                "initial": list(self.initial)}  # fmt: skip


@dataclasses.dataclass
class ActiveResult:
    """What an active-learning run produced, JSON-ready; per-seed lists align with ``seeds``."""

    config: dict[str, Any]
    seeds: list[int]
    budgets: list[int]
    selections: list[list[list[int]]]  # per seed, per round: the pool indices labeled then (round 0: cold start)
    curve: dict[str, list[list[float]]]  # metric -> per budget, one value per seed (the label curve)
    wall_time_s: dict[str, float]

    def summary(self) -> dict[str, list[dict[str, float]]]:
        """Mean and standard deviation over seeds of each metric, per budget."""
        return {
            name: [{"mean": float(np.mean(v)), "std": float(np.std(v))} for v in per_budget]
            for name, per_budget in self.curve.items()
        }

    def labels_to_reach(self, target: float, metric: str = "accuracy") -> int | None:
        """See :func:`labels_to_reach`."""
        return labels_to_reach(self.budgets, self.curve[metric], target)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> Record:
        """The run's record (:mod:`lab.record`), the schema that notebooks, sweeps, the results store and
        ``lab report`` share: the learner's dataset, setup and method, the metrics at the last budget, and
        under ``active`` the settings, the label curve and the selections."""
        from lab.experiment import ExperimentConfig

        learner = ExperimentConfig.from_dict(self.config["learner"])
        settings = {key: self.config[key] for key in ("strategy", "cold_start", "embeddings", "initial", "budgets")}
        return Record.from_dict({
            "dataset": learner.dataset,
            "setup": learner.setup,
            "method": learner.method_label,
            "labels_per_class": None,
            "seeds": self.seeds,
            "metrics": {name: per_budget[-1] for name, per_budget in self.curve.items()},
            "wall_time_s": self.wall_time_s,
            "active": {**settings, "learner": learner.to_dict(), "curve": self.curve,
                       "selections": self.selections},
        })  # fmt: skip

    @classmethod
    def from_record(cls, record: Record) -> ActiveResult:
        """The result an active-learning record holds (seeds merged from several records included)."""
        if record.active is None:
            raise ValueError(f"the record of {record.dataset} / {record.method} is no active-learning run's")
        active = record.active
        config = {key: active[key] for key in ("learner", "strategy", "cold_start", "budgets", "initial", "embeddings")}
        return cls(config, list(record.seeds), list(active["budgets"]), active["selections"], active["curve"],
                   dict(record.wall_time_s or {}))  # fmt: skip

    def save(self, path: str) -> Any:
        """Write :meth:`to_dict` as JSON, atomically."""
        return files.write_atomic(path, json.dumps(self.to_dict(), indent=2))


def validate_parameters(parameters: typing.Mapping[str, Any]) -> None:
    """Validate a notebook's (a sweep point's) parameters as an :class:`ActiveConfig` when they name any of its
    fields (strategy, cold_start, budgets, initial, embeddings); the experiment's fields among them are the
    learner's, and the others pass."""
    from lab.experiment import ExperimentConfig

    own = {field.name for field in dataclasses.fields(ActiveConfig)} - {"learner"}
    if not own & set(parameters):
        return
    learner_fields = {field.name for field in dataclasses.fields(ExperimentConfig)}
    ActiveConfig.from_dict({key: value for key, value in parameters.items() if key in own | learner_fields})


def labels_to_reach(budgets: Sequence[int], curve: Sequence[Sequence[float]], target: float) -> int | None:
    """The fewest labels of ``budgets`` whose mean over seeds (``curve``: per budget, one value per seed)
    reaches ``target``, e.g. 0.95; None when no budget does ("not reached")."""
    validate.number("target", target, minimum=0, maximum=1)
    reached = [budget for budget, values in zip(budgets, curve) if np.mean(values) >= target]
    return reached[0] if reached else None


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)


def _pool_outputs(model, params, model_state, x: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's eval-mode class probabilities (seeds, n, c) and backbone features (seeds, n, d) on ``x``
    (``params`` and ``model_state`` stacked over seeds)."""
    n = len(x)
    batches = -(-n // batch_size)
    padded = jnp.pad(jnp.asarray(x), [(0, batches * batch_size - n)] + [(0, 0)] * (x.ndim - 1))
    padded = padded.reshape(batches, batch_size, *x.shape[1:])

    def per_seed(params, model_state):
        def chunk(xb):
            module = model.bind(params, model_state, train=False)
            features = module.features(xb)
            return jax.nn.softmax(module.head(features)), features

        probabilities, features = jax.lax.map(chunk, padded)
        return probabilities.reshape(-1, probabilities.shape[-1])[:n], features.reshape(-1, features.shape[-1])[:n]

    probabilities, features = jax.jit(jax.vmap(per_seed))(params, model_state)
    return np.asarray(probabilities), np.asarray(features)


def _pretrains(learner) -> bool:
    from lab.experiment import SETUPS

    return SETUPS[learner.setup].pretrain is not SETUPS["supervised"].pretrain


def _pretrained_features(learner, dataset, progress: bool, load_dataset) -> np.ndarray:
    """The pool's features under the setup's pretrained backbone (cached by lab.transfer), before adaptation;
    ``load_dataset``: the run's :func:`lab.experiment.dataset_loader`."""
    from lab import train
    from lab.experiment import SETUPS

    plan = SETUPS[learner.setup]
    backbone = plan.pretrain(learner, progress, load_dataset)
    embed = plan.frozen_features(learner, backbone)
    if embed is not None:
        # the ids a frozen probe embeds for training (train and test): one cache entry for both
        return embed(np.concatenate([dataset.x_train, dataset.x_test]))[: len(dataset.x_train)]
    module = plan.classifier(learner, dataset, backbone)(0)
    graphs, params, model_state = train.Graphs.split(module)
    params, model_state = jax.tree.map(lambda leaf: leaf[None], (params, model_state))  # one seed
    return _pool_outputs(graphs, params, model_state, dataset.x_train)[1][0]


def run(config: ActiveConfig | typing.Mapping[str, Any], *, progress: bool = True) -> ActiveResult:
    """Cold start, then per budget: train the learner on every seed's labeled set (all seeds side by side,
    their sets of equal size), score the pool, query the next batch, reveal its labels."""
    from lab import devices, experiment  # the strategies need none of the training code

    config = ActiveConfig.from_dict(config.to_dict() if isinstance(config, ActiveConfig) else config)
    learner = config.learner_config()
    with devices.use(learner.platform):
        load = experiment.dataset_loader(learner)
        dataset = experiment.load_dataset(learner, load)
        pool = len(dataset.y_train)
        check_budgets(config.budgets, pool)
        initial = np.asarray(config.initial, np.int64)
        if initial.size and (len(np.unique(initial)) != initial.size or initial.min() < 0 or initial.max() >= pool):
            raise ValueError(f"initial must be distinct training indices in 0..{pool - 1}, got {initial.tolist()}")
        seeds = list(learner.seeds)
        keys = {seed: jax.random.key(seed) for seed in seeds}
        labeled = {seed: np.zeros(pool, bool) for seed in seeds}
        selections: dict[int, list[list[int]]] = {seed: [] for seed in seeds}
        pretrained = None
        fixed = None  # the embeddings when they do not change with the model
        wall = {"query": 0.0, "train": 0.0}

        def embeddings_for(cold: bool) -> np.ndarray | None:
            nonlocal pretrained, fixed
            use = config.embeddings
            if use == "auto":
                use = "model" if not cold else ("pretrained" if _pretrains(learner) else "inputs")
            if use == "pretrained":
                if pretrained is None:
                    pretrained = _pretrained_features(learner, dataset, progress, load)
                return pretrained
            if use == "inputs":
                fixed = _flat(dataset.x_train) if fixed is None else fixed
                return fixed
            return None  # the model's, per seed, after training

        def pick(name: str, seed: int, batch: int, probabilities=None, embeddings=None) -> None:
            tic = time.perf_counter()
            keys[seed], key = jax.random.split(keys[seed])
            picked = query(
                name, key, labeled[seed], batch, probabilities=probabilities, embeddings=embeddings,
                labels=dataset.y_train, num_classes=dataset.num_classes,
            )  # fmt: skip
            labeled[seed][picked] = True
            selections[seed].append(sorted(int(i) for i in picked))
            wall["query"] += time.perf_counter() - tic

        for seed in seeds:
            labeled[seed][initial] = True
        if config.budgets[0] > initial.size:
            cold_embeddings = embeddings_for(cold=True) if "embeddings" in STRATEGIES[config.cold_start].needs else None
            for seed in seeds:
                pick(config.cold_start, seed, config.budgets[0] - initial.size, embeddings=cold_embeddings)
        else:
            for seed in seeds:
                selections[seed].append(sorted(initial.tolist()))

        curve: dict[str, list[list[float]]] = {}
        groups: list[tuple[np.ndarray, np.ndarray]] = []  # per group of seeds trained together: their outputs

        def keep_outputs(model, state, trained_on, kept: int) -> None:
            # trained_on: the inputs the model reads (a frozen probe's are the backbone's features)
            probabilities, features = _pool_outputs(model, state.eval_params, state.model_state, trained_on.x_train)
            groups.append((probabilities[:kept], features[:kept]))

        needs = STRATEGIES[config.strategy].needs
        for round_index, budget in enumerate(config.budgets):
            tic = time.perf_counter()
            last = round_index + 1 == len(config.budgets)
            groups.clear()
            result = experiment.run(
                learner, progress=progress, labeled=[np.flatnonzero(labeled[seed]) for seed in seeds],
                trained=None if last else keep_outputs,
            )  # fmt: skip
            wall["train"] += time.perf_counter() - tic
            for name, values in result.metrics.items():
                curve.setdefault(name, []).append([float(v) for v in values])
            if last:
                break
            batch = config.budgets[round_index + 1] - budget
            outputs = {
                "probabilities": np.concatenate([group[0] for group in groups]),
                "features": np.concatenate([group[1] for group in groups]),
            }
            embeddings = embeddings_for(cold=False) if "embeddings" in needs else None
            for s, seed in enumerate(seeds):
                # bald reads every seed's model (the seeds' ensemble); the others the seed's own model
                probabilities = outputs["probabilities"][slice(None) if config.strategy == "bald" else slice(s, s + 1)]
                own = outputs["features"][s] if embeddings is None else embeddings
                pick(config.strategy, seed, batch, probabilities=probabilities, embeddings=own)
    return ActiveResult(
        config=config.to_dict(),
        seeds=seeds,
        budgets=list(config.budgets),
        selections=[selections[seed] for seed in seeds],
        curve=curve,
        wall_time_s={name: round(seconds, 3) for name, seconds in wall.items()},
    )


# ------------------------------------------------------------------ reports


def _label(result: ActiveResult) -> str:
    from lab.experiment import ExperimentConfig

    config = result.config
    learner = ExperimentConfig.from_dict(config["learner"]).method_label
    return f"{learner}: {config['cold_start']}, then {config['strategy']}"


def run_labels(results: Sequence[ActiveResult]) -> list[str]:
    """Each run's name: its learner and strategies, and where runs share that, the learner fields in which they
    differ (``steps=20``), else their place (``#2``)."""
    from lab.experiment import ExperimentConfig

    labels = [_label(result) for result in results]
    learners = [ExperimentConfig.from_dict(result.config["learner"]).to_dict() for result in results]
    named = []
    for index, label in enumerate(labels):
        twins = [other for other, same in enumerate(labels) if same == label]
        differing = sorted(
            key for key in learners[index]
            if key != "seeds" and len({json.dumps(learners[twin].get(key), sort_keys=True) for twin in twins}) > 1
        )  # fmt: skip
        detail = ", ".join(f"{key}={learners[index][key]}" for key in differing) or f"#{twins.index(index) + 1}"
        named.append(label if len(twins) == 1 else f"{label} ({detail})")
    return named


def label_curves_markdown(results: Sequence[ActiveResult], target: float, metric: str = "accuracy") -> str:
    """One row per run: its mean ± std over seeds (in %) at each budget, and the labels it needed to
    reach ``target`` (a fraction; "not reached" when no budget did)."""
    budgets = sorted({budget for result in results for budget in result.budgets})
    header = f"| run | {' | '.join(str(b) for b in budgets)} | labels to reach {100 * target:g}% |"
    lines = [header, "| --- |" + " ---: |" * (len(budgets) + 1)]
    for result, label in zip(results, run_labels(results), strict=True):
        at = dict(zip(result.budgets, result.curve[metric]))
        cells = [f"{100 * np.mean(at[b]):.1f} ± {100 * np.std(at[b]):.1f}" if b in at else "" for b in budgets]
        needed = result.labels_to_reach(target, metric)
        lines.append(f"| {label} | {' | '.join(cells)} | {'not reached' if needed is None else needed} |")
    return "\n".join(lines) + "\n"


def plot_label_curves(results: Sequence[ActiveResult], metric: str = "accuracy"):
    """Label curves: the mean over seeds against the labels, one line per run, a band of ± one std."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for result, label in zip(results, run_labels(results), strict=True):
        mean = np.array([100 * np.mean(values) for values in result.curve[metric]])
        std = np.array([100 * np.std(values) for values in result.curve[metric]])
        axes.plot(result.budgets, mean, marker="o", label=label)
        axes.fill_between(result.budgets, mean - std, mean + std, alpha=0.2)
    axes.set_xlabel("labels (in total)")
    axes.set_ylabel(f"test {metric} (%)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
