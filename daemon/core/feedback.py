"""Learning from the user's corrections (accounts with ``feedback: true``).

A correction is a message CleanInbox decided on that the user then put into another
triage folder: moved from ``Triage/Cards`` to ``Triage/Fees``, or filed from the review
tag into ``Triage/Transfers`` (on Gmail: gave it another label), or changed its intent
keyword (``$intent_card_arrival`` to ``$intent_card_delivery_estimate``; servers with
CONDSTORE, where only messages whose flags changed are fetched). Once per cycle each
triage folder is looked at cheaply: STATUS, and only when its UIDNEXT moved, the identity
(Message-ID, or X-GM-MSGID on Gmail) of the new arrivals. An arrival whose last decision
sent it elsewhere is a correction. The folder is mapped back to an intent through the
rules: if the rules file several intents there, the one the model itself ranked highest
among them is taken. Corrections keep the model input text stored with the decision, and
``learn`` hands each to the correction memory (:mod:`daemon.core.memory`). A corrected
message the user puts back where CleanInbox filed it withdraws the correction (and its
memory entry).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import structlog

from daemon.config.settings import Account
from daemon.core.rules import Rules
from daemon.mailbox.base import Mailbox
from daemon.metrics import Metrics
from daemon.store.base import Store
from daemon.store.records import Decision

log = structlog.get_logger(__name__)

#: Called with each recorded correction: the decision, the intent chosen, the correction id.
Learn = Callable[[Decision, str, int], object]


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
    state: Callable[[], AbstractContextManager[Store]],
    metrics: Metrics,
    learn: Learn | None = None,
) -> int:
    """Record the corrections made in the triage folders since the last look."""
    found = 0
    keywords = rules.intent_keywords()

    def record(store: Store, decision: Decision, intent: str, folder: str, how: str) -> None:
        nonlocal found
        correction_id, new = store.add_correction(decision, intent, folder, decision.text or "")
        if new:
            found += 1
            metrics.corrections.labels(account.name).inc()
        if learn is not None:
            learn(decision, intent, correction_id)
        log.info(
            "correction",
            message_id=decision.message_id,
            predicted=decision.intent,
            corrected=intent,
            folder=folder,
            how=how,
        )

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
        fresh = seen is None or seen[0] != status.uidvalidity
        floor = 1 if seen is None or fresh else seen[1]
        if status.uidnext > floor:
            arrivals = [
                mid for mid in mailbox.message_ids_from(folder, floor).values() if mid is not None
            ]
            with state() as store:
                filed = store.filed(account.name, sorted(arrivals))
                back = [d.id for d in filed.values() if d.destination == folder]
                if back and (withdrawn := store.withdraw_corrections(back)):
                    log.info("corrections_withdrawn", folder=folder, count=withdrawn)
                for decision in filed.values():
                    if decision.destination == folder or not decision.text:
                        continue  # our own move, or filed before feedback was on (no text)
                    intent = corrected_intent(candidates, decision)
                    if intent is None or (intent == decision.intent and not decision.abstain):
                        continue
                    record(store, decision, intent, folder, "moved")
        # A changed intent keyword (CONDSTORE: only messages whose flags changed).
        since = None if seen is None or fresh else seen[2]
        if keywords and since is not None and (status.highestmodseq or 0) > since:
            named = {
                uid: {keywords[f] for f in flags if f in keywords}
                for uid, flags in mailbox.changed_flags(folder, since).items()
            }
            named = {uid: intents for uid, intents in named.items() if intents}
            if named:
                ids = mailbox.message_ids(folder, sorted(named))
                with state() as store:
                    filed = store.filed(account.name, sorted(m for m in ids.values() if m))
                    for uid, intents in named.items():
                        changed = filed.get(ids.get(uid) or "")
                        if changed is None or not changed.text:
                            continue
                        new = intents - {changed.intent}
                        if len(new) == 1:
                            record(store, changed, new.pop(), folder, "keyword")
        with state() as store:
            store.set_watched(
                account.name, folder, status.uidvalidity, status.uidnext, status.highestmodseq
            )
    return found
