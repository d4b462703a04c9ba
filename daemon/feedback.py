"""Learning from the user's corrections (accounts with ``feedback: true``).

A correction is a message CleanInbox decided on that the user then put into another
triage folder: moved from ``Triage/Cards`` to ``Triage/Fees``, or filed from the review
tag into ``Triage/Transfers`` (on Gmail: gave it another label). Once per cycle each
triage folder is looked at cheaply: STATUS, and only when its UIDNEXT moved, the identity
(Message-ID, or X-GM-MSGID on Gmail) of the new arrivals. An arrival whose last decision
sent it elsewhere is a correction. The folder is mapped back to an intent through the
rules: if the rules file several intents there, the one the model itself ranked highest
among them is taken. Corrections keep the model input text stored with the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import structlog

from daemon.mailbox.base import Mailbox
from daemon.metrics import Metrics
from daemon.rules import Rules
from daemon.settings import Account
from daemon.state import Decision, StateStore

log = structlog.get_logger("cleaninbox.feedback")


def corrected_intent(candidates: list[str], decision: Decision) -> str | None:
    """The intent a move into a folder filed with ``candidates`` means for this message."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    ranked = [str(label) for label, _score in decision.top_k or []]
    for label in ranked:
        if label in candidates:
            return label
    return candidates[0]


def scan(
    account: Account,
    mailbox: Mailbox,
    rules: Rules,
    state: Callable[[], AbstractContextManager[StateStore]],
    metrics: Metrics,
) -> int:
    """Record the corrections that arrived in the triage folders since the last look."""
    found = 0
    for folder in sorted(rules.folders()):
        candidates = rules.intents_filed_in(folder)
        if not candidates:
            continue  # e.g. a copy-only archive folder: says nothing about the intent
        if not mailbox.folder_exists(folder):
            continue
        status = mailbox.status(folder)
        with state() as store:
            seen = store.watched(account.name, folder)
        # First look (or the folder was recreated, e.g. by the user moving mail into a
        # folder that did not exist yet): read it all once; afterwards only new arrivals.
        floor = 1 if seen is None or seen[0] != status.uidvalidity else seen[1]
        if status.uidnext <= floor:
            continue
        arrivals = {
            mid: uid
            for uid, mid in mailbox.message_ids_from(folder, floor).items()
            if mid is not None
        }
        with state() as store:
            decisions = store.filed(account.name, sorted(arrivals))
            for mid, decision in decisions.items():
                if decision.destination == folder or not decision.text:
                    continue  # our own move, or filed before feedback was on (no text)
                intent = corrected_intent(candidates, decision)
                if intent is None or (intent == decision.intent and not decision.abstain):
                    continue
                if store.add_correction(decision, intent, folder, decision.text):
                    found += 1
                    metrics.corrections.labels(account.name).inc()
                log.info(
                    "correction",
                    account=account.name,
                    message_id=mid,
                    predicted=decision.intent,
                    corrected=intent,
                    folder=folder,
                    was=decision.destination or decision.folder,
                )
            store.set_watched(account.name, folder, status.uidvalidity, status.uidnext)
    return found
