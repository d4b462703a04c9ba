"""The invariant checked after every reliability test (issue 4).

Every seeded message exists exactly once, byte-identical, not marked \\Deleted, in exactly
one of: its rule's destination, the review destination, or the source folder with a
recorded skip reason; the state DB agrees with the server; and a rerun performs zero
actions.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daemon.config.settings import load_settings
from daemon.model.samples import render_email
from daemon.store.state import StateStore
from tests.mail_fixtures import MailUser, cli, snapshot

SEED_HEADER = b"X-CleanInbox-Seed"


@dataclass(frozen=True)
class Seed:
    name: str
    message_id: str
    sha256: str


def seed_messages(
    user: MailUser, count: int, prefix: str, folder: str = "INBOX", queries: list[str] | None = None
) -> dict[str, Seed]:
    """Append ``count`` messages, each with a unique seed header; remember their sha256."""
    seeds: dict[str, Seed] = {}
    rng = random.Random(prefix)
    texts = queries or [
        "I lost my card",
        "Where is my transfer?",
        "Why was I charged a fee?",
        "My top-up failed",
        "How do I verify my identity?",
    ]
    with user.client() as client:
        for i in range(count):
            name = f"{prefix}-{i}"
            message_id = f"<{name}@seed.cleaninbox.example>"
            raw = render_email(texts[i % len(texts)], rng, style="signature", message_id=message_id)
            raw = SEED_HEADER + b": " + name.encode() + b"\n" + raw
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            client.append(folder, raw)
            seeds[name] = Seed(name, message_id, hashlib.sha256(raw).hexdigest())
    return seeds


def locate(user: MailUser) -> dict[str, list[tuple[str, set[str], str, int]]]:
    """seed -> [(folder, flags, sha256, uid)] for every copy on the server."""
    found: dict[str, list[tuple[str, set[str], str, int]]] = {}
    for folder in user.folders():
        for _mid, message in user.messages(folder).items():
            raw = message["raw"]
            assert isinstance(raw, bytes)
            head = raw.split(b"\r\n\r\n", 1)[0]
            for line in head.split(b"\r\n"):
                if line.startswith(SEED_HEADER + b":"):
                    name = line.split(b":", 1)[1].strip().decode()
                    flags = message["flags"]
                    assert isinstance(flags, set)
                    uid = message["uid"]
                    assert isinstance(uid, int)
                    found.setdefault(name, []).append(
                        (folder, flags, hashlib.sha256(raw).hexdigest(), uid)
                    )
    return found


@dataclass
class Findings:
    """What the invariant found: a count per kind and a line per problem (none: it holds).

    Kinds: lost, duplicated, misrouted, changed, deleted (left \\Deleted), state (the
    state DB disagrees with the server) and pending (decisions never finished).
    """

    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, kind: str, problem: str) -> None:
        self.counts[kind] += 1
        self.problems.append(problem)


def journal(workdir: Path, account: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """The triage decisions (as dicts) and the number of pending ones, read from the state
    workdir/cleaninbox.yaml names (a SQLite file or a PostgreSQL database)."""
    settings = load_settings(workdir / "cleaninbox.yaml")
    with StateStore(
        settings.state, password=settings.state_password(), read_only=True, lock=False
    ) as store:
        rows = [asdict(d) for d in store.history(account=account, kind="triage")]
        pending = len(store.pending(account))
    return rows, pending


def examine(
    user: MailUser,
    workdir: Path,
    seeds: dict[str, Seed],
    *,
    destinations: set[str],
    source: str = "INBOX",
    account: str | None = None,
) -> Findings:
    """``account``: only that account's decisions (several accounts share one state)."""
    found = Findings()
    located = locate(user)
    rows, pending = journal(workdir, account)
    by_mid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_mid.setdefault(row["message_id"], []).append(row)
    for name, seed in seeds.items():
        copies = located.get(name, [])
        if not copies:
            found.add("lost", f"{name}: lost")
            continue
        if len(copies) > 1:
            found.add("duplicated", f"{name}: {len(copies)} copies {[c[0] for c in copies]}")
            continue
        folder, flags, sha, uid = copies[0]
        if sha != seed.sha256:
            found.add("changed", f"{name}: bytes changed")
        if "\\Deleted" in flags:
            found.add("deleted", f"{name}: marked \\Deleted in {folder}")
        if seed.message_id:
            decisions = by_mid.get(seed.message_id, [])
        else:  # no Message-ID: match by where it is (source UID, or destination)
            decisions = [
                r
                for r in rows
                if r["message_id"] is None
                and (
                    (r["folder"] == folder and r["uid"] == uid and r["destination"] is None)
                    or r["destination"] == folder
                )
            ][:1]
        if len(decisions) > 1:
            found.add("state", f"{name}: {len(decisions)} triage decisions")
        decision = decisions[0] if decisions else None
        described = decision
        if folder in destinations:
            if (
                decision is None
                or decision["status"] != "done"
                or (decision["destination"] != folder)
            ):
                found.add("state", f"{name}: in {folder} but the state says {described}")
        elif folder == source:
            if (
                decision is None
                or decision["status"] not in ("skipped", "failed", "done")
                or decision["destination"] is not None
                or not (decision["reason"] or decision["status"] == "done")
            ):
                found.add(
                    "state", f"{name}: left in {source} without a recorded reason ({described})"
                )
        else:
            found.add("misrouted", f"{name}: in unexpected folder {folder}")
    if pending:
        found.counts["pending"] = int(pending)
        found.problems.append(f"{pending} decisions still pending")
    return found


def rerun_actions(user: MailUser, workdir: Path) -> int:
    """Run once more; the number of new decisions plus 1 if the server changed."""
    before = snapshot_all(user)
    count = len(journal(workdir)[0])
    cli(workdir, "once")
    after = len(journal(workdir)[0])
    return after - count + int(snapshot_all(user) != before)


def check(
    user: MailUser, workdir: Path, seeds: dict[str, Seed], *, rerun: bool = True, **where: Any
) -> None:
    """Assert the invariant; ``where`` is :func:`examine`'s destinations (and source)."""
    found = examine(user, workdir, seeds, **where)
    assert not found.problems, "\n".join(found.problems[:20])
    if rerun:
        assert rerun_actions(user, workdir) == 0, "a rerun acted"


def state_path(workdir: Path) -> Path:
    """The state database named by workdir/cleaninbox.yaml (relative to that file)."""
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    return workdir / settings["state"]


def snapshot_all(user: MailUser) -> str:
    state = {
        folder: {
            m: (
                sorted(v["flags"] - {"\\Recent"}),  # type: ignore[operator]
                hashlib.sha256(v["raw"]).hexdigest(),
            )  # type: ignore[arg-type]
            for m, v in user.messages(folder).items()
        }
        for folder in user.folders()
    }
    return json.dumps(state, sort_keys=True)


__all__ = ["Seed", "check", "locate", "seed_messages", "snapshot"]
