"""The correction memory's two thresholds, chosen at export on validation and development:
``similarity`` the lowest grid value at which one correction meets the flip bound,
``repeated_similarity`` the lowest at or below it at which corrections of sure decisions
made twice still do (cases built so the pair is known), corrections of unsure decisions
never reaching the lower one, the fallback to the top of the grid, "sure" meaning what
the served classifier decides, the remap follow rates, and the tiny bundle's manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import ConfigError
from daemon.model.bundle import load_manifest
from daemon.model.classifier import Classifier
from daemon.model.memory import Thresholds
from training.config import load_train_config
from training.memory_calibration import (
    GRID,
    MemoryChoice,
    Messages,
    Outcome,
    Part,
    Serving,
    acted,
    calibrate_memory,
    choose,
    choose_remap,
    remap_follow_rates,
)

NAMES = ["a", "b", "c"]
#: Calibrated decision of the synthetic cases: no out-of-scope decision, abstain below 0.3.
SERVING = Serving(temperature=1.0, abstain_threshold=0.3, out_of_scope_threshold=None)
DIMS = 10

Row = tuple[str, str, bool, list[float]]  # said, truth, sure, embedding


def _unit(fill: int = DIMS - 1, **coordinates: float) -> list[float]:
    """A unit vector with the given coordinates (``e0=0.8``) and the norm's remainder on
    dimension ``fill``."""
    row = [0.0] * DIMS
    for name, value in coordinates.items():
        row[int(name[1:])] = value
    row[fill] = math.sqrt(max(0.0, 1 - sum(v * v for v in row)))
    return row


def _part(name: str, rows: list[Row]) -> Part:
    """Rows -> served outputs. The "none of these" column is the largest logit (the
    calibration must leave it out of what the model said); a sure row's intent gets
    probability ~0.62, an unsure one's ~0.02 (abstain below 0.3)."""
    logits = np.zeros((len(rows), len(NAMES) + 1), dtype=np.float32)
    logits[:, -1] = 9.0
    for i, (said, _truth, sure, _e) in enumerate(rows):
        logits[i, NAMES.index(said)] = 9.5 if sure else 5.0
    embeddings = np.asarray([r[3] for r in rows], dtype=np.float32)
    return Part(name, embeddings, logits, [NAMES.index(r[1]) for r in rows])


#: Mail the model called "a" (dimensions 0-2): two unsure errors (the user meant "b"),
#: 0.905 apart, and a right "a" 0.795 from the first: one correction must not reach it.
#: Mail it called "c" (dimensions 3-6): three sure errors (meant "b"), the first two 0.905
#: apart and the third 0.65 from the first; a right "c" 0.605 from the first. A right "c"
#: identical to the first "a" error (the memory must leave it alone: the model said "c"),
#: and six right "b" far from everything. n = 14.
A_ERRORS: list[Row] = [
    ("a", "b", False, _unit(e0=1.0)),
    ("a", "b", False, _unit(e0=0.905, fill=1)),
]
A_RIGHT: list[Row] = [("a", "a", True, _unit(e0=0.795, fill=2))]
C_ROWS: list[Row] = [
    ("c", "b", True, _unit(e3=1.0)),
    ("c", "b", True, _unit(e3=0.905, fill=4)),
    ("c", "b", True, _unit(e3=0.65, fill=5)),
    ("c", "c", True, _unit(e3=0.605, fill=6)),
    ("c", "c", True, _unit(e0=1.0)),
]
B_RIGHT: list[Row] = [("b", "b", True, _unit(e7=1.0, fill=8))] * 6


def _choose(parts: list[Part], max_flip_rate: float = 0.0, support: int = 2) -> MemoryChoice:
    return calibrate_memory(parts, NAMES, SERVING, max_flip_rate, support, seed=0)


def test_one_correction_and_repeated_ones_get_their_own_threshold() -> None:
    """One correction: below 0.80 the first "a" error's turns the right "a" wrong, so 0.80
    (the errors 0.905 apart fix each other: 4 fixes). Repeated sure "c" -> "b" corrections
    (the development set's): the third error is fixed from 0.65 down, the right "c" turned
    wrong from 0.60 down, so 0.61; the "a" errors, unsure, keep 0.80 for the right "a"."""
    parts = [_part("validation", A_ERRORS + A_RIGHT + B_RIGHT), _part("development", C_ROWS)]
    choice = _choose(parts)
    assert choice.met
    assert (choice.similarity, choice.repeated_similarity, choice.support) == (0.80, 0.61, 2)
    assert (choice.single.flipped, choice.single.fixed) == (0, 4)
    assert (choice.repeated.flipped, choice.repeated.fixed) == (0, 5)
    single = {o.rule.similarity: o for o in choice.single_outcomes}
    assert (single[0.79].flipped, single[0.79].fixed) == (1, 4)
    assert (single[0.91].flipped, single[0.91].fixed) == (0, 0)
    repeated = {o.rule.repeated_similarity: o for o in choice.repeated_outcomes}
    assert (repeated[0.60].flipped, repeated[0.60].fixed) == (1, 5)
    assert [o.rule.similarity for o in choice.single_outcomes] == list(GRID)
    assert [o.rule.repeated_similarity for o in choice.repeated_outcomes] == [
        r for r in GRID if r <= 0.80
    ]
    assert (choice.entries, choice.confident_entries, choice.supported_entries) == (5, 3, 3)

    section = choice.calibration(DIMS)
    assert (section.similarity, section.repeated_similarity, section.support) == (0.80, 0.61, 2)
    chosen_on = section.chosen_on
    assert (chosen_on["n"], chosen_on["n_validation"], chosen_on["n_development"]) == (14, 9, 5)
    assert (chosen_on["flipped"], chosen_on["fixed"]) == (0, 4)
    assert (chosen_on["repeated_flipped"], chosen_on["repeated_fixed"]) == (0, 5)
    assert "similarity 0.80, repeated 0.61 after 2 sure corrections" in choice.line()
    # No intent has the 12 right and sure messages the remap simulation needs.
    assert choice.remap_similarity is None and section.remap_similarity is None
    assert "NO remap threshold" in choice.line()


def test_without_the_development_set_nothing_bounds_the_repeated_threshold() -> None:
    """The pool is the parts given: validation alone has no repeated sure correction."""
    choice = _choose([_part("validation", A_ERRORS + A_RIGHT + B_RIGHT)])
    assert (choice.similarity, choice.repeated_similarity) == (0.80, 0.50)


def test_repeated_corrections_of_sure_decisions_cover_more() -> None:
    """The same "a" errors, made of sure decisions: repeated, they would turn the right
    "a" wrong below 0.80, so the repeated threshold cannot go lower than one correction's."""
    sure_a = [(said, truth, True, e) for said, truth, _sure, e in A_ERRORS]
    parts = [_part("validation", sure_a + A_RIGHT + B_RIGHT), _part("development", C_ROWS)]
    choice = _choose(parts)
    assert (choice.similarity, choice.repeated_similarity) == (0.80, 0.80)
    assert choice.confident_entries == choice.supported_entries == 5


def test_a_higher_support_needs_more_alike_corrections() -> None:
    """Support 3: left out, each "c" error leaves two like it, below the support, so the
    third is no longer fixed through the repeated rule (4 fixes, not 5); the right "c"
    still meets all three, which bounds the repeated threshold at 0.61 as before."""
    parts = [_part("validation", A_ERRORS + A_RIGHT + B_RIGHT), _part("development", C_ROWS)]
    choice = _choose(parts, support=3)
    assert choice.calibration(DIMS).support == 3
    assert (choice.repeated_similarity, choice.repeated.fixed) == (0.61, 4)


def test_nothing_meets_the_bound_falls_back_to_the_top_of_the_grid() -> None:
    """A right "a" identical to an error's embedding is turned wrong at every threshold."""
    rows = A_ERRORS + A_RIGHT + [("a", "a", True, A_ERRORS[0][3])] + B_RIGHT
    choice = _choose([_part("validation", rows), _part("development", C_ROWS)])
    assert not choice.met
    assert (choice.similarity, choice.repeated_similarity) == (0.99, 0.99)
    assert choice.single.flipped == 1
    assert choice.calibration(DIMS).chosen_on["met"] == 0.0
    assert "NO threshold met the bound" in choice.line()


def test_fixes_must_outweigh_flips() -> None:
    """Within the flip budget, a rule that turns more right decisions wrong than it fixes
    is passed over for the next one up."""
    rule = Thresholds(0.8, 0.8)
    outcomes = [Outcome(rule, 2, 1, 3), Outcome(rule, 2, 2, 4), Outcome(rule, 0, 0, 0)]
    assert choose(outcomes, n=100, max_flip_rate=0.05) == (outcomes[1], True)
    assert choose(outcomes, n=100, max_flip_rate=0.0) == (outcomes[2], True)


def test_sure_means_what_the_served_classifier_decides(tiny_bundle: Path) -> None:
    """``acted`` is ``Classifier.decide`` without abstaining, for every reason: at the
    bundle's thresholds and at ones that split the texts both ways."""
    texts = [
        "my card has not arrived yet",
        "how do I top up by bank transfer",
        "what is the weather tomorrow",
        "I was charged twice for one payment",
        "can I get a virtual card",
        "recipe for pancakes",
    ]
    classifier = Classifier(tiny_bundle)
    logits = classifier.logits(texts)
    labels = len(classifier.labels)
    manifest = classifier.manifest
    assert manifest.out_of_scope is not None
    probabilities = classifier.probabilities(texts)
    for abstain, oos in [
        (manifest.calibration.abstain_threshold, manifest.out_of_scope.threshold),
        (float(np.median(probabilities[:, :labels].max(axis=1))), 1.0),
        (0.0, float(np.median(probabilities[:, labels]))),
    ]:
        served = Classifier(tiny_bundle, abstain_threshold=abstain, out_of_scope_threshold=oos)
        serving = Serving(manifest.calibration.temperature, abstain, oos)
        expected = [not p.abstain for p in served.predict(texts)]
        assert acted(logits, labels, serving).tolist() == expected
    assert acted(logits, labels, Serving(1.0, 0.0, None)).all()


def _messages(rows: list[tuple[int, bool, list[float]]]) -> Messages:
    """Right predictions (label, sure, embedding)."""
    return Messages(
        embeddings=np.asarray([r[2] for r in rows], dtype=np.float32),
        predicted=[r[0] for r in rows],
        truth=[r[0] for r in rows],
        confident=[r[1] for r in rows],
    )


def test_remap_follow_rate_after_one_correction_and_after_five() -> None:
    """12 identical "a" (one correction already decides the other 7); 12 "b" 0.7 from
    each other (one correction at 0.9 decides none, five at the repeated 0.6 all); 12 "c"
    of which 2 unsure (10 sure: too few to take part)."""
    dims = 14
    rows = [(0, True, [1.0] + [0.0] * (dims - 1))] * 12
    for i in range(12):
        vector = [0.0] * dims
        vector[0], vector[i + 2] = math.sqrt(0.7), math.sqrt(0.3)
        rows.append((1, True, vector))
    rows += [(2, k >= 2, [0.0, 1.0] + [0.0] * (dims - 2)) for k in range(12)]
    remap = remap_follow_rates(_messages(rows), NAMES, Thresholds(0.9, 0.6, 2), seed=3)
    assert remap.after_one == {"a": 1.0, "b": 0.0}
    assert remap.after_all == {"a": 1.0, "b": 1.0}
    assert (remap.one_mean, remap.all_mean, remap.all_min) == (0.5, 1.0, 1.0)
    lone = remap_follow_rates(_messages(rows), NAMES, Thresholds(0.9, 0.9, 2), seed=3)
    assert lone.after_all == {"a": 1.0, "b": 0.0}


def test_the_remap_threshold_is_the_highest_that_reaches_the_follow_rate() -> None:
    """12 identical "a" and 12 "b" 0.705 from each other: five corrections of "b" that are
    all the "b" the user saw decide every other "b" from 0.70 down (mean follow 1.0),
    none from 0.71 up (mean 0.5); the remap rule never goes above the repeated one."""
    dims = 16
    rows = [(0, True, [1.0] + [0.0] * (dims - 1))] * 12
    for i in range(12):
        vector = [0.0] * dims
        vector[1], vector[i + 3] = math.sqrt(0.705), math.sqrt(0.295)
        rows.append((1, True, vector))
    messages = _messages(rows)
    found = choose_remap(messages, NAMES, Thresholds(0.9, 0.9, 2), 0.5, 0.9, seed=3)
    assert found is not None
    rule, remap = found
    assert (rule.remap_similarity, rule.remap_share) == (0.70, 0.5)
    assert remap.after_all == {"a": 1.0, "b": 1.0}
    assert remap.after_one == {"a": 1.0, "b": 0.0}  # one correction is never a remap
    capped = choose_remap(messages, NAMES, Thresholds(0.9, 0.6, 2), 0.5, 0.9, seed=3)
    assert capped is not None and capped[0].remap_similarity == 0.6
    assert choose_remap(messages, NAMES, Thresholds(0.9, 0.9, 6), 0.5, 0.9, seed=3) is None


def test_memory_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="max_flip_rate"):
        load_train_config(None, ["memory.max_flip_rate=-0.1"])
    with pytest.raises(ConfigError, match="support"):
        load_train_config(None, ["memory.support=0"])
    with pytest.raises(ConfigError, match="remap_share"):
        load_train_config(None, ["memory.remap_share=0"])
    defaults = load_train_config(None).memory
    assert (defaults.max_flip_rate, defaults.support) == (0.002, 2)
    assert (defaults.remap_share, defaults.remap_follow) == (0.5, 0.9)


def test_tiny_bundle_has_a_calibrated_memory(tiny_bundle: Path) -> None:
    """The real pipeline fills the manifest's memory section from validation and the
    development set."""
    manifest = load_manifest(tiny_bundle)
    memory = manifest.memory
    assert memory is not None
    assert memory.output == "embedding"
    assert memory.dimensions == 128  # configs/train-tiny.yaml: random_hidden
    assert memory.similarity in GRID and memory.repeated_similarity in GRID
    assert memory.repeated_similarity <= memory.similarity
    assert (memory.support, memory.max_flip_rate) == (2, 0.002)
    chosen_on = memory.chosen_on
    assert chosen_on["n"] == chosen_on["n_validation"] + chosen_on["n_development"]
    assert chosen_on["n_development"] > 0
    bound = 0.002 * chosen_on["n"]
    assert chosen_on["met"] == 0.0 or (
        chosen_on["flipped"] <= bound and chosen_on["repeated_flipped"] <= bound
    )
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    assert raw["memory"]["repeated_similarity"] == memory.repeated_similarity
    assert memory.remap_share == 0.5
    assert memory.remap_similarity is None or memory.remap_similarity <= (
        memory.repeated_similarity
    )
