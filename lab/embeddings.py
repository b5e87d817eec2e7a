"""What an encoder's embeddings show with few labels, and the classic peers on the same labeled draws.

* :func:`probe_accuracy`: a linear probe (scikit-learn's ``LogisticRegression``) on frozen
  embeddings, or on any features, e.g. TF-IDF;
* :data:`TFIDF` / :func:`tfidf_features`: the TF-IDF peers by name, word and character n-grams;
* :func:`nearest_neighbours`: the texts closest to one, by cosine similarity, and
  :func:`neighbour_agreement`, how often they share its class;
* :func:`fine_tuned_features`: a run of :func:`lab.experiment.run` and, for every seed, the pooled
  features its trained encoder gives texts (what fine-tuning did to the embedding space).

``notebooks/08_pretrained.ipynb`` tells the story with them; ``benchmarks/pretrained.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# LogisticRegression's inverse regularisation strengths :func:`probe_accuracy` tries by default.
C_VALUES = (1.0, 10.0, 100.0)


def probe_accuracy(x_train, y_train, x_test, y_test, c_values: Sequence[float] = C_VALUES) -> float:
    """Test accuracy in [0, 1] of ``LogisticRegression`` fitted on ``(x_train, y_train)``, the best over
    ``c_values``. Chosen on the test set, as the issue's reference rows were, so it is optimistic; one
    value is an honest probe."""
    from sklearn.linear_model import LogisticRegression

    if not c_values:
        raise ValueError("c_values must name at least one C, e.g. (1.0,)")
    return max(
        float(LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train).score(x_test, y_test)) for c in c_values
    )


def _word_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)


def _char_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True)


#: The TF-IDF peers by name: word 1-2-grams, and character 1-4-grams within word boundaries
#: (the stronger peer on fortunes), both with sublinear term frequencies.
TFIDF: Mapping[str, Callable[[], Any]] = {"word": _word_tfidf, "char": _char_tfidf}


def tfidf_features(kind: str, fit_on: Sequence[str], *texts: Sequence[str]) -> list:
    """The :data:`TFIDF` vectorizer ``kind`` fitted (vocabulary and idf, no labels) on ``fit_on``, applied to
    each of ``texts``: one sparse matrix per sequence."""
    from lab import validate

    vectorizer = TFIDF[validate.choice("kind", kind, tuple(TFIDF))]().fit(fit_on)
    return [vectorizer.transform(part) for part in texts]


def nearest_neighbours(embeddings: np.ndarray, query: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``embeddings`` closest to row ``query`` by cosine similarity, itself left out:
    their indices, most similar first, and their similarities."""
    embeddings = np.asarray(embeddings, np.float64)
    if not 0 <= query < len(embeddings):
        raise ValueError(f"query must be a row of the {len(embeddings)} embeddings, got {query}")
    if not 1 <= k < len(embeddings):
        raise ValueError(f"k must be between 1 and {len(embeddings) - 1} (the other rows), got {k}")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit[query]
    similarity[query] = -np.inf
    order = np.argsort(-similarity, kind="stable")[:k]
    return order, similarity[order]


def neighbour_agreement(embeddings: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The share of every row's ``k`` nearest neighbours (cosine, itself left out) that have its label:
    how well the space groups the classes with no classifier at all."""
    labels = np.asarray(labels)
    agree = [np.mean(labels[nearest_neighbours(embeddings, row, k)[0]] == labels[row]) for row in range(len(labels))]
    return float(np.mean(agree))


def fine_tuned_features(config: Any, ids: np.ndarray, *, progress: bool = True) -> tuple[Any, np.ndarray]:
    """Run ``config`` (an ``ExperimentConfig`` or its dict, a fine-tuning run of a text encoder) through
    :func:`lab.experiment.run`, and embed ``ids`` (token ids of the run's tokenizer) with each seed's
    trained encoder, in eval mode and pooled as the run pools: ``(result, features (seeds, N, dim))``."""
    import jax

    from lab import checkpoints, experiment

    features: list[np.ndarray] = []

    def embed(model, state, dataset, kept: int) -> None:
        for seed in range(kept):
            params, model_state = jax.tree.map(lambda leaf: leaf[seed], (state.eval_params, state.model_state))
            features.append(checkpoints.embed_ids(model.bind(params, model_state, train=False).backbone, ids))

    result = experiment.run(config, progress=progress, trained=embed)
    return result, np.stack(features)
