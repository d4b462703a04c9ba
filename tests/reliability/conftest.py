"""Dovecots with trimmed capabilities, for the fallback paths (issue 4, test 6)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dovecot import Dovecot, running_dovecot
from tests.mail_fixtures import USERS

CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN "
    "CONTEXT=SEARCH LIST-STATUS BINARY SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE "
    "SAVEDATE LITERAL+ NOTIFY"
)


@pytest.fixture(scope="session")
def dovecot_without_move(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """A Dovecot that does not advertise MOVE (UIDPLUS stays): the COPY fallback path."""
    root = tmp_path_factory.mktemp("dovecot-nomove")
    with running_dovecot(root, USERS[:8], capability_trim=f"{CAPABILITIES} UIDPLUS") as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """A Dovecot with neither MOVE nor UIDPLUS."""
    root = tmp_path_factory.mktemp("dovecot-bare")
    with running_dovecot(root, USERS[:8], capability_trim=CAPABILITIES) as server:
        yield server
