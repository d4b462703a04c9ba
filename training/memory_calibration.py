"""The correction memory's two thresholds, chosen at export on what the bundle serves.

The daemon's rule (:mod:`daemon.model.memory`) lets a remembered correction decide a new
message the model calls the same intent when their embeddings are at least ``similarity``
apart in cosine, or at least the lower ``repeated_similarity`` once the user has made the
same correction of decisions the model was sure about ``support`` times. Too low and
corrections override decisions the model had right; too high and nothing a user moved
ever helps the next message. One threshold cannot serve both (on the default model "a
genuine error's correction flips no right decision" needs about 0.85, "after 5 moves the
intent's other mail follows" about 0.6), hence two, chosen here on what the bundle will
serve (the int8 graph's embeddings and logits, the calibrated decision) and never on test:

* the stand-in corrections are the errors of the validation split and, when the run has
  it, of the robustness development set ("other people's words", which is phrased unlike
  banking77 and so spreads the way real mail does): said = the predicted intent, chosen =
  the true one, ``confident`` = the served decision acted (it did not abstain, with the
  temperature and thresholds the calibrate stage has just chosen);
* each message of those sets is looked up with the daemon's own
  :meth:`~daemon.model.memory.MemoryIndex.recall` against every such correction but its
  own (leave-one-out); ``flipped`` counts messages right before and wrong after,
  ``fixed`` the reverse; a rule meets the bound when ``flipped <= max_flip_rate * n`` and
  ``fixed >= flipped``;
* ``similarity``: the lowest grid value meeting the bound with the repeated rule off;
* ``repeated_similarity``: with ``similarity`` fixed, the lowest grid value at or below it
  at which the full rule (``support`` from the config) still meets the bound.

* ``remap_similarity``: the highest value of :data:`REMAP_GRID` at which, in the remap
  simulation below (``support`` or more corrections that are ``remap_share`` of what the
  model called the intent: the user corrected each such message as it came), at least
  ``remap_follow`` of an intent's other messages follow :data:`REMAP_CORRECTIONS`
  corrections on average; kept only if the full rule still meets the bound on the
  leave-one-out run (there, the share is of every sure decision in the sets, and genuine
  errors never come near it: the highest share is about 0.14).

None meeting the bound: the top of the grid (reported). Genuine errors are a pessimistic
stand-in (they sit between intents, where a correction is most likely to spill over), so
the thresholds err on the side of deciding less. What they buy is measured too, at the
chosen pair: a remap simulation in which messages an intent was confidently and rightly
given are corrected to another, and the share of that intent's other messages the memory
then decides (the follow rate) is reported after one correction and after five.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.model.bundle import EMBEDDING_OUTPUT, MemoryCalibration
from daemon.model.classifier import softmax
from daemon.model.memory import Entry, MemoryIndex, Thresholds

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

#: Thresholds tried, lowest first: 0.50, 0.51, ..., 0.99.
GRID: tuple[float, ...] = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))
#: Remap thresholds tried: 0.30, 0.31, ..., 0.99.
REMAP_GRID: tuple[float, ...] = tuple(round(0.30 + 0.01 * i, 2) for i in range(70))
#: The remap simulation: intents with at least this many messages predicted rightly and
#: confidently as them take part; this many of them become corrections.
REMAP_MIN_MESSAGES = 12
REMAP_CORRECTIONS = 5
#: A support no correction reaches: the repeated rule off.
NEVER = sys.maxsize


@dataclass(frozen=True)
class Serving:
    """The calibrated decision the daemon serves (``Classifier.decide``)."""

    temperature: float
    abstain_threshold: float
    out_of_scope_threshold: float | None  # None: no "none of these" decision


def acted(logits: FloatArray, num_labels: int, serving: Serving) -> BoolArray:
    """Per row of raw logits: whether the served decision acts (does not abstain), as
    ``Classifier.decide`` does: out of scope when "none of these" is at least its
    threshold, else low confidence when the best intent is below the abstain threshold.
    Compared in float64, as ``decide`` compares ``float(probability)``."""
    probabilities = softmax(logits, serving.temperature).astype(np.float64)
    out: BoolArray = probabilities[:, :num_labels].max(axis=1) >= serving.abstain_threshold
    if serving.out_of_scope_threshold is not None and probabilities.shape[1] > num_labels:
        out &= probabilities[:, num_labels] < serving.out_of_scope_threshold
    return out


@dataclass(frozen=True)
class Part:
    """One set of messages the calibration runs on, with the served graph's outputs."""

    name: str  # "validation", "development"
    embeddings: FloatArray  # L2-normalised, [n, dimensions]
    logits: FloatArray  # raw, every output, [n, outputs]
    labels: Sequence[int]


@dataclass(frozen=True)
class Messages:
    """Every message the calibration runs on, as the served model decided it (row order:
    the parts', concatenated)."""

    embeddings: FloatArray
    predicted: list[
        int
    ]  # the best intent ("none of these" left out: a correction records an intent)
    truth: list[int]
    confident: list[bool]  # the served decision acted

    def __len__(self) -> int:
        return len(self.truth)

    def seen(self, names: Sequence[str]) -> dict[str, int]:
        """Sure decisions per intent the model said (the remap rule's denominator)."""
        counts: dict[str, int] = {}
        for p, c in zip(self.predicted, self.confident, strict=True):
            if c:
                counts[names[p]] = counts.get(names[p], 0) + 1
        return counts

    def errors(self, names: Sequence[str]) -> list[Entry]:
        """The errors as corrections (said = predicted, chosen = truth); id = row."""
        return [
            Entry(i, names[p], names[t], self.embeddings[i], c)
            for i, (p, t, c) in enumerate(
                zip(self.predicted, self.truth, self.confident, strict=True)
            )
            if p != t
        ]


def served_messages(parts: Sequence[Part], names: Sequence[str], serving: Serving) -> Messages:
    """The parts' messages with what the served model said and whether it acted."""
    for part in parts:
        if not len(part.embeddings) == len(part.logits) == len(part.labels):
            raise ValueError(
                f"{part.name}: {len(part.embeddings)} embeddings and {len(part.logits)} "
                f"logits for {len(part.labels)} labels"
            )
    logits = np.concatenate([p.logits for p in parts])
    return Messages(
        embeddings=np.concatenate([p.embeddings for p in parts]).astype(np.float32),
        predicted=np.asarray(logits[:, : len(names)].argmax(axis=1)).tolist(),
        truth=[int(label) for p in parts for label in p.labels],
        confident=acted(logits, len(names), serving).tolist(),
    )


@dataclass(frozen=True)
class Outcome:
    """What the stand-in corrections do to the messages under one rule."""

    rule: Thresholds
    flipped: int  # right before, wrong after
    fixed: int  # wrong before, right after
    decided: int  # messages the memory decided (right or wrong)

    def meets(self, n: int, max_flip_rate: float) -> bool:
        return self.flipped <= max_flip_rate * n and self.fixed >= self.flipped


def leave_one_out(
    messages: Messages, names: Sequence[str], rules: Sequence[Thresholds]
) -> list[Outcome]:
    """Each message decided with every correction but its own, under each rule."""
    entries = messages.errors(names)
    seen = messages.seen(names)
    dimensions = messages.embeddings.shape[1]
    everyone = MemoryIndex(entries, dimensions)
    flipped, fixed, decided = (np.zeros(len(rules), np.int64) for _ in range(3))
    for i, (p, t) in enumerate(zip(messages.predicted, messages.truth, strict=True)):
        index = everyone if p == t else MemoryIndex([e for e in entries if e.id != i], dimensions)
        said, right_before = names[p], p == t
        for k, rule in enumerate(rules):
            recall = index.recall(said, messages.embeddings[i], rule, seen.get(said, 0))
            if recall is None:
                continue
            decided[k] += 1
            right_after = recall.intent == names[t]
            flipped[k] += right_before and not right_after
            fixed[k] += right_after and not right_before
    return [
        Outcome(rule, int(flipped[k]), int(fixed[k]), int(decided[k]))
        for k, rule in enumerate(rules)
    ]


def choose(outcomes: Sequence[Outcome], n: int, max_flip_rate: float) -> tuple[Outcome, bool]:
    """The first (lowest) outcome meeting the bound, and whether one did (else the last)."""
    for outcome in outcomes:
        if outcome.meets(n, max_flip_rate):
            return outcome, True
    return outcomes[-1], False


@dataclass(frozen=True)
class Remap:
    """The remap simulation: follow rate per intent that took part, after the first
    correction and after all :data:`REMAP_CORRECTIONS`."""

    after_one: dict[str, float]
    after_all: dict[str, float]

    @staticmethod
    def _mean(rates: dict[str, float]) -> float | None:
        return float(np.mean(list(rates.values()))) if rates else None

    @property
    def one_mean(self) -> float | None:
        return self._mean(self.after_one)

    @property
    def all_mean(self) -> float | None:
        return self._mean(self.after_all)

    @property
    def all_min(self) -> float | None:
        return min(self.after_all.values()) if self.after_all else None


def remap_follow_rates(
    messages: Messages, names: Sequence[str], rule: Thresholds, seed: int
) -> Remap:
    """Per intent with at least :data:`REMAP_MIN_MESSAGES` messages the model gave it
    rightly and confidently: :data:`REMAP_CORRECTIONS` of them (drawn with ``seed``)
    become corrections of sure decisions to another intent, and the follow rate is the
    share of the others the memory then decides, after the first of them alone and after
    all (the user's "I moved a few; the next one goes there too"). The user corrected each
    of those messages as it came: the model's sure decisions of the intent so far are the
    corrections themselves."""
    rng = np.random.default_rng(seed)
    dimensions = messages.embeddings.shape[1]
    after_one: dict[str, float] = {}
    after_all: dict[str, float] = {}
    rows_of: dict[int, list[int]] = {}
    for i, (p, t, c) in enumerate(
        zip(messages.predicted, messages.truth, messages.confident, strict=True)
    ):
        if p == t and c:
            rows_of.setdefault(p, []).append(i)
    for label, name in enumerate(names):
        rows = rows_of.get(label, [])
        if len(rows) < REMAP_MIN_MESSAGES:
            continue
        picked = [int(i) for i in rng.choice(rows, REMAP_CORRECTIONS, replace=False)]
        other = names[(label + 1) % len(names)]  # which one does not matter to the rule
        corrections = [Entry(i, name, other, messages.embeddings[i], True) for i in picked]
        rest = sorted(set(rows) - set(picked))
        for rates, used in ((after_one, corrections[:1]), (after_all, corrections)):
            index = MemoryIndex(used, dimensions)
            hits = sum(
                index.recall(name, messages.embeddings[i], rule, len(used)) is not None
                for i in rest
            )
            rates[name] = hits / len(rest)
    return Remap(after_one, after_all)


@dataclass(frozen=True)
class MemoryChoice:
    """The chosen pair, what each gave, and every rule's outcome."""

    single: Outcome  # the chosen ``similarity``, repeated rule off
    repeated: Outcome  # the repeated rule at the chosen pair
    full: Outcome  # the full rule, the remap rule's threshold included (if kept)
    remap_similarity: float | None  # None: no value reached ``remap_follow`` in the bound
    remap_share: float
    remap_follow: float
    met: bool  # False: nothing met the bound, the top of the grid was taken
    parts: dict[str, int]  # messages per part
    entries: int  # stand-in corrections (the errors)
    confident_entries: int  # of them, corrections of decisions the model acted on
    supported_entries: int  # of them, made ``support`` times or more (the repeated rule's)
    max_flip_rate: float
    remap: Remap
    single_outcomes: list[Outcome]
    repeated_outcomes: list[Outcome]

    @property
    def n(self) -> int:
        return sum(self.parts.values())

    @property
    def similarity(self) -> float:
        return self.single.rule.similarity

    @property
    def repeated_similarity(self) -> float:
        return self.repeated.rule.repeated_similarity

    @property
    def support(self) -> int:
        return self.repeated.rule.support

    def calibration(self, dimensions: int) -> MemoryCalibration:
        """The manifest's ``memory`` section."""
        chosen_on: dict[str, float] = {
            "n": float(self.n),
            **{f"n_{name}": float(count) for name, count in self.parts.items()},
            "entries": float(self.entries),
            "confident_entries": float(self.confident_entries),
            "supported_entries": float(self.supported_entries),
            "flipped": float(self.single.flipped),
            "fixed": float(self.single.fixed),
            "decided": float(self.single.decided),
            "repeated_flipped": float(self.repeated.flipped),
            "repeated_fixed": float(self.repeated.fixed),
            "repeated_decided": float(self.repeated.decided),
            "full_flipped": float(self.full.flipped),
            "full_fixed": float(self.full.fixed),
            "full_decided": float(self.full.decided),
            "remap_follow_target": self.remap_follow,
            "met": float(self.met),
            "remap_intents": float(len(self.remap.after_all)),
        }
        remap = self.remap
        if remap.one_mean is not None and remap.all_mean is not None and remap.all_min is not None:
            chosen_on["follow_1_mean"] = remap.one_mean
            chosen_on[f"follow_{REMAP_CORRECTIONS}_mean"] = remap.all_mean
            chosen_on[f"follow_{REMAP_CORRECTIONS}_min"] = remap.all_min
        return MemoryCalibration(
            output=EMBEDDING_OUTPUT,
            dimensions=dimensions,
            similarity=self.similarity,
            repeated_similarity=self.repeated_similarity,
            support=self.support,
            remap_similarity=self.remap_similarity,
            remap_share=self.remap_share,
            max_flip_rate=self.max_flip_rate,
            chosen_on=chosen_on,
        )

    def line(self) -> str:
        """The one log line of the result, like the other calibration lines."""
        remap = self.remap
        follow = (
            f"remap follow rate after 1 correction mean {remap.one_mean:.3f}, after "
            f"{REMAP_CORRECTIONS} mean {remap.all_mean:.3f}, min {remap.all_min:.3f} over "
            f"{len(remap.after_all)} intents"
            if remap.one_mean is not None and remap.all_mean is not None
            else "no intent with enough messages for the remap simulation"
        )
        bound = "" if self.met else " (NO threshold met the bound: the top of the grid)"
        remapped = (
            f"remap {self.remap_similarity:.2f} once those are {self.remap_share:.2f} of the "
            f"intent's sure decisions (flip {self.full.flipped}, fix {self.full.fixed})"
            if self.remap_similarity is not None
            else f"NO remap threshold reached a follow rate of {self.remap_follow:.2f} "
            "within the bound"
        )
        parts = " + ".join(f"{count} {name}" for name, count in self.parts.items())
        return (
            f"memory calibration: similarity {self.similarity:.2f}, repeated "
            f"{self.repeated_similarity:.2f} after {self.support} sure corrections, "
            f"{remapped}{bound}: "
            f"{self.entries} errors as corrections ({self.confident_entries} sure, "
            f"{self.supported_entries} repeated) on {parts} messages flip "
            f"{self.single.flipped} and fix {self.single.fixed} alone, flip "
            f"{self.repeated.flipped} and fix {self.repeated.fixed} with the repeated rule "
            f"(at most {self.max_flip_rate * self.n:.1f} flips allowed); {follow}"
        )


def _supported(entries: Sequence[Entry], support: int) -> int:
    """How many entries the full pool's repeated rule applies to."""
    counts: dict[tuple[str, str], int] = {}
    for entry in entries:
        if entry.confident:
            counts[entry.said, entry.chosen] = counts.get((entry.said, entry.chosen), 0) + 1
    return sum(counts.get((e.said, e.chosen), 0) >= support for e in entries)


def choose_remap(
    messages: Messages,
    names: Sequence[str],
    base: Thresholds,
    share: float,
    follow: float,
    seed: int,
) -> tuple[Thresholds, Remap] | None:
    """The highest remap threshold whose simulated follow rate after
    :data:`REMAP_CORRECTIONS` corrections reaches ``follow`` (None: none does)."""
    for value in sorted(REMAP_GRID, reverse=True):
        if value > base.repeated_similarity:
            continue
        rule = Thresholds(base.similarity, base.repeated_similarity, base.support, value, share)
        remap = remap_follow_rates(messages, names, rule, seed)
        if remap.all_mean is not None and remap.all_mean >= follow:
            return rule, remap
    return None


def calibrate_memory(
    parts: Sequence[Part],
    names: Sequence[str],
    serving: Serving,
    max_flip_rate: float,
    support: int,
    seed: int,
    *,
    remap_share: float = 0.5,
    remap_follow: float = 0.9,
) -> MemoryChoice:
    """Choose the memory's thresholds on the parts' served outputs (see the module
    docstring); ``parts`` never include the test split."""
    messages = served_messages(parts, names, serving)
    n = len(messages)
    single_outcomes = leave_one_out(messages, names, [Thresholds(s, s, NEVER) for s in GRID])
    single, met = choose(single_outcomes, n, max_flip_rate)
    similarity = single.rule.similarity
    repeated_outcomes = leave_one_out(
        messages, names, [Thresholds(similarity, r, support) for r in GRID if r <= similarity]
    )
    repeated, _ = choose(repeated_outcomes, n, max_flip_rate)  # at worst r = similarity
    rule, remap = repeated.rule, remap_follow_rates(messages, names, repeated.rule, seed)
    full = repeated
    found = choose_remap(messages, names, repeated.rule, remap_share, remap_follow, seed)
    if found is not None:
        (outcome,) = leave_one_out(messages, names, [found[0]])
        if outcome.meets(n, max_flip_rate):
            (rule, remap), full = found, outcome
    entries = messages.errors(names)
    return MemoryChoice(
        single=single,
        repeated=repeated,
        full=full,
        remap_similarity=rule.remap_similarity,
        remap_share=remap_share,
        remap_follow=remap_follow,
        met=met,
        parts={part.name: len(part.labels) for part in parts},
        entries=len(entries),
        confident_entries=sum(e.confident for e in entries),
        supported_entries=_supported(entries, support),
        max_flip_rate=max_flip_rate,
        remap=remap,
        single_outcomes=single_outcomes,
        repeated_outcomes=repeated_outcomes,
    )
