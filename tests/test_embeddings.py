"""lab.embeddings (probe, TF-IDF peers, nearest neighbours, fine-tuned features) and a checkpoint
tokenizer's word pieces, against references computed independently here."""

from pathlib import Path

import numpy as np
import pytest

from lab import checkpoints, embeddings

TINY = Path(__file__).resolve().parent / "data" / "hf" / "tiny-bert"


def test_nearest_neighbours_rank_by_cosine_and_leave_the_query_out():
    vectors = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 3.0], [-1.0, 0.0], [2.0, 2.0]])
    indices, similarity = embeddings.nearest_neighbours(vectors, 0, 3)
    # cosines with row 0: 10/sqrt(101), 0, -1, 1/sqrt(2); the length of a vector does not count
    assert indices.tolist() == [1, 4, 2]
    np.testing.assert_allclose(similarity, [10 / np.sqrt(101), 1 / np.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="k must be between 1 and 4"):
        embeddings.nearest_neighbours(vectors, 0, 5)
    with pytest.raises(ValueError, match="query must be a row of the 5 embeddings, got 5"):
        embeddings.nearest_neighbours(vectors, 5, 1)


def test_neighbour_agreement_counts_neighbours_of_the_same_class():
    # two tight pairs on the axes and one point between them
    vectors = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.9]])
    labels = np.array([0, 0, 1, 1, 1])
    # k=1: rows 0-3 find their pair (agree); row 4 (45 degrees, a bit closer to x) finds row 1, class 0
    assert embeddings.neighbour_agreement(vectors, labels, 1) == pytest.approx(4 / 5)
    # k=2: row 0 -> 1, 4 (1/2); row 1 -> 0, 4 (1/2); row 2 -> 3, 4 (1); row 3 -> 2, 4 (1); row 4 -> 1, 0 (0)
    assert embeddings.neighbour_agreement(vectors, labels, 2) == pytest.approx(3 / 5)


def test_probe_accuracy_is_the_best_logistic_regression_over_c():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(int)
    scores = [LogisticRegression(C=c, max_iter=2000).fit(x[:20], y[:20]).score(x[20:], y[20:]) for c in (0.01, 1.0)]
    assert embeddings.probe_accuracy(x[:20], y[:20], x[20:], y[20:], c_values=(0.01, 1.0)) == max(scores)
    assert embeddings.probe_accuracy(x[:20], y[:20], x[20:], y[20:], c_values=(0.01,)) == scores[0]


def test_tfidf_features_by_name():
    train, test = ["the cat sat", "a dog ran"], ["the dog sat", "zebra"]
    word_train, word_test = embeddings.tfidf_features("word", train, train, test)
    assert word_train.shape[0] == 2 and word_test.shape == (2, word_train.shape[1])
    assert word_test[1].nnz == 0  # "zebra" is no word of the fitted vocabulary
    (char_test,) = embeddings.tfidf_features("char", train, test)
    assert char_test[1].nnz > 0  # but its letters are character n-grams of it
    with pytest.raises(ValueError, match="kind"):
        embeddings.tfidf_features("bytes", train, test)


def test_word_pieces_count_words_pieces_and_unknown_words():
    tokenizer = checkpoints.load(TINY, max_length=4).tokenizer
    # tiny-bert's vocabulary: "the", single letters and ##letters, a little punctuation; no digits.
    # "the" -> the; "cat" -> c ##a ##t; "," ; "42" -> [UNK]; "!" : 5 words, 7 pieces, 1 unknown,
    # uncut although max_length is 4, and without [CLS]/[SEP].
    counts = tokenizer.word_pieces(["The cat, 42!", "a"])
    assert counts["words"].tolist() == [5, 1]
    assert counts["pieces"].tolist() == [7, 1]
    assert counts["unknown"].tolist() == [1, 0]


TINY_FINETUNE = {
    "setup": "transfer", "pretrain": "checkpoint", "checkpoint": str(TINY), "model": "bert",
    "adaptation": "finetune", "dataset": "fortunes_topics", "pretrain_kwargs": {"max_length": 16},
    "labels_per_class": 2, "seeds": [0, 1], "batch_size": 8, "steps": 4, "eval_every": 4,
}  # fmt: skip


def test_fine_tuned_features_are_each_seeds_trained_encoder():
    checkpoint = checkpoints.load(TINY, max_length=16)
    ids = checkpoint.tokenizer.encode(["the cat sat on the mat", "you are what you eat", "a"])
    frozen = checkpoint.embed_ids(ids, cached=False)
    with pytest.warns(UserWarning, match="longer than max_length"):
        result, features = embeddings.fine_tuned_features(TINY_FINETUNE, ids, progress=False)
        # a learning rate too small to move a weight: the checkpoint's own embeddings, for both seeds
        _, unmoved = embeddings.fine_tuned_features({**TINY_FINETUNE, "learning_rate": 1e-12}, ids, progress=False)
    assert len(result.metrics["accuracy"]) == 2 and features.shape == (2, 3, 32)
    np.testing.assert_allclose(unmoved, np.stack([frozen, frozen]), atol=1e-6)
    assert np.abs(features - frozen).max() > 1e-3  # trained at 1e-3: the encoder moved
    assert np.abs(features[0] - features[1]).max() > 1e-4  # each seed its own labels and head
