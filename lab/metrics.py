"""Classification metrics on (N, C) scores and integer labels.

``scores`` are logits or probabilities of shape (N, C), C ≥ 2; ``labels``
are integer class ids of shape (N,). Metrics that use only the predicted
class, argmax_c of a row, accept either kind, because softmax keeps the
argmax. Metrics that need probabilities (``roc_auc_ovr``,
``expected_calibration_error``) follow one rule, set by ``from_logits``:

* ``from_logits=True`` (default): rows are logits and a softmax is applied;
* ``from_logits=False``: rows already are probabilities; they are checked to
  be non-negative and to sum to 1, never renormalised.

The softmax matters even for the ranking-based ROC-AUC: p_ik depends on the
other logits of row i, so logit z_ik and probability p_ik can rank the
samples differently.

Metrics run in float64 numpy on the host: they are computed after training
steps, not differentiated, and they need data-dependent shapes (the classes
present, the occupied bins). Scalars are returned as Python floats, so
results JSON-serialise; ``tests/test_metrics.py`` checks each metric
against scikit-learn.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from lab import validate

# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _validated(
    scores: ArrayLike, labels: ArrayLike, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 (N, C) and labels as int64 (N,) in [0, num_classes).

    ``num_classes`` defaults to C. A larger value admits labels of classes
    that the scores have no column for (the model can never predict them).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 2:
        raise ValueError(
            f"scores must have shape (N, C) with N >= 1 and C >= 2, got shape {scores.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf; metrics need finite logits or probabilities.")
    labels = np.asarray(labels)
    if labels.shape != scores.shape[:1]:
        raise ValueError(
            f"labels must have shape ({scores.shape[0]},) to match scores {scores.shape}, "
            f"got {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}.")
    if num_classes is None:
        num_classes = scores.shape[1]
    elif not isinstance(num_classes, numbers.Integral) or num_classes < scores.shape[1]:
        raise ValueError(
            f"num_classes must be an integer >= the {scores.shape[1]} score columns, "
            f"got {num_classes!r}."
        )
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {np.unique(bad)[:5].tolist()}."
        )
    return scores, labels.astype(np.int64)


def _probabilities(scores: np.ndarray, from_logits: bool) -> np.ndarray:
    """Rows as probabilities, following the module's ``from_logits`` rule."""
    if from_logits:
        # Subtracting the row maximum leaves the softmax unchanged and keeps exp() finite.
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)
    first_bad, sums = validate.probability_rows(scores)
    if first_bad.size:
        raise ValueError(
            "with from_logits=False every row must be a probability vector (non-negative, "
            f"summing to 1); rows {first_bad.tolist()} are not "
            f"(sums {sums.tolist()}). Pass logits with from_logits=True."
        )
    return scores


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0 (zero_division=0)."""
    return np.divide(
        numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0
    )


# --------------------------------------------------------------------------
# Metrics of the predicted class
# --------------------------------------------------------------------------


def accuracy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows whose argmax equals the label: (1/N) Σ_i [argmax_c z_ic = y_i]."""
    scores, labels = _validated(logits, labels)
    return float(np.mean(scores.argmax(axis=1) == labels))


def majority_class_accuracy(train_labels: ArrayLike, test_labels: ArrayLike) -> float:
    """The test accuracy of a constant guess: always the most frequent class of ``train_labels``
    (the lowest id among ties). What a classifier must beat; 1/C, chance, is lower unless classes are balanced."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} must hold at least one label, as integer class ids of shape (N,)")
    values, counts = np.unique(train_labels, return_counts=True)
    return float(np.mean(test_labels == values[np.argmax(counts)]))


def batch_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """:func:`accuracy` of a batch inside compiled code (a training step): jnp, no checks, a 0-d array."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def confusion_matrix(logits: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts M[t, p] of rows with true class t and predicted class p = argmax_c z_c.

    Rows index the true class and columns the prediction, as in
    ``sklearn.metrics.confusion_matrix``. ``num_classes`` ≥ C fixes the size
    (num_classes, num_classes) even when some classes never occur.
    """
    scores, labels = _validated(logits, labels, num_classes)
    return _confusion_counts(labels, scores.argmax(axis=1), num_classes)


def _confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    # Each (true, predicted) pair gets a unique flat index t·K + p to count.
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


class PrecisionRecallF1(NamedTuple):
    """Macro-averaged precision, recall and F1."""

    precision: float
    recall: float
    f1: float


def precision_recall_f1(
    logits: ArrayLike, labels: ArrayLike, *, num_classes: int | None = None
) -> PrecisionRecallF1:
    """Macro precision, recall and F1 of the argmax predictions.

    Per class k, from true positives, false positives and false negatives:

        precision_k = TP / (TP + FP)
        recall_k    = TP / (TP + FN)
        F1_k        = 2 TP / (2 TP + FP + FN)   (= 2 P R / (P + R) when defined)

    and 0 wherever a denominator is 0, like scikit-learn's zero_division=0.
    Each macro score is the unweighted mean over classes; macro F1 is the mean
    of the F1_k, not the F1 of macro precision and recall.

    Which classes are averaged:

    * ``num_classes=None``: the classes occurring in the labels or in the
      predictions, like ``precision_recall_fscore_support(average='macro')``
      without a ``labels`` argument;
    * ``num_classes=K`` (≥ C): all classes 0..K−1, so a class absent from both
      scores 0 and pulls the mean down, like passing ``labels=range(K)``.
    """
    scores, labels = _validated(logits, labels, num_classes)
    predictions = scores.argmax(axis=1)
    universe = scores.shape[1] if num_classes is None else num_classes
    counts = _confusion_counts(labels, predictions, universe)
    if num_classes is None:
        classes = np.union1d(labels, predictions)
    else:
        classes = np.arange(num_classes)
    true_pos = np.diag(counts)[classes]
    false_pos = counts.sum(axis=0)[classes] - true_pos
    false_neg = counts.sum(axis=1)[classes] - true_pos
    return PrecisionRecallF1(
        precision=float(np.mean(_safe_divide(true_pos, true_pos + false_pos))),
        recall=float(np.mean(_safe_divide(true_pos, true_pos + false_neg))),
        f1=float(np.mean(_safe_divide(2 * true_pos, 2 * true_pos + false_pos + false_neg))),
    )


# --------------------------------------------------------------------------
# Metrics of the probabilities
# --------------------------------------------------------------------------


def roc_auc_ovr(
    probs_or_logits: ArrayLike, labels: ArrayLike, *, from_logits: bool = True
) -> float:
    """One-vs-rest ROC-AUC, macro-averaged over the C classes.

    For class k, with P the rows labelled k and Q the others,

        AUC_k = P(p_ik > p_jk) + ½ P(p_ik = p_jk),   i ∈ P, j ∈ Q uniformly,

    the area under the ROC curve of score p_·k for "is class k". It is
    computed from ranks (Mann–Whitney U), tied scores sharing their mean rank:

        AUC_k = (Σ_{i∈P} rank_i − |P|(|P|+1)/2) / (|P| |Q|)

    and the result is (1/C) Σ_k AUC_k. See the module docstring for
    ``from_logits``. Every class must occur among the labels, since AUC_k
    needs both positives and negatives; otherwise this raises ValueError,
    as scikit-learn does.
    """
    scores, labels = _validated(probs_or_logits, labels)
    probs = _probabilities(scores, from_logits)
    missing = np.setdiff1d(np.arange(probs.shape[1]), labels)
    if missing.size:
        raise ValueError(
            "one-vs-rest ROC-AUC needs every class among the labels, but classes "
            f"{missing[:5].tolist()} of {probs.shape[1]} never occur."
        )
    return float(np.mean([_binary_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])]))


def _binary_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    _, group, group_size = np.unique(score, return_inverse=True, return_counts=True)
    # A group of tied scores ending at 1-based rank E occupies ranks
    # E − size + 1 .. E, whose mean is E − (size − 1)/2.
    mean_rank = np.cumsum(group_size) - (group_size - 1) / 2
    ranks = mean_rank[group]
    num_pos = int(is_positive.sum())
    num_neg = is_positive.size - num_pos
    return (ranks[is_positive].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def expected_calibration_error(
    probs_or_logits: ArrayLike, labels: ArrayLike, *, num_bins: int = 15, from_logits: bool = True
) -> float:
    """Expected calibration error of the top-label confidence.

    Row i has confidence c_i = max_k p_ik and is correct when argmax_k p_ik =
    y_i. The confidences fall into ``num_bins`` equal-width bins B_b =
    (b/B, (b+1)/B] (the first bin also holds 0). With acc_b and conf_b the
    mean correctness and mean confidence of the rows in B_b,

        ECE = Σ_b (|B_b| / N) |acc_b − conf_b|

    Empty bins contribute 0. A calibrated model, right 80% of the times it is
    80% sure, has ECE near 0. See the module docstring for ``from_logits``.
    """
    validate.integer("num_bins", num_bins, minimum=1)
    scores, labels = _validated(probs_or_logits, labels)
    probs = _probabilities(scores, from_logits)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    inner_edges = np.linspace(0.0, 1.0, num_bins + 1)[1:-1]
    bin_index = np.digitize(confidence, inner_edges, right=True)
    # (|B_b| / N)·|acc_b − conf_b| = |Σ_{i∈B_b} (correct_i − c_i)| / N, which
    # needs no division by a possibly empty bin's size.
    gap_per_bin = np.bincount(bin_index, weights=correct - confidence, minlength=num_bins)
    return float(np.abs(gap_per_bin).sum() / labels.size)


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def classification_metrics(logits: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """All metrics of this module for logits (N, C), as JSON-ready Python floats.

    Keys: accuracy, macro_precision, macro_recall, macro_f1 (over the classes
    present, ``num_classes=None``), roc_auc (one-vs-rest macro) and ece (15
    bins), the last two from softmax(logits). Raises ValueError when a class
    never occurs among the labels, because its ROC-AUC is undefined.
    """
    macro = precision_recall_f1(logits, labels)
    return {
        "accuracy": accuracy(logits, labels),
        "macro_precision": macro.precision,
        "macro_recall": macro.recall,
        "macro_f1": macro.f1,
        "roc_auc": roc_auc_ovr(logits, labels, from_logits=True),
        "ece": expected_calibration_error(logits, labels, from_logits=True),
    }
