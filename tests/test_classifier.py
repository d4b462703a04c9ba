"""The run-time classifier: onnxruntime + tokenizers, calibrated confidences, abstention."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.model.classifier import Classifier, softmax

TEXTS = [
    "I lost my card, please block it",
    "How long does a transfer take?",
    "Why was I charged a fee for withdrawing cash?",
    "top up failed",
    "Can I change my PIN at an ATM?",
    "x",
]


@pytest.fixture(scope="module")
def classifier(tiny_bundle: Path) -> Classifier:
    return Classifier(tiny_bundle)


def test_predictions_follow_the_manifest(classifier: Classifier) -> None:
    predictions = classifier.predict(TEXTS)
    assert len(predictions) == len(TEXTS)
    for p in predictions:
        assert p.intent in classifier.labels
        assert p.intent == p.top_k[0][0]
        assert abs(p.confidence - p.top_k[0][1]) < 1e-6
        assert p.abstain == (
            p.confidence < classifier.threshold or p.abstain_reason == "out_of_scope"
        )
        probs = [q for _, q in p.top_k]
        assert probs == sorted(probs, reverse=True)
        assert len(p.top_k) == 5


def test_confidence_is_temperature_scaled(classifier: Classifier) -> None:
    logits = classifier.logits(TEXTS)
    probs = softmax(logits, classifier.manifest.calibration.temperature)
    # the confidence of the best intent, out of the softmax over every output
    expected = probs[:, : len(classifier.labels)].max(axis=1)
    got = [p.confidence for p in classifier.predict(TEXTS)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(classifier.probabilities(TEXTS).sum(axis=1), 1.0, rtol=1e-5)


def test_a_result_does_not_depend_on_its_batch(tiny_bundle: Path) -> None:
    """Per-token int8 scales: a text's logits are the same alone, in any batch, padded or
    not, and come back in input order although batches are sorted by length."""
    one_by_one = Classifier(tiny_bundle, batch_size=1)
    batched = Classifier(tiny_bundle, batch_size=4)
    single = np.stack([one_by_one.logits([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched.logits(TEXTS), single, rtol=1e-4, atol=1e-4)
    crowd = ["card " * 40, *TEXTS, "a much longer message about a transfer " * 3]
    np.testing.assert_allclose(batched.logits(crowd)[1:-1], single, rtol=1e-4, atol=1e-4)


def test_threshold_override_and_empty_input(tiny_bundle: Path) -> None:
    never = Classifier(tiny_bundle, abstain_threshold=0.0, out_of_scope_threshold=1.0)
    always = Classifier(tiny_bundle, abstain_threshold=1.01)
    assert not any(p.abstain for p in never.predict(TEXTS))
    assert all(p.abstain for p in always.predict(TEXTS))
    assert never.predict([]) == []


def test_long_input_is_truncated_to_max_length(classifier: Classifier) -> None:
    ids = classifier.encode(["card " * 5000])
    assert len(ids[0]) == classifier.manifest.max_length
    assert classifier.predict(["card " * 5000])[0].intent in classifier.labels


def test_daemon_never_imports_torch_or_transformers() -> None:
    code = (
        "import sys, importlib, pkgutil, daemon\n"
        "for m in pkgutil.walk_packages(daemon.__path__, 'daemon.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = ('torch', 'transformers', 'training')\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
