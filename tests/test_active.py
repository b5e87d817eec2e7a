"""Active-learning strategies against hand-computed values and independent references."""

import itertools

import jax
import numpy as np
import pytest
import scipy.stats
from sklearn.neighbors import NearestNeighbors

from lab import active

KEY = jax.random.key(0)


def _query(name, labeled, batch, **inputs):
    picked = active.query(name, KEY, np.asarray(labeled, bool), batch, **inputs)
    assert len(set(picked.tolist())) == batch and not np.asarray(labeled, bool)[picked].any()
    return picked


# ---------------------------------------------------------------- uncertainty


def test_entropy_is_scipy_entropy_of_the_members_mean():
    rng = np.random.default_rng(0)
    members = rng.dirichlet(np.ones(5), size=(3, 40)).astype(np.float32)
    expected = scipy.stats.entropy(members.mean(0), axis=-1)
    np.testing.assert_allclose(np.asarray(active.entropy_scores(members)), expected, rtol=1e-5)


def test_uncertainty_strategies_pick_hand_computed_examples():
    # least confidence: 0.55, 0.60, 0.10; margin: 0.00, 0.10, 0.85; entropy: 0.949, 1.089, 0.394 nats
    p = np.array([[[0.45, 0.45, 0.10], [0.40, 0.30, 0.30], [0.90, 0.05, 0.05]]], np.float32)
    unlabeled = np.zeros(3, bool)
    assert _query("least_confidence", unlabeled, 1, probabilities=p).tolist() == [1]
    assert _query("margin", unlabeled, 1, probabilities=p).tolist() == [0]
    assert _query("entropy", unlabeled, 1, probabilities=p).tolist() == [1]
    assert _query("margin", unlabeled, 2, probabilities=p).tolist() == [0, 1]
    assert _query("margin", [True, False, False], 1, probabilities=p).tolist() == [1]


def test_bald_is_the_mutual_information_of_a_sampled_estimate():
    rng = np.random.default_rng(1)
    members = rng.dirichlet(np.ones(3) * 0.5, size=(4, 6))  # 4 models, 6 examples, 3 classes
    # I(y; θ | x) = E_{θ, y ~ p(y|x,θ)}[log p(y|x,θ) - log p(y|x)], θ uniform over the members
    samples = 200_000
    theta = rng.integers(0, 4, samples)
    mean = members.mean(0)
    estimate = []
    for i in range(6):
        y = (rng.random(samples)[:, None] > np.cumsum(members[theta, i], -1)).sum(-1)
        estimate.append(np.mean(np.log(members[theta, i, y]) - np.log(mean[i, y])))
    np.testing.assert_allclose(np.asarray(active.bald_scores(members.astype(np.float32))), estimate, atol=0.01)
    agreeing = np.repeat(members[:1], 4, axis=0).astype(np.float32)
    np.testing.assert_allclose(np.asarray(active.bald_scores(agreeing)), 0, atol=1e-5)
    disagreeing = np.array([[[1, 0], [0.5, 0.5]], [[0, 1], [0.5, 0.5]]], np.float32)  # same mean, other θ-spread
    assert _query("bald", np.zeros(2, bool), 1, probabilities=disagreeing).tolist() == [0]
    assert _query("entropy", np.zeros(2, bool), 1, probabilities=disagreeing).tolist() == [0]  # a tie: lower index


# ---------------------------------------------------------------- without a model


def test_random_picks_distinct_unlabeled_examples_and_depends_on_the_key():
    labeled = np.arange(50) < 20
    picks = {tuple(active.query("random", jax.random.key(seed), labeled, 5).tolist()) for seed in range(5)}
    assert len(picks) == 5 and all(min(p) >= 20 for p in picks)


def test_stratified_random_evens_out_the_classes():
    labels = np.repeat([0, 1, 2], 10)
    labeled = np.zeros(30, bool)
    labeled[[0, 1]] = True  # two of class 0
    picked = _query("stratified_random", labeled, 4, labels=labels)
    assert sorted(labels[picked].tolist()) == [1, 1, 2, 2]
    counts = np.bincount(labels[np.concatenate([[0, 1], _query("stratified_random", labeled, 7, labels=labels)])])
    assert counts.tolist() == [3, 3, 3]


# ---------------------------------------------------------------- embeddings


def _cover_radius(x, centres):
    return np.max(np.min(np.linalg.norm(x[:, None] - x[centres][None], axis=-1), 1))


def test_coreset_is_within_twice_the_optimal_k_center_radius():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 2)).astype(np.float32)
    optimum = min(_cover_radius(x, list(c)) for c in itertools.combinations(range(12), 3))
    for seed in range(5):
        picked = active.query("coreset", jax.random.key(seed), np.zeros(12, bool), 3, embeddings=x)
        assert _cover_radius(x, picked) <= 2 * optimum + 1e-6


def test_coreset_picks_the_farthest_from_the_labeled_then_from_its_picks():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    labeled = np.array([True, False, False, False, False])
    assert _query("coreset", labeled, 2, embeddings=x).tolist() == [4, 2]


def test_badge_starts_at_the_largest_gradient_and_spreads():
    # gradient embedding (p - onehot(argmax p)) x e: norms 0 (a sure prediction), |0.5|*sqrt2*1, 0.4*sqrt2*3, ...
    p = np.array([[[1.0, 0.0], [0.5, 0.5], [0.6, 0.4], [0.6, 0.4], [0.7, 0.3]]], np.float32)
    e = np.array([[1.0], [1.0], [3.0], [-3.0], [0.5]], np.float32)
    first = _query("badge", np.zeros(5, bool), 1, probabilities=p, embeddings=e).tolist()
    assert first in ([2], [3])  # 2 and 3 share the largest norm, 0.4 * sqrt(2) * 3
    labeled = np.array([False, False, True, False, False])
    picked = _query("badge", labeled, 2, probabilities=p, embeddings=e)
    assert picked[0] == 3 and picked[1] != 0  # the sure prediction's zero gradient is never drawn


def _blob(rng, centre, size, spread=1.0):
    return centre + spread * rng.normal(size=(size, 2))


def _sklearn_typicality(x):
    k = min(20, len(x) // 2)
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return 1 / (distances[:, 1:].mean(1) + 1e-5)


def test_typiclust_picks_the_most_typical_point_of_the_largest_uncovered_clusters():
    rng = np.random.default_rng(3)
    big, middle, small = _blob(rng, [0, 0], 40), _blob(rng, [50, 0], 25), _blob(rng, [0, 50], 12)
    x = np.concatenate([big, middle, small]).astype(np.float32)
    cluster = np.repeat([0, 1, 2], [40, 25, 12])
    start = {0: 0, 1: 40, 2: 65}
    densest = {c: start[c] + int(np.argmax(_sklearn_typicality(x[cluster == c]))) for c in range(3)}

    labeled = np.zeros(len(x), bool)
    labeled[70] = True  # the small cluster is covered: 1 + 2 clusters, the big and the middle ones picked
    assert _query("typiclust", labeled, 2, embeddings=x).tolist() == [densest[0], densest[1]]
    labeled = np.zeros(len(x), bool)
    labeled[densest[0]] = True  # the big cluster is covered (by its own most typical point)
    assert _query("typiclust", labeled, 2, embeddings=x).tolist() == [densest[1], densest[2]]
    typical = active.typicality(x[cluster == 1])
    np.testing.assert_allclose(typical, _sklearn_typicality(x[cluster == 1]), rtol=1e-3)


def _purity(x, clusters, delta):
    distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return np.mean([np.all(clusters[distances[i] < delta] == clusters[i]) for i in range(len(x))])


def test_probcover_delta_is_the_largest_radius_of_pure_enough_balls():
    rng = np.random.default_rng(4)
    x = np.concatenate([_blob(rng, [0, 0], 60, 2.0), _blob(rng, [5, 0], 60, 2.0)]).astype(np.float32)
    clusters = (x[:, 0] > 2.5).astype(int)
    delta = active.probcover_delta(clusters, x, purity=0.95)
    assert _purity(x, clusters, delta) >= 0.95
    assert _purity(x, clusters, delta + 1e-3) < 0.95
    grid = np.linspace(0.01, 5, 500)
    assert delta >= max(d for d in grid if _purity(x, clusters, d) >= 0.95)


def test_max_coverage_picks_the_balls_that_cover_the_most_new_points():
    x = np.array([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1], [10.0]], np.float32)
    # balls of radius 0.25: point 1 (and 2) holds 4 points, 4 and 5 hold 2, 6 holds itself
    assert active.max_coverage(KEY, np.zeros(7, bool), 3, x, 0.25).tolist() == [1, 4, 6]
    labeled = np.zeros(7, bool)
    labeled[[2, 6]] = True  # covers 0..3 and 10: the pair at 5 comes first, then at random
    picked = active.max_coverage(KEY, labeled, 3, x, 0.25)
    assert picked[0] == 4 and len(set(picked.tolist())) == 3 and not labeled[picked].any()


def test_probcover_and_typiclust_cover_separated_groups_at_the_cold_start():
    rng = np.random.default_rng(5)
    centres = [[0, 0], [40, 0], [0, 40], [40, 40]]
    x = np.concatenate([_blob(rng, c, 30) for c in centres]).astype(np.float32)
    for name in ("probcover", "typiclust"):
        picked = _query(name, np.zeros(120, bool), 4, embeddings=x, num_classes=4)
        assert sorted(picked // 30) == [0, 1, 2, 3], name


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: active.query("uncertainty", KEY, np.zeros(5, bool), 1), "unknown strategy 'uncertainty'; choose one"),
        (lambda: active.query("random", KEY, np.arange(5) < 3, 3), "at most the 2 unlabeled examples left"),
        (lambda: active.query("random", KEY, np.zeros(5, bool), 0), "batch must be a positive integer"),
        (lambda: active.query("coreset", KEY, np.zeros(5, bool), 1), "'coreset' needs the pool's embeddings"),
        (lambda: active.query("random", KEY, np.zeros(5, bool), 1, logits=1), "unknown strategy inputs ['logits']"),
        (lambda: active.check_budgets([], 10), "at least one total number of labels (zero rounds)"),
        (lambda: active.check_budgets([10, 10], 100), "budgets must be increasing"),
        (lambda: active.check_budgets([10, 100], 100), "below the pool's 100 examples (a batch must not exhaust"),
        (lambda: active.check_budgets([0, 10], 100), "budgets must be a positive integer, got 0"),
    ],
)
def test_bad_input_fails_in_one_line_naming_the_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- the loop

LEARNER = {"setup": "supervised", "model": "logreg", "steps": 10, "eval_every": 10, "seeds": [0, 1]}


def test_experiment_with_explicit_labeled_sets_equals_its_stratified_draw():
    from lab import data, experiment

    drawn = experiment.run({**LEARNER, "labels_per_class": 2}, progress=False)
    y = experiment.load_dataset(experiment.ExperimentConfig.from_dict(LEARNER)).y_train
    given = [data.labeled_split(y, 2, seed)[0] for seed in LEARNER["seeds"]]
    explicit = experiment.run({**LEARNER, "labels_per_class": 2}, progress=False, labeled=given)
    assert explicit.metrics == drawn.metrics


def test_loop_queries_each_seeds_most_uncertain_examples_and_records_the_label_curve():
    from lab import experiment

    result = active.run({"learner": LEARNER, "strategy": "entropy", "budgets": [10, 20]}, progress=False)
    assert result.budgets == [10, 20] and len(result.curve["accuracy"]) == 2
    for s, (cold, queried) in enumerate(result.selections):
        assert len(cold) == 10 and len(queried) == 10 and not set(cold) & set(queried)
    assert result.selections[0][0] != result.selections[1][0]  # each seed its own cold start

    # Independent replay: train on the cold-start sets, score the pool with scipy's entropy, take the top 10.
    captured = {}

    def keep(model, state, dataset, kept):
        outputs = active._pool_outputs(model, state.eval_params, state.model_state, dataset.x_train)
        captured["probabilities"] = outputs[0][:kept]

    cold = [selection[0] for selection in result.selections]
    experiment.run(LEARNER, progress=False, labeled=cold, trained=keep)
    for s, selection in enumerate(result.selections):
        scores = scipy.stats.entropy(captured["probabilities"][s].astype(np.float64), axis=-1)
        scores[cold[s]] = -np.inf
        assert set(selection[1]) == set(np.argsort(-scores, kind="stable")[:10].tolist())
    final = experiment.run(LEARNER, progress=False, labeled=[a + b for a, b in result.selections])
    assert [row[-1] for row in zip(*result.curve["accuracy"])] == final.metrics["accuracy"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strategy": "oracle"}, "unknown strategy 'oracle'"),
        ({"cold_start": "margin"}, "cold_start 'margin' reads a model's predictions"),
        ({"budgets": []}, "zero rounds"),
        ({"budgets": [20, 10]}, "budgets must be increasing"),
        ({"budgets": [10, 5000]}, "below the pool's 1347 examples"),
        ({"budgets": [10, 1347]}, "a batch must not exhaust the pool"),
        ({"strategy": "bald"}, "give at least 2 seeds, got 1"),
        ({"initial": [1, 2, 3], "budgets": [2, 4]}, "initial holds 3 labels, more than the first budget 2"),
        ({"cold_start": "typiclust", "embeddings": "model"}, "needs embeddings, and has no source"),
        ({"cold_start": "typiclust", "learner": {"dataset": "fortunes_topics", "model": "bag"}}, "token ids"),
        ({"embeddings": "pretrained"}, "needs a setup with a pretrained backbone"),
        ({"embeddings": "features"}, "unknown embeddings 'features'"),
        ({"learner": {"setup": "supervised", "steps": 0}}, "steps must be"),
        ({"rounds": 3}, "unknown active-learning parameter(s) ['rounds']"),
    ],
)
def test_loop_refuses_bad_config_before_training(fields, message):
    config = {"learner": {"setup": "supervised", "seeds": [0]}, **fields}
    with pytest.raises(ValueError) as error:
        active.run(config, progress=False)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_experiment_refuses_labeled_sets_that_do_not_fit_the_seeds_or_the_pool():
    from lab import experiment

    with pytest.raises(ValueError, match=r"one index set per seed \(2\), got 1"):
        experiment.run(LEARNER, progress=False, labeled=[[0, 1]])
    with pytest.raises(ValueError, match=r"distinct training indices in 0\.\.1346, got \[0, 0\]"):
        experiment.run(LEARNER, progress=False, labeled=[[0, 1], [0, 0]])


def test_command_line_runs_the_loop_and_writes_selections_and_the_label_curve(tmp_path, capsys):
    import json

    from lab import cli

    output = tmp_path / "active.json"
    status = cli.main([
        "active", "strategy=coreset", "cold_start=typiclust", "budgets=[5,8]", "model=logreg", "steps=5",
        "eval_every=5", "seeds=[0]", "--output", str(output), "--no-progress",
    ])  # fmt: skip
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(output.read_text())
    assert printed["budgets"] == saved["budgets"] == [5, 8]
    assert [len(batch) for batch in saved["selections"][0]] == [5, 3]
    assert saved["config"]["learner"]["model"] == "logreg" and saved["config"]["strategy"] == "coreset"
    assert printed["summary"]["accuracy"][1]["mean"] == pytest.approx(saved["curve"]["accuracy"][1][0], abs=1e-4)


def test_labels_to_reach_is_the_first_budget_whose_seed_mean_reaches_the_target():
    curve = [[0.80, 0.90], [0.94, 0.97], [0.90, 0.99], [0.99, 0.99]]  # means 0.85, 0.955, 0.945, 0.99
    assert active.labels_to_reach([10, 20, 40, 80], curve, 0.95) == 20
    assert active.labels_to_reach([10, 20, 40, 80], curve, 0.99) == 80
    assert active.labels_to_reach([10, 20, 40, 80], curve, 0.995) is None
    with pytest.raises(ValueError, match="target must be a number in"):
        active.labels_to_reach([10], [[0.5]], 95)


def _result(strategy, budgets, curve):
    config = {"learner": {"setup": "supervised"}, "strategy": strategy, "cold_start": "random"}
    return active.ActiveResult(config, [0, 1], budgets, [[[0]], [[1]]], {"accuracy": curve}, {})


def test_label_curve_report_table_and_figure_show_the_seed_means(tmp_path, capsys):
    from lab import cli

    runs = [
        _result("margin", [10, 20], [[0.90, 0.94], [0.95, 0.97]]),
        _result("random", [10, 20, 40], [[0.80, 0.90], [0.88, 0.90], [0.93, 0.93]]),
    ]
    table = active.label_curves_markdown(runs, 0.95)
    assert table.splitlines() == [
        "| run | 10 | 20 | 40 | labels to reach 95% |",
        "| --- | ---: | ---: | ---: | ---: |",
        "| supervised: random, then margin | 92.0 ± 2.0 | 96.0 ± 1.0 |  | 20 |",
        "| supervised: random, then random | 85.0 ± 5.0 | 89.0 ± 1.0 | 93.0 ± 0.0 | not reached |",
    ]
    lines = active.plot_label_curves(runs).axes[0].get_lines()
    np.testing.assert_allclose(lines[1].get_ydata(), [85.0, 89.0, 93.0])
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"{i}.json")
        run.save(paths[-1])
    assert cli.main(["active", "--report", *map(str, paths), "--out", str(tmp_path / "figures")]) == 0
    assert capsys.readouterr().out == table
    assert (tmp_path / "figures" / "label_curves.md").read_text() == table
    assert (tmp_path / "figures" / "label_curves.png").stat().st_size > 0


def test_record_holds_the_settings_label_curve_and_selections_and_emits(monkeypatch):
    import IPython.display

    from lab import experiment, record

    config = {"learner": LEARNER, "strategy": "margin", "cold_start": "random", "budgets": [6, 9]}
    result = active.run(config, progress=False)
    kept = result.record()
    assert (kept.dataset, kept.setup, kept.method, kept.seeds) == ("digits", "supervised", "supervised", [0, 1])
    assert kept.labels_per_class is None
    assert kept.metrics["accuracy"] == result.curve["accuracy"][-1]
    assert kept.active["strategy"] == "margin" and kept.active["cold_start"] == "random"
    assert kept.active["budgets"] == [6, 9] and kept.active["curve"] == result.curve
    assert kept.active["selections"] == result.selections
    assert kept.active["learner"] == experiment.ExperimentConfig.from_dict(LEARNER).to_dict()
    back = active.ActiveResult.from_record(record.Record.from_dict(kept.to_dict()))
    assert back.to_dict() == {**result.to_dict(), "config": {**result.config, "learner": kept.active["learner"]}}
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw: shown.append(data))
    record.emit(result.record())  # as notebook 07 ends
    assert shown[0][record.MIME_TYPE] == kept.to_dict() and "then margin" in shown[0]["text/plain"]


def test_embeddings_pretrained_are_the_transfer_learners_cached_backbone_features():
    """typiclust (cold start) and coreset read the pool's features under the setup's pretrained backbone: the
    picks equal those of the strategies on features computed here from the backbone that pretraining cached."""
    import jax.numpy as jnp

    from lab import experiment

    learner = {
        "setup": "transfer", "pretrain": "autoencoder", "adaptation": "linear_probe", "pretrain_kwargs": {"steps": 20},
        "model_kwargs": {"hidden": [32]}, "steps": 10, "eval_every": 10, "seeds": [0],
    }  # fmt: skip
    config = {"learner": learner, "cold_start": "typiclust", "strategy": "coreset", "embeddings": "pretrained"}
    result = active.run({**config, "budgets": [10, 15]}, progress=False)

    learner_config = experiment.ExperimentConfig.from_dict(learner)
    dataset = experiment.load_dataset(learner_config)
    backbone = experiment._pretrained(learner_config, False, experiment.dataset_loader(learner_config))
    module = backbone.classifier(dataset.num_classes, seed=0)
    module.eval()
    features = np.asarray(module.features(jnp.asarray(dataset.x_train)))
    assert features.shape[1] == 32  # the backbone's, not the 64 pixels
    key, cold_key = jax.random.split(jax.random.key(0))  # the loop's keys: split off the seed's, one per query
    nothing = np.zeros(len(features), bool)
    cold = active.query("typiclust", cold_key, nothing, 10, embeddings=features)
    assert result.selections[0][0] == sorted(cold.tolist())
    assert sorted(cold.tolist()) != sorted(active.query("typiclust", cold_key, nothing, 10, embeddings=dataset.x_train))
    labeled = nothing.copy()
    labeled[cold] = True
    queried = active.query("coreset", jax.random.split(key)[1], labeled, 5, embeddings=features)
    assert result.selections[0][1] == sorted(queried.tolist())


@pytest.mark.parametrize(
    ("fields", "message", "before_the_data"),
    [
        (["strategy=oracle"], "unknown strategy 'oracle'", True),
        (["budgets=[10,5000]"], "below the pool's 1347 examples", False),  # the pool's size needs the data
        (["budgets=[]"], "zero rounds", True),
        (["cold_start=coreset", "embeddings=model"], "needs embeddings, and has no source", True),
    ],
)
def test_command_line_refuses_bad_input_in_one_line(fields, message, before_the_data, capsys, tmp_path):
    from lab import cli

    store = tmp_path / "results.db"
    assert cli.main(["active", *fields, "model=logreg", "steps=5", "--store", str(store), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and error.startswith("lab active: error: ")
    assert store.exists() != before_the_data  # a config refused before the data is loaded writes nothing


def test_a_checkpoints_frozen_probe_learns_in_the_loop_and_its_embeddings_pick():
    # The frozen probe of a Hugging Face checkpoint: the cold start and later queries read the checkpoint's
    # embeddings of the pool, here computed independently (uncached) and replayed with the loop's keys.
    from pathlib import Path

    from lab import checkpoints, experiment

    tiny = Path(__file__).resolve().parent / "data" / "hf" / "tiny-bert"
    learner = {
        "setup": "transfer", "adaptation": "linear_probe", "pretrain": "checkpoint", "checkpoint": str(tiny),
        "model": "bert", "pretrain_kwargs": {"max_length": 16}, "dataset": "fortunes_topics", "seeds": [0, 1],
        "batch_size": 8, "steps": 4, "eval_every": 4,
    }  # fmt: skip
    config = {"learner": learner, "cold_start": "typiclust", "strategy": "coreset", "budgets": [10, 14]}
    with pytest.warns(UserWarning, match="longer than max_length=16"):
        result = active.run({**config, "embeddings": "pretrained"}, progress=False)
        from_the_model = active.run(config, progress=False)  # the probe's features after a round
        dataset = experiment.load_dataset(experiment.ExperimentConfig.from_dict(learner))
    pool = len(dataset.y_train)
    ids = np.concatenate([dataset.x_train, dataset.x_test])
    embeddings = checkpoints.load(tiny, max_length=16).embed_ids(ids, cached=False)[:pool]
    for seed, selection in zip(learner["seeds"], result.selections):
        key, cold_key = jax.random.split(jax.random.key(seed))
        labeled = np.zeros(pool, bool)
        assert selection[0] == sorted(active.query("typiclust", cold_key, labeled, 10, embeddings=embeddings))
        labeled[selection[0]] = True
        round_key = jax.random.split(key)[1]
        assert selection[1] == sorted(active.query("coreset", round_key, labeled, 4, embeddings=embeddings))
    assert from_the_model.selections == result.selections
    assert len(result.curve["accuracy"]) == 2
