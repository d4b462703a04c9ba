"""Rules: turn (intent, confidence, headers) into actions.

A rules file has named ``groups`` of intents, an ordered list of ``rules`` and an
``abstain`` default. The first matching rule wins unless it says ``continue: true``, in
which case its actions are kept and matching goes on. A rule that continues cannot
move (a message can be moved once). Rules are validated against the bundle's labels:
an unknown intent or group is an error naming the file, the rule and the nearest names.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.config.yaml_settings import describe_validation_error, read_yaml_mapping
from daemon.core.actions import Plan
from daemon.errors import ConfigError

# An IMAP flag-keyword is an atom (RFC 3501): printable ASCII but ( ) { % * " \ ]
_KEYWORD_OK = re.compile(r"^[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+$")
_TEMPLATE_FIELDS = {"intent", "group", "rule"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_template(value: str) -> str:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad template {value!r}: {exc}") from exc
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"template {value!r} uses {', '.join(sorted(unknown))}; "
            f"available: {', '.join(sorted(_TEMPLATE_FIELDS))}"
        )
    return value


class MoveAction(_Strict):
    move: str = Field(min_length=1, description="Folder to move the message to.")


class CopyAction(_Strict):
    copy_to: str = Field(alias="copy", min_length=1, description="Folder to copy it to.")


class KeywordAction(_Strict):
    keyword: str = Field(min_length=1, description="IMAP keyword; templated: $intent_{intent}.")

    @field_validator("keyword")
    @classmethod
    def _keyword(cls, value: str) -> str:
        _check_template(value)
        if value.startswith("\\"):
            raise ValueError("system flags (\\Seen, \\Flagged) are set with flag / mark_read")
        return value


class FlagAction(_Strict):
    flag: Literal[True]


class MarkReadAction(_Strict):
    mark_read: Literal[True]


_ACTION_KEYS = {
    "move": "move",
    "copy": "copy",
    "keyword": "keyword",
    "flag": "flag",
    "mark_read": "mark_read",
}


def _action_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = [k for k in value if k in _ACTION_KEYS]
        return keys[0] if len(keys) == 1 else None
    if isinstance(value, BaseModel):
        kinds: dict[type[BaseModel], str] = {
            MoveAction: "move",
            CopyAction: "copy",
            KeywordAction: "keyword",
            FlagAction: "flag",
            MarkReadAction: "mark_read",
        }
        return kinds.get(type(value))
    return None


Action = Annotated[
    Annotated[MoveAction, Tag("move")]
    | Annotated[CopyAction, Tag("copy")]
    | Annotated[KeywordAction, Tag("keyword")]
    | Annotated[FlagAction, Tag("flag")]
    | Annotated[MarkReadAction, Tag("mark_read")],
    Discriminator(
        _action_kind,
        custom_error_type="unknown_action",
        custom_error_message="an action is one of move, copy, keyword, flag, mark_read",
    ),
]


def _normalise_action(raw: Any) -> Any:
    """Allow the bare words ``flag`` and ``mark_read`` in an action list."""
    if raw in ("flag", "mark_read"):
        return {raw: True}
    return raw


class Match(_Strict):
    intent: str | list[str] | None = None
    group: str | list[str] | None = None
    any: bool = Field(default=False, alias="*", description="Match every intent.")

    @model_validator(mode="after")
    def _one(self) -> Match:
        given = sum(x is not None for x in (self.intent, self.group)) + int(self.any)
        if given != 1:
            raise ValueError("give exactly one of intent, group or '*'")
        return self

    def intents(self) -> list[str]:
        return [self.intent] if isinstance(self.intent, str) else list(self.intent or [])

    def groups(self) -> list[str]:
        return [self.group] if isinstance(self.group, str) else list(self.group or [])


class HeaderConditions(_Strict):
    from_: str | None = Field(default=None, alias="from", description="Regex on From.")
    to: str | None = Field(default=None, description="Regex on To and Cc.")
    subject: str | None = Field(default=None, description="Regex on Subject.")

    @field_validator("from_", "to", "subject")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class Rule(_Strict):
    name: str | None = None
    match: Match
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    max_confidence: float = Field(default=1.0, ge=0, le=1)
    headers: HeaderConditions | None = None
    actions: list[Action] = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue")

    @field_validator("match", mode="before")
    @classmethod
    def _star(cls, value: Any) -> Any:
        return {"*": True} if value == "*" else value

    @field_validator("actions", mode="before")
    @classmethod
    def _bare_words(cls, value: Any) -> Any:
        return [_normalise_action(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if self.min_confidence > self.max_confidence:
            raise ValueError("min_confidence is above max_confidence")
        moves = [a for a in self.actions if isinstance(a, MoveAction)]
        if len(moves) > 1:
            raise ValueError("a rule can move a message only once")
        if moves and self.continue_:
            raise ValueError("a rule that moves cannot continue (the message is gone)")
        return self


class Abstain(_Strict):
    actions: list[Action] = Field(default_factory=list, description="Empty: leave alone.")

    @field_validator("actions", mode="before")
    @classmethod
    def _bare_words(cls, value: Any) -> Any:
        return [_normalise_action(v) for v in value] if isinstance(value, list) else value


class RulesFile(_Strict):
    version: Literal[1] = 1
    keyword_max_length: int = Field(
        default=50,
        ge=16,
        le=1000,
        description="Longer keywords are shortened (Dovecot's mail_max_keyword_length is 50).",
    )
    groups: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    abstain: Abstain = Abstain()
    out_of_scope: Abstain | None = Field(
        default=None,
        description="Actions for mail the model finds out of scope (none of its intents; "
        "bundles with a none-of-these output). Unset: the abstain actions.",
    )


@dataclass(frozen=True)
class Headers:
    from_: str = ""
    to: str = ""
    subject: str = ""


@dataclass
class _Compiled:
    name: str
    intents: frozenset[str] | None  # None: every intent
    min_confidence: float
    max_confidence: float
    from_re: re.Pattern[str] | None
    to_re: re.Pattern[str] | None
    subject_re: re.Pattern[str] | None
    actions: list[Any]
    continue_: bool
    group_of: dict[str, str] = field(default_factory=dict)


def _nearest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


class Rules:
    """Validated, compiled rules for one set of labels."""

    def __init__(self, spec: RulesFile, labels: list[str], source: str = "rules") -> None:
        self.source = source
        self.spec = spec
        self.labels = labels
        label_set = set(labels)
        for group, members in spec.groups.items():
            for i, intent in enumerate(members):
                if intent not in label_set:
                    raise ConfigError(
                        f"{source}: group {group!r} item {i}: unknown intent {intent!r}"
                        f"{_nearest(intent, labels)}"
                    )
        self.group_of: dict[str, str] = {}
        for group, members in spec.groups.items():
            for intent in members:
                self.group_of.setdefault(intent, group)
        self._rules: list[_Compiled] = []
        for index, rule in enumerate(spec.rules):
            label = f"rule {index}" + (f" ({rule.name})" if rule.name else "")
            intents: set[str] | None
            if rule.match.any:
                intents = None
            else:
                intents = set()
                for intent in rule.match.intents():
                    if intent not in label_set:
                        raise ConfigError(
                            f"{source}: {label}: unknown intent {intent!r}"
                            f"{_nearest(intent, labels)}"
                        )
                    intents.add(intent)
                for group in rule.match.groups():
                    if group not in spec.groups:
                        raise ConfigError(
                            f"{source}: {label}: unknown group {group!r}"
                            f"{_nearest(group, list(spec.groups)) or _known(spec.groups)}"
                        )
                    intents.update(spec.groups[group])
            self._check_keywords(label, list(rule.actions), rule.name or f"rule-{index}")
            headers = rule.headers or HeaderConditions()
            self._rules.append(
                _Compiled(
                    name=rule.name or f"rule-{index}",
                    intents=frozenset(intents) if intents is not None else None,
                    min_confidence=rule.min_confidence,
                    max_confidence=rule.max_confidence,
                    from_re=re.compile(headers.from_, re.IGNORECASE) if headers.from_ else None,
                    to_re=re.compile(headers.to, re.IGNORECASE) if headers.to else None,
                    subject_re=re.compile(headers.subject, re.IGNORECASE)
                    if headers.subject
                    else None,
                    actions=list(rule.actions),
                    continue_=rule.continue_,
                )
            )

        self._check_keywords("abstain", list(self.spec.abstain.actions), "abstain")
        if self.spec.out_of_scope is not None:
            self._check_keywords(
                "out_of_scope", list(self.spec.out_of_scope.actions), "out-of-scope"
            )

    def _keyword(self, template: str, context: dict[str, str]) -> str:
        return shorten_keyword(template.format(**context), self.spec.keyword_max_length)

    def _check_keywords(self, where: str, actions: list[Any], rule_name: str) -> None:
        """Every keyword a template can produce must be a valid IMAP keyword."""
        for action in actions:
            if not isinstance(action, KeywordAction):
                continue
            for intent in self.labels:
                context = {
                    "intent": intent,
                    "group": self.group_of.get(intent, "other"),
                    "rule": rule_name,
                }
                keyword = self._keyword(action.keyword, context)
                if not _KEYWORD_OK.match(keyword):
                    raise ConfigError(
                        f"{self.source}: {where}: keyword {action.keyword!r} gives "
                        f"{keyword!r} for intent {intent!r}, not a valid IMAP keyword"
                    )

    def folders(self) -> set[str]:
        """Every folder a rule may move or copy to (created on demand)."""
        out: set[str] = set()
        left_alone = [self.spec.abstain.actions]
        if self.spec.out_of_scope is not None:
            left_alone.append(self.spec.out_of_scope.actions)
        for actions in [r.actions for r in self._rules] + left_alone:
            for action in actions:
                if isinstance(action, MoveAction):
                    out.add(action.move)
                elif isinstance(action, CopyAction):
                    out.add(action.copy_to)
        return out

    def intents_filed_in(self, folder: str) -> list[str]:
        """The intents the rules move to ``folder`` when confident (header conditions
        aside): how a message the user moved there is mapped back to an intent."""
        return [
            label
            for label in self.labels
            if self.decide(label, 1.0, False, Headers()).move == folder
        ]

    def intent_keywords(self) -> dict[str, str]:
        """Keywords that name exactly one intent (``$intent_card_arrival``), mapped to it:
        how a user's change of the intent keyword is read back as a correction."""
        owners: dict[str, set[str]] = {}
        for label in self.labels:
            for keyword in self.decide(label, 1.0, False, Headers()).keywords:
                owners.setdefault(keyword, set()).add(label)
        return {k: next(iter(v)) for k, v in owners.items() if len(v) == 1}

    def review_plan(self) -> Plan:
        """For messages the model could not classify: the abstain default's tags, but never
        a move or copy (the message stays where it is)."""
        plan = self._plan(
            "unclassified",
            self.spec.abstain.actions,
            {"intent": "unknown", "group": "unknown", "rule": "unclassified"},
            abstained=True,
        )
        return replace(plan, move=None, copies=())

    def decide(
        self,
        intent: str,
        confidence: float,
        abstain: bool,
        headers: Headers,
        abstain_reason: str | None = None,
    ) -> Plan:
        """The plan for one classified message (``abstain_reason`` ``out_of_scope`` takes
        the rules file's ``out_of_scope`` actions when it has them)."""
        context = {"intent": intent, "group": self.group_of.get(intent, "other")}
        if abstain:
            if abstain_reason == "out_of_scope" and self.spec.out_of_scope is not None:
                context["rule"] = "out-of-scope"
                return self._plan(
                    "out-of-scope", self.spec.out_of_scope.actions, context, abstained=True
                )
            context["rule"] = "abstain"
            return self._plan("abstain", self.spec.abstain.actions, context, abstained=True)
        collected: list[Any] = []
        names: list[str] = []
        for rule in self._rules:
            if rule.intents is not None and intent not in rule.intents:
                continue
            if not rule.min_confidence <= confidence <= rule.max_confidence:
                continue
            if rule.from_re and not rule.from_re.search(headers.from_):
                continue
            if rule.to_re and not rule.to_re.search(headers.to):
                continue
            if rule.subject_re and not rule.subject_re.search(headers.subject):
                continue
            names.append(rule.name)
            context["rule"] = rule.name
            collected.extend(rule.actions)
            if not rule.continue_:
                break
        if not names:
            return Plan(rule="no-match")
        return self._plan("+".join(names), collected, context)

    def _plan(
        self, name: str, actions: list[Any], context: dict[str, str], abstained: bool = False
    ) -> Plan:
        keywords: list[str] = []
        copies: list[str] = []
        move: str | None = None
        flag = mark_read = False
        for action in actions:
            if isinstance(action, KeywordAction):
                keyword = self._keyword(action.keyword, context)
                if keyword not in keywords:
                    keywords.append(keyword)
            elif isinstance(action, CopyAction):
                if action.copy_to not in copies:
                    copies.append(action.copy_to)
            elif isinstance(action, MoveAction):
                move = move or action.move
            elif isinstance(action, FlagAction):
                flag = True
            elif isinstance(action, MarkReadAction):
                mark_read = True
        return Plan(name, tuple(keywords), flag, mark_read, tuple(copies), move, abstained)


def shorten_keyword(keyword: str, limit: int) -> str:
    """``keyword`` if it fits, else a stable shortened form ending in ``~`` + 6 hex digits."""
    if len(keyword) <= limit:
        return keyword
    digest = hashlib.sha1(keyword.encode(), usedforsecurity=False).hexdigest()[:6]
    return f"{keyword[: limit - 7]}~{digest}"


def _known(groups: dict[str, list[str]]) -> str:
    return f"; groups: {', '.join(groups)}" if groups else "; no groups are defined"


def load_rules(path: Path, labels: list[str]) -> Rules:
    """Read, validate and compile a rules file against a bundle's labels."""
    raw = read_yaml_mapping(path, "rules file")
    try:
        spec = RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, f"rules file {path}")) from exc
    rules = Rules(spec, labels, source=f"rules file {path}")
    for folder in rules.folders():
        if folder.strip() != folder or not folder or "\n" in folder or "\r" in folder:
            raise ConfigError(f"rules file {path}: folder name {folder!r} is not usable")
    return rules
