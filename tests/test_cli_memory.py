"""The correction memory from the command line: import corrections from a CSV, classify
with them exactly as the daemon would, list, forget one, clear all; every bad input is
one line and exit status 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from daemon.cli import main
from daemon.model.classifier import Classifier
from daemon.store.state import StateStore
from tests.scaffold import write_settings

TEXT = "my new card has still not arrived after two weeks"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def settings(tiny_bundle: Path, tmp_path: Path) -> Path:
    return write_settings(
        tmp_path, tiny_bundle, [{"name": "a", "kind": "maildir", "path": str(tmp_path / "mail")}]
    )


def corrections_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(rows)
    return path


def other_intent(tiny_bundle: Path) -> str:
    said = Classifier(tiny_bundle).predict([TEXT])[0].intent
    return "card_delivery_estimate" if said != "card_delivery_estimate" else "card_arrival"


def test_import_then_classify_decides_by_the_memory(
    settings: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    chosen = other_intent(tiny_bundle)
    imported = run(
        "feedback",
        "import",
        str(corrections_csv(tmp_path / "c.csv", [(TEXT, chosen)])),
        "--config",
        str(settings),
    )
    assert imported.exit_code == 0, imported.output
    assert "1 correction(s) remembered" in imported.output
    # Each imported row is a decision the model made (the remap rule's denominator).
    said = Classifier(tiny_bundle).predict([TEXT])[0]
    with StateStore(tmp_path / "var" / "state.db", lock=False) as store:
        assert store.seen_counts(["*"]) == ({} if said.abstain else {said.intent: 1})

    plain = run("classify", TEXT, "--model", str(tiny_bundle))
    assert "memory" not in json.loads(plain.output)
    decided = run("classify", TEXT, "how do I change my PIN", "--config", str(settings))
    assert decided.exit_code == 0, decided.output
    first, second = (json.loads(line) for line in decided.output.splitlines())
    assert first["intent"] == chosen and first["memory"]["similarity"] >= 0.99
    assert "memory" not in second

    listed = run("feedback", "list", "--json", "--config", str(settings))
    (entry,) = (json.loads(line) for line in listed.output.splitlines())
    assert (entry["account"], entry["chosen"], entry["uses"]) == ("*", chosen, 0)  # classify
    assert "embedding" not in entry  # does not count as a use, shows no vector

    forgot = run("feedback", "forget", str(entry["id"]), "--config", str(settings))
    assert forgot.exit_code == 0, forgot.output
    after = run("classify", TEXT, "--config", str(settings))
    assert "memory" not in json.loads(after.output)
    assert "empty" in run("feedback", "list", "--config", str(settings)).output


def test_forget_all_clears_one_account_or_everything(
    settings: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    rows = [
        (TEXT, other_intent(tiny_bundle)),
        ("I was charged twice for one coffee", "card_linking"),
    ]
    csv_file = corrections_csv(tmp_path / "c.csv", rows)
    run("feedback", "import", str(csv_file), "--account", "a", "--config", str(settings))
    run("feedback", "import", str(csv_file), "--config", str(settings))
    listed = run("feedback", "list", "--json", "--config", str(settings)).output.splitlines()
    per_account = {json.loads(line)["account"] for line in listed}
    assert per_account == {"a", "*"}
    cleared = run("feedback", "forget", "--all", "--account", "a", "--config", str(settings))
    assert cleared.exit_code == 0 and "forgot" in cleared.output
    left = run("feedback", "list", "--json", "--config", str(settings)).output.splitlines()
    assert {json.loads(line)["account"] for line in left} == {"*"}
    run("feedback", "forget", "--all", "--config", str(settings))
    assert "empty" in run("feedback", "list", "--config", str(settings)).output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["feedback", "forget", "--config", "{settings}"], "entry id"),
        (["feedback", "forget", "7", "--all", "--config", "{settings}"], "entry id"),
        (["feedback", "forget", "999", "--config", "{settings}"], "no memory entry 999"),
        (
            ["feedback", "import", "{csv}", "--account", "nobody", "--config", "{settings}"],
            "nobody",
        ),
        (["feedback", "import", "{bad_intent}", "--config", "{settings}"], "not_an_intent"),
        (["classify", "hi", "--config", "{settings}", "--model", "{bundle}"], "not both"),
        (["classify", "hi", "--account", "a"], "--account needs --config"),
        (["classify", "hi", "--config", "{settings}", "--account", "zz"], "zz"),
    ],
)
def test_bad_memory_commands_are_one_line_exit_2(
    settings: Path, tiny_bundle: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    values = {
        "settings": str(settings),
        "bundle": str(tiny_bundle),
        "csv": str(corrections_csv(tmp_path / "c.csv", [(TEXT, "card_arrival")])),
        "bad_intent": str(corrections_csv(tmp_path / "b.csv", [(TEXT, "not_an_intent")])),
    }
    result = run(*(a.format(**values) for a in args))
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cleaninbox: error: ") and fragment in line, line
