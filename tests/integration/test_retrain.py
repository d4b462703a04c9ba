"""The learning loop end to end, CI-sized (configs/retrain-ci.yaml: frozen MiniLM + a
logistic-regression head, ~20 s a model): the daemon files mail in a real Dovecot, a
second client corrects it by moving messages, `cleaninbox retrain` trains a challenger on
banking77 + those corrections and the gate decides both ways: the useful corrections are
promoted (and served by the running daemon's registry), the same texts with shuffled
labels are refused. Both runs report their outcome as the typed result (`--json`).
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from daemon.config.settings import load_settings
from daemon.model.registry import current_version
from daemon.service.supervisor import Service
from tests.mail_fixtures import ENV, MailUser, cli, email, mid
from training.retrain import RetrainResult

REPO = Path(__file__).resolve().parents[2]
RULES = {
    "version": 1,
    "rules": [
        {
            "name": "arrival",
            "match": {"intent": "card_arrival"},
            "actions": [{"move": "Triage/Arrival"}],
        },
        {
            "name": "delivery",
            "match": {"intent": "card_delivery_estimate"},
            "actions": [{"move": "Triage/Delivery"}],
        },
        {"name": "rest", "match": "*", "actions": [{"move": "Triage/Other"}]},
    ],
    "abstain": {"actions": [{"keyword": "$triage_review"}]},
}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=600,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def test_corrections_retrain_and_the_gate_both_ways(
    workdir: Path, mail_user: MailUser, banking77_dir: Path
) -> None:
    models = workdir / "models"
    run(
        [
            "train",
            "--config",
            str(REPO / "configs/retrain-ci.yaml"),
            "--output",
            str(models),
            "--promote",
        ],
        workdir,
    )
    champion = current_version(models)
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["model"] = "models/current"
    settings["rules"] = "rules.yaml"
    settings["classifier"] = {"abstain_threshold": 0.0, "out_of_scope_threshold": 1.0}
    settings["accounts"][0]["feedback"] = True
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    (workdir / "rules.yaml").write_text(yaml.safe_dump(RULES))
    cli(workdir, "once")  # first start

    # Queries about a card's arrival; this user files them all under delivery estimates.
    with (banking77_dir / "train.csv").open() as f:
        texts = [r["text"] for r in csv.DictReader(f) if r["category"] == "card_arrival"]
    random.Random(5).shuffle(texts)
    sent = [email(text, 8000 + i) for i, text in enumerate(texts[:40])]
    for raw in sent:
        mail_user.append(raw)
    cli(workdir, "once")
    with mail_user.client() as c:
        for folder in ("Triage/Arrival", "Triage/Other"):
            if not c.folder_exists(folder):
                continue
            c.select_folder(folder)
            uids = c.search("ALL")
            if uids:
                c.move(uids, "Triage/Delivery")
    cli(workdir, "once")  # the corrections are noticed
    export = workdir / "corrections.csv"
    out = cli(workdir, "feedback", "export", "--output", str(export)).stdout
    corrected = int(out.split()[0])
    assert corrected >= 30, out  # most were filed as card_arrival, then moved by the user
    assert {r["category"] for r in csv.DictReader(export.open())} == {"card_delivery_estimate"}

    # A challenger trained on them is better on held-out corrections: promoted. This run is
    # the daemon's own scheduled job (a separate low-priority process).
    config = str(REPO / "configs/retrain-ci.yaml")
    settings["retrain"] = {"cron": "0 3 * * 0", "config": config}
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    service = Service(load_settings(workdir / "cleaninbox.yaml"), registry=CollectorRegistry())
    try:
        assert service.retrain() == "promoted"
        assert service.metrics.retrains.labels("promoted")._value.get() == 1
    finally:
        service.close()
    promoted = current_version(models)
    assert promoted != champion
    manifest = json.loads((models / str(promoted) / "manifest.json").read_text())
    assert manifest["parent_version"] == champion  # lineage
    assert manifest["metrics"]["corrections_train"] > 0
    (report_path,) = (models / "retrain-reports").glob("*.json")
    report = json.loads(report_path.read_text())
    assert report["promoted"] is True
    before, after = report["scores"]["champion"], report["scores"]["challenger"]
    assert after["holdout_accuracy"] > before["holdout_accuracy"]
    assert before["banking77_accuracy"] - after["banking77_accuracy"] <= 0.03

    # The same texts with shuffled labels teach nothing: refused, champion kept.
    rows = list(csv.DictReader(export.open()))
    labels = json.loads((banking77_dir / "categories.json").read_text())
    rng = random.Random(11)
    shuffled = workdir / "shuffled.csv"
    with shuffled.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        for row in rows:
            writer.writerow([row["text"], rng.choice(labels)])
    refused = run(
        [
            "retrain",
            "--config",
            config,
            "--corrections",
            str(shuffled),
            "--models-dir",
            str(models),
            "--json",
        ],
        workdir,
    )  # a kept champion is a decision, not a failure: exit status 0
    kept = RetrainResult.from_json(refused.stdout)
    assert kept.outcome == "kept", refused.stdout
    assert "not better on the held-out corrections" in kept.reason
    assert kept.champion == promoted
    assert kept.challenger not in (None, promoted)
    assert kept.champion_scores is not None and kept.challenger_scores is not None
    assert kept.corrections_holdout > 0
    assert kept.report is not None and kept.report.is_file()
    assert json.loads(kept.report.read_text())["promoted"] is False
    assert current_version(models) == promoted
    listing = run(["models", "list", "--models-dir", str(models), "--json"], workdir).stdout
    versions = [json.loads(line) for line in listing.splitlines()]
    assert len(versions) == 3  # champion, promoted challenger, refused challenger kept for study
    assert len(list((models / "retrain-reports").glob("*.md"))) == 2

    # The daemon serves the promoted model from models/current.
    raw = email(texts[45], 8100)
    mail_user.append(raw)
    cli(workdir, "once")
    with mail_user.client() as c:
        c.select_folder("Triage/Delivery")
        assert c.search(["HEADER", "Message-ID", mid(raw)])
