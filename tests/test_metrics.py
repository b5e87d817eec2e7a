"""Tests for lab.metrics against scikit-learn and hand-computed examples."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

from lab.metrics import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    majority_class_accuracy,
    precision_recall_f1,
    roc_auc_ovr,
)

C = 5
NEVER_PREDICTED = 4


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture
def logits_and_labels():
    """300 rows, 5 classes, every class among the labels, class 4 never predicted."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(300) % C)
    logits = rng.normal(size=(300, C)) + 1.5 * np.eye(C)[labels]  # better than chance
    logits[:, NEVER_PREDICTED] -= 100.0
    predictions = logits.argmax(axis=1)
    assert NEVER_PREDICTED not in predictions and NEVER_PREDICTED in labels
    return logits, labels


@pytest.fixture
def class_absent_from_both(logits_and_labels):
    """Like logits_and_labels, but class 2 occurs neither in labels nor in predictions."""
    logits, labels = logits_and_labels
    keep = labels != 2
    logits, labels = logits[keep].copy(), labels[keep]
    logits[:, 2] -= 100.0
    assert 2 not in labels and 2 not in logits.argmax(axis=1)
    return logits, labels


def test_accuracy_matches_sklearn(logits_and_labels):
    logits, labels = logits_and_labels
    expected = sk.accuracy_score(labels, logits.argmax(axis=1))
    assert accuracy(logits, labels) == pytest.approx(expected, abs=1e-12)
    assert accuracy(jnp.asarray(logits), jnp.asarray(labels)) == pytest.approx(expected, abs=1e-6)


def sklearn_macro(y_true, y_pred, **kwargs):
    precision, recall, f1, _ = sk.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0, **kwargs
    )
    return precision, recall, f1


def test_precision_recall_f1_matches_sklearn_with_a_never_predicted_class(logits_and_labels):
    logits, labels = logits_and_labels
    expected = sklearn_macro(labels, logits.argmax(axis=1))
    np.testing.assert_allclose(precision_recall_f1(logits, labels), expected, atol=1e-12)


def test_precision_recall_f1_with_a_predicted_class_absent_from_labels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)  # classes 3 and 4 never occur as labels
    logits = rng.normal(size=(200, C))
    assert {3, 4} <= set(logits.argmax(axis=1))
    expected = sklearn_macro(labels, logits.argmax(axis=1))
    np.testing.assert_allclose(precision_recall_f1(logits, labels), expected, atol=1e-12)


def test_num_classes_decides_whether_absent_classes_count(class_absent_from_both):
    logits, labels = class_absent_from_both
    predictions = logits.argmax(axis=1)
    present_only = precision_recall_f1(logits, labels)
    np.testing.assert_allclose(present_only, sklearn_macro(labels, predictions), atol=1e-12)
    for num_classes in (C, C + 2):
        all_classes = precision_recall_f1(logits, labels, num_classes=num_classes)
        expected = sklearn_macro(labels, predictions, labels=range(num_classes))
        np.testing.assert_allclose(all_classes, expected, atol=1e-12)
        # Each absent class scores 0, so averaging over more classes lowers every score.
        assert all(a < p for a, p in zip(all_classes, present_only))


def test_macro_f1_is_the_mean_of_per_class_f1_not_f1_of_the_means():
    # labels 0 0 0 1, predictions 0 1 1 1:
    #   class 0: TP 1, FP 0, FN 2 -> P 1,   R 1/3, F1 2/(2+0+2) = 1/2
    #   class 1: TP 1, FP 2, FN 0 -> P 1/3, R 1,   F1 2/(2+2+0) = 1/2
    # macro P = macro R = 2/3, whose harmonic mean 2/3 is not macro F1 = 1/2.
    logits = np.eye(2)[[0, 1, 1, 1]]
    labels = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(precision_recall_f1(logits, labels), [2 / 3, 2 / 3, 1 / 2])


@pytest.mark.parametrize("num_classes", [C, C + 1])
def test_confusion_matrix_matches_sklearn(logits_and_labels, num_classes):
    logits, labels = logits_and_labels
    expected = sk.confusion_matrix(labels, logits.argmax(axis=1), labels=range(num_classes))
    actual = confusion_matrix(logits, labels, num_classes)
    np.testing.assert_array_equal(actual, expected)
    assert actual[:, NEVER_PREDICTED].sum() == 0


def test_roc_auc_matches_sklearn_after_softmax(logits_and_labels):
    logits, labels = logits_and_labels
    expected = sk.roc_auc_score(labels, softmax(logits), multi_class="ovr")
    assert roc_auc_ovr(logits, labels, from_logits=True) == pytest.approx(expected, abs=1e-12)
    from_probs = roc_auc_ovr(softmax(logits), labels, from_logits=False)
    assert from_probs == pytest.approx(expected, abs=1e-12)


def test_roc_auc_handles_tied_scores_like_sklearn():
    rng = np.random.default_rng(2)
    # Rows drawn from three fixed distributions: every score is heavily tied.
    palette = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]])
    probs = palette[rng.integers(0, 3, 120)]
    labels = rng.permutation(np.arange(120) % 3)
    expected = sk.roc_auc_score(labels, probs, multi_class="ovr")
    assert roc_auc_ovr(probs, labels, from_logits=False) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_rejects_a_class_missing_from_labels(logits_and_labels):
    logits, labels = logits_and_labels
    keep = labels != 3
    with pytest.raises(ValueError, match=r"classes \[3\] of 5 never occur"):
        roc_auc_ovr(logits[keep], labels[keep])


def test_from_logits_false_rejects_rows_that_are_not_probabilities(logits_and_labels):
    logits, labels = logits_and_labels
    with pytest.raises(ValueError, match="from_logits=False every row must be a probability"):
        roc_auc_ovr(logits, labels, from_logits=False)
    with pytest.raises(ValueError, match="from_logits=False every row must be a probability"):
        expected_calibration_error(logits, labels, from_logits=False)


def test_ece_hand_computed_example():
    # (confidence, correct) per row, with 5 bins of width 0.2:
    #   bin (0.8, 1.0]: 0.90 right, 0.85 wrong -> acc 0.5, conf 0.875, gap 0.375, weight 2/5
    #   bin (0.6, 0.8]: 0.70 right, 0.65 right -> acc 1.0, conf 0.675, gap 0.325, weight 2/5
    #   bin (0.4, 0.6]: 0.55 wrong             -> acc 0.0, conf 0.55,  gap 0.55,  weight 1/5
    # ECE = 0.4·0.375 + 0.4·0.325 + 0.2·0.55 = 0.15 + 0.13 + 0.11 = 0.39
    probs = np.array([[0.10, 0.90], [0.85, 0.15], [0.30, 0.70], [0.45, 0.55], [0.65, 0.35]])
    labels = np.array([1, 1, 1, 0, 0])
    ece = expected_calibration_error(probs, labels, num_bins=5, from_logits=False)
    assert ece == pytest.approx(0.39, abs=1e-12)
    # softmax(log p) = p, so the logits route must give the same number.
    from_logits = expected_calibration_error(np.log(probs), labels, num_bins=5)
    assert from_logits == pytest.approx(0.39, abs=1e-12)


def test_ece_bins_are_closed_on_the_right():
    # Two bins, (0, 0.5] and (0.5, 1]; confidence 0.5 sits on the edge.
    #   [0.5, 0.5], label 0: confidence 0.5, right -> first bin,  gap |1 − 0.5| = 0.5
    #   [0.9, 0.1], label 1: confidence 0.9, wrong -> second bin, gap |0 − 0.9| = 0.9
    # ECE = ½·0.5 + ½·0.9 = 0.7; with [lo, hi) bins both rows would share a
    # bin and give |0.5 − 0.7| = 0.2.
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    ece = expected_calibration_error(probs, np.array([0, 1]), num_bins=2, from_logits=False)
    assert ece == pytest.approx(0.7, abs=1e-12)


def test_ece_of_fully_confident_predictions_is_their_error_rate():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1]), from_logits=False) == 0.0
    assert expected_calibration_error(probs, np.array([1, 0]), from_logits=False) == 1.0


def calibrated_sample(rng, n, num_classes=3):
    """Probabilities from a Dirichlet and labels drawn from those very probabilities."""
    probs = rng.dirichlet(np.ones(num_classes), n)
    # Inverse-CDF sampling of one label per row; min() guards against rounding past the end.
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return probs, np.minimum(labels, num_classes - 1)


def test_ece_is_near_zero_when_calibrated_and_not_otherwise():
    probs, labels = calibrated_sample(np.random.default_rng(3), 400_000)
    # Sampling noise alone leaves about 0.003 here.
    assert expected_calibration_error(probs, labels, from_logits=False) < 0.01
    # Same labels, but confidences pushed towards 1: clearly overconfident.
    sharpened = probs**4 / (probs**4).sum(axis=1, keepdims=True)
    assert expected_calibration_error(sharpened, labels, from_logits=False) > 0.1


def test_classification_metrics_summary(logits_and_labels):
    logits, labels = logits_and_labels
    summary = classification_metrics(logits, labels)
    assert list(summary) == ["accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "ece"]
    assert all(type(value) is float for value in summary.values())
    assert json.loads(json.dumps(summary)) == summary
    predictions = logits.argmax(axis=1)
    precision, recall, f1 = sklearn_macro(labels, predictions)
    expected = {
        "accuracy": sk.accuracy_score(labels, predictions),
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
        "roc_auc": sk.roc_auc_score(labels, softmax(logits), multi_class="ovr"),
        "ece": expected_calibration_error(logits, labels),
    }
    assert summary == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: accuracy(np.zeros((3, 2)), np.array([0, 1])), ValueError, r"shape \(3,\) to match"),
        (lambda: accuracy(np.zeros((3, 2)), np.zeros(3)), TypeError, "integer class ids"),
        (lambda: accuracy(np.zeros((3, 2)), np.array([0, 1, 2])), ValueError, r"\[0, 2\), got \[2\]"),
        (lambda: accuracy(np.zeros(3), np.array([0, 1, 0])), ValueError, r"\(N, C\)"),
        (lambda: accuracy(np.full((2, 2), np.nan), np.array([0, 1])), ValueError, "NaN or inf"),
        (lambda: confusion_matrix(np.zeros((2, 3)), np.array([0, 1]), 2), ValueError, ">= the 3 score"),
        (
            lambda: expected_calibration_error(np.zeros((2, 2)), np.array([0, 1]), num_bins=0),
            ValueError,
            "num_bins must be a positive integer, got 0",
        ),
    ],
    ids=["length", "float-labels", "label-range", "1d-scores", "nan", "num-classes", "num-bins"],
)
def test_bad_input_is_rejected_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("y_train", "y_test"),
    [
        ([0, 1, 1, 2, 1, 0], [1, 1, 0, 2, 2]),  # the training majority is not the test's: the guess is fixed beforehand
        ([2, 2, 0, 0, 1], [0, 2, 2, 1]),  # a tie: the lowest class id, as sklearn
        ([3, 3, 3], [0, 1, 2]),  # the guess never right
    ],
)
def test_majority_class_accuracy_is_a_constant_guess_of_the_training_majority(y_train, y_test):
    from sklearn.dummy import DummyClassifier

    guess = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y_train), 1)), y_train)
    expected = guess.score(np.zeros((len(y_test), 1)), y_test)
    assert majority_class_accuracy(np.array(y_train), np.array(y_test)) == pytest.approx(expected)


def test_majority_class_accuracy_rejects_empty_labels():
    with pytest.raises(ValueError, match="train_labels must hold at least one label"):
        majority_class_accuracy(np.array([], dtype=int), np.array([0, 1]))
