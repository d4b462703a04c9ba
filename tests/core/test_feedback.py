"""Learning from corrections (``feedback: true``): a message the core filed that the user
then files elsewhere becomes a correction, mapped back to an intent through the rules."""

from __future__ import annotations

from tests.core.conftest import MakeWorld
from tests.core.harness import World, message, mid
from tests.core.scenario import deliver


def test_user_moving_a_filed_message_records_a_correction(make_world: MakeWorld) -> None:
    world = make_world(feedback=True)
    deliver(world, ["card", "transfer"])
    world.cycle()
    assert world.cycle().corrections == 0  # our own filing is never a correction
    world.server.user_move(mid("card"), "Triage/Cards", "Triage/Transfers")
    assert world.cycle().corrections == 1
    (correction,) = world.store.corrections("mem")
    assert (correction.message_id, correction.predicted, correction.corrected) == (
        mid("card"),
        "card_arrival",
        "transfer_timing",
    )
    assert correction.folder == "Triage/Transfers"
    assert "card" in correction.text.lower()  # the model input stored with the decision

    world.server.user_move(mid("card"), "Triage/Transfers", "Triage/TopUps")
    world.cycle()
    (updated,) = world.store.corrections("mem")  # updated, not duplicated
    assert (updated.corrected, updated.folder) == ("top_up_failed", "Triage/TopUps")


def test_changed_intent_keyword_is_a_correction_with_condstore(make_world: MakeWorld) -> None:
    world = make_world(feedback=True, condstore=True)
    deliver(world, ["card"])
    world.cycle()
    world.cycle()  # the triage folders are looked at once: their MODSEQ is remembered
    world.server.user_flags(
        "Triage/Cards", mid("card"), add=["$intent_top_up_failed"], drop=["$intent_card_arrival"]
    )
    assert world.cycle().corrections == 1
    (correction,) = world.store.corrections("mem")
    assert correction.corrected == "top_up_failed"


def test_without_feedback_no_text_is_kept_and_no_correction_recorded(
    make_world: MakeWorld,
) -> None:
    world = make_world(feedback=False)
    deliver(world, ["card"])
    world.cycle()
    world.server.user_move(mid("card"), "Triage/Cards", "Triage/Transfers")
    assert world.cycle().corrections == 0
    assert world.store.corrections() == []
    assert all(d.text is None for d in world.store.history())


# -- the correction memory -------------------------------------------------------------


def folders_of(world: World, message_id: str) -> list[str]:
    """Where copies of a message are, Archive/* aside."""
    return [f for f, _ in world.server.locate()[message_id] if not f.startswith("Archive/")]


def corrected_once(world: World) -> None:
    """The user moves "Where is my new card" from Triage/Cards to Triage/Transfers."""
    world.server.deliver(message("card1", "Where is my new card"))
    world.cycle()
    world.server.user_move(mid("card1"), "Triage/Cards", "Triage/Transfers")
    assert world.cycle().corrections == 1


def test_the_next_similar_message_goes_where_the_user_put_the_last(
    make_world: MakeWorld,
) -> None:
    world = make_world(feedback=True)
    corrected_once(world)
    (entry,) = world.store.memory_entries(["mem"])
    assert (entry.said, entry.chosen) == ("card_arrival", "transfer_timing")
    world.server.deliver(message("card2", "Where is my new card please"))
    world.server.deliver(message("stolen", "My card was stolen last night"))  # model: other intent
    world.server.deliver(message("far", "I ordered a card for my son"))  # same intent, not close
    world.cycle()
    assert folders_of(world, mid("card2")) == ["Triage/Transfers"]
    assert folders_of(world, mid("stolen")) == ["Triage/Cards"]
    assert folders_of(world, mid("far")) == ["Triage/Cards"]
    decided = {d.message_id: d for d in world.store.history()}
    followed = decided[mid("card2")]
    assert (followed.intent, followed.memory_id) == ("transfer_timing", entry.id)
    assert followed.memory_similarity is not None and followed.memory_similarity >= 0.8
    assert decided[mid("far")].memory_id is None
    assert world.metrics.memory_decisions.labels("mem")._value.get() == 1
    (used,) = world.store.memory_entries(["mem"])
    assert used.uses == 1 and used.used_at is not None


def test_putting_a_corrected_message_back_withdraws_the_correction(
    make_world: MakeWorld,
) -> None:
    world = make_world(feedback=True)
    corrected_once(world)
    world.server.user_move(mid("card1"), "Triage/Transfers", "Triage/Cards")
    world.cycle()
    assert world.store.corrections("mem") == []
    assert world.store.memory_entries() == []
    world.server.deliver(message("card2", "Where is my new card please"))
    world.cycle()
    assert folders_of(world, mid("card2")) == ["Triage/Cards"]  # the model decides again


def test_moving_it_again_updates_the_entry(make_world: MakeWorld) -> None:
    world = make_world(feedback=True)
    corrected_once(world)
    world.server.user_move(mid("card1"), "Triage/Transfers", "Triage/TopUps")
    world.cycle()
    (entry,) = world.store.memory_entries(["mem"])
    assert entry.chosen == "top_up_failed"
    world.server.deliver(message("card2", "Where is my new card please"))
    world.cycle()
    assert folders_of(world, mid("card2")) == ["Triage/TopUps"]


def test_the_memory_survives_a_restart(make_world: MakeWorld) -> None:
    world = make_world(feedback=True)
    corrected_once(world)
    world.restart()
    world.server.deliver(message("card2", "Where is my new card please"))
    world.cycle()
    assert folders_of(world, mid("card2")) == ["Triage/Transfers"]
