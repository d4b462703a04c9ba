"""Fail when pyproject.toml and the lock files disagree (``make lint``; ``make lock`` fixes it).

Each lock in requirements/ is pip-compile's resolution of pyproject.toml for some extras.
They disagree when a dependency pyproject.toml names (base or one of those extras) is not
pinned in the lock as a direct dependency, when the lock pins as direct one that
pyproject.toml no longer names, or when a pin does not satisfy pyproject.toml's specifier.
Offline and quick: it reads files, it resolves nothing.

    python scripts/check_lock.py
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
#: Each lock and the extras it resolves (the Makefile's ``lock`` target makes them).
LOCKS: dict[str, tuple[str, ...]] = {
    "requirements/dev.txt": ("train", "dev", "postgresql"),
    "requirements/daemon.txt": ("postgresql",),
    "requirements/train.txt": ("train", "postgresql"),
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_DIRECT = "cleaninbox (pyproject.toml)"


def requirements(pyproject: dict[str, object], extras: tuple[str, ...]) -> dict[str, Requirement]:
    """pyproject.toml's requirements for the base install plus ``extras``, by name."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    names = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (scripts/check_lock.py)")
        names += optional[extra]
    found: dict[str, Requirement] = {}
    for line in names:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name != "cleaninbox":
            found.setdefault(name, requirement)
    return found


def pins(lock: str) -> tuple[dict[str, str], set[str]]:
    """The lock's pins (name -> version) and the names pinned for cleaninbox itself."""
    pinned: dict[str, str] = {}
    direct: set[str] = set()
    current: str | None = None
    for line in lock.splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pinned[current] = match[2]
        elif current is not None and _DIRECT in line:
            direct.add(current)
    return pinned, direct


def problems(
    pyproject: dict[str, object], name: str, lock: str, extras: tuple[str, ...]
) -> list[str]:
    wanted = requirements(pyproject, extras)
    pinned, direct = pins(lock)
    out: list[str] = []
    for missing in sorted(set(wanted) - direct):
        out.append(f"{name}: {wanted[missing]} is in pyproject.toml but not locked")
    for extra in sorted(direct - set(wanted)):
        out.append(
            f"{name}: {extra}=={pinned[extra]} is locked but pyproject.toml no longer names it"
        )
    for package in sorted(set(wanted) & direct):
        specifier = wanted[package].specifier
        if not specifier.contains(pinned[package], prereleases=True):
            out.append(f"{name}: {package}=={pinned[package]} does not satisfy {wanted[package]}")
    return out


def main() -> int:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    found: list[str] = []
    for name, extras in LOCKS.items():
        path = REPO / name
        if not path.is_file():
            found.append(f"{name}: missing")
            continue
        found += problems(pyproject, name, path.read_text(), extras)
    for line in found:
        print(f"lock: {line}", file=sys.stderr)
    if found:
        print("lock: run `make lock` and commit requirements/", file=sys.stderr)
        return 1
    print(f"lock: {len(LOCKS)} lock files agree with pyproject.toml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
