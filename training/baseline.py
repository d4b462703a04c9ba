"""The baseline reported beside every model: TF-IDF (word + char n-grams) + logistic regression."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline


@dataclass(frozen=True)
class BaselineResult:
    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    test_predictions: npt.NDArray[np.int64]
    seconds: float


def make_baseline(seed: int, c: float = 10.0) -> Pipeline:
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            (
                "char",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
            ),
        ]
    )
    return Pipeline(
        [("tfidf", features), ("lr", LogisticRegression(C=c, max_iter=2000, random_state=seed))]
    )


def run_baseline(
    train: tuple[Sequence[str], Sequence[int]],
    val: tuple[Sequence[str], Sequence[int]],
    test: tuple[Sequence[str], Sequence[int]],
    seed: int,
) -> BaselineResult:
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    model = make_baseline(seed)
    model.fit(list(train[0]), list(train[1]))
    val_pred = model.predict(list(val[0]))
    test_pred = np.asarray(model.predict(list(test[0])), dtype=np.int64)
    return BaselineResult(
        val_accuracy=float((val_pred == np.asarray(val[1])).mean()),
        test_accuracy=float((test_pred == np.asarray(test[1])).mean()),
        test_macro_f1=float(f1_score(test[1], test_pred, average="macro")),
        test_predictions=test_pred,
        seconds=time.perf_counter() - started,
    )
