"""How retrain prepares corrections: de-duplicated, validated, split stably."""

from __future__ import annotations

import pytest

from daemon.errors import ConfigError, DataError
from training.config import RetrainConfig
from training.retrain import Example, Scores, gate, prepare

LABELS = ["card_arrival", "card_delivery_estimate", "top_up_failed"]


def examples(n: int) -> list[Example]:
    return [Example(f"where is my card number {i}", "card_delivery_estimate") for i in range(n)]


def test_split_is_stable_and_disjoint() -> None:
    train, holdout = prepare(examples(60), LABELS, 0.25, 5)
    again = prepare(list(reversed(examples(60))), LABELS, 0.25, 5)
    assert {e.text for e in holdout} == {e.text for e in again[1]}  # order does not matter
    assert not {e.text for e in train} & {e.text for e in holdout}
    assert len(train) + len(holdout) == 60
    assert 5 <= len(holdout) <= 30


def test_duplicates_keep_the_latest_label() -> None:
    items = [
        *examples(40),
        Example("Where is  my card number 3", "card_arrival"),  # same text, corrected again
    ]
    train, holdout = prepare(items, LABELS, 0.25, 5)
    merged = {e.text.lower().replace("  ", " "): e.label for e in train + holdout}
    assert len(train) + len(holdout) == 40
    assert merged["where is my card number 3"] == "card_arrival"


def test_unknown_intent_and_empty_text_are_named() -> None:
    with pytest.raises(DataError, match="correction 2: unknown intent 'lost_wallet'"):
        prepare([examples(1)[0], Example("x", "lost_wallet")], LABELS, 0.25, 1)
    with pytest.raises(DataError, match="correction 1: empty text"):
        prepare([Example("  ", "card_arrival")], LABELS, 0.25, 1)


def test_too_few_corrections_say_how_many_are_needed() -> None:
    with pytest.raises(ConfigError, match="needs at least 5 held out"):
        prepare(examples(4), LABELS, 0.25, 5)


@pytest.mark.parametrize(
    ("before", "after", "promoted", "why"),
    [
        ((0.9351, 0 / 9), (0.9377, 1 / 9), False, "+1 right; it needs +2"),  # one lucky guess
        ((0.9351, 0 / 9), (0.9377, 2 / 9), True, "promoted"),
        ((0.9351, 0 / 9), (0.9290, 9 / 9), False, "loses 0.61 points on banking77"),
        ((0.9351, 3 / 9), (0.9351, 3 / 9), False, "not better"),
    ],
)
def test_the_gate(
    before: tuple[float, float], after: tuple[float, float], promoted: bool, why: str
) -> None:
    options = RetrainConfig(tolerance_points=0.5, min_holdout_gain=2)
    decided, reason = gate(Scores(*before), Scores(*after), 9, options)
    assert decided is promoted
    assert why in reason
