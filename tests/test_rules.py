"""Rules are applied as written and validated against the bundle's labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from daemon.core.rules import Headers, Rules, RulesFile, load_rules
from daemon.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
LABELS = [
    "card_arrival",
    "lost_or_stolen_card",
    "compromised_card",
    "exchange_rate",
    "top_up_failed",
]


def rules(spec: dict[str, object], labels: list[str] = LABELS) -> Rules:
    return Rules(RulesFile.model_validate(spec), labels, "test rules")


SPEC = {
    "groups": {
        "urgent": ["lost_or_stolen_card", "compromised_card"],
        "cards": ["card_arrival", "lost_or_stolen_card", "compromised_card"],
    },
    "rules": [
        {
            "name": "urgent",
            "match": {"group": "urgent"},
            "min_confidence": 0.5,
            "actions": ["flag", {"keyword": "$urgent"}],
            "continue": True,
        },
        {
            "name": "boss",
            "match": "*",
            "headers": {"from": r"boss@corp\.example"},
            "actions": [{"copy": "Boss"}, {"keyword": "$boss"}],
            "continue": True,
        },
        {
            "name": "cards",
            "match": {"group": "cards"},
            "actions": [{"keyword": "$intent_{intent}"}, {"move": "Triage/Cards"}],
        },
        {
            "name": "fx",
            "match": {"intent": ["exchange_rate"]},
            "max_confidence": 0.9,
            "actions": ["mark_read"],
        },
        {"name": "rest", "match": "*", "actions": [{"move": "Triage/Other"}]},
    ],
    "abstain": {"actions": [{"keyword": "$review"}]},
}


def test_first_match_wins_and_continue_accumulates() -> None:
    r = rules(SPEC)
    plan = r.decide("compromised_card", 0.8, False, Headers())
    assert plan.rule == "urgent+cards"
    assert plan.flag
    assert plan.keywords == ("$urgent", "$intent_compromised_card")
    assert plan.move == "Triage/Cards"
    assert plan.describe() == (
        "keyword $urgent, keyword $intent_compromised_card, flag, move to Triage/Cards"
    )


def test_confidence_bounds() -> None:
    r = rules(SPEC)
    low = r.decide("compromised_card", 0.3, False, Headers())
    assert low.rule == "cards"
    assert not low.flag
    assert r.decide("exchange_rate", 0.95, False, Headers()).rule == "rest"
    assert r.decide("exchange_rate", 0.5, False, Headers()).mark_read


def test_header_conditions() -> None:
    r = rules(SPEC)
    plan = r.decide("top_up_failed", 0.9, False, Headers(from_="The Boss <boss@corp.example>"))
    assert plan.rule == "boss+rest"
    assert plan.copies == ("Boss",)
    assert plan.move == "Triage/Other"
    assert r.decide("top_up_failed", 0.9, False, Headers(from_="x@y")).rule == "rest"


def test_abstention_uses_the_default() -> None:
    plan = rules(SPEC).decide("compromised_card", 0.99, True, Headers())
    assert plan.abstained
    assert plan.keywords == ("$review",)
    assert plan.move is None


def test_no_match_leaves_alone() -> None:
    plan = rules({"rules": [{"match": {"intent": "card_arrival"}, "actions": ["flag"]}]}).decide(
        "exchange_rate", 0.9, False, Headers()
    )
    assert plan.is_noop
    assert plan.describe() == "leave alone"


def test_long_keywords_are_shortened_stably() -> None:
    spec = {
        "keyword_max_length": 20,
        "rules": [{"match": "*", "actions": [{"keyword": "$intent_{intent}"}]}],
    }
    plan = rules(spec).decide("lost_or_stolen_card", 0.9, False, Headers())
    (keyword,) = plan.keywords
    assert len(keyword) == 20 and keyword.startswith("$intent_lost_~")
    assert rules(spec).decide("lost_or_stolen_card", 0.9, False, Headers()).keywords == (keyword,)
    other = rules(spec).decide("compromised_card", 0.9, False, Headers()).keywords[0]
    assert other != keyword
    # "$intent_card_arrival" is exactly 20 characters: it fits and is kept as it is.
    assert rules(spec).decide("card_arrival", 0.9, False, Headers()).keywords == (
        "$intent_card_arrival",
    )


def test_keyword_templates_are_checked_for_every_label() -> None:
    with pytest.raises(ConfigError, match=r"gives '\$x_a b' for intent 'a b'"):
        rules(
            {"rules": [{"name": "x", "match": "*", "actions": [{"keyword": "$x_{intent}"}]}]},
            labels=["ok", "a b"],
        )


def test_plan_round_trips_through_json() -> None:
    plan = rules(SPEC).decide("compromised_card", 0.8, False, Headers())
    from daemon.core.actions import Plan

    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"rules": [{"match": {"intent": "card_arival"}, "actions": ["flag"]}]},
            "rule 0: unknown intent 'card_arival'; did you mean card_arrival",
        ),
        (
            {
                "groups": {"cards": ["card_arrival"]},
                "rules": [{"name": "x", "match": {"group": "card"}, "actions": ["flag"]}],
            },
            "rule 0 (x): unknown group 'card'; did you mean cards",
        ),
        (
            {"groups": {"g": ["exchange_rat"]}},
            "group 'g' item 0: unknown intent 'exchange_rat'; did you mean exchange_rate",
        ),
    ],
)
def test_unknown_names_are_errors_with_suggestions(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rules(spec)


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ({"match": "*", "actions": [{"move": "A"}], "continue": True}, "cannot continue"),
        ({"match": "*", "actions": [{"move": "A"}, {"move": "B"}]}, "only once"),
        ({"match": "*", "actions": [{"explode": "A"}]}, "one of move, copy, keyword"),
        ({"match": "*", "actions": []}, "actions"),
        ({"match": {"intent": "a", "group": "b"}, "actions": ["flag"]}, "exactly one"),
        ({"match": "*", "headers": {"subject": "("}, "actions": ["flag"]}, "regular expression"),
        ({"match": "*", "actions": [{"keyword": "$x_{nope}"}]}, "available: group, intent, rule"),
        (
            {"match": "*", "min_confidence": 0.9, "max_confidence": 0.1, "actions": ["flag"]},
            "above max_confidence",
        ),
    ],
)
def test_invalid_rules_name_the_rule(
    tmp_path: Path, rule: dict[str, object], fragment: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": [{"match": "*", "actions": ["flag"]}, rule]}))
    with pytest.raises(ConfigError) as info:
        load_rules(path, LABELS)
    assert f"rules file {path}: rules.1" in str(info.value)
    assert fragment in str(info.value)


def test_example_rules_cover_every_banking77_intent(banking77_dir: Path) -> None:
    labels = json.loads((banking77_dir / "categories.json").read_text())
    r = load_rules(REPO / "configs/rules.example.yaml", labels)
    folders = set()
    for intent in labels:
        plan = r.decide(intent, 0.9, False, Headers())
        assert plan.move and plan.move.startswith("Triage/"), intent
        expected = f"$intent_{intent}"
        if len(expected) > 50:  # shortened to fit Dovecot's keyword length limit
            expected = expected[:43] + "~"
        assert any(k.startswith(expected) and len(k) <= 50 for k in plan.keywords), plan
        folders.add(plan.move)
    assert 9 <= len(folders) <= 11
    assert r.decide("lost_or_stolen_card", 0.9, False, Headers()).flag
    assert r.decide("compromised_card", 0.9, False, Headers()).flag
    assert not r.decide("card_arrival", 0.9, False, Headers()).flag
    assert r.decide("card_arrival", 0.2, True, Headers()).move is None
