"""Learning from corrections (``feedback: true``): a message the core filed that the user
then files elsewhere becomes a correction, mapped back to an intent through the rules."""

from __future__ import annotations

from tests.core.conftest import MakeWorld
from tests.core.harness import mid
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
