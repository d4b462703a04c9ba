"""Out-of-scope detection as the daemon serves it: the "none of these" output of a bundle,
its threshold, the reason recorded for mail left alone, and the rules' out_of_scope actions.

In-process against the Maildir backend (no mail server needed) with the CI-sized bundle,
which has the none-of-these output (configs/train-tiny.yaml). The thresholds are set
through the daemon's settings so the outcome does not depend on the tiny model's scores.
"""

from __future__ import annotations

import json
import mailbox
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.config.settings import load_settings
from daemon.core.rules import Headers, load_rules
from daemon.errors import BundleError
from daemon.model.bundle import MANIFEST_NAME, MODEL_NAME, hash_bundle_files, read_manifest
from daemon.model.classifier import Classifier
from daemon.model.samples import render_email
from daemon.service.supervisor import Service

TEXTS = ["my card has not arrived yet", "lunch on friday?", "what is the exchange rate"]


def test_the_ci_bundle_has_a_none_of_these_output(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert manifest.schema_version == 2
    assert manifest.out_of_scope is not None
    assert 0 < manifest.out_of_scope.threshold <= 1
    assert set(manifest.out_of_scope.chosen_on) >= {"oos_acted", "dev_acted_wrong"}
    classifier = Classifier(tiny_bundle)
    assert classifier.logits(TEXTS).shape == (3, len(manifest.labels) + 1)
    assert len(classifier.labels) == 77  # rules never see the extra output


@pytest.mark.parametrize(
    ("oos_threshold", "abstain_threshold", "reason"),
    [(1e-9, 0.0, "out_of_scope"), (1.0, 1.0, "low_confidence")],
)
def test_prediction_says_why_it_abstains(
    tiny_bundle: Path, oos_threshold: float, abstain_threshold: float, reason: str
) -> None:
    classifier = Classifier(
        tiny_bundle, abstain_threshold=abstain_threshold, out_of_scope_threshold=oos_threshold
    )
    for p in classifier.predict(TEXTS):
        assert p.abstain and p.abstain_reason == reason
        assert p.out_of_scope is not None and 0 <= p.out_of_scope <= 1
        assert p.to_json()["abstain_reason"] == reason
        assert {name for name, _ in p.top_k} <= set(classifier.labels)  # intents only


def test_out_of_scope_decision_matches_the_manifest_threshold(tiny_bundle: Path) -> None:
    classifier = Classifier(tiny_bundle, abstain_threshold=0.0)
    probs = classifier.probabilities(TEXTS)
    threshold = classifier.out_of_scope_threshold
    assert threshold is not None
    for row, p in zip(probs, classifier.predict(TEXTS), strict=True):
        assert p.out_of_scope == pytest.approx(float(row[-1]))
        assert (p.abstain_reason == "out_of_scope") == (row[-1] >= threshold)
        assert p.confidence == pytest.approx(float(row[:-1].max()))


def _with_manifest(src: Path, tmp_path: Path, change: dict[str, object]) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(src, target)
    data = json.loads((target / MANIFEST_NAME).read_text())
    data.update(change)
    (target / MANIFEST_NAME).write_text(json.dumps(data))
    return target


def test_schema_1_bundles_without_out_of_scope_still_serve(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A bundle made before the none-of-these output: intents only, no reason but low
    confidence. Built from the CI bundle by slicing the extra column off its graph."""
    import onnx
    from onnx import helper

    target = _with_manifest(tiny_bundle, tmp_path, {"schema_version": 1, "out_of_scope": None})
    model = onnx.load(str(target / MODEL_NAME))
    graph = model.graph
    n = len(read_manifest(target).labels)
    old = graph.output[0].name
    graph.output[0].name = "all_logits"
    for node in graph.node:
        node.output[:] = ["all_logits" if o == old else o for o in node.output]
    consts = {"starts": 0, "ends": n, "axes": 1}
    for name, value in consts.items():
        graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.INT64, [1], [value]))
    graph.node.append(helper.make_node("Slice", ["all_logits", "starts", "ends", "axes"], [old]))
    graph.output[0].name = old
    onnx.save(model, str(target / MODEL_NAME))
    data = json.loads((target / MANIFEST_NAME).read_text())
    data["files"] = hash_bundle_files(target)
    (target / MANIFEST_NAME).write_text(json.dumps(data))

    classifier = Classifier(target, abstain_threshold=1.0)
    assert classifier.out_of_scope_threshold is None
    predictions = classifier.predict(TEXTS)
    assert all(p.abstain_reason == "low_confidence" and p.out_of_scope is None for p in predictions)
    assert np.allclose(classifier.probabilities(TEXTS).sum(axis=1), 1.0, atol=1e-5)


def test_out_of_scope_in_a_schema_1_manifest_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    target = _with_manifest(tiny_bundle, tmp_path, {"schema_version": 1})
    with pytest.raises(BundleError, match="out_of_scope needs schema_version 2"):
        read_manifest(target)


RULES = {
    "rules": [{"name": "everything", "match": {"*": True}, "actions": [{"move": "Triage/All"}]}],
    "abstain": {"actions": [{"keyword": "$triage_review"}]},
    "out_of_scope": {"actions": [{"keyword": "$other_topic"}]},
}


@pytest.mark.parametrize(
    ("classifier_settings", "reason", "text", "keyword"),
    [
        ({"out_of_scope_threshold": 1e-9}, "out_of_scope", "out of scope", "$other_topic"),
        (
            {"out_of_scope_threshold": 1.0, "abstain_threshold": 1.0},
            "low_confidence",
            "low confidence",
            "$triage_review",
        ),
    ],
)
def test_daemon_records_why_it_left_mail_alone(
    tiny_bundle: Path,
    tmp_path: Path,
    classifier_settings: dict[str, float],
    reason: str,
    text: str,
    keyword: str,
) -> None:
    maildir = tmp_path / "mail"
    box = mailbox.Maildir(str(maildir), create=True)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    settings_path = tmp_path / "cleaninbox.yaml"
    settings_path.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_bundle),
                "rules": str(rules),
                "state": "state.db",
                "log_level": "warning",
                "http": {"enabled": False},
                "classifier": classifier_settings,
                "accounts": [{"name": "m", "kind": "maildir", "path": "mail"}],
            }
        )
    )
    registry = CollectorRegistry()
    service = Service(load_settings(settings_path), registry=registry)
    try:
        service.once()  # first start: remembers where the inbox ends
        rng = random.Random(0)
        for i, query in enumerate(TEXTS):
            box.add(render_email(query, rng, message_id=f"<m{i}@x>"))
        service.once()
        decisions = service.store.history(kind="triage")
    finally:
        service.close()
    assert len(decisions) == len(TEXTS)
    for d in decisions:
        assert d.abstain is True
        assert d.destination is None
        assert d.reason is not None and text in d.reason, d.reason
    assert len(box) == len(TEXTS)  # nothing moved
    keywords = (maildir / "dovecot-keywords").read_text()
    assert keyword in keywords
    counted = registry.get_sample_value(
        "cleaninbox_abstentions_total", {"account": "m", "reason": reason}
    )
    assert counted == len(TEXTS)


def test_rules_take_out_of_scope_actions_only_for_that_reason(tmp_path: Path) -> None:
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(RULES))
    rules = load_rules(rules_path, ["card_arrival", "exchange_rate"])
    oos = rules.decide("card_arrival", 0.9, True, Headers(), "out_of_scope")
    low = rules.decide("card_arrival", 0.1, True, Headers(), "low_confidence")
    assert (oos.rule, oos.keywords, oos.move) == ("out-of-scope", ("$other_topic",), None)
    assert (low.rule, low.keywords) == ("abstain", ("$triage_review",))
    without = {k: v for k, v in RULES.items() if k != "out_of_scope"}
    rules_path.write_text(yaml.safe_dump(without))
    fallback = load_rules(rules_path, ["card_arrival"]).decide(
        "card_arrival", 0.9, True, Headers(), "out_of_scope"
    )
    assert (fallback.rule, fallback.keywords) == ("abstain", ("$triage_review",))
