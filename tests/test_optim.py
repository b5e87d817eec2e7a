import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lab import models, optim

LR = 0.1
STEPS = 3
# Tolerances against the float64 references: float32 rounding, and for Adam also
# optax's float32 bias correction 1 - 0.999**t, which keeps only about 5 digits; its
# errors scale with the step size LR rather than with the parameter.
FLOAT32 = {"rtol": 1e-6, "atol": 1e-7}
ADAM = {"rtol": 1e-4, "atol": 1e-4 * LR}


def make_params():
    rng = np.random.default_rng(0)
    return {
        "dense": {"kernel": rng.normal(size=(3, 2)).astype(np.float32), "bias": rng.normal(size=2).astype(np.float32)},
        "norm": {"scale": rng.normal(size=2).astype(np.float32)},
    }


def make_grads(steps=STEPS, scale=1.0):
    rng = np.random.default_rng(1)
    return [
        jax.tree.map(lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32), make_params())
        for _ in range(steps)
    ]


def run(tx, params, grads):
    """Applies `tx` to `params` once per gradient; returns the parameters after each step."""
    state = tx.init(params)
    history = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def assert_trees_close(actual, expected, *, rtol, atol=0.0):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected)


# ---------------------------------------------- update rules vs hand-written numpy
#
# A direction rule maps (gradient, step number t = 1, 2, ...) to the direction that
# the learning rate scales, keeping its own state; `numpy_reference` runs a fresh one
# on every leaf, in float64.


def sgd_rule(momentum=0.0, nesterov=False):
    velocity = 0.0

    def direction(g, t):
        nonlocal velocity
        velocity = momentum * velocity + g
        return g + momentum * velocity if nesterov else velocity

    return direction


def adam_rule(b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0

    def direction(g, t):
        nonlocal m, v
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)  # bias correction
        return m_hat / (np.sqrt(v_hat) + eps)

    return direction


def numpy_reference(rule, params, grads, *, weight_decay=0.0, mode="decoupled"):
    """The parameters after each step. Weight decay (of kernels only) is added to the
    gradient for "l2" and to the direction for "decoupled"."""

    def leaf(p, *gs):
        p, direction, history = p.astype(np.float64), rule(), []
        for t, g in enumerate(gs, start=1):
            decay = weight_decay * p if p.ndim > 1 else 0.0
            if mode == "l2":
                g = g + decay
            step = direction(g, t) + (decay if mode == "decoupled" else 0.0)
            p = p - LR * step
            history.append(p)
        return history

    per_leaf = jax.tree.map(leaf, params, *grads)
    return [jax.tree.map(lambda h: h[t], per_leaf, is_leaf=lambda x: isinstance(x, list)) for t in range(len(grads))]


MOMENTUM = functools.partial(sgd_rule, momentum=0.9)


@pytest.mark.parametrize(
    ("name", "rule", "tolerance"),
    [
        ("sgd", sgd_rule, FLOAT32),
        ("momentum", MOMENTUM, FLOAT32),
        ("nesterov", functools.partial(sgd_rule, momentum=0.9, nesterov=True), FLOAT32),
        ("adam", adam_rule, ADAM),
        ("adamw", adam_rule, ADAM),
    ],
)
def test_updates_match_the_textbook_formulas(name, rule, tolerance):
    params, grads = make_params(), make_grads()

    actual = run(optim.make_optimizer(name, LR, momentum=0.9), params, grads)

    assert_trees_close(actual, numpy_reference(rule, params, grads), **tolerance)


def test_momentum_coefficient_is_used():
    params, grads = make_params(), make_grads()

    actual = run(optim.make_optimizer("momentum", LR, momentum=0.5), params, grads)

    assert_trees_close(actual, numpy_reference(functools.partial(sgd_rule, momentum=0.5), params, grads), **FLOAT32)


@pytest.mark.parametrize("mode", optim.WEIGHT_DECAY_MODES)
@pytest.mark.parametrize(
    ("name", "rule", "tolerance"),
    [("sgd", sgd_rule, FLOAT32), ("momentum", MOMENTUM, FLOAT32), ("adam", adam_rule, ADAM)],
)
def test_weight_decay_modes_match_their_formulas(name, rule, tolerance, mode):
    params, grads = make_params(), make_grads()

    actual = run(optim.make_optimizer(name, LR, weight_decay=0.5, weight_decay_mode=mode), params, grads)

    expected = numpy_reference(rule, params, grads, weight_decay=0.5, mode=mode)
    assert_trees_close(actual, expected, **tolerance)


def test_adamw_is_adam_with_decoupled_decay():
    params, grads = make_params(), make_grads()

    adamw = run(optim.make_optimizer("adamw", LR, weight_decay=0.5), params, grads)
    adam = run(optim.make_optimizer("adam", LR, weight_decay=0.5, weight_decay_mode="decoupled"), params, grads)

    assert_trees_close(adamw, adam, rtol=0, atol=0)


def test_for_plain_sgd_decoupled_and_l2_decay_coincide():
    # Decoupled decay is scaled by the learning rate, so both modes step by
    # -lr * (g + wd * p) when the optimizer applies the gradient as it is.
    params, grads = make_params(), make_grads()

    decoupled = run(optim.make_optimizer("sgd", LR, weight_decay=0.5, weight_decay_mode="decoupled"), params, grads)
    l2 = run(optim.make_optimizer("sgd", LR, weight_decay=0.5, weight_decay_mode="l2"), params, grads)

    assert_trees_close(decoupled, l2, **FLOAT32)
    kernel, g = params["dense"]["kernel"], grads[0]["dense"]["kernel"]
    np.testing.assert_allclose(l2[0]["dense"]["kernel"], kernel - LR * (g + 0.5 * kernel), rtol=1e-6)


def test_for_adam_l2_decay_is_normalised_away_and_decoupled_decay_is_not():
    # With a zero loss gradient, Adam normalises the L2 term wd * p to a step of about
    # lr per coordinate, whatever wd is; decoupled decay shrinks by exactly lr * wd * p.
    params = make_params()
    kernel = params["dense"]["kernel"]

    def first_kernel_step(weight_decay, mode):
        tx = optim.make_optimizer("adam", LR, weight_decay=weight_decay, weight_decay_mode=mode)
        updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
        return updates["dense"]["kernel"]

    for weight_decay in (0.01, 1.0):
        # Adam's eps shortens the step a little: lr * |wd p| / (|wd p| + eps).
        np.testing.assert_allclose(first_kernel_step(weight_decay, "l2"), -LR * np.sign(kernel), rtol=1e-4)
        np.testing.assert_allclose(first_kernel_step(weight_decay, "decoupled"), -LR * weight_decay * kernel, rtol=1e-5)


@pytest.mark.parametrize("mode", optim.WEIGHT_DECAY_MODES)
def test_weight_decay_skips_biases_and_norm_scales(mode):
    params = make_params()
    zero_grads = [jax.tree.map(np.zeros_like, params)] * STEPS

    final = run(optim.make_optimizer("momentum", LR, weight_decay=0.5, weight_decay_mode=mode), params, zero_grads)[-1]

    np.testing.assert_array_equal(final["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_array_equal(final["norm"]["scale"], params["norm"]["scale"])
    assert np.all(np.abs(final["dense"]["kernel"]) < np.abs(params["dense"]["kernel"]))


def global_norm(tree):
    return math.sqrt(sum(float(np.sum(np.square(leaf))) for leaf in jax.tree.leaves(tree)))


def test_clip_norm_bounds_the_update():
    params = make_params()
    tx = optim.make_optimizer("sgd", 1.0, clip_norm=0.5)
    state = tx.init(params)
    large, small = make_grads(steps=1, scale=10.0)[0], make_grads(steps=1, scale=0.01)[0]

    large_update, _ = tx.update(large, state, params)
    small_update, _ = tx.update(small, state, params)

    assert global_norm(large) > 0.5
    assert global_norm(large_update) == pytest.approx(0.5, rel=1e-5)
    # Clipping rescales: the direction stays that of the gradient.
    assert_trees_close(large_update, jax.tree.map(lambda g: -0.5 * g / global_norm(large), large), **FLOAT32)
    assert global_norm(small) < 0.5
    assert_trees_close(small_update, jax.tree.map(lambda g: -g, small), **FLOAT32)


# ---------------------------------------------------------------------------- schedules


def schedule_values(steps, **kwargs):
    schedule = optim.make_schedule(1.0, **kwargs)
    return [float(schedule(step)) for step in steps]


def test_constant_schedule():
    assert schedule_values([0, 10, 1000]) == [1.0, 1.0, 1.0]


def test_constant_schedule_with_linear_warmup():
    assert schedule_values([0, 5, 9, 10, 500], warmup_steps=10) == pytest.approx([0.0, 0.5, 0.9, 1.0, 1.0])


def test_cosine_schedule():
    def cosine(t, total):
        return 0.5 * (1 + math.cos(math.pi * t / total))

    values = schedule_values([0, 25, 50, 75, 100, 150], schedule="cosine", total_steps=100)

    assert values == pytest.approx([1.0, cosine(25, 100), 0.5, cosine(75, 100), 0.0, 0.0], abs=1e-6)


def test_cosine_schedule_with_warmup_reaches_zero_at_total_steps():
    values = schedule_values([0, 5, 10, 60, 110], schedule="cosine", total_steps=110, warmup_steps=10)

    assert values == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-6)


def test_cosine_schedule_with_warmup_is_optax_warmup_cosine_decay():
    steps = np.arange(0, 130, 7)
    expected = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)

    values = schedule_values(steps, schedule="cosine", total_steps=110, warmup_steps=10)

    np.testing.assert_allclose(values, [float(expected(step)) for step in steps], rtol=1e-6, atol=1e-7)


def test_fixmatch_cosine_schedule_by_hand():
    # lr * cos(7 pi k / (16 K)), K = 1000: 1 at the start, cos(7 pi / 32) half way, cos(7 pi / 16) at the end.
    values = schedule_values([0, 500, 1000, 2000], schedule="fixmatch_cosine", total_steps=1000)

    expected = [1.0, math.cos(7 * math.pi / 32), math.cos(7 * math.pi / 16), math.cos(7 * math.pi / 16)]
    assert values == pytest.approx(expected, abs=1e-6)
    assert values[2] == pytest.approx(0.19509, abs=1e-5)  # it does not decay to 0


def test_fixmatch_cosine_schedule_starts_after_warmup():
    values = schedule_values([5, 10, 510, 1010], schedule="fixmatch_cosine", total_steps=1010, warmup_steps=10)

    assert values == pytest.approx([0.5, 1.0, math.cos(7 * math.pi / 32), math.cos(7 * math.pi / 16)], abs=1e-6)


def test_fixmatch_sgd_matches_torch_style_nesterov_with_l2_decay_by_hand():
    """FixMatch's optimizer as USB builds it (torch.optim.SGD, nesterov, weight decay on
    all but biases and BatchNorm): d = g + wd p (kernels only); b = m b + d; p -= lr (d + m b)."""
    lr, momentum, wd = 0.03, 0.9, 5e-4
    params = {"kernel": np.array([[1.0, -2.0]], np.float32), "bias": np.array([0.5], np.float32)}
    grads = [
        {"kernel": np.array([[0.1, 0.2]], np.float32), "bias": np.array([0.3], np.float32)},
        {"kernel": np.array([[-0.4, 0.0]], np.float32), "bias": np.array([-0.1], np.float32)},
    ]
    tx = optim.make_optimizer("nesterov", lr, momentum=momentum, weight_decay=wd, weight_decay_mode="l2")

    history = run(tx, params, grads)

    expected, buffers = {k: v.astype(np.float64) for k, v in params.items()}, {}
    for g in grads:
        for name in expected:
            d = g[name] + (wd * expected[name] if name == "kernel" else 0.0)
            buffers[name] = momentum * buffers.get(name, 0.0) + d
            expected[name] = expected[name] - lr * (d + momentum * buffers[name])
    assert_trees_close(history[-1], expected, **FLOAT32)
    # One step by hand, written out: kernel[0, 0] = 1 - 0.03 * 1.9 * (0.1 + 5e-4 * 1).
    np.testing.assert_allclose(history[0]["kernel"][0, 0], 1.0 - 0.03 * 1.9 * 0.1005, rtol=1e-6)


def test_step_schedule():
    values = schedule_values([0, 29, 30, 59, 60, 95], schedule="step", decay_every=30, decay_factor=0.5)

    assert values == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.125])


def test_step_schedule_decays_after_warmup():
    values = schedule_values([5, 10, 39, 40], schedule="step", decay_every=30, warmup_steps=10)

    assert values == pytest.approx([0.5, 1.0, 1.0, 0.1])


def test_optimizer_follows_its_schedule():
    params = {"w": np.zeros(1, np.float32)}
    ones = [{"w": np.ones(1, np.float32)}] * 4

    history = run(optim.make_optimizer("sgd", 0.1, schedule="cosine", total_steps=4), params, ones)

    steps = -np.diff([0.0] + [float(p["w"][0]) for p in history])
    np.testing.assert_allclose(steps, [0.1 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)], rtol=1e-5)


# ---------------------------------------------------------------------- param groups


@pytest.fixture(scope="module")
def mlp_params():
    model = models.make_model("mlp", (6, 1), 3, seed=0, hidden=(4,))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return params


def grads_like(params, steps=5):
    rng = np.random.default_rng(2)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params) for _ in range(steps)]


def leaves_by_path(params) -> dict[str, np.ndarray]:
    return {
        optim.parameter_path(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    }


def test_parameter_paths_of_an_nnx_state(mlp_params):
    assert sorted(leaves_by_path(mlp_params)) == [
        "backbone/layers/1/bias",
        "backbone/layers/1/kernel",
        "head/bias",
        "head/kernel",
    ]


@pytest.mark.parametrize("mode", optim.WEIGHT_DECAY_MODES)
@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_frozen_parameters_stay_bit_identical(mlp_params, name, mode):
    tx = optim.make_optimizer(
        name, LR, weight_decay=0.5, weight_decay_mode=mode, clip_norm=1.0, param_groups={"backbone/*": "frozen"}
    )

    final = leaves_by_path(run(tx, mlp_params, grads_like(mlp_params))[-1])
    initial = leaves_by_path(mlp_params)

    for path in ("backbone/layers/1/kernel", "backbone/layers/1/bias"):
        np.testing.assert_array_equal(final[path], initial[path])
    for path in ("head/kernel", "head/bias"):
        assert not np.allclose(final[path], initial[path])


def test_frozen_gradients_do_not_count_towards_clipping(mlp_params):
    grads = jax.tree.map(lambda g: 0.01 * g, grads_like(mlp_params, steps=1)[0])
    grads["backbone"]["layers"][1]["kernel"] = nnx.Param(jnp.full((6, 4), 1e3))
    tx = optim.make_optimizer("sgd", 1.0, clip_norm=1.0, param_groups={"backbone/*": "frozen"})

    updates, _ = tx.update(grads, tx.init(mlp_params), mlp_params)

    np.testing.assert_allclose(updates["head"]["kernel"][...], -grads["head"]["kernel"][...], rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_multiplier_scales_the_update_like_a_learning_rate(mlp_params, name):
    grads = grads_like(mlp_params, steps=3)
    plain = optim.make_optimizer(name, LR, weight_decay=0.1)
    grouped = optim.make_optimizer(name, LR, weight_decay=0.1, param_groups={"backbone/*": 0.1})
    plain_state, grouped_state = plain.init(mlp_params), grouped.init(mlp_params)

    for g in grads:
        plain_update, plain_state = plain.update(g, plain_state, mlp_params)
        grouped_update, grouped_state = grouped.update(g, grouped_state, mlp_params)
        plain_update, grouped_update = leaves_by_path(plain_update), leaves_by_path(grouped_update)
        for path, update in grouped_update.items():
            expected = 0.1 * plain_update[path] if path.startswith("backbone/") else plain_update[path]
            np.testing.assert_allclose(update, expected, rtol=1e-6)


def test_first_matching_pattern_wins(mlp_params):
    labels = leaves_by_path(optim.param_labels(mlp_params, {"head/kernel": 0.5, "head/*": "frozen", "*": 2}))

    assert labels == {
        "backbone/layers/1/bias": "lr*2.0",
        "backbone/layers/1/kernel": "lr*2.0",
        "head/bias": "frozen",
        "head/kernel": "lr*0.5",
    }


def test_unmatched_parameters_keep_the_learning_rate(mlp_params):
    labels = leaves_by_path(optim.param_labels(mlp_params, {"head/*": "frozen"}))

    assert labels["backbone/layers/1/kernel"] == labels["backbone/layers/1/bias"] == "lr*1.0"


def test_nnx_state_and_its_plain_array_version_get_the_same_labels(mlp_params):
    groups = {"backbone/*": 0.1, "head/bias": "frozen"}
    pure = nnx.as_pure(mlp_params)

    assert leaves_by_path(optim.param_labels(pure, groups)) == leaves_by_path(optim.param_labels(mlp_params, groups))


def test_param_groups_on_nested_dicts_and_lists():
    params = {"encoder": [{"w": np.ones((2, 2), np.float32)}] * 2, "head": {"w": np.ones((2, 1), np.float32)}}
    tx = optim.make_optimizer("sgd", 1.0, param_groups={"encoder/0/*": "frozen", "encoder/*": 0.5})
    grads = jax.tree.map(np.ones_like, params)

    updates, _ = tx.update(grads, tx.init(params), params)

    np.testing.assert_array_equal(updates["encoder"][0]["w"], 0.0)
    np.testing.assert_array_equal(updates["encoder"][1]["w"], -0.5)
    np.testing.assert_array_equal(updates["head"]["w"], -1.0)


@pytest.mark.parametrize(
    ("param_groups", "unused"),
    [({"backbone/*": "frozen", "encoder/*": 0.1}, "encoder/*"), ({"*": 0.5, "head/*": "frozen"}, "head/*")],
)
def test_pattern_that_labels_nothing_is_an_error(mlp_params, param_groups, unused):
    tx = optim.make_optimizer("adam", param_groups=param_groups)

    with pytest.raises(ValueError, match=re.escape(f"[{unused!r}]") + ".*backbone/layers/1/bias"):
        tx.init(mlp_params)


@pytest.mark.parametrize("setting", ["freeze", -0.1, True, None])
def test_invalid_param_group_setting(setting):
    message = r"param_groups\['head/\*'\] must be a learning-rate multiplier >= 0 or 'frozen'"
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer("adam", param_groups={"head/*": setting})


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "rmsprop"}, r"unknown optimizer 'rmsprop'; choose one of \['sgd', 'momentum', 'nesterov', 'adam'"),
        ({"schedule": "linear"}, r"unknown schedule 'linear'; choose one of \['constant', 'cosine', 'fixmatch_cosine', 'step'\]"),
        ({"weight_decay_mode": "l1"}, r"unknown weight_decay_mode 'l1'; choose one of \['decoupled', 'l2'\]"),
        ({"name": "adamw", "weight_decay_mode": "l2"}, "'adamw' always decouples weight decay"),
        ({"learning_rate": 0.0}, "learning_rate must be a number > 0, got 0.0"),
        ({"learning_rate": -1e-3}, "learning_rate must be a number > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be a number >= 0, got -0.1"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
        ({"momentum": -0.5}, r"momentum must be a number in \[0, 1\)"),
        ({"clip_norm": 0.0}, "clip_norm must be a number > 0, got 0.0"),
        ({"schedule": "cosine"}, "schedule='cosine' needs total_steps"),
        ({"schedule": "fixmatch_cosine"}, "schedule='fixmatch_cosine' needs total_steps"),
        ({"schedule": "cosine", "total_steps": 10, "warmup_steps": 10}, "warmup_steps=10 must be smaller than"),
        ({"schedule": "step"}, "schedule='step' needs decay_every"),
        ({"schedule": "step", "decay_every": 0}, "decay_every must be an integer >= 1, got 0"),
        ({"schedule": "step", "decay_every": 10, "decay_factor": 1.5}, r"decay_factor must be a number in \(0, 1\]"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
        ({"total_steps": 0}, "total_steps must be an integer >= 1, got 0"),
        ({"param_groups": {3: 0.1}}, "param_groups keys must be path patterns"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer(**kwargs)
