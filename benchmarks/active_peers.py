"""Active-learning selection: lab's strategies against scikit-activeml's on the same embeddings.

    python benchmarks/active_peers.py [--pools digits fashion_mnist fortunes_topics] [--seeds 0 1 2 3 4]
        [--batch 10] [--dims 64]

Embeddings are given, the same to both sides: the training pool's inputs (digits: the 64 pixels;
Fashion-MNIST: PCA to ``--dims`` of the 784 pixels; fortunes_topics: TF-IDF word 1-2-grams reduced by
truncated SVD to ``--dims``), standardised. Two measurements per pool:

* **speed** — wall time of one query of ``--batch`` examples: the cold start (nothing labeled) for
  TypiClust and ProbCover, ``--batch`` random labels then a query for CoreSet; lab's first call
  (compilation included) and a second, warm one, against scikit-activeml's
  (``TypiClust``, ``ProbCover``, ``CoreSet``; ``UncertaintySampling`` is not timed: both sides take
  the top scores of the same probabilities). ProbCover is skipped above 10,000 points on both sides:
  scikit-activeml's computes the dense n x n distance matrix (60,000^2 float64 = 29 GB), and lab's
  materialises the δ-ball graph, whose edges grow as n times the ball size.
* **quality** — the test accuracy of a logistic regression trained on each seed's cold-start picks
  (a learner-independent check that both sides pick as well), mean ± std over seeds, with
  unstratified random and the stratified oracle for reference.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import jax
import numpy as np
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lab import active, data


def embeddings(name: str, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool embeddings, pool labels, test embeddings, test labels), the same transform for both."""
    if name == "fortunes_topics":
        from lab import text

        texts = text.load_texts(name)
        tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(texts.train)
        svd = TruncatedSVD(dims, random_state=0).fit(tfidf.transform(texts.train))
        train, test = (svd.transform(tfidf.transform(t)) for t in (texts.train, texts.test))
        y_train, y_test = np.asarray(texts.y_train), np.asarray(texts.y_test)
    else:
        dataset = data.load(name)
        train, test = (x.reshape(len(x), -1) for x in (dataset.x_train, dataset.x_test))
        if train.shape[1] > dims:
            pca = PCA(dims, random_state=0).fit(train)
            train, test = pca.transform(train), pca.transform(test)
        y_train, y_test = dataset.y_train, dataset.y_test
    scaler = StandardScaler().fit(train)
    return scaler.transform(train).astype(np.float32), y_train, scaler.transform(test).astype(np.float32), y_test


def timed(function, *args, **kwargs):
    tic = time.perf_counter()
    out = function(*args, **kwargs)
    return out, time.perf_counter() - tic


def lab_query(name, x, labeled, batch, seed, num_classes):
    return np.asarray(
        active.query(name, jax.random.key(seed), labeled, batch, embeddings=x, num_classes=num_classes)
    )


def peer_query(name, x, labeled_y, batch, seed, num_classes):
    from skactiveml import pool

    peers = {
        "typiclust": lambda: pool.TypiClust(random_state=seed),
        "probcover": lambda: pool.ProbCover(n_classes=num_classes, random_state=seed),
        "coreset": lambda: pool.CoreSet(random_state=seed),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(peers[name]().query(x, labeled_y, batch_size=batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", nargs="+", default=["digits", "fashion_mnist", "fortunes_topics"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--quality-pools", nargs="*", default=["digits", "fortunes_topics"])
    args = parser.parse_args()
    report = {}
    for pool_name in args.pools:
        x, y, x_test, y_test = embeddings(pool_name, args.dims)
        n, classes = len(x), int(y.max()) + 1
        rows = {}
        for strategy in ("typiclust", "coreset", "probcover"):
            labeled = np.zeros(n, bool)
            if strategy == "coreset":
                labeled[np.random.default_rng(0).choice(n, args.batch, replace=False)] = True
            labeled_y = np.where(labeled, y, np.nan)
            if strategy == "probcover" and n > 10_000:
                continue
            _, first = timed(lab_query, strategy, x, labeled, args.batch, 0, classes)
            _, warm = timed(lab_query, strategy, x, labeled, args.batch, 1, classes)
            _, peer = timed(peer_query, strategy, x, labeled_y, args.batch, 0, classes)
            rows[strategy] = {"lab_first_s": round(first, 3), "lab_warm_s": round(warm, 3),
                              "skactiveml_s": round(peer, 3)}  # fmt: skip
            print(pool_name, n, strategy, rows[strategy], flush=True)
        report[pool_name] = {"n": n, "speed": rows}
        if pool_name not in args.quality_pools:
            continue
        quality = {}
        for strategy in ("random", "stratified_random", "typiclust", "probcover"):
            for side in ("lab", "skactiveml"):
                if side == "skactiveml" and strategy in ("random", "stratified_random"):
                    continue
                scores = []
                for seed in args.seeds:
                    empty = np.zeros(n, bool)
                    if side == "lab":
                        picked = active.query(
                            strategy, jax.random.key(seed), empty, args.batch, embeddings=x, labels=y,
                            num_classes=classes,
                        )  # fmt: skip
                    else:
                        picked = peer_query(strategy, x, np.full(n, np.nan), args.batch, seed, classes)
                    if len(np.unique(y[picked])) < 2:
                        scores.append(float(np.mean(y_test == y[picked][0])))
                        continue
                    model = LogisticRegression(max_iter=2000).fit(x[picked], y[picked])
                    scores.append(float(model.score(x_test, y_test)))
                quality[f"{side} {strategy}"] = {"mean": round(100 * float(np.mean(scores)), 1),
                                                 "std": round(100 * float(np.std(scores)), 1)}  # fmt: skip
                print(pool_name, side, strategy, quality[f"{side} {strategy}"], flush=True)
        report[pool_name]["quality"] = quality
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
