"""The correction memory: its rule (when a remembered correction decides), its rows in
the state store on both engines (bounded, forgettable, re-embedded for a new model), and
the memory over a real bundle's embeddings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.config.settings import MemorySettings
from daemon.core.memory import CorrectionMemory, to_bytes
from daemon.model.classifier import Classifier
from daemon.model.memory import Entry, MemoryIndex, Thresholds, normalise
from daemon.store.records import SHARED_MEMORY, NewDecision
from daemon.store.state import StateStore


def unit(*values: float) -> np.ndarray:
    return normalise(np.array([values], dtype=np.float32))[0]


# -- the rule ---------------------------------------------------------------------------

CARD = unit(1, 0, 0)
NEAR_CARD = unit(1, 0.2, 0)  # cosine 0.98 to CARD
FAR = unit(0, 1, 0)


def index(*entries: tuple[int, str, str, np.ndarray], confident: bool = False) -> MemoryIndex:
    return MemoryIndex(
        [Entry(i, said, chosen, vec, confident) for i, said, chosen, vec in entries], 3
    )


def only(similarity: float) -> Thresholds:
    """One threshold for every correction."""
    return Thresholds(similarity, similarity)


def test_a_close_correction_of_what_the_model_says_decides() -> None:
    memory = index((1, "card_arrival", "card_delivery_estimate", CARD))
    recall = memory.recall("card_arrival", NEAR_CARD, only(0.9))
    assert recall is not None
    assert (recall.entry_id, recall.intent, recall.said) == (
        1,
        "card_delivery_estimate",
        "card_arrival",
    )
    assert recall.similarity == pytest.approx(0.98, abs=0.01)


def test_nothing_decides_below_the_threshold_or_for_another_model_intent() -> None:
    memory = index((1, "card_arrival", "card_delivery_estimate", CARD))
    assert memory.recall("card_arrival", NEAR_CARD, only(0.99)) is None  # not close enough
    assert memory.recall("card_arrival", FAR, only(0.5)) is None
    assert memory.recall("lost_or_stolen_card", CARD, only(0.5)) is None  # the model says another


def test_close_corrections_that_disagree_decide_nothing() -> None:
    memory = index(
        (1, "card_arrival", "card_delivery_estimate", CARD),
        (2, "card_arrival", "card_linking", NEAR_CARD),
    )
    assert memory.recall("card_arrival", CARD, only(0.9)) is None
    # Above a threshold that leaves only the nearest, it decides.
    recall = memory.recall("card_arrival", CARD, only(0.99))
    assert recall is not None and recall.entry_id == 1


MIDDLE = unit(1, 1, 0)  # cosine 0.71 to CARD


def test_a_repeated_correction_of_sure_decisions_covers_that_kind_of_mail() -> None:
    rule = Thresholds(similarity=0.9, repeated_similarity=0.6, support=2)
    once = index((1, "card_arrival", "card_delivery_estimate", CARD), confident=True)
    assert once.recall("card_arrival", MIDDLE, rule) is None  # one correction: near-duplicates
    twice = index(
        (1, "card_arrival", "card_delivery_estimate", CARD),
        (2, "card_arrival", "card_delivery_estimate", NEAR_CARD),
        confident=True,
    )
    recall = twice.recall("card_arrival", MIDDLE, rule)
    assert recall is not None and recall.intent == "card_delivery_estimate"
    # The same two corrections of decisions the model was unsure about: still fixes only.
    unsure = index(
        (1, "card_arrival", "card_delivery_estimate", CARD),
        (2, "card_arrival", "card_delivery_estimate", NEAR_CARD),
    )
    assert unsure.recall("card_arrival", MIDDLE, rule) is None


FAR_CARD = unit(1, 3, 0)  # cosine 0.50 to NEAR_CARD, 0.32 to CARD


@pytest.mark.parametrize(
    ("seen", "decides"),
    [
        (0, True),  # nothing counted (imported corrections): they are what the model saw
        (2, True),  # the user moved every sure card_arrival decision there was
        (4, True),  # half of them: the share is met
        (5, False),  # two of five: fixes of those messages, not a remap
    ],
)
def test_corrections_that_are_most_of_an_intent_remap_it(seen: int, decides: bool) -> None:
    rule = Thresholds(0.9, 0.6, support=2, remap_similarity=0.4, remap_share=0.5)
    twice = index(
        (1, "card_arrival", "card_delivery_estimate", CARD),
        (2, "card_arrival", "card_delivery_estimate", NEAR_CARD),
        confident=True,
    )
    recall = twice.recall("card_arrival", FAR_CARD, rule, seen)
    assert (recall is not None) is decides
    if recall is not None:
        assert recall.intent == "card_delivery_estimate"
    # Another model intent is never touched, whatever the share.
    assert twice.recall("lost_or_stolen_card", FAR_CARD, rule, 2) is None
    # Without the remap threshold (bundles before it) the repeated rule is the lowest.
    assert twice.recall("card_arrival", FAR_CARD, Thresholds(0.9, 0.6, 2), seen) is None


def test_one_correction_is_never_a_remap() -> None:
    rule = Thresholds(0.9, 0.6, support=2, remap_similarity=0.4, remap_share=0.5)
    once = index((1, "card_arrival", "card_delivery_estimate", CARD), confident=True)
    assert once.recall("card_arrival", FAR_CARD, rule, 1) is None


def test_an_index_refuses_embeddings_of_another_width() -> None:
    with pytest.raises(ValueError, match="entry 7"):
        MemoryIndex([Entry(7, "a", "b", np.ones(4, dtype=np.float32))], 3)


# -- the store --------------------------------------------------------------------------


@pytest.fixture
def store(state_location: Path | str) -> StateStore:
    opened = StateStore(state_location)
    yield opened  # type: ignore[misc]
    opened.close()


def remember(store: StateStore, text: str, *, account: str = "a", max_entries: int = 10) -> int:
    return store.remember(
        account=account,
        text=text,
        said="card_arrival",
        confident=True,
        chosen="card_delivery_estimate",
        model_version="m1",
        embedding=to_bytes(CARD),
        max_entries=max_entries,
    )


def test_entries_are_bounded_least_recently_used_first(store: StateStore) -> None:
    first = remember(store, "one", max_entries=2)
    second = remember(store, "two", max_entries=2)
    store.used_memory([first])  # used since: the older one stays
    third = remember(store, "three", max_entries=2)
    assert [e.id for e in store.memory_entries(["a"])] == [first, third]
    assert second not in {e.id for e in store.memory_entries()}
    remember(store, "other account", account="b", max_entries=2)  # bounded per account
    assert store.memory_counts() == {"a": 2, "b": 1}


def test_the_signature_changes_when_entries_come_and_go(store: StateStore) -> None:
    empty = store.memory_signature(["a"], "m1")
    entry = remember(store, "one")
    added = store.memory_signature(["a"], "m1")
    assert added != empty
    assert store.memory_signature(["b"], "m1") == empty  # another account's: unchanged
    store.forget(entry)
    assert store.memory_signature(["a"], "m1") != added


def _decision(store: StateStore) -> NewDecision:
    return NewDecision(
        kind="triage",
        account="a",
        folder="INBOX",
        uidvalidity=1,
        uid=5,
        message_id="<m@x>",
        intent="card_arrival",
        status="done",
        destination="Triage/Cards",
        text="where is my card",
    )


def test_forgetting_an_entry_forgets_its_correction(store: StateStore) -> None:
    (decision_id,) = store.record([_decision(store)])
    decision = store.get(decision_id)
    assert decision is not None
    correction_id, new = store.add_correction(decision, "card_delivery_estimate", "T/D", "t")
    assert new
    entry_id = store.remember(
        account="a",
        text="t",
        said="card_arrival",
        confident=True,
        chosen="card_delivery_estimate",
        model_version="m1",
        embedding=to_bytes(CARD),
        max_entries=10,
        correction_id=correction_id,
    )
    forgotten = store.forget(entry_id)
    assert forgotten is not None and forgotten.correction_id == correction_id
    assert store.corrections() == [] and store.memory_entries() == []
    assert store.forget(entry_id) is None


def test_reembedding_updates_and_drops(store: StateStore) -> None:
    keep, drop = remember(store, "keep"), remember(store, "drop")
    store.reembed_memory([(keep, "card_linking", False, to_bytes(FAR))], [drop], "m2")
    (entry,) = store.memory_entries()
    assert (entry.id, entry.said, entry.confident, entry.model_version) == (
        keep,
        "card_linking",
        False,
        "m2",
    )
    assert np.frombuffer(entry.embedding, dtype="<f4") == pytest.approx(FAR)


# -- over a real bundle -------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tiny_bundle: Path) -> Classifier:
    return Classifier(tiny_bundle)


def test_the_bundle_returns_unit_embeddings_and_a_memory_threshold(
    classifier: Classifier,
) -> None:
    assert classifier.embedding_output == "embedding"
    assert classifier.manifest.memory is not None
    assert 0 < classifier.manifest.memory.similarity <= 1
    classified = classifier.classify(["where is my card", "I was charged twice"])
    assert classified.embeddings is not None
    assert classified.embeddings.shape == (2, classifier.dimensions)
    assert np.linalg.norm(classified.embeddings, axis=1) == pytest.approx([1, 1], abs=1e-3)


def wrong_intent(classifier: Classifier, text: str) -> str:
    """An intent the model does not say about ``text``."""
    said = classifier.predict([text])[0].intent
    return next(label for label in classifier.labels if label != said)


def test_a_learned_correction_decides_the_same_text_and_only_it(
    classifier: Classifier, tmp_path: Path
) -> None:
    text = "my new card has still not arrived after two weeks"
    chosen = wrong_intent(classifier, text)
    with StateStore(tmp_path / "state.db") as store:
        memory = CorrectionMemory(store, MemorySettings())
        entry = memory.learn("a", text, chosen, classifier)
        assert entry is not None
        classified = classifier.classify([text, "how do I change my PIN"])
        followed, other = memory.apply("a", classifier, classified)
        assert followed.memory is not None and followed.memory.entry_id == entry
        assert followed.intent == chosen and not followed.abstain
        assert followed.memory.similarity == pytest.approx(1.0, abs=1e-3)
        assert other.memory is None
        # Another account's mail: its own memory only (scope: account).
        assert memory.apply("b", classifier, classified)[0].memory is None
        shared = CorrectionMemory(store, MemorySettings(scope="shared"))
        assert shared.apply("b", classifier, classified)[0].memory is not None
        off = CorrectionMemory(store, MemorySettings(enabled=False))
        assert off.apply("a", classifier, classified)[0].memory is None


def test_what_the_model_already_says_is_not_remembered(
    classifier: Classifier, tmp_path: Path
) -> None:
    text = "my new card has still not arrived after two weeks"
    said = classifier.predict([text])[0]
    with StateStore(tmp_path / "state.db") as store:
        memory = CorrectionMemory(store, MemorySettings(similarity=0.5))
        if said.abstain:  # the tiny model may be unsure: then the memory lifts that
            assert memory.learn("a", text, said.intent, classifier) is not None
        else:
            assert memory.learn("a", text, said.intent, classifier) is None
            assert store.memory_entries() == []


def test_a_new_model_keeps_only_what_it_still_gets_wrong(
    classifier: Classifier, tiny_bundle: Path, tmp_path: Path
) -> None:
    wrong_text = "my new card has still not arrived after two weeks"
    right_text = "I was charged twice for one coffee"
    with StateStore(tmp_path / "state.db") as store:
        chosen = wrong_intent(classifier, wrong_text)
        CorrectionMemory(store, MemorySettings()).learn("a", wrong_text, chosen, classifier)
        # An entry from an older model, which the model in service now gets right.
        now_right = classifier.predict([right_text])[0]
        store.remember(
            account=SHARED_MEMORY,
            text=right_text,
            said=wrong_intent(classifier, right_text),
            confident=True,
            chosen=now_right.intent,
            model_version="older",
            embedding=to_bytes(np.ones(classifier.dimensions, dtype=np.float32)),
            max_entries=10,
        )
        # The next model: same weights, another version (a promotion).
        successor = tmp_path / "successor"
        shutil.copytree(tiny_bundle, successor)
        manifest = json.loads((successor / "manifest.json").read_text())
        manifest["version"] = "successor"
        (successor / "manifest.json").write_text(json.dumps(manifest))
        newer = Classifier(successor)
        memory = CorrectionMemory(store, MemorySettings())
        memory.reembed(newer)
        entries = store.memory_entries()
        kept = {e.text for e in entries}
        assert wrong_text in kept
        if not now_right.abstain:
            assert right_text not in kept
        assert {e.model_version for e in entries} == {"successor"}


def test_the_memory_needs_no_torch(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "import daemon.core.memory, daemon.model.memory, daemon.store.memory\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=Path(__file__).parent.parent)
