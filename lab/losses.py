"""Loss functions with hand-derived gradients, and tools to check any gradient.

Every loss maps a batch to the *mean* loss, a scalar, and is a pure
``jax.numpy`` function, so it can be jitted, vmapped and differentiated.
Next to each loss ``<name>`` sits ``<name>_grad`` with the same signature:
the closed-form gradient of that mean loss with respect to the first argument
(logits, scores or predictions), shaped like that argument. Each docstring
derives its gradient; ``tests/test_losses.py`` checks every one against
``jax.grad``.

What "mean" divides by:

* element-wise losses (``mse``, ``binary_cross_entropy``, ``binary_hinge``)
  treat every array element as one term, so n = ``x.size``;
* row-wise losses (``softmax_cross_entropy``, ``multiclass_hinge``) take
  (N, C) inputs, sum over the C classes of a row and divide by N.

Input checks: shapes and hyper-parameters are always checked. Label *values*
are checked whenever they are concrete, which includes eager calls and
``jax.grad`` of a closure over the labels. Under ``jax.jit`` or ``jax.vmap``
the labels are abstract tracers whose values cannot be read, so there an
out-of-range label is the caller's responsibility.

For students, ``numerical_gradient`` and ``check_gradient`` compare any
gradient, hand-written or from ``jax.grad``, against central differences.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lab import validate

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# --------------------------------------------------------------------------
# Input checks shared by each loss and its gradient
# --------------------------------------------------------------------------


def _is_traced(x: object) -> bool:
    """True under jit/vmap, where only the shape and dtype of ``x`` are known."""
    return isinstance(x, jax.core.Tracer)


def _as_float(x: ArrayLike) -> Array:
    """``x`` as a JAX array; integer or bool input becomes the default float."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(jnp.result_type(float))


def _static_float(name: str, value: object) -> float:
    """A hyper-parameter as a Python float; traced values cannot be range-checked."""
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real Python number (static under jax.jit, e.g. "
            f"static_argnames=('{name}',)), got {value!r} of type {type(value).__name__}."
        )
    return float(value)


def _check_same_shape(x: Array, x_name: str, labels: Array) -> None:
    # Broadcasting is refused on purpose: (N,) against (N, 1) would silently
    # build an (N, N) table of pairwise losses.
    if labels.shape != x.shape:
        raise ValueError(
            f"labels must have the same shape as {x_name} {x.shape}, got {labels.shape}."
        )


def _check_rows(x: Array, x_name: str) -> tuple[int, int]:
    """(N, C) of a row-per-example input."""
    if x.ndim != 2:
        raise ValueError(f"{x_name} must have shape (N, C), got shape {x.shape}.")
    return x.shape


def _check_class_ids(labels: Array, num_classes: int) -> None:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"class-id labels must have an integer dtype, got {labels.dtype}; "
            "convert with labels.astype(int) or pass one-hot rows of shape (N, C)."
        )
    if _is_traced(labels):
        return
    values = np.asarray(labels)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(
            f"class ids must lie in [0, {num_classes}), got {np.unique(bad)[:5].tolist()}."
        )


def _check_probability_rows(labels: Array) -> None:
    # The gradient softmax(z) − y (see softmax_cross_entropy) holds only when
    # every target row sums to 1, so other rows are refused, not silently used.
    if _is_traced(labels):
        return
    first_bad, sums = validate.probability_rows(labels)
    if first_bad.size:
        raise ValueError(
            "label rows of shape (N, C) must be probability vectors (non-negative, summing "
            f"to 1); rows {first_bad.tolist()} are not (sums {sums.tolist()})."
        )


# --------------------------------------------------------------------------
# Mean squared error
# --------------------------------------------------------------------------


def mse(pred: ArrayLike, target: ArrayLike) -> Array:
    """Mean squared error over all elements.

        L = (1/n) Σ_i (p_i − t_i)²,   n = pred.size

    ``pred`` and ``target`` must have the same shape (no broadcasting).
    Gradient: see ``mse_grad``.
    """
    pred, target = _mse_inputs(pred, target)
    return jnp.mean((pred - target) ** 2)


def mse_grad(pred: ArrayLike, target: ArrayLike) -> Array:
    """Gradient of ``mse`` with respect to ``pred``.

        ∂L/∂p_i = 2 (p_i − t_i) / n,   n = pred.size

    n counts every element, including any feature axes, because ``mse``
    averages over all of them.
    """
    pred, target = _mse_inputs(pred, target)
    return 2.0 * (pred - target) / pred.size


def _mse_inputs(pred: ArrayLike, target: ArrayLike) -> tuple[Array, Array]:
    pred = _as_float(pred)
    target = jnp.asarray(target)
    _check_same_shape(pred, "pred", target)
    return pred, target.astype(pred.dtype)


# --------------------------------------------------------------------------
# Binary cross-entropy on logits
# --------------------------------------------------------------------------


def binary_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Mean binary cross-entropy of sigmoid(logits) against labels.

    With σ(z) = 1 / (1 + e^(−z)) and labels y ∈ {0, 1} (float soft targets
    in [0, 1] are also valid), each element costs

        ℓ(z, y) = −y log σ(z) − (1 − y) log(1 − σ(z))
                = softplus(z) − z·y                    since log σ(z) = z − softplus(z),
                                                        log(1 − σ(z)) = −softplus(z)
                = max(z, 0) − z·y + log1p(e^(−|z|))    softplus without overflow

    and L = (1/n) Σ ℓ(z_i, y_i) with n = logits.size. The last form never
    exponentiates a positive number, so it stays exact for any finite z:
    z = 1000, y = 0 gives exactly 1000, not inf.
    Gradient: see ``binary_cross_entropy_grad``.
    """
    logits, labels = _binary_cross_entropy_inputs(logits, labels)
    # logaddexp(0, z) evaluates max(z, 0) + log1p(e^(−|z|)) internally but
    # differentiates correctly at z = 0. Spelling that out with jnp.maximum
    # and jnp.abs gives the same values, yet jax.grad then returns −y at
    # z = 0 instead of ½ − y, because JAX takes d|z|/dz = 1 there.
    return jnp.mean(jnp.logaddexp(0.0, logits) - logits * labels)


def binary_cross_entropy_grad(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Gradient of ``binary_cross_entropy`` with respect to ``logits``.

    d softplus(z)/dz = σ(z), so from ℓ = softplus(z) − z·y:

        ∂L/∂z_i = (σ(z_i) − y_i) / n,   n = logits.size
    """
    logits, labels = _binary_cross_entropy_inputs(logits, labels)
    return (jax.nn.sigmoid(logits) - labels) / logits.size


def _binary_cross_entropy_inputs(
    logits: ArrayLike, labels: ArrayLike
) -> tuple[Array, Array]:
    logits = _as_float(logits)
    labels = jnp.asarray(labels)
    _check_same_shape(logits, "logits", labels)
    if not _is_traced(labels):
        values = np.asarray(labels, dtype=np.float64)
        bad = values[~((values >= 0) & (values <= 1))]
        if bad.size:
            raise ValueError(
                "binary cross-entropy labels must lie in [0, 1], "
                f"got {np.unique(bad)[:5].tolist()}."
            )
    return logits, labels.astype(logits.dtype)


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------


def softmax_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, label_smoothing: float = 0.0
) -> Array:
    """Mean softmax cross-entropy over a batch of N rows and C classes.

    ``logits`` has shape (N, C). ``labels`` is either integer class ids of
    shape (N,) or target distributions of shape (N, C) (one-hot or soft rows,
    each summing to 1). Label smoothing with ε = ``label_smoothing`` ∈ [0, 1)
    mixes every target row with the uniform distribution:

        y ← (1 − ε) y + ε / C

    With log-softmax computed via logsumexp, which subtracts the row maximum
    before exponentiating and so stays finite for logits of any size,

        log p_ic = z_ic − log Σ_k e^(z_ik)
        L = −(1/N) Σ_i Σ_c y_ic log p_ic

    Gradient: see ``softmax_cross_entropy_grad``.
    """
    logits = _as_float(logits)
    targets = _softmax_targets(logits, labels, label_smoothing)
    log_probs = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.sum(targets * log_probs) / logits.shape[0]


def softmax_cross_entropy_grad(
    logits: ArrayLike, labels: ArrayLike, *, label_smoothing: float = 0.0
) -> Array:
    """Gradient of ``softmax_cross_entropy`` with respect to ``logits``.

    ∂ log p_ic / ∂z_ik = [c = k] − p_ik, hence for row i

        ∂L/∂z_ik = −(1/N) Σ_c y_ic ([c = k] − p_ik)
                 = (p_ik Σ_c y_ic − y_ik) / N
                 = (softmax(z_i)_k − y_ik) / N      because Σ_c y_ic = 1,

    where y is the (smoothed) target; smoothing keeps Σ_c y_ic = 1.
    """
    logits = _as_float(logits)
    targets = _softmax_targets(logits, labels, label_smoothing)
    return (jax.nn.softmax(logits, axis=-1) - targets) / logits.shape[0]


def _softmax_targets(logits: Array, labels: ArrayLike, label_smoothing: float) -> Array:
    """The (N, C) smoothed target distribution shared by the loss and its gradient."""
    epsilon = _static_float("label_smoothing", label_smoothing)
    # ε = 1 would make every target uniform whatever the label.
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}.")
    n, num_classes = _check_rows(logits, "logits")
    labels = jnp.asarray(labels)
    if labels.shape == (n,):
        _check_class_ids(labels, num_classes)
        targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    elif labels.shape == (n, num_classes):
        _check_probability_rows(labels)
        targets = labels.astype(logits.dtype)
    else:
        raise ValueError(
            f"labels must be class ids of shape ({n},) or target rows of shape "
            f"({n}, {num_classes}) to match logits {logits.shape}, got shape {labels.shape}."
        )
    return (1.0 - epsilon) * targets + epsilon / num_classes


# --------------------------------------------------------------------------
# Binary hinge
# --------------------------------------------------------------------------


def binary_hinge(scores: ArrayLike, labels: ArrayLike) -> Array:
    """Mean binary hinge loss.

    Labels may be given as {−1, +1} or as {0, 1}; 0 is read as −1. Then

        L = (1/n) Σ_i max(0, 1 − y_i s_i),   n = scores.size

    Subgradient: see ``binary_hinge_grad``.
    """
    scores = _as_float(scores)
    signs = _signed_labels(scores, labels)
    return jnp.mean(jnp.maximum(0.0, 1.0 - signs * scores))


def binary_hinge_grad(scores: ArrayLike, labels: ArrayLike) -> Array:
    """A subgradient of ``binary_hinge`` with respect to ``scores``.

        ∂L/∂s_i = −y_i / n   if y_i s_i < 1   (inside the margin)
                   0         if y_i s_i ≥ 1

    At the kink y_i s_i = 1 the subdifferential is the segment between −y_i/n
    and 0; we choose 0, so a point exactly on the margin counts as satisfied,
    as its loss of 0 says. (``jax.grad`` of ``binary_hinge`` returns the
    midpoint −y_i/(2n) there, because ``jnp.maximum`` splits ties evenly.)
    """
    scores = _as_float(scores)
    signs = _signed_labels(scores, labels)
    inside_margin = signs * scores < 1.0
    return jnp.where(inside_margin, -signs, 0.0) / scores.size


def _signed_labels(scores: Array, labels: ArrayLike) -> Array:
    """Labels as ±1 in the dtype of ``scores``; accepts {−1, +1} or {0, 1}."""
    labels = jnp.asarray(labels)
    _check_same_shape(scores, "scores", labels)
    if not _is_traced(labels):
        values = np.unique(np.asarray(labels))
        unknown = values[~np.isin(values, (-1, 0, 1))]
        if unknown.size:
            raise ValueError(
                "hinge labels must be in {-1, +1} or {0, 1}, "
                f"got values {unknown[:5].tolist()}."
            )
        if -1 in values and 0 in values:
            raise ValueError(
                "hinge labels mix the {-1, +1} and {0, 1} encodings: both -1 and 0 occur."
            )
    # Element-wise, so it serves both encodings without knowing which one a
    # batch uses: 0 → −1, while −1 and +1 stay as they are.
    return jnp.where(labels == 0, -1, labels).astype(scores.dtype)


# --------------------------------------------------------------------------
# Multiclass (Crammer–Singer) hinge
# --------------------------------------------------------------------------


def multiclass_hinge(scores: ArrayLike, labels: ArrayLike, *, margin: float = 1.0) -> Array:
    """Mean Crammer–Singer multiclass hinge loss.

    ``scores`` has shape (N, C) with C ≥ 2; ``labels`` holds integer class ids
    of shape (N,). Each row pays for its strongest wrong class r_i only:

        r_i = argmax_{j ≠ y_i} s_ij
        L = (1/N) Σ_i max(0, margin + s_i,r_i − s_i,y_i)

    Subgradient: see ``multiclass_hinge_grad``.
    """
    scores = _as_float(scores)
    violation, _, _ = _crammer_singer_terms(scores, labels, margin)
    return jnp.mean(jnp.maximum(0.0, violation))


def multiclass_hinge_grad(scores: ArrayLike, labels: ArrayLike, *, margin: float = 1.0) -> Array:
    """A subgradient of ``multiclass_hinge`` with respect to ``scores``.

    Where row i violates the margin (margin + s_i,r_i − s_i,y_i > 0):

        ∂L/∂s_i,r_i = +1/N,   ∂L/∂s_i,y_i = −1/N,   0 for the other classes;

    elsewhere the row's gradient is 0, including at the kink where the
    violation is exactly 0 (the same choice as ``binary_hinge_grad``).
    Tie-breaking: if several wrong classes share the top score, r_i is the
    lowest such class index (``jnp.argmax`` order). Any one of them gives a
    valid subgradient; ``jax.grad`` would instead split the +1/N among them.
    """
    scores = _as_float(scores)
    violation, is_true_class, is_rival = _crammer_singer_terms(scores, labels, margin)
    direction = is_rival.astype(scores.dtype) - is_true_class.astype(scores.dtype)
    return jnp.where((violation > 0.0)[:, None], direction, 0.0) / scores.shape[0]


def _crammer_singer_terms(
    scores: Array, labels: ArrayLike, margin: float
) -> tuple[Array, Array, Array]:
    """Per-row violation margin + s_r − s_y, and (N, C) masks of y and r."""
    margin = validate.number("margin", _static_float("margin", margin), minimum=0)
    n, num_classes = _check_rows(scores, "scores")
    if num_classes < 2:
        raise ValueError(
            f"multiclass hinge needs at least 2 classes, got scores of shape {scores.shape}."
        )
    labels = jnp.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(
            f"labels must be class ids of shape ({n},) to match scores {scores.shape}, "
            f"got shape {labels.shape}."
        )
    _check_class_ids(labels, num_classes)
    is_true_class = jax.nn.one_hot(labels, num_classes, dtype=bool)
    # With the true class masked to −inf, max and argmax range over j ≠ y only.
    wrong_class_scores = jnp.where(is_true_class, -jnp.inf, scores)
    is_rival = jax.nn.one_hot(jnp.argmax(wrong_class_scores, axis=-1), num_classes, dtype=bool)
    true_score = jnp.sum(jnp.where(is_true_class, scores, 0.0), axis=-1)
    violation = margin + jnp.max(wrong_class_scores, axis=-1) - true_score
    return violation, is_true_class, is_rival


# --------------------------------------------------------------------------
# Gradient checking
# --------------------------------------------------------------------------


def numerical_gradient(
    f: Callable[[np.ndarray], ArrayLike], x: ArrayLike, eps: float = 1e-6
) -> np.ndarray:
    """Central-difference gradient of a scalar function ``f`` at ``x``.

        g_k = (f(x + eps·e_k) − f(x − eps·e_k)) / (2 eps)

    for every element k of ``x`` (2·x.size calls of ``f``). The error is
    O(eps²) from truncation plus about 1e-16·|f| / eps from rounding, so
    eps = 1e-6 needs float64: in float32, rounding alone would be ~0.1·|f|.
    Hence ``x`` is copied to float64 and ``f`` runs with JAX's 64-bit mode
    switched on for the duration of this call only. Returns a float64 array
    shaped like ``x``.
    """
    step = validate.number("eps", _static_float("eps", eps), minimum=0, exclusive_minimum=True)
    point = np.array(x, dtype=np.float64)  # a copy: it is perturbed in place below
    grad = np.empty_like(point)
    with jax.enable_x64(True):
        for k in range(point.size):
            original = point.flat[k]
            point.flat[k] = original + step
            f_plus = _scalar_output(f(point))
            point.flat[k] = original - step
            f_minus = _scalar_output(f(point))
            point.flat[k] = original
            grad.flat[k] = (f_plus - f_minus) / (2.0 * step)
    return grad


def _scalar_output(value: ArrayLike) -> float:
    if np.shape(value) != ():
        raise ValueError(f"f must return a scalar, got an output of shape {np.shape(value)}.")
    return float(value)


@dataclass(frozen=True)
class GradientCheck:
    """Outcome of ``check_gradient``; ``bool(result)`` is ``result.ok``."""

    max_abs_error: float
    max_rel_error: float
    ok: bool
    rtol: float
    atol: float

    # Without this, `assert check_gradient(...)` would pass even for a wrong
    # gradient, because every dataclass instance is truthy.
    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (
            f"gradient check {verdict}: max abs error {self.max_abs_error:.3e}, "
            f"max rel error {self.max_rel_error:.3e} (rtol={self.rtol:g}, atol={self.atol:g})"
        )


def check_gradient(
    f: Callable[[np.ndarray], ArrayLike],
    x: ArrayLike,
    grad: Callable[[np.ndarray], ArrayLike] | None = None,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> GradientCheck:
    """Compare an analytic gradient of scalar ``f`` at ``x`` with central differences.

    ``grad`` is the gradient function to test; when None, ``jax.grad(f)`` is
    tested. Both it and ``numerical_gradient`` run in float64 on the same x.
    Per element, with a = analytic and m = numerical:

        ok             ⇔ |a − m| ≤ atol + rtol·|m| everywhere  (numpy.allclose's rule)
        max_abs_error  = max |a − m|
        max_rel_error  = max |a − m| / max(|a|, |m|)          (0 where a = m = 0)

    A kink of ``f`` (e.g. ReLU or hinge) within eps of ``x`` can legitimately
    fail the check: there is no single derivative for the two to agree on.
    """
    grad_fn = jax.grad(f) if grad is None else grad
    point = np.asarray(x, dtype=np.float64)
    with jax.enable_x64(True):
        analytic = np.asarray(grad_fn(point), dtype=np.float64)
    if analytic.shape != point.shape:
        raise ValueError(
            f"grad must return an array shaped like x {point.shape}, got {analytic.shape}."
        )
    numerical = numerical_gradient(f, point, eps)
    abs_error = np.abs(analytic - numerical)
    scale = np.maximum(np.abs(analytic), np.abs(numerical))
    rel_error = np.divide(abs_error, scale, out=np.zeros_like(abs_error), where=scale > 0)
    return GradientCheck(
        max_abs_error=float(abs_error.max(initial=0.0)),
        max_rel_error=float(rel_error.max(initial=0.0)),
        ok=bool(np.all(abs_error <= atol + rtol * np.abs(numerical))),
        rtol=rtol,
        atol=atol,
    )
