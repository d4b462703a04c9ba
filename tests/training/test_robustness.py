"""The robustness sets and how the served decision is scored on them."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import DataError
from daemon.model.classifier import Prediction
from training.calibration import choose_operating_point
from training.data import same_text_key
from training.robustness import (
    PERTURBATIONS,
    RobustnessData,
    load_robustness,
    long_email,
    perturb,
    score,
    table,
)

REPO = Path(__file__).resolve().parents[2]
NAMES: list[str] = json.loads((REPO / "data" / "banking77" / "categories.json").read_text())


@pytest.fixture(scope="module")
def robust() -> RobustnessData:
    return load_robustness(REPO / "data" / "robustness", NAMES)


def test_committed_sets_are_as_large_as_promised_and_kept_apart(robust: RobustnessData) -> None:
    """The datasheet's promises: >= 600 development questions over >= 50 intents, >= 1,000
    out-of-scope messages split into a trainable and an evaluation-only part, and nothing
    trained on (paraphrases, out-of-scope train) shares a text with what is evaluated."""
    assert len(robust.other_words) >= 600
    assert len(set(robust.other_words.labels)) >= 50
    assert len(robust.oos_train) + len(robust.oos_eval) >= 1000
    assert len(robust.oos_eval) >= 500 and len(robust.oos_train) >= 500
    dev = {same_text_key(t) for t in robust.other_words.texts}
    trained = {same_text_key(t) for t in robust.paraphrases.texts + robust.oos_train}
    assert not dev & trained
    assert not {same_text_key(t) for t in robust.oos_eval} & trained
    banking77 = {
        same_text_key(row["text"])
        for name in ("train.csv", "test.csv")
        for row in csv.DictReader((REPO / "data" / "banking77" / name).open(encoding="utf-8"))
    }
    assert not dev & banking77


def test_unknown_category_is_named(tmp_path: Path, robust: RobustnessData) -> None:
    for name in ("other_words.csv", "out_of_scope.csv", "paraphrases_train.csv"):
        (tmp_path / name).write_text((REPO / "data" / "robustness" / name).read_text())
    (tmp_path / "other_words.csv").write_text("id,text,category,style\n1,hello,no_such,terse\n")
    with pytest.raises(DataError, match=r"other_words.csv:2: unknown category 'no_such'"):
        load_robustness(tmp_path, NAMES)
    with pytest.raises(DataError, match="does not exist"):
        load_robustness(tmp_path / "missing", NAMES)


def test_perturbations_are_deterministic_and_change_the_text() -> None:
    texts = [
        "I am not able to see my top up, what is going on?",
        "Why was my card payment declined at the shop?",
    ] * 6
    once, kinds = perturb(texts, 7)
    assert (once, kinds) == perturb(texts, 7)
    assert set(kinds) == set(PERTURBATIONS)
    assert sum(a != b for a, b in zip(once, texts, strict=True)) >= len(texts) - 1
    assert PERTURBATIONS["contractions"](texts[0], random.Random(0)).startswith("I'm")
    assert PERTURBATIONS["lowercase"](texts[1], random.Random(0)) == (
        "why was my card payment declined at the shop"
    )


def test_long_email_keeps_the_question_among_other_sentences() -> None:
    question = "My card was charged twice for one coffee."
    text = long_email(question, random.Random(3))
    assert question in text
    assert len(text) > 3 * len(question)


def _p(intent: str, confidence: float, reason: str | None = None) -> Prediction:
    return Prediction(intent, confidence, reason is not None, [], reason)  # type: ignore[arg-type]


def test_score_counts_what_the_daemon_would_do() -> None:
    predictions = [
        _p("a", 0.9),  # acted, right
        _p("b", 0.8),  # acted, wrong
        _p("a", 0.3, "low_confidence"),
        _p("a", 0.9, "out_of_scope"),
    ]
    s = score("set", predictions, ["a", "a", "a", "a"])
    assert (s.accuracy, s.acted_right, s.acted_wrong) == (0.75, 0.25, 0.25)
    assert (s.abstained_low_confidence, s.abstained_out_of_scope) == (0.25, 0.25)
    assert s.curve[0] == (0.25, 0.0) and s.curve[-1] == (1.0, 0.25)
    oos = score("oos", predictions, [None] * 4)
    assert (oos.in_scope, oos.acted_wrong, oos.acted_right) == (False, 0.5, 0.0)
    rows = table({"set": s.to_json(), "oos": oos.to_json()})
    assert rows[2].startswith("| set | 4 | 75.00% | 25.00% | 25.00% |")
    assert "50.00% (acted)" in rows[3]


def _probs(rng: np.random.Generator, n: int, labels: int, right: float) -> np.ndarray:
    """Softmax-like rows over ``labels`` intents plus none-of-these; the first ``right``
    share peak on the true intent 0 with high confidence."""
    out = rng.dirichlet(np.ones(labels + 1) * 0.5, size=n).astype(np.float32)
    k = int(n * right)
    out[:k] = 0.01 / labels
    out[:k, 0] = 0.99 - 0.01
    return out


def test_operating_point_meets_its_targets_or_says_it_does_not() -> None:
    rng = np.random.default_rng(0)
    val = _probs(rng, 400, 5, 0.9)
    dev = _probs(rng, 300, 5, 0.7)
    oos = rng.dirichlet(np.ones(6) * 0.5, size=300).astype(np.float32)
    oos[:, 5] += 2.0
    oos /= oos.sum(axis=1, keepdims=True)
    point = choose_operating_point(
        (val, np.zeros(400, int)),
        (dev, np.zeros(300, int)),
        oos,
        5,
        max_acted_wrong=0.03,
        max_oos_acted=0.05,
        min_val_selective_accuracy=0.97,
        min_coverage=0.5,
    )
    assert point.feasible
    assert point.chosen_on["dev_acted_wrong"] <= 0.03
    assert point.chosen_on["oos_acted"] <= 0.05
    assert point.chosen_on["val_selective_accuracy"] >= 0.97
    assert point.chosen_on["val_coverage"] >= 0.85  # it does not abstain more than needed
    impossible = choose_operating_point(
        (val, np.zeros(400, int)),
        (dev, np.zeros(300, int)),
        oos,
        5,
        max_acted_wrong=0.0001,
        max_oos_acted=0.05,
        min_val_selective_accuracy=0.97,
        min_coverage=0.99,
    )
    assert not impossible.feasible
