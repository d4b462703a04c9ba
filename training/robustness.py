"""Robustness evaluation: is the model right on mail written by other people?

banking77's test queries were written the way its training queries were. Beside them,
every training report and ``cleaninbox evaluate`` score the served decision (the daemon's
own :class:`~daemon.model.classifier.Classifier`, thresholds included) on:

- ``other_words``: banking questions phrased unlike banking77 (terse chat, voice
  assistant, long emails, non-native English, typos, roundabout wording), written for this
  project and labelled twice independently (``data/robustness/DATASHEET.md``). A
  development set: it chooses recipes and thresholds and is never trained on.
- ``long_emails``: each ``other_words`` question inside a longer email whose other
  sentences carry no intent (greetings, context, pleasantries).
- ``perturbed``: banking77 test with one perturbation each (typos, contractions, filler,
  reordering, lower case without punctuation, an email wrapper).
- ``out_of_scope``: messages that are none of the 77 intents (the evaluation-only part).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import DataError
from daemon.model.bundle import sha256_file
from daemon.model.classifier import Prediction
from daemon.model.samples import render_email
from daemon.model.text import email_to_text
from training.data import Split, read_labelled, read_rows

OTHER_WORDS = "other_words.csv"
OUT_OF_SCOPE = "out_of_scope.csv"
PARAPHRASES = "paraphrases_train.csv"
FILES = (OTHER_WORDS, OUT_OF_SCOPE, PARAPHRASES)
#: The perturbed and long-email sets are the same for every model and run.
EVAL_SEED = 2026


@dataclass(frozen=True)
class RobustnessData:
    """The project's own sets (``data/robustness/``)."""

    other_words: Split  # development: recipes and thresholds, never trained on
    oos_train: list[str]  # out of scope, may be trained or calibrated on
    oos_eval: list[str]  # out of scope, evaluation only
    paraphrases: Split  # training-only paraphrases, written apart from other_words
    sha256: dict[str, str]


def load_robustness(directory: Path, label_names: Sequence[str]) -> RobustnessData:
    """Read and check the robustness sets; every problem is a DataError naming the file."""
    if not directory.is_dir():
        raise DataError(f"robustness data directory {directory} does not exist")
    oos_train: list[str] = []
    oos_eval: list[str] = []
    for line, row in enumerate(read_rows(directory / OUT_OF_SCOPE, ("text", "split")), start=2):
        if row["split"] not in ("train", "eval"):
            raise DataError(f"{directory / OUT_OF_SCOPE}:{line}: split must be train or eval")
        (oos_train if row["split"] == "train" else oos_eval).append(row["text"].strip())
    return RobustnessData(
        other_words=read_labelled(directory / OTHER_WORDS, label_names),
        oos_train=oos_train,
        oos_eval=oos_eval,
        paraphrases=read_labelled(directory / PARAPHRASES, label_names),
        sha256={name: sha256_file(directory / name) for name in FILES},
    )


# -- perturbations of banking77 test --------------------------------------------------------

_CONTRACTIONS = (
    ("I am", "I'm"),
    ("I have", "I've"),
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("did not", "didn't"),
    ("cannot", "can't"),
    ("can not", "can't"),
    ("is not", "isn't"),
    ("has not", "hasn't"),
    ("have not", "haven't"),
    ("it is", "it's"),
    ("what is", "what's"),
    ("I would", "I'd"),
    ("will not", "won't"),
)
_FILLERS_BEFORE = (
    "um, ",
    "so basically ",
    "quick question: ",
    "hey there, ",
    "sorry to bother you but ",
    "hi, hope you're well. ",
    "ok so ",
)
_FILLERS_AFTER = (" thanks!", " please help", " lol", " asap", " cheers", " thx in advance")
_KEYBOARD = "qwertyuiop asdfghjkl zxcvbnm"


def _typo(word: str, rng: random.Random) -> str:
    """One realistic slip in ``word``: two letters swapped, dropped, doubled or a
    neighbouring key."""
    j = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[: j - 1] + word[j] + word[j - 1] + word[j + 1 :]
    if kind == 1:
        return word[:j] + word[j + 1 :]
    if kind == 2:
        return word[:j] + word[j] + word[j:]
    key = _KEYBOARD.find(word[j].lower())
    if 0 <= key < len(_KEYBOARD) - 1 and _KEYBOARD[key + 1] != " ":
        return word[:j] + _KEYBOARD[key + 1] + word[j + 1 :]
    return word[:j] + word[j + 1 :]


def _typos(text: str, rng: random.Random) -> str:
    return " ".join(
        _typo(w, rng) if len(w) >= 4 and rng.random() < 0.3 else w for w in text.split(" ")
    )


def _contractions(text: str, rng: random.Random) -> str:
    out = text
    for long, short in _CONTRACTIONS:
        pattern = re.compile(rf"\b{re.escape(long)}\b", re.IGNORECASE)
        if pattern.search(out):
            out = pattern.sub(short, out)
        else:
            out = re.sub(rf"\b{re.escape(short)}\b", long, out, flags=re.IGNORECASE)
    return out if out != text else text.replace("?", " ?")


def _filler(text: str, rng: random.Random) -> str:
    before = rng.choice(_FILLERS_BEFORE)
    after = rng.choice(_FILLERS_AFTER) if rng.random() < 0.6 else ""
    return before + text[:1].lower() + text[1:] + after


_TRAILING_PHRASE = re.compile(
    r"^.*\S\s((?:at|for|on|in|with|after|from|to)\s[^,]+)$", re.IGNORECASE
)


def _lower_first(text: str) -> str:
    return text if text.startswith(("I ", "I'")) else text[:1].lower() + text[1:]


def _reorder(text: str, rng: random.Random) -> str:
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", text) if s]
    if len(sentences) > 1:
        rng.shuffle(sentences)
        return " ".join(sentences)
    end = text[-1] if text and text[-1] in "?.!" else ""
    head, sep, tail = text.partition(", ")
    if not (sep and tail):  # front a trailing phrase: "declined at the shop?" -> "At the shop, ..."
        match = _TRAILING_PHRASE.search(text.rstrip("?.!"))
        if match is None:
            return text
        phrase = match.group(1)
        rest = text.rstrip("?.!")[: match.start(1)].rstrip()
        return f"{phrase[:1].upper()}{phrase[1:]}, {_lower_first(rest)}{end}"
    return f"{tail.rstrip('?.!')}, {_lower_first(head)}{end}"


def _lowercase(text: str, rng: random.Random) -> str:
    return re.sub(r"[^\w\s']", "", text).lower()


def _email(text: str, rng: random.Random) -> str:
    return email_to_text(render_email(text, rng)).text or text


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "typos": _typos,
    "contractions": _contractions,
    "filler": _filler,
    "reorder": _reorder,
    "lowercase": _lowercase,
    "email": _email,
}


def perturb(texts: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """Each text perturbed one way (round robin over :data:`PERTURBATIONS`); returns the
    texts and the kind applied to each."""
    rng = random.Random(seed)
    kinds = list(PERTURBATIONS)
    out: list[str] = []
    applied: list[str] = []
    for i, text in enumerate(texts):
        kind = kinds[i % len(kinds)]
        out.append(PERTURBATIONS[kind](text, rng) or text)
        applied.append(kind)
    return out, applied


# -- long emails -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailPadding:
    """Sentences that carry no intent, to put a question inside a longer email."""

    context: tuple[str, ...]
    openings: tuple[str, ...]
    closings: tuple[str, ...]
    sentences: tuple[int, int]  # how many context sentences, at least and at most
    sign_offs: tuple[str, ...] = ()

    def wrap(self, question: str, rng: random.Random) -> str:
        context = rng.sample(self.context, rng.randint(*self.sentences))
        at = rng.randint(0, len(context))
        body = [*context[:at], question, *context[at:], rng.choice(self.closings)]
        text = f"{rng.choice(self.openings)} {' '.join(body)}"
        return f"{text} Best, {rng.choice(self.sign_offs)}" if self.sign_offs else text


#: The long-email evaluation set's padding (training uses other sentences: augment.py).
EVALUATION_PADDING = EmailPadding(
    context=(
        "I have been with you for about three years and mostly I am very happy.",
        "I am writing from my phone, so sorry for any typos.",
        "My daughter set the app up for me last spring.",
        "We just moved house and things have been a bit hectic.",
        "I tried the chat in the app first but nobody answered.",
        "It has been a long week at work.",
        "I hope this is the right address for this.",
        "I am travelling a lot at the moment for my job.",
        "My partner also has an account with you.",
        "I did read the help pages but could not find an answer.",
        "Apologies if you have already had a message from me about this.",
        "I run a small bakery and use the account for most things.",
        "The weather here has been awful, which does not help my mood.",
        "I am not very good with technology, so please bear with me.",
    ),
    openings=("Hello,", "Hi there,", "Dear team,", "Good afternoon,", "Hey,"),
    closings=(
        "Thanks so much for your help.",
        "Looking forward to your answer.",
        "Have a nice day.",
        "Many thanks in advance.",
    ),
    sentences=(2, 3),
    sign_offs=("Sam", "Ana", "Li"),
)


def long_email(question: str, rng: random.Random) -> str:
    """``question`` inside an email of 3 to 5 other sentences that carry no intent."""
    return EVALUATION_PADDING.wrap(question, rng)


def long_emails(texts: Sequence[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [long_email(t, rng) for t in texts]


# -- scores of the served decision ---------------------------------------------------------------


@dataclass(frozen=True)
class SetScores:
    """What the daemon would do on one set, as shares of the set's messages."""

    name: str
    examples: int
    in_scope: bool
    accuracy: float  # best intent right (in scope); 0 for out-of-scope sets
    acted_right: float
    acted_wrong: float  # in scope: acted with a wrong intent; out of scope: acted at all
    abstained_low_confidence: float
    abstained_out_of_scope: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (coverage, risk)

    @property
    def acted(self) -> float:
        return self.acted_right + self.acted_wrong

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["acted"] = self.acted
        out.pop("curve")
        return out


def score(name: str, predictions: Sequence[Prediction], gold: Sequence[str | None]) -> SetScores:
    """Scores of ``predictions`` against ``gold`` intents (None: out of scope)."""
    n = max(1, len(predictions))
    in_scope = all(g is not None for g in gold)
    right = [p.intent == g for p, g in zip(predictions, gold, strict=True)]
    acted = [not p.abstain for p in predictions]
    # Risk-coverage: act on the most confident first; risk = wrong share of those acted on.
    ranked = sorted(
        range(len(predictions)),
        key=lambda i: (
            -1.0 if predictions[i].abstain_reason == "out_of_scope" else -predictions[i].confidence
        ),
    )
    curve: list[tuple[float, float]] = []
    wrong_so_far = 0
    step = max(1, len(ranked) // 50)
    for k, i in enumerate(ranked, start=1):
        wrong_so_far += 0 if right[i] else 1
        if k % step == 0 or k == len(ranked):
            curve.append((k / n, wrong_so_far / k))
    return SetScores(
        name=name,
        examples=len(predictions),
        in_scope=in_scope,
        accuracy=sum(right) / n if in_scope else 0.0,
        acted_right=sum(a and r for a, r in zip(acted, right, strict=True)) / n,
        acted_wrong=sum(a and not r for a, r in zip(acted, right, strict=True)) / n,
        abstained_low_confidence=sum(p.abstain_reason == "low_confidence" for p in predictions) / n,
        abstained_out_of_scope=sum(p.abstain_reason == "out_of_scope" for p in predictions) / n,
        curve=curve,
    )


class Predictor(Protocol):
    def predict(self, texts: Sequence[str]) -> list[Prediction]: ...


def evaluate_sets(
    classifier: Predictor,
    test: Split,
    label_names: Sequence[str],
    robust: RobustnessData,
) -> dict[str, SetScores]:
    """The served decision's scores on banking77 test and every robustness set (the
    perturbed and long-email sets are drawn with :data:`EVAL_SEED`, so every model is
    scored on the same texts)."""
    seed = EVAL_SEED

    def names(split: Split) -> list[str | None]:
        return [label_names[i] for i in split.labels]

    perturbed, _ = perturb(test.texts, seed)
    sets: list[tuple[str, list[str], list[str | None]]] = [
        ("banking77_test", list(test.texts), names(test)),
        ("perturbed", perturbed, names(test)),
        ("other_words", list(robust.other_words.texts), names(robust.other_words)),
        (
            "long_emails",
            long_emails(robust.other_words.texts, seed),
            names(robust.other_words),
        ),
        ("out_of_scope", list(robust.oos_eval), [None] * len(robust.oos_eval)),
    ]
    return {name: score(name, classifier.predict(texts), gold) for name, texts, gold in sets}


def table(scores: dict[str, dict[str, Any]]) -> list[str]:
    """The robustness table (markdown rows) from :meth:`SetScores.to_json` values."""
    rows = [
        "| set | examples | top-1 accuracy | acted and right | acted and wrong | "
        "left alone: low confidence | left alone: out of scope |",
        "|---|---|---|---|---|---|---|",
    ]

    def pct(value: float) -> str:
        return f"{value * 100:.2f}%"

    for name, s in scores.items():
        scoped = bool(s["in_scope"])
        rows.append(
            f"| {name} | {s['examples']} | {pct(s['accuracy']) if scoped else '–'} | "
            f"{pct(s['acted_right']) if scoped else '–'} | "
            f"{pct(s['acted_wrong']) + ('' if scoped else ' (acted)')} | "
            f"{pct(s['abstained_low_confidence'])} | {pct(s['abstained_out_of_scope'])} |"
        )
    return rows
