"""Tests for lab.losses: values against plain numpy formulas, gradients against jax.grad."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.losses import (
    GradientCheck,
    binary_cross_entropy,
    binary_cross_entropy_grad,
    binary_hinge,
    binary_hinge_grad,
    check_gradient,
    mse,
    mse_grad,
    multiclass_hinge,
    multiclass_hinge_grad,
    numerical_gradient,
    softmax_cross_entropy,
    softmax_cross_entropy_grad,
)

N, C = 6, 4  # a batch of 6 examples with 4 classes; element-wise losses use shape (N, C) too


# --------------------------------------------------------------------------
# References: the textbook formulas, in float64 numpy, written the naive way
# --------------------------------------------------------------------------


def reference_log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    return np.log(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))


def reference_softmax_cross_entropy(logits, target_rows):
    return -np.sum(target_rows * reference_log_softmax(logits)) / len(logits)


def reference_binary_cross_entropy(logits, labels):
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return np.mean(-labels * np.log(p) - (1 - labels) * np.log(1 - p))


def reference_multiclass_hinge(scores, labels, margin=1.0):
    total = 0.0
    for row, y in zip(np.asarray(scores, dtype=np.float64), labels):
        best_wrong = max(s for j, s in enumerate(row) if j != y)
        total += max(0.0, margin + best_wrong - row[y])
    return total / len(scores)


def one_hot(labels, num_classes):
    return np.eye(num_classes)[labels]


def autodiff(loss, **kwargs):
    """jax.grad of ``loss`` in its first argument, as the reference for a `_grad`.

    Jitted because one compilation is far cheaper than compiling each eager op.
    """
    return jax.jit(jax.grad(functools.partial(loss, **kwargs)))


# --------------------------------------------------------------------------
# Inputs for every registered loss; `scale` bounds |input| (1e3 = extreme)
# --------------------------------------------------------------------------


def mse_case(rng, scale):
    pred = rng.uniform(-scale, scale, (N, C)).astype(np.float32)
    return pred, rng.uniform(-scale, scale, (N, C)).astype(np.float32), {}


def binary_cross_entropy_case(rng, scale):
    logits = rng.uniform(-scale, scale, (N, C)).astype(np.float32)
    return logits, rng.integers(0, 2, (N, C)).astype(np.float32), {}


def softmax_cross_entropy_case(rng, scale):
    logits = rng.uniform(-scale, scale, (N, C)).astype(np.float32)
    return logits, rng.integers(0, C, N), {"label_smoothing": 0.1}


def binary_hinge_case(rng, scale):
    scores = rng.uniform(-scale, scale, (N, C)).astype(np.float32)
    labels = rng.choice([-1, 1], (N, C))
    # The subgradient equals jax.grad only away from the kink y·s = 1.
    assert np.all(np.abs(labels * scores - 1) > 1e-3)
    return scores, labels, {}


def multiclass_hinge_case(rng, scale):
    scores = rng.uniform(-scale, scale, (N, C)).astype(np.float32)
    labels = rng.integers(0, C, N)
    margin = 0.5
    # Away from kinks: no tied rival classes, no violation of exactly 0.
    wrong = np.where(one_hot(labels, C) == 1, -np.inf, scores)
    top_two = np.sort(wrong, axis=1)[:, -2:]
    assert np.all(top_two[:, 1] - top_two[:, 0] > 1e-3)
    assert np.all(np.abs(margin + top_two[:, 1] - scores[np.arange(N), labels]) > 1e-3)
    return scores, labels, {"margin": margin}


# name: (inputs of a case, loss, its closed-form gradient)
CASES = {
    "mse": (mse_case, mse, mse_grad),
    "binary_cross_entropy": (binary_cross_entropy_case, binary_cross_entropy, binary_cross_entropy_grad),
    "softmax_cross_entropy": (softmax_cross_entropy_case, softmax_cross_entropy, softmax_cross_entropy_grad),
    "binary_hinge": (binary_hinge_case, binary_hinge, binary_hinge_grad),
    "multiclass_hinge": (multiclass_hinge_case, multiclass_hinge, multiclass_hinge_grad),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("scale", [3.0, 1e3], ids=["moderate", "extreme"])
def test_grad_matches_jax_grad(name, scale):
    case, loss, grad = CASES[name]
    x, labels, kwargs = case(np.random.default_rng(0), scale)
    expected = autodiff(loss, **kwargs)(x, labels)
    actual = grad(x, labels, **kwargs)
    assert actual.shape == x.shape
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_grad_are_jittable(name):
    case, loss, grad = CASES[name]
    x, labels, kwargs = case(np.random.default_rng(1), 3.0)
    loss, grad = functools.partial(loss, **kwargs), functools.partial(grad, **kwargs)
    value = jax.jit(loss)(x, labels)
    assert value.shape == ()
    np.testing.assert_allclose(value, loss(x, labels), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(grad)(x, labels), grad(x, labels), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_gradient_accepts_each_closed_form_gradient(name):
    case, loss, grad = CASES[name]
    x, labels, kwargs = case(np.random.default_rng(2), 3.0)
    # Jitted closures, as a notebook would write them; check_gradient must
    # still evaluate them in float64 (jit retraces for the float64 input).
    result = check_gradient(
        jax.jit(lambda z: loss(z, labels, **kwargs)), x, jax.jit(lambda z: grad(z, labels, **kwargs))
    )
    assert result.ok, str(result)


# --------------------------------------------------------------------------
# Mean squared error
# --------------------------------------------------------------------------


def test_mse_hand_computed_linear_regression_example():
    # Model p_i = θ0 + θ1·x_i with θ = (0, 0) on x = 1..5, t = 2x:
    # every p_i = 0, so L = (1/5) Σ (2 x_i)² = (4/5)(1+4+9+16+25) = 44.
    x = np.arange(1.0, 6.0)
    target = 2 * x
    pred = np.zeros(5)
    assert float(mse(pred, target)) == pytest.approx(44.0)
    # ∂L/∂p_i = 2 (p_i − t_i)/5 = −4 x_i / 5.
    np.testing.assert_allclose(mse_grad(pred, target), [-0.8, -1.6, -2.4, -3.2, -4.0], rtol=1e-6)
    # Chain rule: ∂L/∂θ0 = Σ ∂L/∂p_i = −12, ∂L/∂θ1 = Σ x_i ∂L/∂p_i = −(4/5)·55 = −44.
    dL_dp = np.asarray(mse_grad(pred, target))
    np.testing.assert_allclose([dL_dp.sum(), dL_dp @ x], [-12.0, -44.0], rtol=1e-6)

    def loss_of_theta(theta):
        return mse(theta[0] + theta[1] * x, target)

    np.testing.assert_allclose(autodiff(loss_of_theta)(jnp.zeros(2)), [-12.0, -44.0], rtol=1e-6)


def test_mse_matches_reference():
    pred, target, _ = mse_case(np.random.default_rng(3), 3.0)
    expected = np.mean((pred.astype(np.float64) - target) ** 2)
    np.testing.assert_allclose(mse(pred, target), expected, rtol=1e-6)


def test_mse_refuses_to_broadcast():
    with pytest.raises(ValueError, match=r"same shape as pred \(4,\), got \(4, 1\)"):
        mse(np.zeros(4), np.zeros((4, 1)))


# --------------------------------------------------------------------------
# Binary cross-entropy
# --------------------------------------------------------------------------


def test_binary_cross_entropy_matches_reference_with_hard_and_soft_labels():
    rng = np.random.default_rng(4)
    logits = rng.uniform(-8, 8, (N, C)).astype(np.float32)
    for labels in (rng.integers(0, 2, (N, C)).astype(np.float32), rng.uniform(0, 1, (N, C))):
        np.testing.assert_allclose(
            binary_cross_entropy(logits, labels),
            reference_binary_cross_entropy(logits, labels),
            rtol=1e-5,
        )


# Exact values far outside float32's exp range: for |z| ≫ 1,
# ℓ(z, y) = softplus(z) − z·y → max(z, 0) − z·y, and e^(−|z|) rounds to 0.
@pytest.mark.parametrize(
    "logit, label, loss, grad",
    [
        (1000.0, 0.0, 1000.0, 1.0),
        (1000.0, 1.0, 0.0, 0.0),
        (-1000.0, 1.0, 1000.0, -1.0),
        (-1000.0, 0.0, 0.0, 0.0),
        (200.0, 0.0, 200.0, 1.0),
        (-200.0, 1.0, 200.0, -1.0),
        (0.0, 1.0, math.log(2.0), -0.5),
        (0.0, 0.0, math.log(2.0), 0.5),
    ],
)
def test_binary_cross_entropy_is_exact_at_extreme_logits(logit, label, loss, grad):
    z, y = jnp.array([logit]), jnp.array([label])
    assert float(binary_cross_entropy(z, y)) == pytest.approx(loss, rel=1e-6, abs=0.0)
    assert float(binary_cross_entropy_grad(z, y)[0]) == pytest.approx(grad, abs=1e-7)


def test_binary_cross_entropy_autodiff_is_right_at_zero_logit():
    # Regression test: the spelled-out max(z,0) + log1p(e^(−|z|)) form
    # differentiates to −y at z = 0; the true gradient is σ(0) − y = ½ − y.
    z, y = jnp.zeros(2), jnp.array([0.0, 1.0])
    np.testing.assert_allclose(autodiff(binary_cross_entropy)(z, y), [0.25, -0.25])


@pytest.mark.parametrize("labels", [[0.0, 2.0], [-1.0, 1.0]])
def test_binary_cross_entropy_rejects_labels_outside_unit_interval(labels):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        binary_cross_entropy(jnp.zeros(2), jnp.array(labels))


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------


def test_softmax_cross_entropy_matches_reference():
    logits, labels, _ = softmax_cross_entropy_case(np.random.default_rng(5), 5.0)
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels),
        reference_softmax_cross_entropy(logits, one_hot(labels, C)),
        rtol=1e-5,
    )


def test_softmax_cross_entropy_with_soft_label_rows_matches_reference():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(N, C)).astype(np.float32)
    soft = rng.dirichlet(np.ones(C), N)
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, soft),
        reference_softmax_cross_entropy(logits, soft),
        rtol=1e-5,
    )
    expected_grad = autodiff(softmax_cross_entropy)(logits, soft)
    np.testing.assert_allclose(softmax_cross_entropy_grad(logits, soft), expected_grad, atol=1e-7)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_integer_and_one_hot_labels_agree(epsilon):
    logits, labels, _ = softmax_cross_entropy_case(np.random.default_rng(7), 5.0)
    for fn in (softmax_cross_entropy, softmax_cross_entropy_grad):
        np.testing.assert_allclose(
            fn(logits, labels, label_smoothing=epsilon),
            fn(logits, one_hot(labels, C), label_smoothing=epsilon),
            rtol=1e-6,
        )


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_label_smoothing_matches_manual_targets(epsilon):
    logits, labels, _ = softmax_cross_entropy_case(np.random.default_rng(8), 5.0)
    smoothed = (1 - epsilon) * one_hot(labels, C) + epsilon / C
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels, label_smoothing=epsilon),
        reference_softmax_cross_entropy(logits, smoothed),
        rtol=1e-5,
    )
    probs = np.exp(reference_log_softmax(logits))
    np.testing.assert_allclose(
        softmax_cross_entropy_grad(logits, labels, label_smoothing=epsilon),
        (probs - smoothed) / N,
        atol=1e-7,
    )


@pytest.mark.parametrize("label, loss", [(0, 0.0), (1, 1000.0), (2, 2000.0)])
def test_softmax_cross_entropy_is_exact_at_extreme_logits(label, loss):
    # Row [1000, 0, −1000, −1000]: logsumexp = 1000 + log(1 + e^−1000 + 2e^−2000)
    # = 1000, so −log p = (0, 1000, 2000, 2000) and softmax = (1, 0, 0, 0),
    # all exact in float32. Every row is the same, so the mean is one row's loss.
    logits = np.tile(np.float32([1000.0, 0.0, -1000.0, -1000.0]), (N, 1))
    labels = np.full(N, label)
    assert float(softmax_cross_entropy(logits, labels)) == loss
    expected_grad = np.float32((one_hot(np.zeros(N, int), C) - one_hot(labels, C)) / N)
    np.testing.assert_array_equal(softmax_cross_entropy_grad(logits, labels), expected_grad)


@pytest.mark.parametrize("epsilon", [-0.1, 1.0, 1.5, float("nan")])
def test_label_smoothing_outside_unit_interval_is_rejected(epsilon):
    logits, labels, _ = softmax_cross_entropy_case(np.random.default_rng(9), 1.0)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\), got"):
        softmax_cross_entropy(logits, labels, label_smoothing=epsilon)


def test_traced_label_smoothing_is_rejected_with_a_hint():
    logits, labels, _ = softmax_cross_entropy_case(np.random.default_rng(9), 1.0)
    jitted = jax.jit(lambda eps: softmax_cross_entropy(logits, labels, label_smoothing=eps))
    with pytest.raises(TypeError, match="static_argnames"):
        jitted(0.1)


@pytest.mark.parametrize(
    "labels, error, message",
    [
        (np.zeros((N, C + 1)), ValueError, r"class ids of shape \(6,\) or target rows of shape \(6, 4\)"),
        (np.zeros((N, 1), dtype=int), ValueError, r"got shape \(6, 1\)"),
        (np.zeros(N), TypeError, "integer dtype, got float"),
        (np.full(N, C), ValueError, r"class ids must lie in \[0, 4\), got \[4\]"),
        (np.full((N, C), 0.5), ValueError, "probability vectors"),
    ],
    ids=["too-many-columns", "column-vector", "float-ids", "id-out-of-range", "rows-sum-to-2"],
)
def test_softmax_cross_entropy_rejects_bad_labels(labels, error, message):
    logits = np.zeros((N, C), dtype=np.float32)
    with pytest.raises(error, match=message):
        softmax_cross_entropy(logits, labels)


# --------------------------------------------------------------------------
# Hinge losses
# --------------------------------------------------------------------------


def test_binary_hinge_matches_reference_for_both_label_encodings():
    scores, signs, _ = binary_hinge_case(np.random.default_rng(10), 3.0)
    expected = np.mean([max(0.0, 1.0 - y * s) for y, s in zip(signs.ravel(), scores.ravel())])
    zero_one = (signs + 1) // 2
    for labels in (signs, zero_one):
        np.testing.assert_allclose(binary_hinge(scores, labels), expected, rtol=1e-6)
    np.testing.assert_array_equal(binary_hinge_grad(scores, signs), binary_hinge_grad(scores, zero_one))


def test_binary_hinge_subgradient_is_zero_at_the_kink():
    # y·s = 1 exactly for both elements; jax.grad takes the midpoint −y/(2n) there.
    scores, labels = jnp.array([1.0, -1.0]), jnp.array([1, -1])
    np.testing.assert_array_equal(binary_hinge_grad(scores, labels), [0.0, 0.0])
    np.testing.assert_allclose(autodiff(binary_hinge)(scores, labels), [-0.25, 0.25])


@pytest.mark.parametrize("labels", [[2, 1], [0, -1]], ids=["unknown-value", "mixed-encodings"])
def test_binary_hinge_rejects_bad_labels(labels):
    with pytest.raises(ValueError, match="hinge labels"):
        binary_hinge(jnp.zeros(2), jnp.array(labels))


@pytest.mark.parametrize("margin", [1.0, 0.5, 0.0])
def test_multiclass_hinge_matches_reference(margin):
    scores, labels, _ = multiclass_hinge_case(np.random.default_rng(11), 2.0)
    np.testing.assert_allclose(
        multiclass_hinge(scores, labels, margin=margin),
        reference_multiclass_hinge(scores, labels, margin),
        rtol=1e-6,
    )


def test_multiclass_hinge_subgradient_conventions_at_ties_and_kinks():
    scores = jnp.array(
        [
            [0.0, 2.0, 2.0],  # classes 1 and 2 tie as rival of class 0
            [0.0, 2.0, 1.0],  # violation 1 + 1 − 2 = 0: exactly at the kink
        ]
    )
    labels = jnp.array([0, 1])
    ours = multiclass_hinge_grad(scores, labels)
    # The lowest tied index takes the whole +1/N; the kink row gets 0.
    np.testing.assert_array_equal(ours, [[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # jax.grad splits the tie evenly, another valid subgradient.
    np.testing.assert_allclose(autodiff(multiclass_hinge)(scores, labels)[0], [-0.5, 0.25, 0.25])


@pytest.mark.parametrize(
    "scores, labels, kwargs, message",
    [
        (np.zeros((2, 3)), np.array([0, 3]), {}, r"class ids must lie in \[0, 3\), got \[3\]"),
        (np.zeros((2, 3)), np.array([[0], [1]]), {}, r"shape \(2,\) to match scores"),
        (np.zeros((2, 1)), np.array([0, 0]), {}, "at least 2 classes"),
        (np.zeros((2, 3)), np.array([0, 1]), {"margin": -1.0}, "margin must be a finite number >= 0"),
    ],
)
def test_multiclass_hinge_rejects_bad_input(scores, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        multiclass_hinge(scores, labels, **kwargs)


# --------------------------------------------------------------------------
# Gradient-checking helpers
# --------------------------------------------------------------------------


def test_numerical_gradient_reaches_float64_accuracy_on_a_jax_function():
    x = np.array([[0.3, -1.2], [2.0, 0.7]])
    # f runs in float32 by default; only 64-bit evaluation gets within 1e-8.
    numerical = numerical_gradient(lambda v: jnp.sum(jnp.sin(v) * v**2), x)
    analytic = np.cos(x) * x**2 + 2 * x * np.sin(x)
    np.testing.assert_allclose(numerical, analytic, atol=1e-8)
    assert numerical.dtype == np.float64 and numerical.shape == x.shape
    assert jnp.zeros(1).dtype == jnp.float32, "64-bit mode leaked out of the helper"


def test_numerical_gradient_rejects_non_scalar_functions_and_bad_eps():
    with pytest.raises(ValueError, match=r"f must return a scalar, got an output of shape \(3,\)"):
        numerical_gradient(lambda v: v**2, np.ones(3))
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        numerical_gradient(jnp.sum, np.ones(3), eps=0.0)


def test_check_gradient_uses_jax_grad_by_default():
    result = check_gradient(lambda v: jnp.sum(jnp.tanh(v) ** 2), np.linspace(-2, 2, 5))
    assert isinstance(result, GradientCheck)
    assert result.ok and bool(result)
    assert result.max_abs_error < 1e-8
    assert str(result).startswith("gradient check OK: max abs error")


def test_check_gradient_flags_a_wrong_gradient():
    logits, labels, _ = binary_cross_entropy_case(np.random.default_rng(12), 3.0)

    def forgot_to_average(z):
        return jax.nn.sigmoid(z) - labels  # missing the 1/n of the mean

    result = check_gradient(lambda z: binary_cross_entropy(z, labels), logits, forgot_to_average)
    assert not result.ok and not bool(result)
    assert result.max_abs_error > 0.1
    assert result.max_rel_error == pytest.approx(1 - 1 / logits.size, rel=1e-6)
    assert "MISMATCH" in str(result)


def test_check_gradient_rejects_a_gradient_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"shaped like x \(3,\), got \(\)"):
        check_gradient(jnp.sum, np.ones(3), lambda v: jnp.sum(v))
